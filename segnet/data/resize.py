"""Resizing as OpenCV's ``cv::resize`` does on uint8 images, bit for bit.

caffe-segnet's DenseImageData layer resized images with OpenCV (bilinear for
the image, nearest neighbour for the label) before copying them into a
float blob, so these functions give the exact inputs the released nets saw.

A size comes from the user or from a file (a checkpoint's input size), so it
is checked before anything is allocated: two whole numbers of at least 1,
and the arrays the resize needs within the memory limit (``converter.budget``).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from converter import budget
from converter.errors import UserError

Size = tuple[int, int]  # (height, width)

#: Bytes one output value of a bilinear resize needs at most: the int64 row passes, their products and sums.
BILINEAR_BYTES = 40
NEAREST_BYTES = 8  # the gathered copy and its int64 indices

_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS
_COEF_SCALE = np.float32(1 << _COEF_BITS)


def linear_taps(src: int, dst: int, clamp_weight: bool) -> tuple[np.ndarray, ...]:
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
    height, width = checked_size(size, image, BILINEAR_BYTES)
    if (height, width) == image.shape[:2]:
        return image.copy()
    x0, x1, a0, a1 = linear_taps(image.shape[1], width, clamp_weight=True)
    y0, y1, b0, b1 = linear_taps(image.shape[0], height, clamp_weight=False)
    extra = (None,) * (image.ndim - 2)
    a0, a1 = a0[(None, slice(None), *extra)], a1[(None, slice(None), *extra)]

    def row_pass(rows: np.ndarray) -> np.ndarray:  # only the source rows the output needs, in int64
        src = rows.astype(np.int64)
        return src[:, x0] * a0 + src[:, x1] * a1

    b0 = b0[(slice(None), None, *extra)]
    b1 = b1[(slice(None), None, *extra)]
    out = (((row_pass(image[y0]) >> 4) * b0) >> 16) + (((row_pass(image[y1]) >> 4) * b1) >> 16)
    return np.clip((out + 2) >> 2, 0, 255).astype(np.uint8)


def resize_nearest(array: np.ndarray, size: Size) -> np.ndarray:
    """Resize like ``cv::resize(INTER_NEAREST)``: source index ``floor(d * src/dst)``."""
    height, width = checked_size(size, array, NEAREST_BYTES)

    def index(src: int, dst: int) -> np.ndarray:
        scale = 1.0 / (dst / src)
        return np.minimum(np.floor(np.arange(dst) * scale).astype(np.intp), src - 1)

    return array[index(array.shape[0], height)][:, index(array.shape[1], width)]


def checked_size(size: Any, image: np.ndarray, bytes_per_value: int) -> Size:
    """``size`` as (height, width) of whole numbers >= 1 whose resize of ``image`` fits the memory limit."""
    try:
        values = list(size)
        if len(values) != 2 or any(isinstance(d, bool) for d in values):
            raise TypeError("not two sizes")
        height, width = (operator.index(d) for d in values)
    except (TypeError, ValueError):
        raise UserError(f"an image size must be two whole numbers (height, width), got {size!r}"[:200]) from None
    if height < 1 or width < 1:
        raise UserError(f"an image size must be at least 1x1, got {height}x{width}")
    if min(image.shape[:2], default=0) < 1:
        raise UserError(f"cannot resize an image of {image.shape[0]}x{image.shape[1]} pixels")
    values = height * width * math.prod(image.shape[2:])
    budget.check(values * bytes_per_value, f"resizing an image to {height}x{width}")
    return height, width
