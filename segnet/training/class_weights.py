"""Class weights for training: class pixel statistics and median frequency balancing.

Three balancings:

* ``prototxt``: the weights of the label space's released training
  prototxt (CamVid: SegNet and SegNet-Basic's, which the released models
  were trained with; SUN RGB-D: SegNet SUN's).
* ``median``: median frequency balancing recomputed from the labels on disk
  (:func:`median_frequency_weights`). On CamVid's train split as SegNet ships
  it this does not give the prototxt's numbers back (SignSymbol comes out
  near 3.85 instead of 9.64), so the two are kept apart.
* ``natural``: no balancing, every weight 1.

Weights are per output id (void's slot, when void is an output, gets 0:
the loss ignores it anyway).

``python -m segnet.class_weights`` prints the released and derived weights side by side.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converter.errors import UserError

from segnet.data.imageio import read_label
from segnet.data.labels import LabelSpace
from segnet.data.splits import list_samples

BALANCINGS = ("prototxt", "median", "natural")


@dataclass(frozen=True)
class ClassStats:
    """Pixel statistics of a set of label maps, per output id.

    ``pixels[c]``: pixels labelled c. ``present_pixels[c]``: all pixels
    (void included) of the images in which c occurs at least once. The void
    id counts nowhere.
    """

    pixels: np.ndarray
    present_pixels: np.ndarray
    images: int

    def frequencies(self) -> np.ndarray:
        """freq(c) = pixels[c] / present_pixels[c]; 0 for a class never seen."""
        with np.errstate(invalid="ignore", divide="ignore"):
            freq = self.pixels / self.present_pixels
        return np.where(self.present_pixels > 0, freq, 0.0)


def class_statistics(labels: Iterable[np.ndarray], label_space: LabelSpace) -> ClassStats:
    """Count class pixels over label maps of ``label_space`` (void counts for no class)."""
    k = label_space.num_outputs
    pixels = np.zeros(k, dtype=np.int64)
    present = np.zeros(k, dtype=np.int64)
    count = 0
    for label in labels:
        counts = np.bincount(np.asarray(label).ravel(), minlength=max(k, label_space.void + 1))[:k]
        if label_space.void < k:
            counts[label_space.void] = 0
        pixels += counts
        present[counts > 0] += np.asarray(label).size
        count += 1
    return ClassStats(pixels, present, count)


def median_frequency_weights(stats: ClassStats) -> np.ndarray:
    """Median frequency balancing: weight(c) = median(freq) / freq(c).

    freq(c) is the pixel count of class c divided by the total pixel count
    of the images where c is present (void pixels included in that total).
    A class that never occurs gets weight 0 and is left out of the median.
    """
    freq = stats.frequencies()
    seen = freq > 0
    if not seen.any():
        raise UserError("no class occurs in the labels: median frequency weights need labelled pixels")
    median = np.median(freq[seen])
    return np.where(seen, median / np.where(seen, freq, 1.0), 0.0)


def split_class_statistics(root: str | Path, label_space: LabelSpace, split: str = "train") -> ClassStats:
    """:func:`class_statistics` over the labels of one split on disk."""
    return class_statistics((read_label(s.label, label_space) for s in list_samples(root, split)), label_space)


def class_weights(balancing: str, label_space: LabelSpace, data: str | Path | None = None,
                  split: str = "train") -> np.ndarray:  # fmt: skip
    """Per-output loss weights for one balancing; ``data`` (a data root) is needed only for ``median``."""
    if balancing == "prototxt":
        if label_space.class_weights is None:
            raise UserError(f"label space {label_space.name} has no released class weights: "
                            "use --class-weights median (from the data) or natural")  # fmt: skip
        return np.array(label_space.class_weights)
    if balancing == "natural":
        return np.ones(label_space.num_outputs)
    if balancing == "median":
        if data is None:
            raise UserError("median frequency weights need the data folder")
        return median_frequency_weights(split_class_statistics(data, label_space, split))
    raise UserError(f"unknown balancing {balancing!r}; choose from {', '.join(BALANCINGS)}")


def format_table(stats: ClassStats, label_space: LabelSpace, split: str) -> str:
    """The released and derived weights side by side, one class per line."""
    derived = median_frequency_weights(stats)
    freq = stats.frequencies()
    released = label_space.class_weights
    lines = [
        f"{label_space.name} {split}: {stats.images} label images; median frequency balancing",
        "freq(c) = pixels of c / pixels of the images containing c; weight = median(freq) / freq(c)",
        "",
        f"{'class':<16} {'prototxt':>9} {'derived':>9} {'freq':>8}",
    ]
    for c in label_space.class_ids:
        given = f"{released[c]:>9.4f}" if released is not None else f"{'-':>9}"
        lines.append(f"{label_space.names[c]:<16} {given} {derived[c]:>9.4f} {freq[c]:>8.4f}")
    return "\n".join(lines)
