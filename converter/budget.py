"""The memory budget: sizes a file declares are checked against it before anything is allocated.

A small file can declare a huge thing (a checkpoint with 20 million
classes, a gzip stream of gigabytes of zeros, a 30000x30000 HDF5 dataset
stored as a fill value, ``num_output: 2000000000``). Every reader states
what it is about to allocate and calls :func:`check` first; model and layer
construction runs inside :func:`allocations`, which checks every tensor a
constructor asks torch for. Going over the limit is a :class:`MemoryLimitError`:
one line saying what needed how much, and how to raise the limit.

The limit is ``--memory-limit`` (every command), else ``$SEGNET_MEMORY_LIMIT``
(``4G``, ``512M``, bytes), else half the memory available when it is first
needed: the least of the system's available memory, the cgroup's remaining
memory and the address space ``RLIMIT_AS`` leaves.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.overrides import TorchFunctionMode

from .errors import UserError

ENV = "SEGNET_MEMORY_LIMIT"
DEFAULT_FRACTION = 0.5  # of the memory available: room for copies, the interpreter and torch itself
FALLBACK = 8 << 30  # when the system says nothing about its memory

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_limit: int | None = None


class MemoryLimitError(UserError):
    """Something a file declares would need more memory than the limit allows."""


def parse_bytes(text: str) -> int:
    """``4G``, ``512M``, ``1.5G``, ``300000`` (K, M, G, T are powers of 1024) as a number of bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*", str(text).upper())
    if not match:
        raise ValueError(f"expected a size such as 4G, 512M or a number of bytes, got {text!r}")
    value = int(float(match.group(1)) * _UNITS[match.group(2)])
    if value <= 0:
        raise ValueError(f"a memory limit must be positive, got {text!r}")
    return value


def format_bytes(count: int | float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} bytes"


def set_limit(value: int | str | None) -> None:
    """Set the limit for this process (``None``: back to the environment variable or the default)."""
    global _limit
    _limit = parse_bytes(value) if isinstance(value, str) else value


def limit() -> int:
    """The memory limit in bytes (see the module docstring)."""
    global _limit
    if _limit is None:
        given = os.environ.get(ENV)
        if given:
            try:
                _limit = parse_bytes(given)
            except ValueError as exc:
                raise UserError(f"{ENV}: {exc}") from None
        else:
            _limit = int(DEFAULT_FRACTION * (available_memory() or FALLBACK))
    return _limit


def available_memory() -> int | None:
    """The least of the memory the system, the cgroup and RLIMIT_AS leave this process (None: unknown)."""
    found = [value for value in (_meminfo_available(), _cgroup_available(), _address_space_left()) if value]
    return min(found) if found else None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _meminfo_available() -> int | None:
    text = _read("/proc/meminfo")
    match = re.search(r"^MemAvailable:\s+(\d+) kB", text or "", re.M)
    if match:
        return int(match.group(1)) << 10
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):  # fmt: skip
        cap, used = _read(limit_file), _read(usage_file)
        if cap and used and cap.strip().isdigit() and used.strip().isdigit():
            cap_bytes = int(cap)
            if cap_bytes < 1 << 60:  # cgroup v1 says "no limit" with a huge number
                return max(cap_bytes - int(used), 0)
    return None


def _address_space_left() -> int | None:
    try:
        import resource
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    match = re.search(r"^VmSize:\s+(\d+) kB", _read("/proc/self/status") or "", re.M)
    used = int(match.group(1)) << 10 if match else 0
    return max(soft - used, 0)


def _how_to_raise() -> str:
    return f"raise it with --memory-limit or {ENV}"


def check(nbytes: int | float, what: str, path: str | Path | None = None, layer: str | None = None,
          at_least: bool = False) -> None:  # fmt: skip
    """Raise :class:`MemoryLimitError` when ``what`` would need more than the limit.

    ``at_least``: ``nbytes`` counts only what was seen so far (a stream, a running total).
    """
    cap = limit()
    if nbytes > cap:
        need = f"at least {format_bytes(nbytes)}" if at_least else format_bytes(nbytes)
        raise MemoryLimitError(f"{what} would need {need}, over the memory limit of {format_bytes(cap)} "
                               f"({_how_to_raise()})", path, layer)  # fmt: skip


def add_memory_option(parser: argparse.ArgumentParser) -> None:
    """``--memory-limit SIZE``: applied while the command line is parsed."""

    class Apply(argparse.Action):
        def __call__(self, parser, namespace, value, option_string=None):
            try:
                set_limit(parse_bytes(value))
            except ValueError as exc:
                parser.error(f"{option_string}: {exc}")
            setattr(namespace, self.dest, value)

    parser.add_argument("--memory-limit", action=Apply, metavar="SIZE",
                        help=f"most memory a file may make this command allocate, e.g. 8G (default: ${ENV}, "
                             "else half the memory available)")  # fmt: skip


# ---------------------------------------------------------------- constructors


_SIZED_FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.randint}


def _requested_shape(func: Any, args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    if "size" in kwargs:
        size = kwargs["size"]
    elif func is torch.randint:  # randint(high, size) or randint(low, high, size)
        size = next((a for a in args if isinstance(a, (tuple, list, torch.Size))), None)
    elif args and isinstance(args[0], (tuple, list, torch.Size)):
        size = args[0]
    else:
        size = tuple(a for a in args if isinstance(a, int) and not isinstance(a, bool))
        if func is torch.full:
            size = ()
    if size is None:
        return None
    try:
        return tuple(int(d) for d in size)
    except (TypeError, ValueError):
        return None


class _Allocations(TorchFunctionMode):
    """Adds up the tensors torch's factory functions are asked for, and refuses before one goes over."""

    def __init__(self, what: str, path: str | Path | None):
        super().__init__()
        self.what, self.path, self.total = what, path, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SIZED_FACTORIES:
            shape = _requested_shape(func, args, kwargs)
            if shape is not None:
                if any(d < 0 for d in shape):
                    raise UserError(f"{self.what}: a tensor of shape {list(shape)} (sizes must not be negative)",
                                    self.path)  # fmt: skip
                dtype = kwargs.get("dtype") or torch.get_default_dtype()
                self.total += math.prod(shape) * dtype.itemsize
                check(self.total, self.what, self.path, at_least=True)
        return func(*args, **kwargs)


@contextlib.contextmanager
def allocations(what: str, path: str | Path | None = None) -> Iterator[_Allocations]:
    """Check every tensor created inside (model and layer constructors) against the limit, in total.

    ``what`` names the thing being built in the message ("the parameters of
    the net in FILE"); the yielded object's ``total`` is the bytes asked for.
    """
    with _Allocations(what, path) as mode:
        yield mode
