"""Boundary maps, one-to-one matching and the BF score, worked by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from segnet.evaluation.boundary import (
    boundary_counts,
    boundary_f1,
    class_boundaries,
    match_count,
    resize_nearest_matlab,
    seg2bdry,
    tolerance_pixels,
)
from segnet.data.imageio import read_label
from segnet.data.labels import get_label_space
from segnet.data.splits import list_samples

CAMVID = get_label_space("camvid")


def _fraction(shape: tuple[int, int], pixels: float) -> float:
    """The diagonal fraction that gives a match distance of ``pixels``."""
    return pixels / math.hypot(*shape)


# ---------------------------------------------------------------- seg2bdry


def test_seg2bdry_square() -> None:
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3, 1:3] = True
    # A pixel is marked when the 2x2 block below-right of it is mixed, so the
    # ring sits half a pixel towards the top-left of the square's outline.
    assert seg2bdry(mask).astype(int).tolist() == [
        [1, 1, 1, 0],
        [1, 0, 1, 0],
        [1, 1, 1, 0],
        [0, 0, 0, 0],
    ]


def test_seg2bdry_last_row_and_column_and_image_border() -> None:
    left = np.zeros((4, 4), dtype=bool)
    left[:, :2] = True
    # only column 1 differs from its right neighbour, in every row (last row included)
    assert np.argwhere(seg2bdry(left)).tolist() == [[0, 1], [1, 1], [2, 1], [3, 1]]
    top = np.zeros((3, 5), dtype=bool)
    top[0, :] = True
    # in the last column only the vertical pair counts: (0,4)-(1,4) differs
    assert np.argwhere(seg2bdry(top)).tolist() == [[0, c] for c in range(5)]
    # a region filling the image, or touching its border, has no edge along the border
    assert not seg2bdry(np.ones((5, 6), dtype=bool)).any()


def test_class_boundaries_equal_seg2bdry_per_class() -> None:
    rng = np.random.default_rng(3)
    blocky = np.kron(rng.integers(0, 12, (6, 8)), np.ones((3, 4), dtype=int))[:17, :29]
    noisy = rng.integers(0, 12, (9, 7))
    for label in (blocky, noisy, np.full((4, 5), 11), np.zeros((1, 6), dtype=int)):
        got = class_boundaries(label, 11)
        for c in range(11):
            assert np.array_equal(got[c], np.flatnonzero(seg2bdry(label == c))), c


# ---------------------------------------------------------------- matching


def _kuhn(pixels1, pixels2, width, max_dist) -> int:
    """Maximum bipartite matching by simple augmenting paths (a slow reference)."""
    p1 = [divmod(int(p), width) for p in pixels1]
    p2 = [divmod(int(p), width) for p in pixels2]
    near = [
        [j for j, (y2, x2) in enumerate(p2) if (y1 - y2) ** 2 + (x1 - x2) ** 2 <= max_dist**2]
        for (y1, x1) in p1
    ]
    owner = [-1] * len(p2)

    def augment(i, seen):
        for j in near[i]:
            if not seen[j]:
                seen[j] = True
                if owner[j] < 0 or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return sum(augment(i, [False] * len(p2)) for i in range(len(p1)))


def test_match_count_equals_reference_matching() -> None:
    rng = np.random.default_rng(7)
    width = 30
    for trial in range(40):
        n1, n2 = rng.integers(0, 40, size=2)
        p1 = rng.choice(20 * width, size=n1, replace=False)
        p2 = rng.choice(20 * width, size=n2, replace=False)
        if trial % 4 == 0:  # overlapping sets exercise the same-place shortcut
            p2 = np.union1d(p2, p1[: n1 // 2])
        max_dist = float(rng.choice([0.5, 1.0, 1.5, 2.5, 4.5]))
        assert match_count(np.sort(p1), np.sort(p2), width, max_dist) == _kuhn(p1, p2, width, max_dist)


def test_match_distance_is_euclidean_and_inclusive() -> None:
    width = 20
    origin = np.array([5 * width + 5])
    at = lambda dy, dx: np.array([(5 + dy) * width + 5 + dx])  # noqa: E731
    assert match_count(origin, at(4, 2), width, 4.5) == 1  # d^2 = 20 <= 20.25
    assert match_count(origin, at(3, 3), width, 4.5) == 1  # d^2 = 18
    assert match_count(origin, at(3, 4), width, 4.5) == 0  # d = 5
    assert match_count(origin, at(0, 5), width, 4.5) == 0
    assert match_count(origin, at(1, 1), width, math.sqrt(2)) == 1  # exactly at the limit


def test_tolerance_is_a_fraction_of_the_diagonal() -> None:
    assert tolerance_pixels((360, 480)) == pytest.approx(4.5)  # 0.0075 * 600
    assert tolerance_pixels((3, 4), 0.5) == pytest.approx(2.5)


def test_one_to_one_matching_against_distance_transform() -> None:
    # gt: class 0 on rows 0-3, class 1 on rows 4-7 -> one boundary line (row 3) per class.
    # pred: a one-row stripe of class 1 on row 3 -> two lines (rows 2 and 3) per class.
    gt = np.zeros((8, 8), dtype=int)
    gt[4:] = 1
    pred = np.zeros((8, 8), dtype=int)
    pred[3] = 1
    fraction = _fraction(gt.shape, 1.5)
    counts = boundary_counts(gt, pred, num_classes=2, tolerance=fraction)
    assert counts.gt.tolist() == [8, 8] and counts.pred.tolist() == [16, 16]
    # each gt pixel takes one predicted pixel; the other predicted line stays unmatched
    assert counts.matched.tolist() == [8, 8]
    assert counts.recall.tolist() == [1.0, 1.0] and counts.precision.tolist() == [0.5, 0.5]
    assert counts.f1 == pytest.approx([2 / 3, 2 / 3])
    assert counts.score == pytest.approx(2 / 3)
    # A distance-transform test calls every predicted pixel a hit: precision 1, BF 1.
    gt_edge = seg2bdry(gt == 1)
    near_gt = ndimage.distance_transform_edt(~gt_edge) <= 1.5
    assert near_gt[seg2bdry(pred == 1)].all()


def test_shifted_edge_within_and_beyond_tolerance() -> None:
    gt = np.zeros((8, 8), dtype=int)
    gt[:, 4:] = 1
    pred = np.zeros((8, 8), dtype=int)
    pred[:, 5:] = 1  # boundary one column to the right
    assert boundary_f1(gt, pred, 2, _fraction(gt.shape, 1.5)) == 1.0
    assert boundary_f1(gt, pred, 2, _fraction(gt.shape, 0.5)) == 0.0


def test_counted_classes_void_and_absent_classes() -> None:
    tol = _fraction((6, 6), 1.5)
    # gt: class 0 left, void (11) right; pred: class 0 left, class 1 right.
    gt = np.zeros((6, 6), dtype=int)
    gt[:, 3:] = 11
    pred = np.zeros((6, 6), dtype=int)
    pred[:, 3:] = 1
    counts = boundary_counts(gt, pred, num_classes=3, tolerance=tol)
    # class 0: same edge in both -> F1 1. class 1: void is not class 1, so gt has no
    # class-1 edge; the predicted one counts with F1 0. class 2: nowhere, not counted.
    assert counts.counted.tolist() == [True, True, False]
    assert counts.f1.tolist() == [1.0, 0.0, 0.0]
    assert counts.score == 0.5
    # a class whose gt edge the prediction misses entirely: P = R = 0 -> F1 0, counted
    missed = boundary_counts(pred, np.zeros((6, 6), dtype=int), num_classes=2, tolerance=tol)
    assert missed.counted.tolist() == [True, True] and missed.score == 0.0


def test_image_without_any_boundary_scores_zero() -> None:
    # No class has an edge in gt or prediction: nothing counts, and the image
    # adds 0 to the data-set mean, as the paper's script does.
    flat = np.full((5, 5), 2)
    assert boundary_counts(flat, flat, 11).counted.sum() == 0
    assert boundary_f1(flat, flat, 11) == 0.0


def test_ties_between_equally_good_matchings() -> None:
    # Two gt pixels and two predicted pixels all within reach of each other:
    # any pairing is maximum and the count does not depend on which one.
    width = 10
    gt = np.array([0 * width + 0, 0 * width + 1])
    pred = np.array([1 * width + 0, 1 * width + 1])
    assert match_count(pred, gt, width, 1.5) == 2
    # one gt pixel between two predicted ones: only one can have it
    assert match_count(np.array([0, 2]), np.array([1]), width, 1.0) == 1


# ---------------------------------------------------------------- resizing


def test_matlab_nearest_resize() -> None:
    row = np.arange(8).reshape(1, 8)
    # 8 -> 4: u = 2x - 0.5 (1-based) = 1.5, 3.5, ... rounds up to 2, 4, 6, 8
    assert resize_nearest_matlab(row, (1, 4)).tolist() == [[1, 3, 5, 7]]
    # 4 -> 8: u = x/2 + 0.25 = 0.75, 1.25, 1.75, ... -> 1, 1, 2, 2, ...
    assert resize_nearest_matlab(np.arange(4).reshape(1, 4), (1, 8)).tolist() == [[0, 0, 1, 1, 2, 2, 3, 3]]
    # 3 -> 2: u = 1.5x - 0.25 = 1.25, 2.75 -> 1, 3
    assert resize_nearest_matlab(np.arange(3).reshape(3, 1), (2, 1)).ravel().tolist() == [0, 2]


# ---------------------------------------------------------------- CamVid


def _shift(label: np.ndarray, dy: int, dx: int) -> np.ndarray:
    padded = np.pad(label, ((max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0))), mode="edge")
    return padded[max(-dy, 0) : max(-dy, 0) + label.shape[0], max(-dx, 0) : max(-dx, 0) + label.shape[1]]


@pytest.fixture(scope="module")
def some_test_labels(camvid_dir: Path) -> list[np.ndarray]:
    return [read_label(s.label, CAMVID) for s in list_samples(camvid_dir, "test")[::25]]


def test_camvid_shifted_prediction_scores_between_0_and_1(some_test_labels) -> None:
    def bf(dy, dx):
        return np.mean([boundary_f1(gt, _shift(gt, dy, dx), 11) for gt in some_test_labels])

    one, four = bf(1, 0), bf(4, 4)  # 4x4 moves edges 5.7 px, past the 4.5 px tolerance
    assert 0 < four < one < 1
    assert bf(0, 0) == 1.0
