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
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any

import torch

from . import budget
from .atomic import atomic_write
from .errors import CaffeFormatError, UserError
from .graph import CaffeNet
from .prototxt import parse_net_text

FORMAT = "caffe-net"
VERSION = 1
CHECKSUM = "checksum"  # the payload key holding the checksum of everything else


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
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
        budget.check(size, "loading this checkpoint", path)
        if head[:1] == b"\x80":
            raise error("an old-style torch file (the format before torch 1.6); this project reads the zip "
                        "archives torch.save writes", path)  # fmt: skip
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except zipfile.BadZipFile:
        raise error("damaged or truncated checkpoint (not a complete zip archive, which torch.save writes)",
                    path) from None  # fmt: skip
    except OSError as exc:
        raise error(f"cannot read checkpoint: {exc.strerror or exc}", path) from None
    if any(entry.compress_type != zipfile.ZIP_STORED for entry in entries):
        raise error("holds compressed entries, which torch.save never writes: not a torch checkpoint", path)
    budget.check(sum(entry.file_size for entry in entries), "the tensors of this checkpoint", path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        raise error(f"damaged or unreadable checkpoint ({type(exc).__name__}: {exc})".splitlines()[0], path) from None
    if isinstance(payload, dict) and CHECKSUM in payload and payload[CHECKSUM] != checksum(payload):
        raise error("damaged checkpoint: its contents do not match the checksum written with them (a corrupted "
                    "or edited file)", path)  # fmt: skip
    return payload


def load(path: str | Path, map_location: str | torch.device = "cpu", phase: str | None = None) -> CaffeNet:
    """Rebuild the ``CaffeNet`` saved by ``save`` (or ``python -m converter``)."""
    payload = read_payload(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CaffeFormatError("not a converted Caffe net (python -m converter writes those)", path)
    if payload.get("version", 0) > VERSION:
        raise CaffeFormatError(f"written by a newer version (format {payload['version']})", path)
    try:
        net = CaffeNet(
            parse_net_text(payload["prototxt"], path),
            phase=phase or payload["phase"],
            input_shapes={k: tuple(v) for k, v in payload["input_shapes"].items()},
        )
        net.load_state_dict(payload["state_dict"])
    except UserError as exc:
        raise CaffeFormatError(exc.problem, exc.path or path, exc.layer) from None
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise CaffeFormatError(f"damaged converted net ({type(exc).__name__}: {exc})".splitlines()[0], path) from None
    return net.to(map_location)
