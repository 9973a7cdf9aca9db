"""Converted checkpoints: one ``.pt`` file holding the net definition and its weights.

The file is a plain dict of strings, lists, numbers and tensors, so
``torch.load(path, weights_only=True)`` opens it without running any code:

    {"format": "caffe-net", "version": 1,
     "prototxt": <net definition as prototxt text>,
     "phase": "TEST", "input_shapes": {name: [N, C, H, W]},
     "state_dict": {<module key>.<param>: tensor}, "source": {...}}

``load(path)`` turns it back into a ``CaffeNet``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .atomic import atomic_write
from .errors import CaffeFormatError
from .graph import CaffeNet
from .prototxt import parse_net_text

FORMAT = "caffe-net"
VERSION = 1


def save(net: CaffeNet, path: str | Path, source: dict[str, str] | None = None) -> None:
    """Write ``net`` to ``path`` atomically (no partial file is ever left behind)."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "prototxt": net.prototxt,
        "phase": net.phase,
        "input_shapes": {k: list(v) for k, v in net.input_shapes.items() if v is not None},
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "source": dict(source or {}),
    }
    atomic_torch_save(payload, path)


def atomic_torch_save(obj, path: str | Path) -> None:
    """torch.save, atomically (see converter.atomic)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load(path: str | Path, map_location: str | torch.device = "cpu", phase: str | None = None) -> CaffeNet:
    """Rebuild the ``CaffeNet`` saved by ``save`` (or ``python -m converter``)."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CaffeFormatError("no such file", path) from None
    except Exception as exc:  # torch raises several types for non-checkpoints
        raise CaffeFormatError(f"not a readable checkpoint ({type(exc).__name__}: {exc})".splitlines()[0], path) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CaffeFormatError("not a converted Caffe net (python -m converter writes those)", path)
    if payload.get("version", 0) > VERSION:
        raise CaffeFormatError(f"written by a newer version (format {payload['version']})", path)
    net = CaffeNet(
        parse_net_text(payload["prototxt"], path),
        phase=phase or payload["phase"],
        input_shapes={k: tuple(v) for k, v in payload["input_shapes"].items()},
    )
    net.load_state_dict(payload["state_dict"])
    return net.to(map_location)
