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
Every field is checked for type and range before it is used (a valid
checksum says the file is whole, not that what it holds makes sense), and
an architecture must run: a forward pass is tried on the meta device (no
memory, no arithmetic) before the model is used.
"""

from __future__ import annotations

import typing
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

import converter
from converter import CaffeNet, parse_net_text
from converter import budget
from converter.checkpoint import brief, check_version, net_spec, read_payload, state_dict_of, write_payload
from converter.errors import UserError, exception_name

from segnet.models.caffe_graph import CaffeSegmenter, declared_input_size, valid_input_size
from segnet.data.imageio import BYTES_PER_PIXEL
from segnet.data.labels import LabelSpace
from segnet.models.family import Architecture, SegNet
from segnet.models.layers import CaffeBN
from segnet.models.registry import build_model
from segnet.models.surgery import apply_bn_layout, bn_layout

FORMAT = "segnet-model"
VERSION = 1
CONVERTED_FORMAT = "caffe-net"  # what python -m converter writes
GRAPH = "caffe-net"  # the "model" of a segnet checkpoint holding a converted graph trained as it is
MAX_CLASSES = 256  # label maps are 8-bit PNGs
BN_KINDS = ("pytorch", "LEARN", "INFERENCE")  # what bn_layout writes


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
    if not isinstance(payload, dict) or not isinstance(payload.get("format"), str) or \
            payload["format"] not in (FORMAT, CONVERTED_FORMAT):  # fmt: skip
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
    check_version(payload, VERSION, path, CheckpointError)
    try:
        model = _model(payload, path)
        model.load_state_dict(state_dict_of(payload, path, CheckpointError))
        if payload.get("label_space") is not None:
            model.label_space = LabelSpace.from_dict(_label_space(payload["label_space"], path), path)
        if payload.get("input_size") is not None:
            model.input_size = _input_size(payload["input_size"], path)
    except UserError as exc:
        raise CheckpointError(exc.problem, exc.path or path, exc.layer) from exc
    except (KeyError, AttributeError, RuntimeError, TypeError, ValueError, ArithmeticError) as exc:
        raise CheckpointError(f"damaged segnet checkpoint ({exception_name(exc)}: {exc})".splitlines()[0],
                              path) from exc  # fmt: skip
    return model.to(map_location).eval()


def _model(payload: dict[str, Any], path: Path) -> nn.Module:
    """The (untrained) model a segnet checkpoint describes, its fields checked first."""
    name = payload.get("model")
    if not isinstance(name, str):
        raise CheckpointError(f"names its model by {brief(name)}, not a registry name", path)
    if name == GRAPH:
        text, phase, shapes = net_spec(payload.get("net"), path, CheckpointError)
        return CaffeNet(parse_net_text(text, path), phase=phase, input_shapes=shapes)
    classes = payload.get("num_classes")
    if type(classes) is not int or not 1 <= classes <= MAX_CLASSES:
        raise CheckpointError(f"declares {brief(classes)} classes; label maps are 8-bit, so a model has 1 to "
                              f"{MAX_CLASSES}", path)  # fmt: skip
    layout = _bn_layout(payload.get("bn"), path)
    arch = _architecture(payload["architecture"], path) if "architecture" in payload else None
    with budget.allocations("the model's parameters", path):
        model = _build(name, classes, arch, path)
    if arch is not None:  # after the build, whose memory check comes first
        _check_runs(arch, classes, path)
    modules = dict(model.named_modules())
    strangers = [key for key in layout if not isinstance(modules.get(key), (nn.BatchNorm2d, CaffeBN))]
    if strangers:
        raise CheckpointError(f"gives a BN kind for '{strangers[0][:60]}', which is not a BN layer of the model", path)
    return apply_bn_layout(model, layout)


def _build(name: str, classes: int, arch: Architecture | None, path: Path) -> nn.Module:
    """The (untrained) model of a checked description: an architecture of the SegNet family, or a registry name."""
    if arch is not None:
        model = SegNet(arch, num_classes=classes)
        model.registry_name = name
        return model
    try:
        return build_model(name, num_classes=classes)
    except KeyError as exc:  # a name the registry does not know
        raise CheckpointError(str(exc.args[0])[:300], path) from exc


def _input_size(size: Any, path: Path) -> tuple[int, int]:
    """The declared (H, W): whole numbers in range, and an image of that size within the memory limit."""
    height, width = valid_input_size(size, path)
    budget.check(height * width * BYTES_PER_PIXEL, f"reading an image of its input size {height}x{width}", path)
    return height, width


def _bn_layout(layout: Any, path: Path) -> dict[str, str]:
    if not isinstance(layout, dict) or not all(isinstance(k, str) and isinstance(v, str) and v in BN_KINDS
                                               for k, v in layout.items()):  # fmt: skip
        raise CheckpointError(f"its BN layout is {brief(layout)}, not BN kinds ({', '.join(BN_KINDS)}) by module",
                              path)  # fmt: skip
    return layout


def _architecture(given: Any, path: Path) -> Architecture:
    """An architecture of the SegNet family: each field of the type ``Architecture`` declares, every number at
    least 1, kernels odd (the convolutions pad k//2 to keep sizes), no more decoder stages than encoder stages;
    :func:`_check_runs` checks that it runs."""
    hints = typing.get_type_hints(Architecture)
    known = {f.name for f in fields(Architecture)}
    if not isinstance(given, dict) or not set(given) <= known:
        raise CheckpointError(f"its architecture is {brief(given)}, not the fields of an Architecture "
                              f"({', '.join(sorted(known))})", path)  # fmt: skip
    missing = [f.name for f in fields(Architecture) if f.default is MISSING and f.name not in given]
    if missing:
        raise CheckpointError(f"its architecture lacks {', '.join(missing)}", path)
    for key, value in given.items():
        if not _conforms(value, hints[key]):
            raise CheckpointError(f"architecture field '{key}' is {brief(value)}, not {_type_name(hints[key])} "
                                  "(numbers at least 1)", path)  # fmt: skip
    arch = Architecture(**{k: _as_tuples(v) for k, v in given.items()})
    if len(arch.decoder) > len(arch.encoder):  # each decoder stage unpools with its encoder stage's indices
        raise CheckpointError(f"its architecture has {len(arch.decoder)} decoder stages for {len(arch.encoder)} "
                              "encoder stages (at most one each)", path)  # fmt: skip
    if arch.kernel % 2 == 0 or arch.classifier_kernel % 2 == 0:
        raise CheckpointError(f"architecture kernels {arch.kernel} and {arch.classifier_kernel} must be odd (the "
                              "model pads k//2 to keep sizes)", path)  # fmt: skip
    return arch


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a plain value from a file fits a type hint of ``Architecture`` (int, bool, str, tuple[X, ...])."""
    if hint is bool or hint is str:
        return type(value) is hint
    if hint is int:
        return type(value) is int and value >= 1
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, (list, tuple)) and all(_conforms(v, item) for v in value)
    return False


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint)


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _check_runs(arch: Architecture, classes: int, path: Path) -> None:
    """Refuse an architecture whose stages do not fit together, by a forward pass on the meta device."""
    side = 2 ** min(len(arch.encoder), 6)  # pooled down to about one pixel at the deepest stage
    try:
        with torch.device("meta"):
            SegNet(arch, num_classes=classes)(torch.empty(1, 3, side, side))
    except (RuntimeError, ValueError, IndexError, AttributeError, TypeError) as exc:
        raise CheckpointError(f"its architecture cannot run: its stages do not fit together ({exception_name(exc)}: "
                              f"{exc})".splitlines()[0], path) from exc  # fmt: skip


def _label_space(data: Any, path: Path) -> dict[str, Any]:
    """A saved label space's fields, of the types ``LabelSpace.to_dict`` writes (LabelSpace checks their ranges)."""
    def numbers(value: Any, kinds: tuple[type, ...]) -> bool:
        return isinstance(value, list) and all(type(v) in kinds for v in value)

    if not isinstance(data, dict) or not (
            isinstance(data.get("name", ""), str) and isinstance(data.get("source", ""), str)
            and isinstance(data.get("names"), list) and all(isinstance(n, str) for n in data["names"])
            and type(data.get("void")) is int
            and isinstance(data.get("palette", []), list) and all(numbers(c, (int,)) for c in data.get("palette", []))
            and (data.get("class_weights") is None or numbers(data["class_weights"], (int, float)))):  # fmt: skip
        raise CheckpointError("its label space is not a name, names, a void id, a palette of [r, g, b] and class "
                              "weights", path)  # fmt: skip
    return data


def model_name(path: str | Path) -> str:
    """The registry name of the model in a segnet checkpoint."""
    payload = read_checkpoint(path)
    if payload["format"] != FORMAT or not isinstance(payload.get("model"), str):
        raise CheckpointError("not a segnet model checkpoint (no model name)", path)
    return payload["model"]
