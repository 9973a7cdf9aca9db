"""Reading images and label maps as caffe-segnet's DenseImageData layer read them.

Images are read as OpenCV's ``imread`` in colour reads them (BGR channel
order; greyscale replicated, alpha dropped), optionally resized like
``cv::resize`` (bilinear for the image, nearest neighbour for the label), and
handed to the net as float values 0..255: no mean subtraction, no scaling.

Only PNG, JPEG, BMP and TIFF files are opened (told by their content), and
an image's size is checked against the memory limit (``converter.budget``)
before its pixels are decoded. A PNG's chunk lengths are checked first, each
against the file (a chunk cannot hold more bytes than the file has left)
and the limit: PIL reads a chunk's declared length at once. Whatever PIL
raises for a damaged or hostile file becomes a :class:`DataError`.

Labels are 8-bit single-channel PNGs whose values are label ids, either
greyscale or palette-mode (the palette indices are the ids, as Pascal VOC
stores them); every value must belong to the label space. Every problem (a
missing or unreadable file, a value outside the label space, an image and
label of different sizes) raises :class:`DataError` with one line naming the
file.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
from PIL import Image

from converter import budget
from converter.errors import UserError, exception_name, one_line

from segnet.data.labels import LabelSpace
from segnet.data.resize import Size, resize_bilinear, resize_nearest


class DataError(UserError):
    """A problem with the data on disk; the message names the file."""


_COLOUR_MODES = {"RGB", "RGBA", "L", "LA", "P", "PA"}
_LABEL_MODES = {"L", "P"}


#: The only formats opened, whatever the content; PIL's other decoders (EPS hands files to Ghostscript) never run.
FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
#: Memory reading an image and its label takes per pixel, resizing included (measured: 12 bytes).
BYTES_PER_PIXEL = 16


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PNG_CHUNK = 2**31 - 1  # the PNG specification's bound on a chunk's length

#: What PIL raises for a damaged or hostile file: its plugins do not turn every bad field into an OSError.
_PIL_ERRORS = (OSError, ValueError, SyntaxError, TypeError, EOFError, IndexError, KeyError, ZeroDivisionError,
               OverflowError, struct.error, zlib.error, RecursionError, Image.DecompressionBombError)  # fmt: skip

T = TypeVar("T")


def _reading(path: Path, kind: str, step: Callable[[], T]) -> T:
    """``step()``, with what PIL (or the file system) raises turned into one :class:`DataError` naming the file."""
    try:
        return step()
    except UserError:
        raise
    except FileNotFoundError:
        raise DataError(f"missing {kind} file {path}") from None
    except IsADirectoryError:
        raise DataError(f"{kind} file {path} is a folder") from None
    except Image.UnidentifiedImageError:
        raise DataError(f"cannot read {kind} file {path}: not a {', '.join(FORMATS[:-1])} or {FORMATS[-1]} "
                        "image") from None  # fmt: skip
    except _PIL_ERRORS as exc:
        message = one_line(f"cannot read {kind} file {path}: {exc or exception_name(exc)}")
        raise DataError(message) from exc


def _check_png_chunks(path: Path, kind: str) -> None:
    """Refuse a PNG whose chunks declare more bytes than the file holds or the memory limit allows."""
    with open(path, "rb") as f:
        if f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
            return  # not a PNG: PIL tells the format
        size = f.seek(0, 2)
        position = f.seek(len(PNG_SIGNATURE))
        while position + 8 <= size:
            length, name = struct.unpack(">I4s", f.read(8))
            left = size - position - 12  # after the chunk's length, type and CRC
            if length > min(MAX_PNG_CHUNK, left):
                raise DataError(f"cannot read {kind} file {path}: PNG chunk {name!r} declares {length} bytes, but "
                                f"only {max(left, 0)} follow (a truncated or damaged file)")  # fmt: skip
            budget.check(length, f"PNG chunk {name!r} of this {kind}", path)
            if name == b"IEND":
                return
            position = f.seek(position + 12 + length)


def _header(path: Path, kind: str) -> Image.Image:
    """The image opened without decoding its pixels: chunks, format and size checked first."""

    def open_checked() -> Image.Image:
        _check_png_chunks(path, kind)
        return Image.open(path, formats=FORMATS)

    image = _reading(path, kind, open_checked)
    width, height = image.size
    if width < 1 or height < 1:
        image.close()
        raise DataError(f"{kind} file {path} declares {width}x{height} pixels (none to read)")
    budget.check(width * height * BYTES_PER_PIXEL, f"a {width}x{height} {kind} ({width * height} pixels)", path)
    return image


def _open(path: Path, kind: str) -> Image.Image:
    image = _header(path, kind)
    _reading(path, kind, image.load)
    return image


def read_size(path: str | Path, kind: str = "image") -> tuple[int, int]:
    """(height, width) of an image file, from its header only."""
    with _header(Path(path), kind) as image:
        return image.size[1], image.size[0]


def read_image_rgb(path: str | Path) -> np.ndarray:
    """An image file as an HxWx3 uint8 RGB array (for pictures shown to people)."""
    path = Path(path)
    image = _open(path, "image")
    if image.mode not in _COLOUR_MODES:
        raise DataError(f"unsupported pixel format {image.mode} in image file {path}")
    return _reading(path, "image", lambda: np.asarray(image.convert("RGB") if image.mode != "RGB" else image))


def read_image_bgr(path: str | Path) -> np.ndarray:
    """An image file as an HxWx3 uint8 BGR array (what OpenCV's imread gives)."""
    return np.ascontiguousarray(read_image_rgb(path)[:, :, ::-1])


def read_label(path: str | Path, label_space: LabelSpace, kind: str = "label") -> np.ndarray:
    """A label PNG as an HxW uint8 array of label ids, checked against ``label_space``.

    ``kind`` names the file in error messages ("label", "prediction").
    """
    path = Path(path)
    image = _open(path, kind)
    if image.mode not in _LABEL_MODES:
        raise DataError(f"{kind} file {path} has pixel format {image.mode}; expected 8-bit single-channel "
                        "(greyscale or palette) class ids")  # fmt: skip
    label = _reading(path, kind, lambda: np.array(image, dtype=np.uint8))
    valid = label_space.valid(label)
    if not valid.all():
        bad = int(label[~valid].max())
        raise DataError(f"{kind} file {path} has value {bad}, outside label space {label_space.name} "
                        f"({label_space.describe_ids()})")  # fmt: skip
    return label


def load_image(path: str | Path, size: Size | None = None) -> np.ndarray:
    """The network input for one image: 3xHxW float32, BGR, values 0..255.

    ``size`` = (new_height, new_width) resizes like DenseImageData (bilinear,
    rounded to uint8 before the conversion to float).
    """
    return as_network_input(read_image_bgr(path), size)


def as_network_input(bgr: np.ndarray, size: Size | None = None) -> np.ndarray:
    """An HxWx3 uint8 BGR image as the network input (3xHxW float32, 0..255), resized like DenseImageData."""
    if size is not None:
        bgr = resize_bilinear(bgr, size)
    return np.ascontiguousarray(bgr.transpose(2, 0, 1), dtype=np.float32)


def load_label(path: str | Path, label_space: LabelSpace, size: Size | None = None) -> np.ndarray:
    """The label for one image: HxW uint8 ids, resized by nearest neighbour."""
    label = read_label(path, label_space)
    return resize_nearest(label, size) if size is not None else label


def load_pair_u8(image_path: Path, label_path: Path, label_space: LabelSpace,
                 size: Size | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(3xHxW uint8 BGR image, HxW uint8 label) of one sample, sizes checked."""
    image = read_image_bgr(image_path)
    label = read_label(label_path, label_space)
    if image.shape[:2] != label.shape:
        raise DataError(
            f"image {image_path} is {image.shape[0]}x{image.shape[1]} but label "
            f"{label_path} is {label.shape[0]}x{label.shape[1]}"
        )
    if size is not None:
        image, label = resize_bilinear(image, size), resize_nearest(label, size)
    return np.ascontiguousarray(image.transpose(2, 0, 1)), label
