"""Model checkpoints: the one place where model files are opened.

A model checkpoint is a plain dict that ``torch.load(..., weights_only=True)``
opens: {"format": "segnet-model", "version": 1, "model": <name>,
"num_classes", "bn": <BN kind per module>, "state_dict", "meta": {...}}.
``load_model`` also accepts a checkpoint written by ``python -m converter``
(a Caffe net), so every command takes either.

Files of the wrong kind (a prototxt, a caffemodel, an image, anything else)
are recognised from their first bytes and refused with a one-line
:class:`CheckpointError` that says what the file is and what to do instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

import converter
from converter.checkpoint import atomic_torch_save
from converter.errors import UserError

from .nn import CaffeBN
from .registry import build_model

FORMAT = "segnet-model"
CONVERTED_FORMAT = "caffe-net"  # what python -m converter writes


class CheckpointError(UserError):
    """A model file that cannot be used: missing, of the wrong kind, or damaged."""


_CONVERT_HINT = "python -m converter NET.prototxt WEIGHTS.caffemodel -o MODEL.pt"


def wrong_kind(head: bytes) -> str | None:
    """What a file that is not a torch checkpoint is, from its first bytes; None for a torch file."""
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch's zip format, or a legacy pickle
        return None
    if not head:
        return "an empty file, not a model checkpoint"
    if head[:2] == b"\x1f\x8b":
        return f"a gzip-compressed file (a compressed caffemodel?), not a model checkpoint: convert it first: {_CONVERT_HINT}"
    if head.startswith(b"\x89HDF"):
        return f"an HDF5 file (Caffe weights?), not a model checkpoint: convert it first: {_CONVERT_HINT}"
    if head.startswith(b"\x89PNG") or head[:3] == b"\xff\xd8\xff" or head[:2] == b"BM":
        return "an image, not a model checkpoint"
    text = _as_text(head)
    if text is not None:
        if any(key in text for key in ("base_lr", "lr_policy", "max_iter", "solver_mode")):
            return "a Caffe solver prototxt, not a model checkpoint: give the net it names to python -m converter"
        if any(key in text for key in ("layer", "input", "name:")):
            return f"a Caffe network definition (prototxt), not a model checkpoint: convert it first: {_CONVERT_HINT}"
        return "a text file, not a model checkpoint"
    if head[:1] in (b"\x0a", b"\x12") or head[:2] == b"\xa2\x06":  # NetParameter fields: name, V1 layers, layer
        return f"looks like Caffe weights (a binary caffemodel), not a model checkpoint: convert it first: {_CONVERT_HINT}"
    return "not a model checkpoint (python -m converter and python -m segnet.train write those)"


def _as_text(head: bytes) -> str | None:
    """The bytes as text when they look like a text file (no NUL, almost all printable)."""
    if b"\0" in head:
        return None
    text = head.decode("utf-8", "ignore")
    readable = sum(c.isprintable() or c.isspace() for c in text)
    return text if text and readable >= 0.95 * len(text) else None


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The payload of a segnet or converter checkpoint, after checking what kind of file it is."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError("no such file", path)
    if path.is_dir():
        raise CheckpointError("is a folder, not a model checkpoint", path)
    with open(path, "rb") as f:
        head = f.read(512)
    problem = wrong_kind(head)
    if problem:
        raise CheckpointError(problem, path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        raise CheckpointError(f"damaged or unreadable checkpoint ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(payload, dict) or payload.get("format") not in (FORMAT, CONVERTED_FORMAT):
        raise CheckpointError("a torch file, but neither a segnet model checkpoint nor a converted Caffe net", path)
    return payload


def bn_layout(model: nn.Module) -> dict[str, str]:
    """Which BN kind each BN module is ("pytorch", "learn", "inference"), to rebuild it."""
    kinds = {}
    for name, module in model.named_modules():
        if isinstance(module, CaffeBN):
            kinds[name] = module.mode
        elif isinstance(module, nn.BatchNorm2d):
            kinds[name] = "pytorch"
    return kinds


def save_model(path: str | Path, model: nn.Module, name: str, meta: dict[str, Any] | None = None) -> None:
    """Write ``model`` (built by ``build_model(name)``) atomically."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    payload = {
        "format": FORMAT,
        "version": 1,
        "model": name,
        "num_classes": int(getattr(model, "num_classes", 11)),
        "bn": bn_layout(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    atomic_torch_save(payload, path)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """A model from a segnet checkpoint, or a converted Caffe net from a converter checkpoint."""
    payload = read_checkpoint(path, map_location)
    if payload["format"] == CONVERTED_FORMAT:
        return converter.load(path, map_location=map_location).eval()
    try:
        model = build_model(payload["model"], num_classes=payload["num_classes"])
        for name, kind in payload["bn"].items():
            if kind != "pytorch":
                parent, _, attr = name.rpartition(".")
                owner = model.get_submodule(parent) if parent else model
                setattr(owner, attr, CaffeBN(getattr(owner, attr).num_features, kind))
        model.load_state_dict(payload["state_dict"])
    except (KeyError, AttributeError, RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"damaged segnet checkpoint ({type(exc).__name__}: {exc})", path) from None
    return model.to(map_location).eval()


def model_name(path: str | Path) -> str:
    """The registry name of the model in a segnet checkpoint."""
    payload = read_checkpoint(path)
    if payload["format"] != FORMAT:
        raise CheckpointError("not a segnet model checkpoint", path)
    return payload["model"]
