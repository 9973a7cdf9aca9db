"""Training data held where the model runs: batches and validation with no per-step wait for the device.

:class:`Batches` defines the order of the training data: the split is
reshuffled every epoch by ``torch.randperm`` seeded with ``seed + epoch``
(each DDP rank taking every ``world``-th image of it), and batches are taken
from it in turn, running on into the next epoch. :class:`ResidentBatches`
gives the same batches from a copy of the split (uint8) on the device: the
indices of many batches are planned at once on the host and sent in one
copy, and each batch is gathered on the device, so a training step never
waits for the host nor the host for the device.

:class:`ValidationSet` holds a split for model selection; moved to a
device, :func:`validation_accuracy` scores it there and reads one number
back per validation.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from segnet.data.datasets import SegmentationDataset
from segnet.data.labels import LabelSpace
from segnet.models.mc_dropout import dropout_sampling
from segnet.evaluation.metrics import confusion_matrix, global_accuracy, match_size


class Batches:
    """Endless batches from an in-memory split, reshuffled every epoch (per rank under DDP)."""

    def __init__(self, dataset: SegmentationDataset, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.images, self.labels = dataset.images, dataset.labels
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.epoch, self.order, self.pos = -1, [], 0

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def restore(self, state: dict) -> None:
        if state["epoch"] < 0:  # saved before the first batch
            self.epoch, self.order, self.pos = -1, [], 0
            return
        self.epoch = state["epoch"] - 1
        self._new_epoch()
        self.pos = state["pos"]

    def _new_epoch(self) -> None:
        self.epoch += 1
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.images), generator=g)
        self.order, self.pos = order[self.rank :: self.world].tolist(), 0

    def pick(self) -> list[int]:
        """The split indices of the next batch (advances the position)."""
        picked = []
        while len(picked) < self.batch_size:
            if self.pos >= len(self.order):
                self._new_epoch()
            picked.append(self.order[self.pos])
            self.pos += 1
        return picked

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        picked = self.pick()
        return self.images[picked].float(), self.labels[picked].long()


class ResidentBatches(Batches):
    """:class:`Batches`' batches, gathered on ``device`` from a uint8 copy of the split held there.

    ``state()`` is the position after the batches handed out so far (the
    planning runs ahead), so checkpoints and ``restore`` work as with
    :class:`Batches`.
    """

    def __init__(self, dataset: SegmentationDataset, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 device: torch.device | str = "cpu", ahead: int = 256) -> None:  # fmt: skip
        super().__init__(dataset, batch_size, seed, rank, world)
        self.device = torch.device(device)
        self.images, self.labels = self.images.to(self.device), self.labels.to(self.device)
        self.ahead = ahead
        self._planned: torch.Tensor | None = None  # (ahead, batch_size) indices on the device
        self._states: list[dict] = []  # the position after each planned batch
        self._taken = 0
        self._consumed = super().state()

    def state(self) -> dict:
        return dict(self._consumed)

    def restore(self, state: dict) -> None:
        super().restore(state)
        self._planned, self._states, self._taken = None, [], 0
        self._consumed = super().state()

    def _plan(self) -> None:
        rows, self._states = [], []
        for _ in range(self.ahead):
            rows.append(self.pick())
            self._states.append(super().state())
        index = torch.tensor(rows, dtype=torch.int64)
        if self.device.type == "cuda":
            index = index.pin_memory()  # an asynchronous copy needs page-locked memory
        self._planned, self._taken = index.to(self.device, non_blocking=True), 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._planned is None or self._taken == len(self._states):
            self._plan()
        index = self._planned[self._taken]
        self._consumed = self._states[self._taken]
        self._taken += 1
        return self.images.index_select(0, index).float(), self.labels.index_select(0, index).long()


def fits_on(device: torch.device, *tensors: torch.Tensor, share: float = 0.25) -> bool:
    """Whether ``tensors`` take at most ``share`` of the device's free memory (always true for the CPU)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return sum(t.numel() * t.element_size() for t in tensors) <= share * free


class ValidationSet:
    """A split held in memory for model selection: images at the input size, labels at their own size."""

    def __init__(self, root: str, split: str, size: tuple[int, int] | None, label_space: LabelSpace):
        resized = SegmentationDataset(root, split, size=size, label_space=label_space, in_memory=True)
        native = SegmentationDataset(root, split, label_space=label_space)
        self.images = resized.images
        self.labels = [native.load_u8(i)[1] for i in range(len(native))]
        self.label_space = label_space
        self.device_labels: torch.Tensor | None = None  # the labels stacked on the device (one size only)
        self.class_lookup: torch.Tensor | None = None  # label id -> class index (K: void, not a class)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> ValidationSet:
        """Hold the images there, and the labels too when they share one size; returns self."""
        self.images = self.images.to(device)
        if len({label.shape for label in self.labels}) == 1:
            self.device_labels = torch.from_numpy(np.stack(self.labels)).to(device)
            lookup = self.label_space.class_index(np.arange(256)).astype(np.int64)
            self.class_lookup = torch.from_numpy(lookup).to(device)
        return self


@torch.no_grad()
def validation_accuracy(model: nn.Module, dataset: ValidationSet, device: torch.device, batch_size: int = 4,
                        bf16: bool = False, channels_last: bool = False) -> float:  # fmt: skip
    """Global accuracy (correct / labelled pixels) over a split, predictions scored at the labels' size.

    On the device when the set is held there and the predictions have the
    labels' size (one number read back); else per image on the host.
    """
    was_training = model.training
    model.eval()
    space = dataset.label_space
    cm, correct, total = 0, torch.zeros((), dtype=torch.int64, device=device), 0
    for start in range(0, len(dataset), batch_size):
        images = dataset.images[start : start + batch_size].to(device).float()
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16), dropout_sampling(model, False):
            pred = model(images).argmax(dim=1)
        gt = dataset.device_labels
        if gt is not None and gt.device == pred.device and pred.shape[-2:] == gt.shape[-2:]:
            lookup, k = dataset.class_lookup, space.num_classes
            gt_class, pred_class = lookup[gt[start : start + batch_size].long()], lookup[pred]
            correct += ((gt_class == pred_class) & (gt_class < k)).sum()
            total = total + (gt_class < k).sum()
            continue
        for label, p in zip(dataset.labels[start : start + batch_size], pred.cpu().numpy()):
            p = match_size(p, label.shape)
            cm = cm + confusion_matrix(space.class_index(label), space.class_index(p), space.num_classes)
    model.train(was_training)
    if isinstance(cm, np.ndarray):  # scored on the host (the two paths never mix in one set)
        return global_accuracy(cm)
    total = int(total)
    return int(correct) / total if total else float("nan")
