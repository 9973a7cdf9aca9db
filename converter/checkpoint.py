"""Converted checkpoints: one ``.pt`` file holding the net definition and its weights.

The file is a plain dict of strings, lists, numbers and tensors, so
``torch.load(path, weights_only=True)`` opens it without running any code:

    {"format": "caffe-net", "version": 1,
     "prototxt": <net definition as prototxt text>,
     "phase": "TEST", "input_shapes": {name: [N, C, H, W]},
     "state_dict": {<module key>.<param>: tensor}, "source": {...},
     "checksum": "sha256:<hex>"}

``load(path)`` turns it back into a ``CaffeNet``.

Every checkpoint this project writes (these, and segnet's) goes through
:func:`write_payload`, which adds a checksum of everything in it, and is read
through :func:`read_payload`, which checks the file before torch reads it
(its size against the memory limit, a complete zip archive of stored
entries, as ``torch.save`` writes) and the checksum after: a truncated,
bit-flipped or edited file is refused with one line instead of being used.

A checksum says the file is whole, not that its contents make sense: what
torch unpickled is checked to be made of what this project writes (dicts,
lists, strings, numbers, None, dense CPU tensors; nested at most
``MAX_DEPTH`` deep), and every field a loader reads is checked for type and
range before use (:func:`net_spec`, :func:`state_dict_of`).
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any

import torch

from . import budget
from .atomic import atomic_write
from .errors import ZIP_ERRORS, CaffeFormatError, UserError, exception_name
from .graph import MAX_BLOB_COUNT, CaffeNet
from .prototxt import parse_net_text
from .weights import MAX_BLOB_AXES

FORMAT = "caffe-net"
VERSION = 1
CHECKSUM = "checksum"  # the payload key holding the checksum of everything else
PHASES = ("TEST", "TRAIN")
MAX_DEPTH = 32  # nesting of a payload's dicts and lists (this project's deepest is 6: an optimizer's state)
INT_RANGE = (-(1 << 63), 1 << 64)  # the numbers a checkpoint holds are int64 or uint64 (seeds)


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
    write_payload(payload, path)


def write_payload(payload: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` a checkpoint dict with its checksum, atomically (see converter.atomic)."""
    sealed = {**payload, CHECKSUM: checksum(payload)}
    atomic_write(path, lambda f: torch.save(sealed, f))


def checksum(payload: dict[str, Any]) -> str:
    """SHA-256 of every value of ``payload`` except its checksum: tensors by dtype, shape and bytes."""
    digest = hashlib.sha256()
    _feed(digest, "", {k: v for k, v in payload.items() if k != CHECKSUM})
    return "sha256:" + digest.hexdigest()


def _feed(digest: Any, where: str, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{where}=tensor {tensor.dtype} {list(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(f"{where}=dict {len(value)}\n".encode())
        for key in sorted(value, key=repr):
            _feed(digest, f"{where}/{key!r}", value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"{where}={type(value).__name__} {len(value)}\n".encode())
        for i, item in enumerate(value):
            _feed(digest, f"{where}[{i}]", item)
    else:
        digest.update(f"{where}={type(value).__name__} {value!r}\n".encode())


def read_payload(path: str | Path, error: type[UserError] = CaffeFormatError) -> Any:
    """What ``torch.save`` wrote to ``path`` (on the CPU), after the checks above; problems raise ``error``."""
    path = Path(path)
    if not path.exists():
        raise error("no such file", path)
    if path.is_dir():
        raise error("is a folder, not a model checkpoint", path)
    size, entries = _zip_entries(path, error)
    if any(entry.compress_type != zipfile.ZIP_STORED for entry in entries):
        raise error("holds compressed entries, which torch.save never writes: not a torch checkpoint", path)
    if any(entry.flag_bits & 0x1 or entry.file_size != entry.compress_size for entry in entries):
        raise error("holds encrypted or inconsistent entries, which torch.save never writes: not a torch "
                    "checkpoint", path)  # fmt: skip
    budget.check(sum(entry.file_size for entry in entries), "the tensors of this checkpoint", path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        raise error(f"damaged or unreadable checkpoint ({exception_name(exc)}: {exc})".splitlines()[0], path) from exc
    _check_plain(payload, size, path, error)
    if isinstance(payload, dict) and CHECKSUM in payload and payload[CHECKSUM] != checksum(payload):
        raise error("damaged checkpoint: its contents do not match the checksum written with them (a corrupted "
                    "or edited file)", path)  # fmt: skip
    return payload


def _zip_entries(path: Path, error: type[UserError]) -> tuple[int, list[zipfile.ZipInfo]]:
    """The file's size and its zip entries, read by zipfile (whose exceptions become ``error``)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
        budget.check(size, "loading this checkpoint", path)
        if head[:1] == b"\x80":
            raise error("an old-style torch file (the format before torch 1.6); this project reads the zip "
                        "archives torch.save writes", path)  # fmt: skip
        with zipfile.ZipFile(path) as archive:
            return size, archive.infolist()
    except UserError:
        raise
    except zipfile.BadZipFile as exc:
        raise error("damaged or truncated checkpoint (not a complete zip archive, which torch.save writes)",
                    path) from exc  # fmt: skip
    except OSError as exc:
        raise error(f"cannot read checkpoint: {exc.strerror or exc}", path) from exc
    except ZIP_ERRORS as exc:  # a zip archive, but not one torch.save writes
        raise error(f"damaged checkpoint: a zip archive torch.save does not write ({exception_name(exc)}: {exc})"
                    .splitlines()[0], path) from exc  # fmt: skip


def _check_plain(payload: Any, size: int, path: Path, error: type[UserError]) -> None:
    """Refuse a payload made of anything but what checkpoints hold (see the module docstring).

    Each value of a payload takes at least a byte of its file unless the
    pickle shares it, so more values than the file has bytes means shared
    parts that would expand (a checksum over them would not end).
    """
    pending, seen = [(payload, 0)], 0
    while pending:
        value, depth = pending.pop()
        seen += 1
        if seen > size:
            raise error("holds more values than its size allows (shared parts that expand): not a checkpoint "
                        "this project writes", path)  # fmt: skip
        if depth > MAX_DEPTH:
            raise error(f"nests values more than {MAX_DEPTH} deep: not a checkpoint this project writes", path)
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, (str, int)) or isinstance(key, bool):
                    raise error(f"holds a dict keyed by a {type(key).__name__}: not a checkpoint this project "
                                "writes", path)  # fmt: skip
                pending += [(key, depth + 1), (item, depth + 1)]
        elif isinstance(value, (list, tuple)):
            pending += [(item, depth + 1) for item in value]
        else:
            _check_leaf(value, path, error)


def _check_leaf(value: Any, path: Path, error: type[UserError]) -> None:
    if value is None or isinstance(value, (str, bool, float)):
        return
    if isinstance(value, int):
        if not INT_RANGE[0] <= value < INT_RANGE[1]:
            raise error(f"holds a number of {value.bit_length()} bits; checkpoints hold 64-bit numbers", path)
        return
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided or value.is_quantized or value.is_nested or value.device.type != "cpu":
            raise error(f"holds a {value.layout} {value.dtype} tensor on {value.device}; checkpoints hold dense "
                        "tensors", path)  # fmt: skip
        return
    raise error(f"holds a value of type {type(value).__name__}, which no checkpoint of this project holds", path)


def load(path: str | Path, map_location: str | torch.device = "cpu", phase: str | None = None) -> CaffeNet:
    """Rebuild the ``CaffeNet`` saved by ``save`` (or ``python -m converter``)."""
    payload = read_payload(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CaffeFormatError("not a converted Caffe net (python -m converter writes those)", path)
    check_version(payload, VERSION, path, CaffeFormatError)
    text, saved_phase, shapes = net_spec(payload, path)
    state = state_dict_of(payload, path)
    try:
        net = CaffeNet(parse_net_text(text, path), phase=phase or saved_phase, input_shapes=shapes)
        net.load_state_dict(state)
    except UserError as exc:
        raise CaffeFormatError(exc.problem, exc.path or path, exc.layer) from None
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise CaffeFormatError(f"damaged converted net ({exception_name(exc)}: {exc})".splitlines()[0], path) from exc
    return net.to(map_location)


# ------------------------------------------------------------------ fields, checked before use


def check_version(payload: dict[str, Any], newest: int, path: str | Path, error: type[UserError]) -> None:
    """A payload's ``version``: a whole number from 1 to ``newest`` (a newer one was written by a newer version)."""
    version = payload.get("version")
    if type(version) is not int or version < 1:
        raise error(f"its format version is {brief(version)}, not a whole number from 1", path)
    if version > newest:
        raise error(f"written by a newer version (format {version}; this version reads up to {newest})", path)


def net_spec(spec: Any, path: str | Path, error: type[UserError] = CaffeFormatError
             ) -> tuple[str, str, dict[str, tuple[int, ...]]]:  # fmt: skip
    """(prototxt text, phase, input shapes) of a saved net, each checked: text, TEST or TRAIN, and
    shapes of 1 to 32 whole numbers from 1 to 2^31-1 by input name."""
    if not isinstance(spec, dict):
        raise error(f"the net is described by {brief(spec)}, not a dict of prototxt, phase and input shapes", path)
    text, phase, shapes = spec.get("prototxt"), spec.get("phase"), spec.get("input_shapes")
    if not isinstance(text, str):
        raise error(f"the net's prototxt is {brief(text)}, not text", path)
    if not isinstance(phase, str) or phase not in PHASES:
        raise error(f"the net's phase is {brief(phase)}, not one of {', '.join(PHASES)}", path)
    if not isinstance(shapes, dict) or not all(isinstance(name, str) for name in shapes):
        raise error(f"the net's input shapes are {brief(shapes)}, not shapes by input name", path)
    return text, phase, {name: _shape(name, shape, path, error) for name, shape in shapes.items()}


def _shape(name: str, shape: Any, path: str | Path, error: type[UserError]) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or not 1 <= len(shape) <= MAX_BLOB_AXES or \
            not all(type(d) is int and 1 <= d <= MAX_BLOB_COUNT for d in shape):  # fmt: skip
        raise error(f"input '{name[:40]}' has shape {brief(shape)}: 1 to {MAX_BLOB_AXES} whole numbers from 1 "
                    f"to {MAX_BLOB_COUNT}", path)  # fmt: skip
    return tuple(shape)


def state_dict_of(payload: dict[str, Any], path: str | Path, error: type[UserError] = CaffeFormatError
                  ) -> dict[str, torch.Tensor]:  # fmt: skip
    """A payload's ``state_dict``: real-valued tensors by parameter name."""
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) and
                                              not v.is_complex() for k, v in state.items()):  # fmt: skip
        raise error("its state_dict is not a dict of real-valued tensors by parameter name", path)
    return state


_PLAIN = (str, int, float, bool, type(None))


def brief(value: Any) -> str:
    """A value from a file, shown briefly in a message: itself (cut short), or its kind."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    plain = isinstance(value, _PLAIN) or isinstance(value, (list, tuple)) and all(isinstance(v, _PLAIN) for v in value)
    text = repr(value) if plain else f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."
