"""Which torch device a ``--device`` value names: the one check every command and script shares."""

from __future__ import annotations

import torch

from converter.errors import UserError


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when torch sees one, else the CPU), ``cpu``, ``cuda``, ``cuda:N``; a one-line error otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r} (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA device")
    return device
