"""What a training run is asked to do: one object that the loop, resuming and the command share."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    data: str | None
    out: str = "runs/train"
    model: str | None = None  # a registry name; default: the checkpoint's model, or segnet-basic
    labels: str | None = None  # label space: name, class count or JSON file; default: the checkpoint's, or camvid
    num_classes: int | None = None  # shorthand for a generic label space of that many classes
    iterations: int = 16000
    batch_size: int = 12
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    class_weights: str | None = None  # prototxt | median | natural; default: prototxt if the label space has them
    image_size: tuple[int, int] | None = None  # (H, W); default: the model's declared size, else as stored
    val_every: int = 1000
    val_split: str = "val"
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False  # torch.compile the model (CUDA; eager when it fails)
    time_limit: float | None = None  # minutes: then stop cleanly, last.pt written, to be continued with --resume
    init: str | None = None  # converted Caffe checkpoint, or a segnet checkpoint, to fine-tune from
    resume: str | None = None  # "last": continue from OUT/last.pt, which must exist; "auto": if it exists
    limit: int | None = None  # use only the first N training images (smoke tests)
    progress: bool = True


#: Settings a resumed run must share with the run it continues: they fix the model and the order of the data.
RESUME_KEYS = ("model", "init", "labels", "num_classes", "batch_size", "image_size", "seed", "limit")
