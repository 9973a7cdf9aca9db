"""Model checkpoints: the readable models' own, and the converter's.

A model checkpoint is a plain dict that ``torch.load(..., weights_only=True)``
opens: {"format": "segnet-model", "version": 1, "model": <name>,
"num_classes", "bn": <BN kind per module>, "state_dict", "meta": {...}}.
``load_model`` also accepts a checkpoint written by ``python -m converter``
(a Caffe net), so every command takes either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

import converter
from converter.checkpoint import atomic_torch_save

from .nn import CaffeBN
from .registry import build_model

FORMAT = "segnet-model"


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
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if isinstance(payload, dict) and payload.get("format") == "caffe-net":
        return converter.load(path, map_location=map_location).eval()
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: neither a segnet model checkpoint nor a converted Caffe net")
    model = build_model(payload["model"], num_classes=payload["num_classes"])
    for name, kind in payload["bn"].items():
        if kind != "pytorch":
            parent, _, attr = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            setattr(owner, attr, CaffeBN(getattr(owner, attr).num_features, kind))
    model.load_state_dict(payload["state_dict"])
    return model.to(map_location).eval()


def model_name(path: str | Path) -> str:
    """The registry name of the model in a segnet checkpoint."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a segnet model checkpoint")
    return payload["model"]

