"""Reading user arrays (``.npy``, ``.npz``) with their declared sizes checked before the data is read.

An ``.npy`` header states the shape and type; a small (or compressed)
file can state a huge one. Each array's header is read first (its length
bounded, as numpy bounds it) and checked: a shape of at most 32 sizes, each
0 to 2^31-1 (a Caffe blob's most), and a type of plain numbers (bool,
integer or floating point: no objects, strings or structured records). Its
size is then checked against the file (a truncated file says so) and
against the memory limit (``converter.budget``). Whatever zipfile, zlib or
numpy's header parser raise for a damaged or hostile file becomes an
:class:`ArrayFileError`; every problem is one line naming the file.
"""

from __future__ import annotations

import io
import math
import tokenize
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from . import budget
from .errors import ZIP_ERRORS, UserError, exception_name

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
#: numpy's own bound on a header's length (numpy.lib.format refuses longer ones by default)
MAX_HEADER = 10000
MAX_DIMS = 32
MAX_SIZE = 2**31 - 1  # along one axis: Caffe's bound on a whole blob
NUMBER_KINDS = "biuf"  # bool, signed and unsigned integers, floating point

#: What numpy's header parser raises for a malformed header (it evaluates a Python literal and builds a dtype).
_HEADER_ERRORS = (ValueError, TypeError, SyntaxError, tokenize.TokenError, RecursionError, KeyError, IndexError,
                  OverflowError, EOFError, AttributeError)  # fmt: skip


class ArrayFileError(UserError):
    """An ``.npy`` or ``.npz`` file that cannot be read as arrays of numbers."""


def read_arrays(path: str | Path) -> np.ndarray | dict[str, np.ndarray]:
    """An ``.npy`` file's array, or an ``.npz`` archive's arrays by name (the kind told by the first bytes)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(NPY_MAGIC))
        if head.startswith(ZIP_MAGIC):
            return _read_npz(path)
        if head.startswith(NPY_MAGIC):
            with open(path, "rb") as f:
                return _read_npy(f, path.stat().st_size, "the array", path)
    except OSError as exc:
        raise ArrayFileError(f"cannot read arrays: {exc.strerror or exc}", path) from None
    raise ArrayFileError("not a NumPy array file (.npy or .npz)", path)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for entry in archive.infolist():
                name = _member_name(entry, arrays, path)
                with archive.open(entry) as member:
                    array = _read_npy(member, entry.file_size, f"array '{name}'", path, total)
                total += array.nbytes
                arrays[name] = array
    except UserError:
        raise
    except ZIP_ERRORS as exc:  # an archive zipfile cannot read, or a member that does not inflate
        raise ArrayFileError(f"damaged or truncated .npz archive ({exception_name(exc)}: {exc})".splitlines()[0],
                             path) from exc  # fmt: skip
    return arrays


def _member_name(entry: zipfile.ZipInfo, seen: dict[str, np.ndarray], path: Path) -> str:
    """The array name of an archive member (its file name without .npy), which must be new."""
    if not entry.filename.endswith(".npy"):
        raise ArrayFileError(f"member '{entry.filename}' is not an .npy array", path)
    name = entry.filename[: -len(".npy")]
    if name in seen:
        raise ArrayFileError(f"two members hold array '{name}'", path)
    return name


def _read_npy(f: IO[bytes], size: int, what: str, path: Path, before: int = 0) -> np.ndarray:
    """One array from ``f`` (``size`` bytes in all), its header checked first; ``before``: bytes already read."""
    shape, fortran, dtype = _read_header(f, what, path)
    nbytes = math.prod(shape) * dtype.itemsize
    budget.check(before + nbytes, f"{what} {list(shape)} {dtype}", path)
    available = size - f.tell()
    if nbytes > available:
        raise ArrayFileError(f"{what}: truncated (its header declares {list(shape)} {dtype}, {nbytes} bytes; the "
                             f"file holds {max(available, 0)})", path)  # fmt: skip
    data = bytearray(nbytes)  # writable, unlike bytes
    got = f.readinto(data) if nbytes else 0
    if got != nbytes:
        raise ArrayFileError(f"{what}: truncated ({got} of {nbytes} bytes)", path)
    array = np.frombuffer(data, dtype=dtype)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def _read_header(f: IO[bytes], what: str, path: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) from an .npy header, each checked; numpy parses the header text."""
    prefix = _read_exact(f, len(NPY_MAGIC) + 2, what, path)
    version = (prefix[-2], prefix[-1])
    if not prefix.startswith(NPY_MAGIC) or version not in ((1, 0), (2, 0), (3, 0)):
        raise ArrayFileError(f"{what}: not an .npy array of a known version (1.0, 2.0 or 3.0)", path)
    width = 2 if version == (1, 0) else 4
    length = _read_exact(f, width, what, path)
    declared = int.from_bytes(length, "little")
    if declared > MAX_HEADER:  # checked before the header is read: it could claim gigabytes
        raise ArrayFileError(f"{what}: its header claims {declared} bytes, more than the {MAX_HEADER} numpy allows",
                             path)  # fmt: skip
    header = _read_exact(f, declared, what, path)
    if version == (3, 0):  # UTF-8 text, which only structured types' field names need: numbers' headers are ASCII
        if not header.isascii():
            raise ArrayFileError(f"{what}: a header with non-ASCII text (a structured array, not numbers)", path)
        version = (2, 0)
    parse = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    try:
        shape, fortran, dtype = parse(io.BytesIO(length + header))
    except _HEADER_ERRORS as exc:
        raise ArrayFileError(f"{what}: not a valid .npy header ({exception_name(exc)}: {exc})".splitlines()[0],
                             path) from exc  # fmt: skip
    return _checked_shape(shape, what, path), bool(fortran), _checked_dtype(dtype, what, path)


def _read_exact(f: IO[bytes], count: int, what: str, path: Path) -> bytes:
    data = f.read(count)
    if len(data) != count:
        raise ArrayFileError(f"{what}: truncated inside its .npy header", path)
    return data


def _checked_shape(shape: tuple[int, ...], what: str, path: Path) -> tuple[int, ...]:
    if len(shape) > MAX_DIMS or any(not 0 <= size <= MAX_SIZE for size in shape):
        raise ArrayFileError(f"{what}: shape {list(shape)[:MAX_DIMS + 1]} (at most {MAX_DIMS} sizes, each 0 to "
                             f"{MAX_SIZE})", path)  # fmt: skip
    return tuple(shape)


def _checked_dtype(dtype: np.dtype, what: str, path: Path) -> np.dtype:
    if dtype.hasobject:
        raise ArrayFileError(f"{what} holds Python objects (a pickle), not numbers: refused", path)
    if dtype.kind not in NUMBER_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise ArrayFileError(f"{what} has type {dtype}; arrays here hold plain numbers (bool, integer or floating "
                             "point)", path)  # fmt: skip
    return dtype
