"""Class weights for training on CamVid, and a command that compares them.

Three balancings:

* ``prototxt`` (default): the weights in the released SegNet training
  prototxts, which the released models were trained with.
* ``median``: median frequency balancing recomputed from the labels on disk
  (see :func:`segnet.camvid.median_frequency_weights`). On the train split as
  SegNet ships it this does not give the prototxt's numbers back (SignSymbol
  comes out near 3.85 instead of 9.64), so the two are kept apart.
* ``natural``: no balancing, every weight 1.

Usage: ``python -m segnet.class_weights --data CAMVID_ROOT [--split train]``
prints the prototxt and derived weights side by side.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from segnet.camvid import (
    CLASS_NAMES,
    NUM_CLASSES,
    PROTOTXT_CLASS_WEIGHTS,
    ClassStats,
    median_frequency_weights,
    natural_frequency_weights,
    split_class_statistics,
)

from segnet.cli import run

BALANCINGS = ("prototxt", "median", "natural")


def class_weights(
    balancing: str = "prototxt", data: str | Path | None = None, split: str = "train"
) -> np.ndarray:
    """Per-class loss weights (length 11) for one balancing.

    ``data`` (a CamVid root) is needed only for ``median``.
    """
    if balancing == "prototxt":
        return np.array(PROTOTXT_CLASS_WEIGHTS)
    if balancing == "natural":
        return natural_frequency_weights(NUM_CLASSES)
    if balancing == "median":
        if data is None:
            raise ValueError("median frequency weights need the CamVid data folder")
        return median_frequency_weights(split_class_statistics(data, split))
    raise ValueError(f"unknown balancing {balancing!r}; choose from {', '.join(BALANCINGS)}")


def format_table(stats: ClassStats, split: str) -> str:
    """The prototxt and derived weights side by side, one class per line."""
    derived = median_frequency_weights(stats)
    freq = stats.frequencies()
    lines = [
        f"CamVid {split}: {stats.images} label images; median frequency balancing",
        "freq(c) = pixels of c / pixels of the images containing c; weight = median(freq) / freq(c)",
        "",
        f"{'class':<12} {'prototxt':>9} {'derived':>9} {'freq':>8}",
    ]
    for c, name in enumerate(CLASS_NAMES):
        lines.append(
            f"{name:<12} {PROTOTXT_CLASS_WEIGHTS[c]:>9.4f} {derived[c]:>9.4f} {freq[c]:>8.4f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m segnet.class_weights",
        description="Print the prototxt class weights beside median frequency weights "
        "derived from the CamVid labels.",
    )
    parser.add_argument("--data", required=True, help="CamVid root folder")
    parser.add_argument("--split", default="train", help="split to count (default: train)")
    args = parser.parse_args(argv)

    def command() -> int:
        print(format_table(split_class_statistics(args.data, args.split), args.split))
        return 0

    return run(command)


if __name__ == "__main__":
    sys.exit(main())
