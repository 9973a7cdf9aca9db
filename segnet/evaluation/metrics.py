"""The SegNet paper's metrics: G, C, mIoU and BF.

G, C and mIoU are pure functions of one data-set-level confusion matrix,
computed as the paper's evaluation script computes them:

* ``cm[i, j]`` counts pixels whose ground truth is class i (0..K-1) and
  whose prediction is j. Classes are numbered 0..K-1 (a label space's
  output ids without void, :meth:`~segnet.data.labels.LabelSpace.class_index`;
  for CamVid the ids themselves). Pixels whose ground truth is void are left
  out entirely. Column K collects predictions that are not a class (void or
  any other value), so ``cm`` is K x (K+1).
* G, global accuracy: correct pixels / all non-void pixels.
* C, class average accuracy: the mean over all K classes of the recall
  ``cm[c, c] / sum_{j<K} cm[c, j]``.
* mIoU: the mean over all K classes of
  ``cm[c, c] / (sum_{j<K} cm[c, j] + sum_i cm[i, c] - cm[c, c])``, so false
  positives are counted on non-void pixels only.

Two details follow the script exactly and are worth knowing:

* A class absent from the ground truth of the whole evaluated set gets
  recall 0 and IoU 0 and still counts in the mean over K (the script
  divides by the number of classes, not by the classes present). On the
  full CamVid test set every class is present, so this only matters for
  subsets (``--limit``). :func:`class_present` tells which classes were.
* A non-void pixel predicted as void (column K) counts as wrong in G but
  drops out of the recall and IoU denominators. A SegNet argmax never
  predicts void, so this only matters for predictions made elsewhere.

BF is the boundary F1 measure of :mod:`segnet.evaluation.boundary`, averaged per
image. :class:`SegmentationMetrics` accumulates all four over a data set.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from segnet.evaluation.boundary import BF_TOLERANCE, BoundaryCounts, boundary_counts, resize_nearest_matlab
from segnet.data.labels import LabelSpace

#: The paper's four measures, in its order; every report and table uses these names.
METRICS = ("G", "C", "mIoU", "BF")


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """K x (K+1) int64 counts over the pixels whose gt is a class (see module doc).

    ``gt`` values >= K are void and ignored; ``pred`` values outside 0..K-1
    land in column K.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt is {gt.shape} but prediction is {pred.shape}")
    k = num_classes
    g = gt.ravel().astype(np.int64)
    p = pred.ravel().astype(np.int64)
    keep = (g >= 0) & (g < k)
    g, p = g[keep], p[keep]
    p = np.where((p >= 0) & (p < k), p, k)
    return np.bincount(g * (k + 1) + p, minlength=k * (k + 1)).reshape(k, k + 1)


def _check(cm: np.ndarray) -> np.ndarray:
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[1] not in (cm.shape[0], cm.shape[0] + 1):
        raise ValueError(f"confusion matrix must be K x K or K x (K+1), got {cm.shape}")
    return cm


def class_present(cm: np.ndarray) -> np.ndarray:
    """Which classes have at least one non-void gt pixel: ``sum_j cm[c, j] > 0``."""
    return _check(cm).sum(axis=1) > 0


def global_accuracy(cm: np.ndarray) -> float:
    """G = trace(cm[:, :K]) / sum(cm): the fraction of non-void pixels predicted right.

    NaN when there is no non-void pixel.
    """
    cm = _check(cm)
    total = cm.sum()
    k = cm.shape[0]
    return float(np.trace(cm[:, :k]) / total) if total else float("nan")


def class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Per-class recall ``cm[c, c] / sum_{j<K} cm[c, j]``; 0 for a class with no such pixel."""
    cm = _check(cm)
    k = cm.shape[0]
    row = cm[:, :k].sum(axis=1)
    return np.where(row > 0, np.diag(cm) / np.maximum(row, 1), 0.0)


def mean_class_accuracy(cm: np.ndarray) -> float:
    """C = (1/K) * sum_c class_accuracy(cm)[c], over all K classes."""
    return float(class_accuracy(cm).mean())


def class_iou(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU ``TP / (TP + FP + FN)`` on non-void pixels; 0 for a class absent from gt.

    TP = cm[c, c]; FN = sum_{j<K} cm[c, j] - TP; FP = sum_i cm[i, c] - TP.
    """
    cm = _check(cm)
    k = cm.shape[0]
    tp = np.diag(cm).astype(np.float64)
    row = cm[:, :k].sum(axis=1)
    union = row + cm[:, :k].sum(axis=0) - tp
    return np.where(row > 0, tp / np.maximum(union, 1), 0.0)


def mean_iou(cm: np.ndarray) -> float:
    """mIoU = (1/K) * sum_c class_iou(cm)[c], over all K classes."""
    return float(class_iou(cm).mean())


def match_size(pred: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A prediction brought to the label's size (MATLAB-style nearest neighbour), if needed."""
    pred = np.asarray(pred)
    return pred if pred.shape == tuple(shape) else resize_nearest_matlab(pred, shape)


@dataclass
class SegmentationMetrics:
    """Accumulates G, C, mIoU and BF over images, in the order they are added.

    ``add(gt, pred)`` takes HxW maps of the label space's ids; a prediction of another size is
    first resized to the label's size by nearest neighbour (as the paper's BF
    script does), and that resized map is used for every metric.
    ``boundary=False`` skips BF (the expensive part). With ``workers > 1``
    the BF of each image is computed in a process pool while more images
    are added.
    """

    label_space: LabelSpace
    tolerance: float = BF_TOLERANCE
    boundary: bool = True
    workers: int = 1
    confusion: np.ndarray = field(init=False)
    names: list[str] = field(default_factory=list, init=False)
    _boundaries: list[BoundaryCounts | Future] = field(default_factory=list, init=False)
    _pool: Executor | None = field(default=None, init=False, repr=False)

    @property
    def num_classes(self) -> int:
        return self.label_space.num_classes

    def __post_init__(self) -> None:
        k = self.num_classes
        self.confusion = np.zeros((k, k + 1), dtype=np.int64)
        if self.boundary and self.workers > 1:
            # spawn, not fork: the parent may hold torch's thread pools
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)

    def add(self, gt: np.ndarray, pred: np.ndarray, name: str | None = None) -> None:
        """Add one image's ground truth and prediction (label-id maps of the label space)."""
        gt = np.asarray(gt)
        pred = match_size(pred, gt.shape)
        gt, pred = self.label_space.class_index(gt), self.label_space.class_index(pred)
        self.confusion += confusion_matrix(gt, pred, self.num_classes)
        self.names.append(name if name is not None else str(len(self.names)))
        if not self.boundary:
            return
        if self._pool is not None:
            job = self._pool.submit(boundary_counts, gt, pred, self.num_classes, self.tolerance)
            self._boundaries.append(job)
        else:
            self._boundaries.append(boundary_counts(gt, pred, self.num_classes, self.tolerance))

    def boundary_counts(self) -> list[BoundaryCounts]:
        """Per-image boundary counts (waits for pending pool jobs)."""
        done = [b.result() if isinstance(b, Future) else b for b in self._boundaries]
        self._boundaries = list(done)
        return done

    def close(self) -> None:
        """Finish pending work and shut the process pool down."""
        self.boundary_counts()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> SegmentationMetrics:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def image_bf(self) -> np.ndarray:
        """BF of each image (see :mod:`segnet.evaluation.boundary`)."""
        return np.array([b.score for b in self.boundary_counts()])

    def bf(self) -> float:
        """Data-set BF: the mean of the per-image BF over all images."""
        scores = self.image_bf()
        return float(scores.mean()) if len(scores) else float("nan")

    def class_bf(self) -> np.ndarray:
        """Per-class BF: mean F1 of class c over the images where c counts (NaN if none).

        The paper's script reports only the data-set BF; this per-class
        breakdown is ours, made from the same per-image F1 values.
        """
        counts = self.boundary_counts()
        if not counts:
            return np.full(self.num_classes, np.nan)
        f1 = np.stack([b.f1 for b in counts])
        counted = np.stack([b.counted for b in counts])
        n = counted.sum(axis=0)
        with np.errstate(invalid="ignore"):
            return np.where(n > 0, (f1 * counted).sum(axis=0) / n, np.nan)

    def summary(self) -> dict:
        """All metrics as plain numbers, ready for JSON."""
        cm = self.confusion
        result = {
            "images": len(self.names),
            "G": global_accuracy(cm),
            "C": mean_class_accuracy(cm),
            "mIoU": mean_iou(cm),
            "BF": self.bf() if self.boundary else None,
        }
        acc, iou = class_accuracy(cm), class_iou(cm)
        bf = self.class_bf() if self.boundary else np.full(self.num_classes, np.nan)
        present = class_present(cm)
        result["classes"] = [
            {
                "name": self.label_space.class_names[c],
                "accuracy": float(acc[c]),
                "iou": float(iou[c]),
                "bf": None if np.isnan(bf[c]) else float(bf[c]),
                "gt_pixels": int(cm[c].sum()),
                "present": bool(present[c]),
            }
            for c in range(self.num_classes)
        ]
        return result
