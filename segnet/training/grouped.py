"""Several models of one architecture trained as one grouped network: independent weights, one pass.

Table 1's rows come in pairs that differ only in their class weights (the
two balancings of a variant), and a small net such as SegNet-Basic leaves a
large GPU mostly idle. :func:`group` stacks R models of the same
architecture into one: every convolution gets R times the channels and R
times the groups, so that output block r sees only input block r; BN is
per channel and ReLU, pooling, unpooling and additions act channel by
channel, so nothing mixes the blocks; the one layer that mixes channels
(cross-channel LRN) runs per block. The image enters R times, the scores
come out as R blocks of K channels. Each row's loss takes its own block and
class weights; their sum's gradient with respect to row r's weights is row
r's own gradient, and SGD with momentum and weight decay acts elementwise:
each row is trained by its own arithmetic, up to the rounding of the
grouped kernels. :func:`ungroup` gives the rows back as ordinary models.

:func:`train_grouped` trains R runs (TrainConfigs that differ only in their
output folder and class weights) that way, one set of batches for all: each
run's folder gets what :func:`segnet.training.loop.train` writes for it
alone (log.jsonl, best.pt selected by its own validations, last.pt in the
same resumable form, summary.json), so a run cut short can be continued
alone or in a set again.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import TextIO

import torch
from torch import nn

from converter.atomic import atomic_write
from converter.errors import UserError

from segnet.data.datasets import SegmentationDataset
from segnet.data.labels import LabelSpace
from segnet.models.caffe_graph import CaffeSegmenter, declared_input_size
from segnet.models.checkpoint import save_model
from segnet.models.finetune import bn_notes
from segnet.models.layers import LRN, CaffeBN
from segnet.models.surgery import replace_module, unfold_inference_bn
from segnet.training import loop as _loop
from segnet.training.class_weights import class_weights
from segnet.training.config import TrainConfig
from segnet.training.loss import segnet_loss
from segnet.training.optim import caffe_param_groups
from segnet.training.resident import Batches, ResidentBatches, ValidationSet, fits_on, validation_accuracy
from segnet.training.resume import resume, resume_point, truncate_log


class PerBlock(nn.Module):
    """A module that mixes channels, run on each of the R channel blocks with that row's own copy."""

    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        self.rows = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([row(block) for row, block in zip(self.rows, x.chunk(len(self.rows), dim=1))], dim=1)


class Grouped(nn.Module):
    """R models as one: ``forward(images)`` -> R score tensors (N x K x H x W each)."""

    def __init__(self, net: nn.Module, rows: int):
        super().__init__()
        self.net, self.rows = net, rows

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = images.repeat(1, self.rows, 1, 1)
        if images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)  # repeat gives NCHW; keep the caller's layout
        return list(self.net(x).chunk(self.rows, dim=1))


def _stack(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    return torch.cat([p.detach() for p in parts], dim=dim)


def _grouped_conv(convs: list[nn.Module]) -> nn.Module:
    first, r = convs[0], len(convs)
    transposed = isinstance(first, nn.ConvTranspose2d)
    kind = nn.ConvTranspose2d if transposed else nn.Conv2d
    extra = {"output_padding": first.output_padding} if transposed else {}
    conv = kind(r * first.in_channels, r * first.out_channels, first.kernel_size, stride=first.stride,
                padding=first.padding, dilation=first.dilation, groups=r * first.groups,
                bias=first.bias is not None, **extra)  # fmt: skip
    with torch.no_grad():
        conv.weight.copy_(_stack([c.weight for c in convs], 0))  # blocks of output (or, transposed, input) channels
        if first.bias is not None:
            conv.bias.copy_(_stack([c.bias for c in convs], 0))
    return conv


def _grouped_bn(bns: list[nn.Module]) -> nn.Module:
    first, r = bns[0], len(bns)
    if isinstance(first, CaffeBN):
        bn = CaffeBN(r * first.num_features, first.mode)
        with torch.no_grad():
            bn.scale.copy_(_stack([b.scale for b in bns], 1))
            bn.shift.copy_(_stack([b.shift for b in bns], 1))
        return bn
    bn = nn.BatchNorm2d(r * first.num_features, eps=first.eps, momentum=first.momentum, affine=first.affine,
                        track_running_stats=first.track_running_stats)  # fmt: skip
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(first, name) is not None:
                getattr(bn, name).copy_(_stack([getattr(b, name) for b in bns], 0))
        if first.num_batches_tracked is not None:
            bn.num_batches_tracked.copy_(first.num_batches_tracked)
    return bn.train(first.training)


def group(models: list[nn.Module]) -> Grouped:
    """One grouped network computing each of ``models`` (same architecture) on its own channel block."""
    if len(models) < 2:
        raise ValueError("grouping needs two models or more")
    names = [name for name, _ in models[0].named_modules()]
    if any([name for name, _ in m.named_modules()] != names for m in models[1:]):
        raise ValueError("grouped models must have the same architecture")
    net = copy.deepcopy(models[0])
    modules = [dict(m.named_modules()) for m in models]
    for name, module in list(net.named_modules()):
        same = [m[name] for m in modules]
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            replace_module(net, name, _grouped_conv(same))
        elif isinstance(module, (nn.BatchNorm2d, CaffeBN)):
            replace_module(net, name, _grouped_bn(same))
        elif isinstance(module, LRN):  # mixes channels: each block by itself
            replace_module(net, name, PerBlock([copy.deepcopy(m) for m in same]))
    if hasattr(net, "in_channels"):
        net.in_channels = len(models) * models[0].in_channels
    return Grouped(net, len(models))


def ungroup(grouped: Grouped, like: nn.Module) -> list[nn.Module]:
    """The rows of ``grouped`` as ordinary models built like ``like`` (their weights and BN statistics)."""
    rows = []
    source = dict(grouped.net.named_modules())
    for r in range(grouped.rows):
        model = copy.deepcopy(like)
        for name, module in model.named_modules():
            _copy_block(source.get(name), module, r, grouped.rows)
        rows.append(model)
    return rows


@torch.no_grad()
def _copy_block(source: nn.Module | None, target: nn.Module, r: int, rows: int) -> None:
    if isinstance(target, (nn.Conv2d, nn.ConvTranspose2d)):
        target.weight.copy_(source.weight.chunk(rows, dim=0)[r])
        if target.bias is not None:
            target.bias.copy_(source.bias.chunk(rows, dim=0)[r])
    elif isinstance(target, CaffeBN):
        target.scale.copy_(source.scale.chunk(rows, dim=1)[r])
        target.shift.copy_(source.shift.chunk(rows, dim=1)[r])
    elif isinstance(target, nn.BatchNorm2d):
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(target, name) is not None:
                getattr(target, name).copy_(getattr(source, name).chunk(rows, dim=0)[r])
        if target.num_batches_tracked is not None and source.num_batches_tracked is not None:
            target.num_batches_tracked.copy_(source.num_batches_tracked)  # every row took the same steps


def _row_dims(net: nn.Module) -> dict[int, int]:
    """The dimension along which each parameter of a grouped network holds its rows' blocks, by id."""
    dims = {}
    for module in net.modules():
        for param in module.parameters(recurse=False):
            dims[id(param)] = 1 if isinstance(module, CaffeBN) else 0  # CaffeBN's (1, C, 1, 1); the rest: dim 0
    return dims


def _ordered_params(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    return [p for g in optimizer.param_groups for p in g["params"]]  # state_dict's numbering


def row_optimizer_states(optimizer: torch.optim.Optimizer, net: nn.Module, rows: int) -> list[dict]:
    """The grouped SGD's state as R state dicts, each what row r's own optimizer would hold."""
    dims, whole = _row_dims(net), optimizer.state_dict()
    states = [{"state": {}, "param_groups": copy.deepcopy(whole["param_groups"])} for _ in range(rows)]
    for index, param in enumerate(_ordered_params(optimizer)):
        for key, value in whole["state"].get(index, {}).items():
            for r in range(rows):
                part = value.chunk(rows, dim=dims[id(param)])[r].clone() if torch.is_tensor(value) else value
                states[r]["state"].setdefault(index, {})[key] = part  # cloned: a view would save all rows
    return states


def grouped_optimizer_state(optimizer: torch.optim.Optimizer, net: nn.Module, states: list[dict]) -> dict:
    """The rows' own SGD state dicts (as :func:`row_optimizer_states` gives them) as the grouped SGD's."""
    dims, whole = _row_dims(net), optimizer.state_dict()
    for index, param in enumerate(_ordered_params(optimizer)):
        held = [s["state"].get(index) for s in states]
        if all(h is None for h in held):
            continue
        if any(h is None for h in held):
            raise UserError("the rows of a set have taken different steps: they cannot be trained as one")
        whole["state"][index] = {key: torch.cat([h[key] for h in held], dim=dims[id(param)])
                                 if torch.is_tensor(held[0][key]) else held[0][key] for key in held[0]}  # fmt: skip
    return whole


#: Settings the runs of a set may differ in; everything else (data, batches, schedule, device) they share.
PER_RUN = ("out", "class_weights")


def train_grouped(cfgs: list[TrainConfig], keep_best_state: bool = False) -> list[dict]:
    """Train ``cfgs`` (two or more runs differing only in :data:`PER_RUN`) as one grouped network.

    Each run starts as it would alone (the seed, then its model), resumes
    from its own ``last.pt`` (all at one iteration), is validated and
    selected by itself, and gets its own folder's files. Returns, per run,
    ``{"summary": ...}`` (what train() returns, plus the set's names and
    images/s) or ``{"diverged": message}``; a run whose loss stopped being
    finite leaves the others stopped at that check with ``last.pt`` written
    (``summary["stopped_at"]``, ``summary["sibling_diverged"]``), to be
    continued without it. ``keep_best_state``: each run's full state at its
    best validation is also kept, as ``best_state.pt`` (a run cut short can
    be rewound to it).
    """
    if len(cfgs) < 2:
        raise ValueError("a grouped run needs two runs or more")
    cfg = cfgs[0]
    differ = [f.name for f in fields(TrainConfig) if f.name not in PER_RUN
              and any(getattr(c, f.name) != getattr(cfg, f.name) for c in cfgs[1:])]  # fmt: skip
    if differ:
        raise ValueError(f"runs of a set must share every setting but {', '.join(PER_RUN)}; these differ: {differ}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("a grouped run trains in one process: not under torchrun")
    started = time.time()
    run = _loop.setup(cfg)
    points = [resume_point(c) for c in cfgs]
    if len({p["meta"]["iteration"] if p else 0 for p in points}) > 1:
        raise UserError("the runs of a set must continue from one iteration (their last.pt files differ)")
    starts = []
    for c in cfgs:
        torch.manual_seed(c.seed)  # each run's model starts as it would alone
        starts.append(_loop.initial_model(c))
    models, space = [s.model for s in starts], starts[0].label_space
    if any(isinstance(m, CaffeSegmenter) for m in models):
        raise UserError("a converted Caffe graph cannot be grouped: train it alone")
    size = cfg.image_size or declared_input_size(models[0])
    train_set = SegmentationDataset(cfg.data, "train", size=size, label_space=space, in_memory=True, limit=cfg.limit)
    val_set = ValidationSet(cfg.data, cfg.val_split, size, space) if cfg.val_every else None
    balancings = [c.class_weights or ("prototxt" if space.class_weights is not None else "median") for c in cfgs]
    weights = [None if b == "natural" else torch.tensor(class_weights(b, space, cfg.data), dtype=torch.float32)
               for b in balancings]  # fmt: skip
    notes = []
    for s in starts:
        s.model.to(run.device)
        unfolded = unfold_inference_bn(s.model, train_set.images)
        notes += ([unfolded] if unfolded else []) + bn_notes(s.model)
    batches = ResidentBatches(train_set, cfg.batch_size, cfg.seed, device=run.device if fits_on(
        run.device, train_set.images, train_set.labels) else torch.device("cpu"))  # fmt: skip
    row_states = [None] * len(cfgs)
    if points[0]:
        if len({repr(p["meta"]["batches"]) for p in points}) > 1:
            raise UserError("the runs of a set must continue from one place in the data (their last.pt files differ)")
        for r, (c, point, model) in enumerate(zip(cfgs, points, models)):
            alone = torch.optim.SGD(caffe_param_groups(model, c.weight_decay), lr=c.lr, momentum=c.momentum)
            resume(point, model, alone, Batches(train_set, c.batch_size, c.seed), Path(c.out) / "last.pt")
            row_states[r] = alone.state_dict()
        batches.restore(points[0]["meta"]["batches"])
    like = copy.deepcopy(models[0])  # the form ungroup gives the runs back in
    grouped = group(models)
    if cfg.channels_last:
        grouped.to(memory_format=torch.channels_last)
        like.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(caffe_param_groups(grouped.net, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)
    for g in optimizer.param_groups:
        g["lr"] = cfg.lr * g["lr_mult"]
    if points[0]:
        optimizer.load_state_dict(grouped_optimizer_state(optimizer, grouped.net, row_states))
    if val_set is not None and fits_on(run.device, val_set.images):
        val_set.to(run.device)
    start_iter = points[0]["meta"]["iteration"] if points[0] else 0
    names = [Path(c.out).name for c in cfgs]
    set_ = _Set(run, cfgs, names, grouped, like, optimizer, batches, weights, val_set, space, size, start_iter,
                [p["meta"]["best"] if p else None for p in points], balancings, keep_best_state)  # fmt: skip
    for c in cfgs:
        Path(c.out).mkdir(parents=True, exist_ok=True)
        truncate_log(Path(c.out) / "log.jsonl", start_iter)
    for note in dict.fromkeys(notes):
        run.say(f"note: {note}")
    set_.logs = [open(Path(c.out) / "log.jsonl", "a") for c in cfgs]  # noqa: SIM115 (closed below)
    try:
        for r, c in enumerate(cfgs):
            set_.emit(r, {"event": "start", "config": asdict(c), "world_size": 1, "device": str(run.device),
                          "train_images": len(train_set), "start_iteration": start_iter, "input_size": size,
                          "label_space": space.name, "class_weights": balancings[r], "notes": notes,
                          "group": names})  # fmt: skip
        deadline = started + 60 * cfg.time_limit if cfg.time_limit is not None else None
        return set_.loop(deadline)
    finally:
        for log in set_.logs:
            log.close()


class GroupedStep(_loop.Step):
    """One SGD step of the grouped network: each run's loss on its own block, their sum backpropagated."""

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.run.device.type, dtype=torch.bfloat16, enabled=self.run.cfg.bf16):
            outputs = self.forward(images)
        losses = [segnet_loss(out, labels, w, ignore_index=self.space.void) for out, w in zip(outputs, self.weights)]
        torch.stack(losses).sum().backward()  # d(sum)/d(run r's weights) is run r's own gradient
        self.optimizer.step()
        return [loss.detach() for loss in losses]


class _Set:
    """A grouped run between its steps: the loop of :func:`segnet.training.loop.loop`, per run where it differs."""

    def __init__(self, run: _loop.Run, cfgs: list[TrainConfig], names: list[str], grouped: Grouped, like: nn.Module,
                 optimizer: torch.optim.Optimizer, batches: Batches, weights: list[torch.Tensor | None],
                 val_set: ValidationSet | None, space: LabelSpace, size: tuple[int, int] | None, start_iter: int,
                 bests: list[dict | None], balancings: list[str], keep_best_state: bool) -> None:  # fmt: skip
        self.run, self.cfgs, self.names, self.grouped, self.like = run, cfgs, names, grouped, like
        self.optimizer, self.batches, self.val_set, self.space, self.size = optimizer, batches, val_set, space, size
        self.start_iter, self.bests, self.keep_best_state = start_iter, bests, keep_best_state
        self.metas = [{"config": asdict(c), "label_space": space.name, "class_weights": b}
                      for c, b in zip(cfgs, balancings)]  # fmt: skip
        self.step = GroupedStep(run, grouped, optimizer, None, space)
        self.step.weights = [w.to(run.device) if w is not None else None for w in weights]
        self.logs: list[TextIO] = []
        self.alive = list(range(len(cfgs)))  # runs whose loss is still finite

    def emit(self, r: int, event: dict) -> None:
        self.logs[r].write(json.dumps(event) + "\n")
        self.logs[r].flush()

    def folder(self, r: int) -> Path:
        return Path(self.cfgs[r].out)

    def validate(self, iteration: int, rows: list[nn.Module]) -> set[int]:
        """Each live run's validation (``rows``: the set ungrouped); its best.pt when it improved. Returns the runs
        that improved."""
        cfg, improved = self.run.cfg, set()
        for r in self.alive:
            accuracy = validation_accuracy(rows[r], self.val_set, self.run.device, bf16=cfg.bf16,
                                           batch_size=4 if self.run.device.type == "cpu" else 16,
                                           channels_last=cfg.channels_last)  # fmt: skip
            self.emit(r, {"event": "val", "iteration": iteration, "global_accuracy": accuracy})
            best = self.bests[r]
            if best is None or accuracy > best["accuracy"]:
                self.bests[r] = best = {"accuracy": accuracy, "iteration": iteration}
                improved.add(r)
                save_model(self.folder(r) / "best.pt", rows[r], {**self.metas[r], "iteration": iteration,
                           "val_global_accuracy": accuracy}, label_space=self.space, input_size=self.size)  # fmt: skip
            self.run.say(f"{self.names[r]}: iteration {iteration}: validation G {accuracy:.4f} (best "
                         f"{best['accuracy']:.4f} at {best['iteration']})")  # fmt: skip
        return improved

    def save_last(self, iteration: int, improved: set[int], rows: list[nn.Module]) -> None:
        states = row_optimizer_states(self.optimizer, self.grouped.net, len(self.cfgs))
        for r in self.alive:
            last = self.folder(r) / "last.pt"
            save_model(last, rows[r], {**self.metas[r], "iteration": iteration, "best": self.bests[r],
                                       "optimizer": states[r], "batches": self.batches.state()},
                       label_space=self.space, input_size=self.size)  # fmt: skip
            if self.keep_best_state and r in improved:
                shutil.copyfile(last, self.folder(r) / "best_state.pt")

    def loop(self, deadline: float | None) -> list[dict]:
        run, cfg, batches = self.run, self.run.cfg, self.batches
        self.grouped.train()
        windows = [_loop.LossWindow(run.device) for _ in self.cfgs]
        diverged: dict[int, str] = {}
        improved: set[int] = set()
        if self.val_set is not None and self.start_iter == 0:
            improved = self.validate(0, ungroup(self.grouped, self.like))
        clock = _loop.TrainingClock(run.device)
        stopped = None
        for iteration in range(self.start_iter + 1, cfg.iterations + 1):
            images, labels = batches.next()
            images, labels = images.to(run.device, non_blocking=True), labels.to(run.device, non_blocking=True)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            for window, loss in zip(windows, self.step(images, labels)):
                window.add(loss, iteration)
            clock.count(images.shape[0])
            last = iteration == cfg.iterations
            if iteration % cfg.log_every == 0 or last:
                losses = {}
                for r in self.alive:
                    try:
                        losses[r] = windows[r].check()  # waits for the device
                    except _loop.TrainingDiverged as exc:
                        diverged[r] = str(exc)
                _, rate = clock.lap()
                self.alive = [r for r in self.alive if r not in diverged]
                for r in self.alive:
                    self.emit(r, {"event": "train", "iteration": iteration, "loss": losses[r], "images_per_s": rate,
                                  "epoch": batches.state()["epoch"]})  # fmt: skip
                if diverged and self.alive and not last:
                    stopped = iteration  # the others go on without it, as a smaller set or alone
                elif not last and deadline is not None and _loop.past(deadline, run):
                    stopped = iteration
            due = self.val_set is not None and (iteration % cfg.val_every == 0 or last)
            if (due or last or stopped) and self.alive:
                clock.pause()
                rows = ungroup(self.grouped, self.like)  # once for both
                improved = self.validate(iteration, rows) if due else set()
                self.save_last(iteration, improved, rows)
                clock.resume()
            if stopped or not self.alive:
                for r in self.alive:
                    self.emit(r, {"event": "stopped", "iteration": iteration, "time_limit_minutes": cfg.time_limit,
                                  **({"diverged_in_set": [self.names[d] for d in diverged]} if diverged else {})})
                    run.say(f"{self.names[r]}: stopped after iteration {iteration}; continues from "
                            f"{self.folder(r) / 'last.pt'}")  # fmt: skip
                break
        totals = clock.totals()
        results = []
        for r in range(len(self.cfgs)):
            if r in diverged:
                results.append({"diverged": diverged[r]})
                continue
            summary = {"iterations": cfg.iterations, "best": self.bests[r], "world_size": 1,
                       "start_iteration": self.start_iter, "stopped_at": stopped, **totals, "group": self.names,
                       "group_images_per_s": totals["images_per_s"] * len(self.cfgs),
                       "sibling_diverged": bool(diverged)}  # fmt: skip
            if not stopped:
                if self.val_set is None:  # nothing to select by: the last model is the result
                    row = ungroup(self.grouped, self.like)[r]
                    save_model(self.folder(r) / "best.pt", row, {**self.metas[r], "iteration": cfg.iterations},
                               label_space=self.space, input_size=self.size)  # fmt: skip
                self.emit(r, {"event": "end", **summary})
                atomic_write(self.folder(r) / "summary.json",
                             lambda f, s=summary: f.write(json.dumps(s, indent=1).encode()))
            results.append({"summary": summary})
        return results
