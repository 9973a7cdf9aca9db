"""Training a SegNet model with the paper's recipe: the run, its loop and its step.

:func:`train` takes a :class:`~segnet.training.config.TrainConfig` and runs
it: devices and processes (DDP under torchrun), the starting model
(segnet.models.finetune), the data held on the device
(segnet.training.resident), SGD with Caffe's multipliers
(segnet.training.optim), validation and checkpoints, and resuming
(segnet.training.resume). ``python -m segnet.train`` is its command; its
help says what each setting does.
"""


from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from converter.atomic import atomic_write
from converter.errors import UserError

from segnet.data.datasets import SegmentationDataset
from segnet.data.labels import LabelSpace
from segnet.devices import pick_device
from segnet.models.caffe_graph import CaffeSegmenter, declared_input_size
from segnet.models.checkpoint import save_model
from segnet.models.finetune import Start, bn_notes, starting_model
from segnet.models.surgery import unfold_inference_bn
from segnet.training.class_weights import class_weights
from segnet.training.config import TrainConfig
from segnet.training.loss import segnet_loss
from segnet.training.optim import caffe_param_groups
from segnet.training.resident import Batches, ResidentBatches, ValidationSet, fits_on, validation_accuracy
from segnet.training.resume import resume, resume_point, truncate_log


class TrainingDiverged(UserError):
    """The loss stopped being a finite number (learning rate too high for this model and data)."""


@dataclass
class Run:
    """Everything a training run holds between its steps."""

    cfg: TrainConfig
    device: torch.device
    rank: int
    world: int
    out: Path
    log: TextIO | None
    distributed: bool

    @property
    def main_process(self) -> bool:
        return self.rank == 0

    def emit(self, event: dict) -> None:
        if self.log:
            self.log.write(json.dumps(event) + "\n")
            self.log.flush()

    def say(self, text: str) -> None:
        """A line for the user (main process only), clear of the progress bar."""
        if self.main_process:
            tqdm.write(text, file=sys.stdout)


def setup(cfg: TrainConfig) -> Run:
    """Devices and processes (DDP under torchrun), the output folder and its log."""
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
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one input size: cuDNN's fastest algorithms are worth measuring
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    return Run(cfg, device, rank, world, out, None, distributed)


def initial_model(cfg: TrainConfig) -> Start:
    """The model the run starts from (new, or ``--init``; see segnet.models.finetune) and its label space."""
    labels = cfg.labels
    if cfg.num_classes is not None:
        if labels is not None and labels != str(cfg.num_classes):
            raise UserError(f"--labels {labels} and --num-classes {cfg.num_classes} disagree: give one")
        labels = str(cfg.num_classes)
    return starting_model(cfg.init, cfg.model, labels)


def train(cfg: TrainConfig) -> dict:
    """Run training; returns the summary written to ``OUT/summary.json``."""
    started = time.time()
    run = setup(cfg)
    point = resume_point(cfg)
    start = initial_model(cfg)
    model, space = start.model, start.label_space
    size = cfg.image_size or declared_input_size(model)
    if isinstance(model, CaffeSegmenter) and size and size != model.input_size:
        raise UserError(f"the converted net is built for {model.input_size[0]}x{model.input_size[1]} images (its "
                        f"layer sizes are fixed in the prototxt); drop --image-size or give that size")  # fmt: skip
    train_set = SegmentationDataset(cfg.data, "train", size=size, label_space=space, in_memory=True, limit=cfg.limit)
    val_set = ValidationSet(cfg.data, cfg.val_split, size, space) if cfg.val_every else None
    balancing = cfg.class_weights or ("prototxt" if space.class_weights is not None else "median")
    weights = None if balancing == "natural" else torch.tensor(class_weights(balancing, space, cfg.data),
                                                                dtype=torch.float32)  # fmt: skip
    model.to(run.device)
    unfolded = unfold_inference_bn(model, train_set.images)  # (a resumed run then loads its own BN over it)
    start.notes += [unfolded] if unfolded else []
    start.notes += bn_notes(model)
    if run.main_process:
        run.out.mkdir(parents=True, exist_ok=True)
    for note in start.notes:
        run.say(f"note: {note}")

    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(caffe_param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)
    for g in optimizer.param_groups:
        g["lr"] = cfg.lr * g["lr_mult"]
    held = run.device if fits_on(run.device, train_set.images, train_set.labels) else torch.device("cpu")
    if held != run.device:
        run.say(f"note: the training split does not fit in a quarter of {run.device}'s free memory: each batch is "
                "copied there")  # fmt: skip
    batches = ResidentBatches(train_set, cfg.batch_size // run.world if run.distributed else cfg.batch_size,
                              cfg.seed, run.rank, run.world, device=held)  # fmt: skip
    if val_set is not None and fits_on(run.device, val_set.images):
        val_set.to(run.device)
    start_iter, best = resume(point, model, optimizer, batches, run.out / "last.pt") if point else (0, None)
    if cfg.resume and not point:
        run.say(f"note: no {run.out / 'last.pt'} to resume from: starting at iteration 0")
    if run.main_process:
        truncate_log(run.out / "log.jsonl", start_iter)
        run.log = open(run.out / "log.jsonl", "a")
    meta = {"config": asdict(cfg), "label_space": space.name, "class_weights": balancing}
    run.emit({"event": "start", "config": asdict(cfg), "world_size": run.world, "device": str(run.device),
              "train_images": len(train_set), "start_iteration": start_iter, "input_size": size,
              "label_space": space.name, "class_weights": balancing, "notes": start.notes})  # fmt: skip
    try:
        deadline = started + 60 * cfg.time_limit if cfg.time_limit is not None else None
        job = Job(model, optimizer, batches, weights, val_set, space, size, start_iter, best, meta, deadline)
        summary = loop(run, job)
    finally:
        if run.log:
            run.log.close()
        if run.distributed:
            dist.destroy_process_group()
    return summary


@dataclass
class Job:
    """What the loop trains, on what, and from where: :func:`train` builds it from the config."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: Batches
    class_weights: torch.Tensor | None  # per output id; None: no balancing
    val_set: ValidationSet | None  # None: no validation, the last model is the result
    label_space: LabelSpace
    input_size: tuple[int, int] | None
    start_iteration: int = 0  # a resumed run's, else 0
    best: dict | None = None  # {"accuracy", "iteration"} of the best validation so far
    meta: dict[str, Any] = field(default_factory=dict)  # saved with every checkpoint
    deadline: float | None = None  # time.time() past which the run stops cleanly


def loop(run: Run, job: Job) -> dict:
    """SGD steps from the job's start iteration to the configured count, with logging, validation and checkpoints.

    The host waits for the device only every ``log_every`` iterations (the
    loss is summed on the device; a non-finite one is caught there), at
    validations and checkpoints. Training time (for images/s) is measured
    between those waits, validation and checkpoints left out. Past
    ``deadline`` (time.time()), checked at the same points, the run stops
    with ``last.pt`` written.
    """
    cfg = run.cfg
    model, optimizer, batches, weights, val_set = job.model, job.optimizer, job.batches, job.class_weights, job.val_set
    space, size, start_iter, best, meta, deadline = (job.label_space, job.input_size, job.start_iteration, job.best,
                                                      job.meta, job.deadline)  # fmt: skip
    net = nn.parallel.DistributedDataParallel(model) if run.distributed else model
    net.train()
    step = Step(run, net, optimizer, weights, space)
    window = LossWindow(run.device)

    def save(path: Path, extra: dict) -> None:
        save_model(path, model, {**meta, **extra}, label_space=space, input_size=size)

    def save_last(iteration: int) -> None:
        save(run.out / "last.pt", {"iteration": iteration, "best": best, "optimizer": optimizer.state_dict(),
                                   "batches": batches.state()})  # fmt: skip

    def validate(iteration: int) -> None:
        nonlocal best
        accuracy = validation_accuracy(model, val_set, run.device, batch_size=4 if run.device.type == "cpu" else 16,
                                       bf16=cfg.bf16, channels_last=cfg.channels_last)  # fmt: skip
        run.emit({"event": "val", "iteration": iteration, "global_accuracy": accuracy})
        if best is None or accuracy > best["accuracy"]:
            best = {"accuracy": accuracy, "iteration": iteration}
            save(run.out / "best.pt", {"iteration": iteration, "val_global_accuracy": accuracy})
        run.say(f"iteration {iteration}: validation G {accuracy:.4f} (best {best['accuracy']:.4f} at "
                f"{best['iteration']})")  # fmt: skip

    if val_set is not None and run.main_process and start_iter == 0:
        validate(0)  # the starting point: a fine-tuned model's own accuracy
    bar = tqdm(total=cfg.iterations, initial=start_iter, disable=not (cfg.progress and run.main_process),
               unit="it", dynamic_ncols=True)  # fmt: skip
    clock = TrainingClock(run.device)
    stopped = None
    for iteration in range(start_iter + 1, cfg.iterations + 1):
        images, labels = batches.next()
        images, labels = images.to(run.device, non_blocking=True), labels.to(run.device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        window.add(step(images, labels), iteration)
        clock.count(images.shape[0] * run.world)
        bar.update(1)
        last = iteration == cfg.iterations
        if iteration % cfg.log_every == 0 or last:
            loss = window.check()  # waits for the device
            _, rate = clock.lap()
            if run.main_process:
                run.emit({"event": "train", "iteration": iteration, "loss": loss, "images_per_s": rate,
                          "epoch": batches.state()["epoch"]})  # fmt: skip
                bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.1f}")
            if not last and deadline is not None and past(deadline, run):
                stopped = iteration
        due = val_set is not None and (iteration % cfg.val_every == 0 or last)
        if (due or last or stopped) and run.main_process:
            clock.pause()
            if due:
                validate(iteration)
            save_last(iteration)
            clock.resume()
        if stopped:
            run.emit({"event": "stopped", "iteration": iteration, "time_limit_minutes": cfg.time_limit})
            run.say(f"time limit reached: stopped after iteration {iteration}; --resume continues from "
                    f"{run.out / 'last.pt'}")  # fmt: skip
            break
    bar.close()
    summary = {"iterations": cfg.iterations, "best": best, "world_size": run.world, "start_iteration": start_iter,
               "stopped_at": stopped, **clock.totals()}  # fmt: skip
    if run.main_process and not stopped:
        if val_set is None:  # nothing to select by: the last model is the result
            save(run.out / "best.pt", {"iteration": cfg.iterations})
        run.emit({"event": "end", **summary})
        atomic_write(run.out / "summary.json", lambda f: f.write(json.dumps(summary, indent=1).encode()))
    return summary


def past(deadline: float, run: Run) -> bool:
    """Whether ``deadline`` has passed, decided once for all processes (they must stop at one iteration)."""
    late = time.time() >= deadline
    if run.distributed:
        flag = torch.tensor(float(late), device=run.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        late = bool(flag.item())
    return late


class Step:
    """One SGD step (forward, Caffe's loss, backward, update) that returns the loss without waiting for it.

    bf16 autocast when asked; with ``compile``, the model through
    ``torch.compile`` on CUDA, falling back to eager if the first step fails.
    """

    def __init__(self, run: Run, net: nn.Module, optimizer: torch.optim.Optimizer, weights: torch.Tensor | None,
                 space: LabelSpace) -> None:  # fmt: skip
        self.run, self.net, self.optimizer, self.space = run, net, optimizer, space
        self.weights = weights.to(run.device) if weights is not None else None
        self.forward, self.first = net, True
        if run.cfg.compile and run.device.type != "cuda":
            run.say(f"note: --compile is used on CUDA only; on {run.device.type} the model runs eagerly")
        elif run.cfg.compile:
            self.forward = torch.compile(net)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not (self.first and self.forward is not self.net):
            return self._step(images, labels)
        self.first = False
        try:
            return self._step(images, labels)
        except Exception as exc:  # whatever the compiler raised: the eager model computes the same
            self.run.say(f"note: torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                         "training eagerly")  # fmt: skip
            self.forward = self.net
            return self._step(images, labels)

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.run.device.type, dtype=torch.bfloat16, enabled=self.run.cfg.bf16):
            logits = self.forward(images)
        loss = segnet_loss(logits, labels, self.weights, ignore_index=self.space.void)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


class LossWindow:
    """The loss summed on the device since the last check, and the first iteration whose loss was not finite."""

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0
        self.first_bad = torch.zeros((), dtype=torch.int64, device=device)  # 0: none yet

    def add(self, loss: torch.Tensor, iteration: int) -> None:
        self.total += loss
        self.count += 1
        bad = (~torch.isfinite(loss)) & (self.first_bad == 0)
        self.first_bad = torch.where(bad, iteration, self.first_bad)

    def check(self) -> float:
        """The window's mean loss (read from the device); raises TrainingDiverged after a non-finite loss."""
        first_bad, mean = int(self.first_bad), float(self.total) / max(self.count, 1)
        if first_bad:
            raise TrainingDiverged(f"loss became {mean} at iteration {first_bad} (try a smaller --lr)")
        self.total.zero_()
        self.count = 0
        return mean


class TrainingClock:
    """Images and seconds of training, timed between points where the host has waited for the device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.images = self.window_images = 0
        self.seconds = self.window_seconds = 0.0
        self.tick: float | None = time.perf_counter()

    def count(self, images: int) -> None:
        self.images += images
        self.window_images += images

    def _stop(self) -> None:
        if self.tick is not None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            now = time.perf_counter()
            self.seconds += now - self.tick
            self.window_seconds += now - self.tick
            self.tick = None

    def pause(self) -> None:
        """Before validation and checkpoints, which are not training time."""
        self._stop()

    def resume(self) -> None:
        self.tick = time.perf_counter()

    def lap(self) -> tuple[float, float]:
        """(seconds, images/s) of training since the last lap."""
        self._stop()
        seconds, rate = self.window_seconds, self.window_images / max(self.window_seconds, 1e-9)
        self.window_images, self.window_seconds = 0, 0.0
        self.resume()
        return seconds, rate

    def totals(self) -> dict[str, float]:
        """The run's training images, seconds and images/s (this process's part of a resumed run)."""
        return {"train_images": self.images, "train_seconds": self.seconds,
                "images_per_s": self.images / max(self.seconds, 1e-9)}  # fmt: skip
