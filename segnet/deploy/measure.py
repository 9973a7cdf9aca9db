"""What the benchmark and reproduction scripts read about the machine: process memory (Linux), the CPU."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def current_rss_mb() -> float:
    """Resident memory of this process now, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's resident high-water mark (VmHWM), in MiB.

    Not ``getrusage().ru_maxrss``: Linux carries that over from the parent
    copy forked before ``exec``, so a fresh process started from a large
    one would report at least the parent's size.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM line in /proc/self/status")


def reset_peak_rss() -> None:
    """Restart the high-water mark from the current resident memory (Linux clear_refs), so that
    the next ``peak_rss_mb`` covers only what runs from now on (plus what is already resident)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def try_reset_peak_rss() -> bool:
    """:func:`reset_peak_rss` where the system allows it; False (no peak to measure from now) where it does not."""
    try:
        reset_peak_rss()
        return True
    except OSError:
        return False


def cpu_has_bf16() -> bool:
    """Whether this CPU does bfloat16 arithmetic natively (AVX-512 BF16 or AMX); elsewhere PyTorch emulates
    it, hundreds of times slower than float32, so bf16 paths are not worth running or timing."""
    import torch  # here, not above: caffe_timing.py reads memory with this module under a Python without PyTorch

    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check is not None and check() for check in checks)


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
