"""Reading user arrays (``.npy``, ``.npz``) with their declared sizes checked before the data is read.

An ``.npy`` header states the shape and type; a small (or compressed)
file can state a huge one. Each array's header is read first and its size
checked against the file (a truncated file says so) and against the memory
limit (``converter.budget``); object arrays (pickles) are refused. Every
problem is a one-line :class:`~converter.errors.UserError` naming the file.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from . import budget
from .errors import UserError

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"


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
        raise UserError(f"cannot read arrays: {exc.strerror or exc}", path) from None
    raise UserError("not a NumPy array file (.npy or .npz)", path)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for entry in archive.infolist():
                if not entry.filename.endswith(".npy"):
                    raise UserError(f"member '{entry.filename}' is not an .npy array", path)
                name = entry.filename[: -len(".npy")]
                with archive.open(entry) as member:
                    array = _read_npy(member, entry.file_size, f"array '{name}'", path, total)
                total += array.nbytes
                arrays[name] = array
    except zipfile.BadZipFile as exc:
        raise UserError(f"damaged or truncated .npz archive ({exc})", path) from None
    return arrays


def _read_npy(f: IO[bytes], size: int, what: str, path: Path, before: int = 0) -> np.ndarray:
    """One array from ``f`` (``size`` bytes in all), its header checked first; ``before``: bytes already read."""
    try:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
    except (ValueError, EOFError) as exc:
        raise UserError(f"{what}: not a valid .npy header ({exc})".splitlines()[0], path) from None
    if dtype.hasobject:
        raise UserError(f"{what} holds Python objects (a pickle), not numbers: refused", path)
    nbytes = math.prod(shape) * dtype.itemsize
    budget.check(before + nbytes, f"{what} {list(shape)} {dtype}", path)
    available = size - f.tell()
    if nbytes > available:
        raise UserError(f"{what}: truncated (its header declares {list(shape)} {dtype}, {nbytes} bytes; the file "
                        f"holds {max(available, 0)})", path)  # fmt: skip
    data = bytearray(nbytes)  # writable, unlike bytes
    got = f.readinto(data) if nbytes else 0
    if got != nbytes:
        raise UserError(f"{what}: truncated ({got} of {nbytes} bytes)", path)
    array = np.frombuffer(data, dtype=dtype)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)
