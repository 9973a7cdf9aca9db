"""G, C and mIoU from one confusion matrix, worked by hand; the accumulator."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from segnet.data.imageio import read_label
from segnet.data.labels import LabelSpace, get_label_space
from segnet.data.splits import list_samples

CAMVID = get_label_space("camvid")
from segnet.evaluation.metrics import (
    SegmentationMetrics,
    class_accuracy,
    class_iou,
    class_present,
    confusion_matrix,
    global_accuracy,
    mean_class_accuracy,
    mean_iou,
)

# 3 classes; 11 is void (any value >= 3 would be).
GT = np.array([[0, 0, 1], [1, 2, 11]])
PRED = np.array([[0, 1, 1], [1, 2, 0]])


def test_confusion_matrix_by_hand() -> None:
    cm = confusion_matrix(GT, PRED, num_classes=3)
    # rows: gt class; columns: predicted class 0..2, then "not a class".
    # The void pixel (predicted 0) is left out: no false positive for class 0.
    assert cm.tolist() == [
        [1, 1, 0, 0],
        [0, 2, 0, 0],
        [0, 0, 1, 0],
    ]


def test_metrics_by_hand() -> None:
    cm = confusion_matrix(GT, PRED, num_classes=3)
    assert global_accuracy(cm) == pytest.approx(4 / 5)  # 4 right of 5 non-void pixels
    # recall: class 0 1/2, class 1 2/2, class 2 1/1
    assert class_accuracy(cm).tolist() == [0.5, 1.0, 1.0]
    assert mean_class_accuracy(cm) == pytest.approx(2.5 / 3)
    # IoU = TP / (TP + FP + FN): 1/(1+0+1), 2/(2+1+0), 1/1
    assert class_iou(cm) == pytest.approx([1 / 2, 2 / 3, 1.0])
    assert mean_iou(cm) == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)


def test_class_absent_from_gt_counts_as_zero() -> None:
    # class 2 never occurs in gt but is predicted once
    cm = confusion_matrix(np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1]), num_classes=3)
    assert class_present(cm).tolist() == [True, True, False]
    assert global_accuracy(cm) == pytest.approx(3 / 4)
    # recall and IoU of the absent class are 0 and the means still divide by 3
    assert class_accuracy(cm).tolist() == [0.5, 1.0, 0.0]
    assert mean_class_accuracy(cm) == pytest.approx(1.5 / 3)
    assert class_iou(cm).tolist() == [0.5, 1.0, 0.0]
    assert mean_iou(cm) == pytest.approx(1.5 / 3)


def test_void_prediction_is_wrong_for_g_but_left_out_of_c_and_iou() -> None:
    cm = confusion_matrix(np.array([0, 0, 1]), np.array([0, 11, 1]), num_classes=2)
    assert cm.tolist() == [[1, 0, 1], [0, 1, 0]]
    assert global_accuracy(cm) == pytest.approx(2 / 3)
    assert class_accuracy(cm).tolist() == [1.0, 1.0]
    assert class_iou(cm).tolist() == [1.0, 1.0]


def test_empty_confusion_matrix() -> None:
    cm = confusion_matrix(np.full((2, 2), 11), np.zeros((2, 2), dtype=int), 11)
    assert cm.sum() == 0
    assert math.isnan(global_accuracy(cm))
    assert mean_class_accuracy(cm) == 0.0 and mean_iou(cm) == 0.0


def test_accumulator_sums_images_and_resizes_predictions() -> None:
    gt = np.zeros((8, 8), dtype=np.uint8)
    gt[:, 4:] = 1
    gt[0, 0] = 11
    small = np.zeros((4, 4), dtype=np.uint8)
    small[:, 2:] = 1  # at half size; MATLAB nearest doubles every pixel -> equals gt
    metrics = SegmentationMetrics(LabelSpace("two", ("zero", "one"), void=11))
    metrics.add(gt, small, "a")
    wrong = np.ones((8, 8), dtype=np.uint8)
    metrics.add(gt, wrong, "b")
    # image a: 63 non-void pixels right; image b: 32 of 63 right (class 1 only)
    assert metrics.confusion.tolist() == [[31, 31, 0], [0, 64, 0]]
    summary = metrics.summary()
    assert summary["images"] == 2
    assert summary["G"] == pytest.approx(95 / 126)
    assert summary["C"] == pytest.approx((31 / 62 + 1) / 2)
    assert summary["mIoU"] == pytest.approx((31 / 62 + 64 / 95) / 2)
    # BF, image a: the void pixel at (0, 0) is not class 0, so the gt boundary of
    # class 0 is column 3 plus pixel (0, 0): 9 pixels, of which the prediction
    # matches 8 -> R = 8/9, P = 1, F1 = 16/17; class 1 matches fully -> F1 1.
    # Image b: both classes have a gt edge and no predicted edge -> F1 0 each.
    assert metrics.image_bf() == pytest.approx([(16 / 17 + 1) / 2, 0.0])
    assert summary["BF"] == pytest.approx((16 / 17 + 1) / 4)
    assert [c["bf"] for c in summary["classes"]] == pytest.approx([8 / 17, 0.5])
    assert [c["name"] for c in summary["classes"]] == ["zero", "one"]


def test_accumulator_with_worker_processes() -> None:
    rng = np.random.default_rng(0)
    pairs = [
        (np.kron(rng.integers(0, 11, (6, 8)), np.ones((5, 5), dtype=np.uint8)), rng.integers(0, 11, (30, 40)))
        for _ in range(4)
    ]
    serial = SegmentationMetrics(CAMVID)
    with SegmentationMetrics(CAMVID, workers=2) as pooled:
        for gt, pred in pairs:
            serial.add(gt, pred)
            pooled.add(gt, pred)
        assert pooled.summary() == serial.summary()


def test_camvid_perfect_prediction_scores_one(camvid_dir: Path) -> None:
    metrics = SegmentationMetrics(CAMVID)
    for sample in list_samples(camvid_dir, "test"):
        gt = read_label(sample.label, CAMVID)
        metrics.add(gt, gt.copy(), sample.name)
    summary = metrics.summary()
    assert summary["images"] == 233
    assert (summary["G"], summary["C"], summary["mIoU"], summary["BF"]) == (1.0, 1.0, 1.0, 1.0)
    assert all(c["present"] and c["bf"] == 1.0 for c in summary["classes"])
