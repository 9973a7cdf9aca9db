"""The evaluation core: scores of a model, or of saved predictions, on a data-set split.

:func:`evaluate` takes any callable ``model(images)`` that maps an
Nx3xHxW float batch (BGR, 0..255, as caffe-segnet fed it) to scores
(NxCxHxW) or to a dict of named outputs (see :func:`labels_from_output`),
and returns G, C, mIoU and BF (see :mod:`segnet.evaluation.metrics`) with
the per-class table; predictions are scored at the labels' own size
(nearest neighbour), as the paper's protocol does. ``python -m
segnet.evaluate`` is its command.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from converter.errors import UserError
from segnet.models import checkpoint
from segnet.models.caffe_graph import as_segmenter
from segnet.data.datasets import SegmentationDataset
from segnet.models.outputs import ModelOutputError, labels_from_output
from segnet.data.imageio import read_label, read_size
from segnet.models.mc_dropout import dropout_sampling
from segnet.evaluation.metrics import METRICS, SegmentationMetrics
from segnet.evaluation.paper import SOURCE, PaperRow

Model = Callable[[torch.Tensor], Any]


@runtime_checkable
class LabelPredictor(Protocol):
    """What gives class ids itself (the inference engine, segnet.deploy.engine.Engine)."""

    def labels(self, images: torch.Tensor) -> torch.Tensor: ...


class EvaluationError(UserError):
    """A problem with the model, the predictions or the arguments."""


def load_model(path: str | Path) -> torch.nn.Module:
    """A converted Caffe net (``python -m converter``) or a trained segnet checkpoint, ready to segment."""
    return as_segmenter(checkpoint.load_model(path), probabilities=True)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def model_predictions(
    model: Model | LabelPredictor, dataset: SegmentationDataset, batch_size: int = 1, device: str | torch.device = "cpu",
    workers: int = 0,
) -> Iterator[np.ndarray]:
    """Label-id maps (HxW uint8) of ``model`` on every image, in dataset order, at the size the model made them.

    ``model`` is any callable returning scores (see :func:`labels_from_output`),
    or a :class:`LabelPredictor` (the inference engine), which gives the
    ids itself; ``workers`` processes decode the images.
    """
    outputs = dataset.label_space.num_outputs
    sampling = contextlib.nullcontext()
    if isinstance(model, LabelPredictor):
        predict = model.labels
    else:
        if isinstance(model, torch.nn.Module):
            model = model.to(device).eval()
            sampling = dropout_sampling(model, False)  # a Bayesian net scores in dropout's test mode, not one sample

        def predict(images: torch.Tensor) -> torch.Tensor:
            return labels_from_output(model(images.to(device)), outputs)

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    done = 0
    with torch.no_grad(), sampling:
        for images, _ in loader:
            try:
                labels = predict(images)
            except ModelOutputError:
                raise
            except Exception as exc:  # a failing model becomes one line, not a traceback
                name = dataset.samples[done].name
                raise EvaluationError(f"model failed on the batch starting at {name}: {_one_line(exc)}") from None
            if labels.shape[0] != images.shape[0]:
                raise EvaluationError(
                    f"model returned {labels.shape[0]} predictions for a batch of {images.shape[0]} images"
                )
            if labels.numel() and (labels.min() < 0 or labels.max() >= outputs):
                raise EvaluationError(
                    f"model predicts class ids {labels.min().item()}..{labels.max().item()}; label space "
                    f"{dataset.label_space.name} has ids 0..{outputs - 1}"
                )
            for label in labels.cpu().numpy():
                yield label.astype(np.uint8)
            done += images.shape[0]


def saved_predictions(folder: str | Path, dataset: SegmentationDataset) -> Iterator[np.ndarray]:
    """Prediction PNGs from ``folder``, named like the label files, in dataset order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"predictions folder not found: {folder}")
    missing = [s.name for s in dataset.samples if not (folder / s.name).is_file()]
    if missing:
        raise EvaluationError(
            f"missing prediction {folder / missing[0]} ({len(missing)} of {len(dataset)} images have none)"
        )
    for sample in dataset.samples:
        prediction = read_label(folder / sample.name, dataset.label_space, kind="prediction")
        label_size = read_size(sample.label, "label")
        if not rescaled_copy(prediction.shape, label_size):
            raise EvaluationError(
                f"prediction {folder / sample.name} is {prediction.shape[0]}x{prediction.shape[1]} but its label "
                f"{sample.label} is {label_size[0]}x{label_size[1]}: a prediction must have the label's size, or "
                f"its aspect ratio at 1/{MAX_RESCALE} to {MAX_RESCALE} times the size"
            )
        yield prediction


MAX_RESCALE = 8  # how much smaller or larger than its label a saved prediction may be


def rescaled_copy(size: tuple[int, int], of: tuple[int, int]) -> bool:
    """Whether an HxW map could be ``of`` rescaled: the same aspect ratio (to a pixel), at most 8x either way."""
    (h, w), (gh, gw) = size, of
    if (h, w) == (gh, gw):
        return True
    same_aspect = abs(h * gw - w * gh) <= max(gh, gw)
    return same_aspect and all(1 / MAX_RESCALE <= a / b <= MAX_RESCALE for a, b in ((h, gh), (w, gw)))


def evaluate(
    predictions: Iterable[np.ndarray],
    dataset: SegmentationDataset,
    out: str | Path | None = None,
    workers: int = 1,
    progress: bool = False,
    boundary: bool = True,
) -> dict:
    """Score predictions (one HxW class-id map per dataset image, in order).

    Ground truth is read from the label files at their own size, and each
    prediction is brought to it first. Writes palette-mode ``labels/`` PNGs
    under ``out`` when given (the caller writes the report). Returns
    :meth:`SegmentationMetrics.summary` plus the confusion matrix and the
    per-image BF.
    """
    space = dataset.label_space
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        (out_dir / "labels").mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(dataset), desc="evaluating", unit="img", disable=not progress, file=sys.stderr)
    with SegmentationMetrics(space, boundary=boundary, workers=workers) as metrics:
        count = 0
        for index, pred in enumerate(predictions):
            if index >= len(dataset):
                raise EvaluationError(f"got more predictions than the {len(dataset)} images")
            sample = dataset.samples[index]
            gt = read_label(sample.label, space)
            metrics.add(gt, pred, sample.name)
            if out_dir is not None:
                space.to_image(pred).save(out_dir / "labels" / sample.name)
            count += 1
            bar.update()
        bar.close()
        if count != len(dataset):
            raise EvaluationError(f"got {count} predictions for {len(dataset)} images")
        summary = metrics.summary()
        summary["confusion_matrix"] = metrics.confusion.tolist()
        summary["confusion_columns"] = [*space.class_names, "void/other"]
        summary["label_space"] = space.name
        if boundary:
            summary["per_image_bf"] = dict(zip(metrics.names, metrics.image_bf().tolist()))
    return summary


def evaluate_model(
    model: Model,
    dataset: SegmentationDataset,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    **kwargs: Any,
) -> dict:
    """:func:`evaluate` on the predictions of ``model``."""
    return evaluate(model_predictions(model, dataset, batch_size, device), dataset, **kwargs)


def format_report(summary: dict, title: str, paper: PaperRow | None = None) -> str:
    """The headline metrics (percent) and the per-class table as text."""
    lines = [title, ""]
    head = f"{'':<6}{'ours':>8}"
    if paper is not None:
        head += f"{'paper':>8}  {paper.name} ({SOURCE})"
    lines.append(head)
    for metric in METRICS:
        value = summary[metric]
        line = f"{metric:<6}{'-' if value is None else f'{100 * value:.2f}':>8}"
        if paper is not None:
            line += f"{paper.values()[metric]:>8g}"
        lines.append(line)
    width = max([12] + [len(row["name"]) + 1 for row in summary["classes"]])
    lines += ["", f"{'class':<{width}}{'accuracy':>10}{'IoU':>8}{'BF':>8}"]
    for row in summary["classes"]:
        bf = "-" if row["bf"] is None else f"{100 * row['bf']:.2f}"
        note = "" if row["present"] else "  (absent from gt)"
        lines.append(f"{row['name']:<{width}}{100 * row['accuracy']:>10.2f}{100 * row['iou']:>8.2f}{bf:>8}{note}")
    return "\n".join(lines)
