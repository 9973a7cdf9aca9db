"""CamVid as SegNet uses it: 11 classes, label 11 for void, a colour palette.

The class order, the void label and the colours are those of the CamVid
copy that SegNet's released models were trained and tested on (labels
0..10 for the classes below, 11 for unlabelled pixels).
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
NUM_CLASSES = len(CLASS_NAMES)
VOID = 11  # label of unlabelled pixels; never a class

# RGB colour of each label 0..11; void is black.
PALETTE = np.array(
    [
        (128, 128, 128),  # Sky
        (128, 0, 0),  # Building
        (192, 192, 128),  # Pole
        (128, 64, 128),  # Road
        (60, 40, 222),  # Pavement
        (128, 128, 0),  # Tree
        (192, 128, 128),  # SignSymbol
        (64, 64, 128),  # Fence
        (64, 0, 128),  # Car
        (64, 64, 0),  # Pedestrian
        (0, 128, 192),  # Bicyclist
        (0, 0, 0),  # void
    ],
    dtype=np.uint8,
)
PALETTE.setflags(write=False)

# The per-class loss weights of the released SegNet and SegNet-Basic
# training prototxts (SoftmaxWithLoss class_weighting, in class order).
# The released models were trained with these, so they are the default.
PROTOTXT_CLASS_WEIGHTS: tuple[float, ...] = (
    0.2595,
    0.1826,
    4.5640,
    0.1417,
    0.9051,
    0.3826,
    9.6446,
    1.8418,
    0.6823,
    6.2478,
    7.3614,
)


def colorize(label: np.ndarray) -> np.ndarray:
    """Map an HxW label map (values 0..11) to an HxWx3 uint8 RGB image."""
    label = np.asarray(label)
    if label.size and (label.min() < 0 or label.max() > VOID):
        raise ValueError(f"label values must lie in 0..{VOID}, found {label.min()}..{label.max()}")
    return PALETTE[label.astype(np.intp)]
