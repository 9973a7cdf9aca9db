"""CamVid on disk, as SegNet uses it, and read as caffe-segnet read it.

Classes: 11 (labels 0..10 in the order of :data:`CLASS_NAMES`), label 11
for void (unlabelled) pixels, and the CamVid colour palette.

Reading: caffe-segnet's ``DenseImageData`` layer read each image with
OpenCV (``imread`` in colour, so BGR channel order), optionally resized it
to ``new_height x new_width`` (bilinear for the image, nearest neighbour
for the label) and copied the uint8 values into a float blob: no mean
subtraction, no scaling. :func:`load_image` and :func:`load_label`
reproduce that exactly.

A split is found under a root folder in one of two ways:

* a list file ``<root>/<split>.txt`` whose lines are ``image_path label_path``.
  The paths SegNet's CamVid copy ships (``/SegNet/CamVid/test/x.png``) are
  remapped onto the root; other relative paths are taken relative to the
  root, other absolute paths as they are;
* otherwise the folders ``<root>/<split>/`` (images) and
  ``<root>/<split>annot/`` (labels), paired by file name.

Every problem with the data (a missing or unreadable file, a label value
outside 0..11, an image and label of different sizes) raises
:class:`CamVidError` with a one-line message naming the file.

This module needs numpy and Pillow only; the torch side is
:mod:`segnet.data`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from converter.errors import UserError

Size = tuple[int, int]  # (height, width)

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


# --------------------------------------------------------------------------
# Finding the files of a split

SEGNET_PREFIX = "/SegNet/CamVid/"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class CamVidError(UserError):
    """A problem with the data on disk; the message names the file."""


@dataclass(frozen=True)
class Sample:
    """One image and its label file."""

    image: Path
    label: Path

    @property
    def name(self) -> str:
        """File name of the label, used to name predictions."""
        return self.label.name


def _resolve(entry: str, root: Path) -> Path:
    if entry.startswith(SEGNET_PREFIX):
        return root / entry[len(SEGNET_PREFIX) :]
    path = Path(entry)
    return path if path.is_absolute() else root / path


def read_list_file(list_file: str | Path, root: str | Path | None = None) -> list[Sample]:
    """Read a DenseImageData list file (``image_path label_path`` per line).

    Paths are resolved against ``root`` (default: the list file's folder).
    """
    list_file = Path(list_file)
    root = Path(root) if root is not None else list_file.parent
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CamVidError(f"cannot read list file {list_file}: {exc}") from None
    samples = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise CamVidError(
                f"{list_file}:{number}: expected 'image_path label_path', got {line.strip()!r}"
            )
        samples.append(Sample(_resolve(fields[0], root), _resolve(fields[1], root)))
    return samples


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def list_samples(root: str | Path, split: str) -> list[Sample]:
    """The samples of ``split`` under ``root``, in list-file or name order.

    Checks that every file exists, so a broken data set fails before any work.
    """
    root = Path(root)
    if not root.is_dir():
        raise CamVidError(f"CamVid folder not found: {root}")
    list_file = root / f"{split}.txt"
    image_dir, label_dir = root / split, root / f"{split}annot"
    if list_file.is_file():
        samples = read_list_file(list_file, root)
        origin = str(list_file)
    elif image_dir.is_dir() and label_dir.is_dir():
        images, labels = _image_files(image_dir), _image_files(label_dir)
        if len(images) != len(labels):
            raise CamVidError(
                f"{image_dir} has {len(images)} images but {label_dir} has {len(labels)} labels"
            )
        samples = [Sample(image, label_dir / image.name) for image in images]
        origin = str(image_dir)
    else:
        raise CamVidError(
            f"split '{split}' not found under {root}: need {list_file.name} "
            f"or the folders {split}/ and {split}annot/"
        )
    if not samples:
        raise CamVidError(f"split '{split}' under {root} is empty ({origin})")
    for sample in samples:
        for kind, path in (("image", sample.image), ("label", sample.label)):
            if not path.is_file():
                raise CamVidError(f"missing {kind} file {path} (listed by {origin})")
    return samples


# --------------------------------------------------------------------------
# Resizing as OpenCV's cv::resize does on uint8 images

_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS
_COEF_SCALE = np.float32(1 << _COEF_BITS)


def _linear_taps(src: int, dst: int, clamp_weight: bool) -> tuple[np.ndarray, ...]:
    """Source indices and 11-bit weights of OpenCV's INTER_LINEAR along one axis.

    Half-pixel centres: ``f = (d + 0.5) * src/dst - 0.5``, computed in float32
    as OpenCV does. Horizontally OpenCV zeroes the fraction outside the image;
    vertically it keeps it and clamps the row index, hence ``clamp_weight``.
    """
    scale = 1.0 / (dst / src)  # OpenCV inverts the inverse scale, not src/dst
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = f - s.astype(np.float32)
    if clamp_weight:
        outside = (s < 0) | (s >= src - 1)
        f[outside] = 0
        s = np.clip(s, 0, src - 1)
    w0 = np.rint((np.float32(1) - f) * _COEF_SCALE).astype(np.int64)
    w1 = np.rint(f * _COEF_SCALE).astype(np.int64)
    return np.clip(s, 0, src - 1), np.clip(s + 1, 0, src - 1), w0, w1


def resize_bilinear(image: np.ndarray, size: Size) -> np.ndarray:
    """Resize an HxW or HxWxC uint8 image like ``cv::resize(INTER_LINEAR)``.

    OpenCV's fixed-point arithmetic for 8-bit images, bit for bit: weights
    rounded to 11 bits; an exact integer pass along rows; then the column
    pass as OpenCV's vectorised code does it (drop 4 bits of each row sum,
    keep the high 16 bits of the product with the weight, round off the last
    2 bits). Half-pixel centres, edge pixels replicated, no antialiasing.
    Checked equal to cv2.resize (OpenCV 4.14) on up- and down-scaling.
    OpenCV turns an exact 2x downscale into area averaging; that gives the
    same numbers as this formula, so it needs no special case.
    """
    if image.dtype != np.uint8:
        raise TypeError(f"resize_bilinear needs uint8, got {image.dtype}")
    height, width = size
    if (height, width) == image.shape[:2]:
        return image.copy()
    x0, x1, a0, a1 = _linear_taps(image.shape[1], width, clamp_weight=True)
    y0, y1, b0, b1 = _linear_taps(image.shape[0], height, clamp_weight=False)
    extra = (None,) * (image.ndim - 2)
    src = image.astype(np.int64)
    rows = src[:, x0] * a0[(None, slice(None), *extra)] + src[:, x1] * a1[(None, slice(None), *extra)]
    b0 = b0[(slice(None), None, *extra)]
    b1 = b1[(slice(None), None, *extra)]
    out = (((rows[y0] >> 4) * b0) >> 16) + (((rows[y1] >> 4) * b1) >> 16)
    return np.clip((out + 2) >> 2, 0, 255).astype(np.uint8)


def resize_nearest(array: np.ndarray, size: Size) -> np.ndarray:
    """Resize like ``cv::resize(INTER_NEAREST)``: source index ``floor(d * src/dst)``."""
    height, width = size

    def index(src: int, dst: int) -> np.ndarray:
        scale = 1.0 / (dst / src)
        return np.minimum(np.floor(np.arange(dst) * scale).astype(np.intp), src - 1)

    return array[index(array.shape[0], height)][:, index(array.shape[1], width)]


# --------------------------------------------------------------------------
# Reading files

_COLOUR_MODES = {"RGB", "RGBA", "L", "LA", "P", "PA"}
_LABEL_MODES = {"L", "P"}


def _open(path: Path, kind: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise CamVidError(f"missing {kind} file {path}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise CamVidError(f"cannot read {kind} file {path}: {exc}") from None
    return image


def read_image_bgr(path: str | Path) -> np.ndarray:
    """An image file as an HxWx3 uint8 BGR array (what OpenCV's imread gives).

    Greyscale is replicated to three channels and alpha is dropped, as
    ``imread(IMREAD_COLOR)`` does.
    """
    path = Path(path)
    image = _open(path, "image")
    if image.mode not in _COLOUR_MODES:
        raise CamVidError(f"unsupported pixel format {image.mode} in image file {path}")
    rgb = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    return np.ascontiguousarray(rgb[:, :, ::-1])


def read_label(path: str | Path, kind: str = "label") -> np.ndarray:
    """A label PNG as an HxW uint8 array of values 0..11 (11 = void).

    8-bit greyscale files are read as they are; palette files by their
    indices. ``kind`` names the file in error messages ("label",
    "prediction").
    """
    path = Path(path)
    image = _open(path, kind)
    if image.mode not in _LABEL_MODES:
        raise CamVidError(
            f"{kind} file {path} has pixel format {image.mode}; expected 8-bit single-channel"
        )
    label = np.array(image, dtype=np.uint8)
    if label.size and label.max() > VOID:
        raise CamVidError(f"{kind} file {path} has value {label.max()}; values must lie in 0..{VOID}")
    return label


def load_image(path: str | Path, size: Size | None = None) -> np.ndarray:
    """The network input for one image: 3xHxW float32, BGR, values 0..255.

    ``size`` = (new_height, new_width) resizes like DenseImageData (bilinear,
    rounded to uint8 before the conversion to float).
    """
    image = read_image_bgr(path)
    if size is not None:
        image = resize_bilinear(image, size)
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)


def load_label(path: str | Path, size: Size | None = None) -> np.ndarray:
    """The label for one image: HxW uint8 class ids, resized by nearest neighbour."""
    label = read_label(path)
    return resize_nearest(label, size) if size is not None else label


def load_sample_u8(sample: Sample, size: Size | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(3xHxW uint8 BGR image, HxW uint8 label) of one sample, sizes checked."""
    image = read_image_bgr(sample.image)
    label = read_label(sample.label)
    if image.shape[:2] != label.shape:
        raise CamVidError(
            f"image {sample.image} is {image.shape[0]}x{image.shape[1]} but label "
            f"{sample.label} is {label.shape[0]}x{label.shape[1]}"
        )
    if size is not None:
        image, label = resize_bilinear(image, size), resize_nearest(label, size)
    return np.ascontiguousarray(image.transpose(2, 0, 1)), label


# --------------------------------------------------------------------------
# Class balancing


@dataclass(frozen=True)
class ClassStats:
    """Pixel statistics of a set of label maps.

    ``pixels[c]``: pixels labelled c. ``present_pixels[c]``: all pixels
    (void included) of the images in which c occurs at least once.
    """

    pixels: np.ndarray
    present_pixels: np.ndarray
    images: int

    def frequencies(self) -> np.ndarray:
        """freq(c) = pixels[c] / present_pixels[c]; 0 for a class never seen."""
        with np.errstate(invalid="ignore", divide="ignore"):
            freq = self.pixels / self.present_pixels
        return np.where(self.present_pixels > 0, freq, 0.0)


def class_statistics(labels: Iterable[np.ndarray], num_classes: int = NUM_CLASSES) -> ClassStats:
    """Count class pixels over label maps (values >= num_classes are void)."""
    pixels = np.zeros(num_classes, dtype=np.int64)
    present = np.zeros(num_classes, dtype=np.int64)
    count = 0
    for label in labels:
        counts = np.bincount(np.asarray(label).ravel(), minlength=num_classes + 1)[:num_classes]
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
        raise ValueError("no class occurs in the labels")
    median = np.median(freq[seen])
    return np.where(seen, median / np.where(seen, freq, 1.0), 0.0)


def split_class_statistics(root: str | Path, split: str = "train") -> ClassStats:
    """:func:`class_statistics` over the labels of one split on disk."""
    return class_statistics(read_label(s.label) for s in list_samples(root, split))


def natural_frequency_weights(num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Natural frequency training: every class weighted 1 (no balancing)."""
    return np.ones(num_classes)
