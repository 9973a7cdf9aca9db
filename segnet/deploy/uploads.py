"""Uploaded images, treated as hostile: bounded in bytes, told by their content, checked before decoding.

An upload is written to a private temporary file as it arrives
(:class:`UploadFile`), refused once it passes ``max_bytes``; the image
readers (segnet.data.imageio) then read it as they read any file. Before a
pixel is decoded, :func:`check_upload` tells the format by the first bytes
(PNG, JPEG, BMP and TIFF only) and reads the declared size from the header:
its pixels must fit this server's share of the memory limit, the rule every
command applies (converter.budget: ``BYTES_PER_PIXEL`` bytes a pixel against
the limit), split between the threads that decode at once, and at most
``max_pixels``. Every refusal is an :class:`UploadError` carrying its HTTP
status and one line that never names the temporary file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from converter import budget
from converter.errors import UserError

from segnet.data.imageio import BYTES_PER_PIXEL, load_image, read_image_rgb, read_size
from segnet.data.resize import Size

#: The first bytes of the formats the readers open (segnet.data.imageio.FORMATS).
SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP", b"II*\x00": "TIFF",
              b"MM\x00*": "TIFF"}  # fmt: skip
MEDIA_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/tiff")

T = TypeVar("T")


class UploadError(UserError):
    """A refused upload: ``status`` is the HTTP status to answer (400, 413 or 415)."""

    def __init__(self, problem: str, status: int = 400):
        super().__init__(problem)
        self.status = status


def sniff_format(head: bytes) -> str | None:
    """PNG, JPEG, BMP or TIFF from a file's first bytes; None for anything else."""
    for signature, name in SIGNATURES.items():
        if head.startswith(signature):
            return name
    return None


def pixel_limit(max_pixels: int, decoders: int) -> int:
    """The most pixels one upload may declare: ``max_pixels``, and each decoding thread's share of the limit."""
    return max(1, min(max_pixels, budget.limit() // (BYTES_PER_PIXEL * max(decoders, 1))))


class UploadFile:
    """A private temporary file that refuses to grow past ``max_bytes`` (413)."""

    def __init__(self, folder: str | Path, max_bytes: int):
        fd, name = tempfile.mkstemp(dir=folder, prefix="upload-")  # mode 0600, a name no request chooses
        self.path = Path(name)
        self.file = os.fdopen(fd, "wb")
        self.max_bytes, self.size = max_bytes, 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise too_large(self.max_bytes)
        self.file.write(chunk)

    def finish(self) -> Path:
        """Close the file; an empty one is refused (400)."""
        self.file.close()
        if self.size == 0:
            raise UploadError("empty body: send an image (PNG, JPEG, BMP or TIFF) as the body or as the "
                              "multipart field 'image'")  # fmt: skip
        return self.path

    def discard(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


def too_large(max_bytes: int) -> UploadError:
    return UploadError(f"the upload is larger than this server takes ({budget.format_bytes(max_bytes)})", 413)


def check_upload(path: Path, max_pixels: int) -> Size:
    """(height, width) of an uploaded image from its header: format (415) and declared size (413) checked."""
    with open(path, "rb") as f:
        kind = sniff_format(f.read(8))
    if kind is None:
        raise UploadError("not an image this server reads: send PNG, JPEG, BMP or TIFF", 415)
    height, width = _reading(path, lambda: read_size(path))
    if height * width > max_pixels:
        raise UploadError(f"the {kind} image declares {width}x{height} pixels ({width * height}); this server "
                          f"decodes at most {max_pixels} pixels an image (its share of the memory limit, "
                          f"{budget.format_bytes(budget.limit())}, or --max-pixels)", 413)  # fmt: skip
    return height, width


def network_input(path: Path, size: Size | None) -> np.ndarray:
    """The upload as the network input, exactly as ``segnet.predict`` reads an image file."""
    return _reading(path, lambda: load_image(path, size))


def photo_rgb(path: Path) -> np.ndarray:
    """The upload as an HxWx3 uint8 RGB array (for the page's picture)."""
    return _reading(path, lambda: read_image_rgb(path))


def _reading(path: Path, step: Callable[[], T]) -> T:
    """``step()``, its refusals as :class:`UploadError` with the temporary file's name taken out."""
    try:
        return step()
    except budget.MemoryLimitError as exc:
        raise UploadError(_without(exc.problem, path), 413) from None
    except UserError as exc:
        raise UploadError(_without(exc.problem, path)) from None
    except MemoryError:
        raise UploadError("out of memory decoding the image", 413) from None


def _without(message: str, path: Path) -> str:
    for text in (f"image file {path}", str(path)):
        message = message.replace(text, "the upload")
    return message
