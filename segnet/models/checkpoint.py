"""Model checkpoints: the one place where model files are opened.

A model checkpoint is a plain dict that ``torch.load(..., weights_only=True)``
opens: {"format": "segnet-model", "version": 1, "model": <registry name>,
"num_classes", "bn": <BN kind per module>, "architecture": <SegNet family
only>, "state_dict", "label_space", "input_size", "meta": {...}}; a converted
graph trained as it is has "model": "caffe-net" and "net": {"prototxt",
"phase", "input_shapes"} instead. ``load_model`` also accepts a checkpoint
written by ``python -m converter`` (a Caffe net), so every command takes
either.

Files of the wrong kind (a prototxt, a caffemodel, an image, anything else)
are recognised from their first bytes and refused with a one-line
:class:`CheckpointError` that says what the file is and what to do instead.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

import converter
from converter import CaffeNet, parse_net_text
from converter import budget
from converter.checkpoint import read_payload, write_payload
from converter.errors import UserError

from segnet.models.caffe_graph import CaffeSegmenter, declared_input_size
from segnet.data.labels import LabelSpace
from segnet.models.family import Architecture, SegNet
from segnet.models.registry import build_model
from segnet.models.surgery import apply_bn_layout, bn_layout

FORMAT = "segnet-model"
VERSION = 1
CONVERTED_FORMAT = "caffe-net"  # what python -m converter writes
GRAPH = "caffe-net"  # the "model" of a segnet checkpoint holding a converted graph trained as it is
MAX_CLASSES = 256  # label maps are 8-bit PNGs


class CheckpointError(UserError):
    """A model file that cannot be used: missing, of the wrong kind, or damaged."""


_CONVERT_HINT = "python -m converter NET.prototxt WEIGHTS.caffemodel -o MODEL.pt"


def wrong_kind(head: bytes) -> str | None:
    """What a file that is not a torch checkpoint is, from its first bytes; None for a torch file."""
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch's zip format, or a legacy pickle
        return None
    if head and b"PK\x03\x04".startswith(head):
        return None  # the start of a zip archive, cut short: read_payload says it is truncated
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


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The payload of a segnet or converter checkpoint (on the CPU), after checking what kind of file it is.

    A damaged file (truncated, or not matching its checksum) or one that
    would need more memory than the limit is refused (``converter.checkpoint.read_payload``).
    """
    path = Path(path)
    if path.is_file():
        with open(path, "rb") as f:
            problem = wrong_kind(f.read(512))
        if problem:
            raise CheckpointError(problem, path)
    payload = read_payload(path, CheckpointError)
    if not isinstance(payload, dict) or payload.get("format") not in (FORMAT, CONVERTED_FORMAT):
        raise CheckpointError("a torch file, but neither a segnet model checkpoint nor a converted Caffe net", path)
    return payload


def save_model(path: str | Path, model: nn.Module, meta: dict[str, Any] | None = None,
               label_space: LabelSpace | None = None, input_size: tuple[int, int] | None = None) -> None:  # fmt: skip
    """Write ``model`` atomically: a registry model, any SegNet-family model, or a converted graph.

    ``label_space`` and ``input_size`` (what the model was trained for) go
    with it, so that every command uses them without being told.
    """
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    label_space = label_space or getattr(model, "label_space", None)
    input_size = input_size or declared_input_size(model)
    payload: dict[str, Any] = {"format": FORMAT, "version": VERSION}
    if isinstance(model, (CaffeSegmenter, CaffeNet)):
        net = model.net if isinstance(model, CaffeSegmenter) else model
        payload["model"] = GRAPH
        payload["net"] = {"prototxt": net.prototxt, "phase": net.phase,
                          "input_shapes": {k: list(v) for k, v in net.input_shapes.items() if v is not None}}  # fmt: skip
        state = net.state_dict()
    else:
        name = getattr(model, "registry_name", None)
        if type(model) is SegNet:  # any configuration of the builder; subclasses (FCN variants) go by name
            payload["architecture"] = asdict(model.arch)
            name = name or "segnet-family"
        if name is None:
            raise ValueError(f"cannot save a {type(model).__name__}: not built by segnet.models.registry.build_model")
        payload.update(model=name, num_classes=int(model.num_classes), bn=bn_layout(model))
        state = model.state_dict()
    payload["state_dict"] = {k: v.detach().cpu() for k, v in state.items()}
    payload["label_space"] = label_space.to_dict() if label_space is not None else None
    payload["input_size"] = list(input_size) if input_size else None
    payload["meta"] = dict(meta or {})
    write_payload(payload, path)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """The model of a segnet checkpoint, or the ``CaffeNet`` of a converter checkpoint (evaluation mode).

    A segnet checkpoint's label space and input size come back as the
    model's ``label_space`` and ``input_size`` attributes.
    """
    payload = read_checkpoint(path)
    if payload["format"] == CONVERTED_FORMAT:
        return converter.load(path, map_location=map_location).eval()
    try:
        if payload["model"] == GRAPH:
            spec = payload["net"]
            model = CaffeNet(parse_net_text(spec["prototxt"], path), phase=spec["phase"],
                             input_shapes={k: tuple(v) for k, v in spec["input_shapes"].items()})  # fmt: skip
        else:
            classes = payload["num_classes"]
            if not isinstance(classes, int) or not 1 <= classes <= MAX_CLASSES:
                raise CheckpointError(f"declares {classes!r} classes; label maps are 8-bit, so a model has 1 to "
                                      f"{MAX_CLASSES}", path)  # fmt: skip
            with budget.allocations("the model's parameters", path):
                model = _build(payload)
            apply_bn_layout(model, payload["bn"])
        model.load_state_dict(payload["state_dict"])
        if payload.get("label_space"):
            model.label_space = LabelSpace.from_dict(payload["label_space"], path)
        if payload.get("input_size"):
            model.input_size = tuple(payload["input_size"])
    except UserError as exc:
        raise CheckpointError(exc.problem, exc.path or path, exc.layer) from None
    except (KeyError, AttributeError, RuntimeError, TypeError, ValueError, ArithmeticError) as exc:
        raise CheckpointError(f"damaged segnet checkpoint ({type(exc).__name__}: {exc})".splitlines()[0],
                              path) from None  # fmt: skip
    return model.to(map_location).eval()


def _build(payload: dict[str, Any]) -> nn.Module:
    """The (untrained) model a segnet checkpoint's description names."""
    if "architecture" in payload:
        arch = payload["architecture"]
        arch = Architecture(**{k: tuple(map(tuple, v)) if k in ("encoder", "decoder") else
                               tuple(v) if isinstance(v, list) else v for k, v in arch.items()})  # fmt: skip
        model = SegNet(arch, num_classes=payload["num_classes"])
        model.registry_name = payload["model"]
        return model
    return build_model(payload["model"], num_classes=payload["num_classes"])


def model_name(path: str | Path) -> str:
    """The registry name of the model in a segnet checkpoint."""
    payload = read_checkpoint(path)
    if payload["format"] != FORMAT:
        raise CheckpointError("not a segnet model checkpoint", path)
    return payload["model"]
