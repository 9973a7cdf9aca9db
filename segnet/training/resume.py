"""Continuing a training run from its ``last.pt``: the checks before any work, the restore, the log kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from converter.atomic import atomic_write
from converter.errors import UserError

from segnet.models.caffe_graph import CaffeSegmenter
from segnet.models.checkpoint import read_checkpoint
from segnet.training.config import RESUME_KEYS, TrainConfig
from segnet.training.resident import Batches


def resume_point(cfg: TrainConfig) -> dict | None:
    """The checkpoint ``--resume`` continues from (checked before any work), or None to start at iteration 0.

    ``--resume`` needs a usable ``OUT/last.pt`` written with the same
    :data:`RESUME_KEYS`; ``--resume auto`` starts afresh when there is none
    (a damaged one is an error either way).
    """
    if not cfg.resume:
        return None
    last = Path(cfg.out) / "last.pt"
    if not last.exists():
        if cfg.resume == "auto":
            return None
        raise UserError("--resume: nothing to resume from (give --resume auto to start afresh when there is no "
                        "last.pt)", last)  # fmt: skip
    payload = read_checkpoint(last)
    meta = payload.get("meta") or {}
    if not all(key in meta for key in ("iteration", "best", "optimizer", "batches", "config")):
        raise UserError("not the last.pt of a training run (it lacks the optimizer and data-order state)", last)
    changed = [f"{key} {meta['config'].get(key)!r} -> {getattr(cfg, key)!r}" for key in RESUME_KEYS
               if _as_json(meta["config"].get(key)) != _as_json(getattr(cfg, key))]  # fmt: skip
    if changed:
        raise UserError(f"--resume with other settings than the run it continues ({'; '.join(changed)}): give "
                        "the same ones, or another --out", last)  # fmt: skip
    return payload


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples and lists alike


def resume(point: dict, model: nn.Module, optimizer: torch.optim.Optimizer, batches: Batches,
           path: Path) -> tuple[int, dict | None]:  # fmt: skip
    """Restore weights, optimizer and data order from ``point`` (see resume_point); returns (iteration, best)."""
    target = model.net if isinstance(model, CaffeSegmenter) else model
    meta = point["meta"]
    try:
        target.load_state_dict(point["state_dict"])
        optimizer.load_state_dict(meta["optimizer"])
        batches.restore(meta["batches"])
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise UserError(f"does not fit this run's model ({type(exc).__name__}: {exc})".splitlines()[0],
                        path) from None  # fmt: skip
    return meta["iteration"], meta["best"]


def truncate_log(path: Path, iteration: int) -> None:
    """Keep the events of ``path`` up to ``iteration`` (none for a new run): a resumed run logs the rest anew.

    The log then reads as one run: the ``start`` of an earlier attempt at
    this iteration, the ``end`` of a run now being continued and a line cut
    short by a kill go too.
    """
    kept = []
    if iteration > 0 and path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict) or event.get("event") == "end":
                continue
            starts = event.get("event") == "start"
            at = event.get("start_iteration" if starts else "iteration")
            if isinstance(at, int) and (at < iteration if starts else at <= iteration):
                kept.append(line + "\n")
    atomic_write(path, lambda f: f.write("".join(kept).encode()))
