"""Scratch buffers kept between calls, one set per thread, and the checks the fast convolutions share.

The fast convolutions (winograd.py, dftconv.py) need large temporaries on
every call. Fresh ones cost a page fault per 4 KiB on first touch, which
for SegNet's feature maps is as slow as the arithmetic, so they are kept
and grown on demand instead.
"""

from __future__ import annotations

import math
import threading

import torch


class Workspace(threading.local):
    """Named buffers, one set per thread, grown on demand."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A buffer of ``shape`` with ``like``'s dtype and device; its content is whatever was there."""
        size = math.prod(shape)
        buf = self.buffers.get(name)
        stale = buf is not None and buf.is_inference() and not torch.is_inference_mode_enabled()  # read-only here
        if buf is None or stale or buf.numel() < size or buf.dtype != like.dtype or buf.device != like.device:
            buf = self.buffers[name] = torch.empty(size, dtype=like.dtype, device=like.device)
        return buf[:size].view(shape)


#: The buffers of this process's fast convolutions.
WORKSPACE = Workspace()


def refuse_training(module: torch.nn.Module, x: torch.Tensor) -> None:
    """The fast paths compute forward only: a call that would need their gradient is refused."""
    if x.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(f"{type(module).__name__} is for inference only: run it under torch.no_grad() or "
                           "inference_mode()")  # fmt: skip


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether the NCHW map ``x`` is laid out channels last (and not also contiguous, as 1x1 or 1-channel maps are)."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
