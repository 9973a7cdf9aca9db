"""The SegNet paper's numbers, as data: every figure the project compares with lives here.

Table 1 of "SegNet: A Deep Convolutional Encoder-Decoder Architecture for
Image Segmentation" (arXiv 1511.00561v3): decoder variants trained with
median frequency class balancing and with natural frequency (no
balancing), tested on the 233 CamVid test images at 360x480. G, C and mIoU
are percentages; BF is the boundary F1 measure in percent.

Rows are named ``"<variant>"`` (median frequency, the default) and
``"<variant>/natural"``.
"""

from __future__ import annotations

from dataclasses import dataclass

from segnet.evaluation.metrics import METRICS

SOURCE = "arXiv 1511.00561v3, Table 1"


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's results: metric values in percent."""

    name: str
    variant: str
    balancing: str  # "median" or "natural"
    G: float
    C: float
    mIoU: float
    BF: float

    def values(self) -> dict[str, float]:
        """The four metrics as {name: percent}."""
        return {m: getattr(self, m) for m in METRICS}


# variant: (median frequency G, C, mIoU, BF), (natural frequency G, C, mIoU, BF)
_TABLE1: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "Bilinear-Interpolation": ((77.9, 61.1, 43.3, 20.83), (82.7, 52.5, 43.8, 23.08)),
    "SegNet-Basic": ((82.7, 62.0, 47.7, 35.78), (84.0, 54.6, 46.3, 36.67)),
    "SegNet-Basic-EncoderAddition": ((83.4, 63.6, 48.5, 35.92), (84.2, 56.5, 47.7, 36.27)),
    "SegNet-Basic-SingleChannelDecoder": ((81.2, 60.7, 46.1, 31.62), (83.5, 53.9, 45.2, 32.45)),
    "FCN-Basic": ((81.7, 62.4, 47.3, 38.11), (83.9, 55.6, 45.0, 37.33)),
    "FCN-Basic-NoAddition": ((80.5, 58.6, 44.1, 31.96), (82.3, 53.9, 44.2, 29.43)),
    "FCN-Basic-NoDimReduction": ((84.1, 63.4, 50.1, 37.37), (83.5, 57.3, 47.0, 37.13)),
    "FCN-Basic-NoAddition-NoDimReduction": (
        (80.5, 61.6, 45.9, 30.47),
        (83.7, 54.8, 45.5, 33.17),
    ),
}


def _rows() -> dict[str, PaperRow]:
    rows = {}
    for variant, (median, natural) in _TABLE1.items():
        for suffix, balancing, values in (("", "median", median), ("/natural", "natural", natural)):
            name = variant + suffix
            rows[name] = PaperRow(name, variant, balancing, *values)
    return rows


TABLE1: dict[str, PaperRow] = _rows()


def paper_row(name: str) -> PaperRow:
    """A row of Table 1 by name ("SegNet-Basic", "SegNet-Basic/natural", ...).

    Names match case-insensitively; an unknown name raises KeyError listing
    the known ones.
    """
    for key, row in TABLE1.items():
        if key.lower() == name.strip().lower():
            return row
    raise KeyError(f"unknown paper row {name!r}; known rows: {', '.join(TABLE1)}")


#: Table 1: trainable parameters in millions.
PAPER_PARAMS_M = {
    "Bilinear-Interpolation": 0.625,
    "SegNet-Basic": 1.425,
    "SegNet-Basic-EncoderAddition": 1.425,
    "SegNet-Basic-SingleChannelDecoder": 0.625,
    "FCN-Basic": 0.65,
    "FCN-Basic-NoAddition": 0.65,
    "FCN-Basic-NoDimReduction": 1.625,
    "FCN-Basic-NoAddition-NoDimReduction": 1.625,
}

#: Table 1: storage multiplier (encoder maps kept for the decoder, relative to
#: pooling indices) and the inference time (ms, 360x480, 2015 NVIDIA Titan).
PAPER_STORAGE = {
    "Bilinear-Interpolation": "0", "SegNet-Basic": "1", "SegNet-Basic-EncoderAddition": "64",
    "SegNet-Basic-SingleChannelDecoder": "1", "FCN-Basic": "11", "FCN-Basic-NoAddition": "n/a",
    "FCN-Basic-NoDimReduction": "64", "FCN-Basic-NoAddition-NoDimReduction": "0",
}  # fmt: skip
PAPER_TIME_MS = {
    "Bilinear-Interpolation": 24.2, "SegNet-Basic": 52.6, "SegNet-Basic-EncoderAddition": 53.0,
    "SegNet-Basic-SingleChannelDecoder": 33.1, "FCN-Basic": 24.2, "FCN-Basic-NoAddition": 23.8,
    "FCN-Basic-NoDimReduction": 44.8, "FCN-Basic-NoAddition-NoDimReduction": 43.9,
}  # fmt: skip

#: Table 3: SegNet trained on 3433 road scenes without class balancing, tested
#: on CamVid test; G, C, mIoU, BF (percent) after 40K, 80K and 140K iterations.
TABLE3_SEGNET: dict[str, tuple[float, float, float, float]] = {
    "40K": (88.81, 59.93, 50.02, 35.78),
    "80K": (89.68, 69.82, 57.18, 42.08),
    "140K": (90.40, 71.20, 60.10, 46.84),
}

#: Table 6: SegNet at 360x480, batch 1, 2015 NVIDIA Titan (Caffe's ``time`` command, nvidia-smi).
TABLE6_SEGNET = {
    "forward_ms": 422.50,
    "backward_ms": 488.71,
    "training_memory_mb": 6803,
    "inference_memory_mb": 1052,
    "model_mb": 117,
}
