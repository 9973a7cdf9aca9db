"""Evaluate a segmentation model, or saved predictions, on a CamVid split.

    python -m segnet.evaluate --data CAMVID_ROOT --split test \\
        (--model converted.pt | --predictions DIR) [--out DIR] [--limit N] \\
        [--compare-paper ROW] [--device cpu] [--batch-size N] [--workers N]

Prints G, C, mIoU and BF (see :mod:`segnet.metrics`) and the per-class
table; with ``--out`` also writes ``labels/<name>.png`` (class ids),
``colour/<name>.png`` (CamVid palette) and ``report.json``. Prediction PNGs
read with ``--predictions`` are named like the label files.

The core, :func:`evaluate`, takes any callable ``model(images)`` that maps
an Nx3xHxW float batch (BGR, 0..255, as caffe-segnet fed it) to scores
(NxCxHxW) or to a dict of named outputs (see :func:`labels_from_output`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from converter.errors import UserError
from segnet import checkpoint
from segnet.boundary import BF_TOLERANCE
from segnet.cli import add_progress_flag, run
from segnet.camvid import CLASS_NAMES, NUM_CLASSES, VOID, CamVidError, colorize, read_label
from segnet.data import CamVidDataset
from segnet.metrics import SegmentationMetrics
from segnet.paper import METRICS, SOURCE, PaperRow, paper_row

Model = Callable[[torch.Tensor], Any]


class EvaluationError(UserError):
    """A problem with the model, the predictions or the arguments."""


def labels_from_output(output: Any, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """NxHxW int64 class ids from a model's output.

    A tensor is taken as NxCxHxW scores. A dict of named outputs (as a
    converted Caffe net returns its blobs) gives, in order of preference:
    ``argmax`` (channel indices as floats, Nx1xHxW), ``prob``, or the only
    4-D output with ``num_classes`` channels. Scores are reduced with an
    argmax over channels that picks the first (lowest) index on ties.
    """
    if isinstance(output, Mapping):
        if "argmax" in output:
            ids = torch.as_tensor(output["argmax"])
            if ids.dim() == 4 and ids.shape[1] == 1:
                ids = ids[:, 0]
            if ids.dim() != 3:
                raise EvaluationError(f"output 'argmax' should be Nx1xHxW, got {tuple(ids.shape)}")
            return ids.round().long()
        if "prob" in output:
            scores = output["prob"]
        else:
            found = [
                name
                for name, value in output.items()
                if torch.is_tensor(value) and value.dim() == 4 and value.shape[1] == num_classes
            ]
            if len(found) != 1:
                raise EvaluationError(
                    f"cannot tell which model output holds the scores: no 'argmax' or 'prob', and "
                    f"{len(found)} 4-D outputs with {num_classes} channels ({', '.join(found) or 'none'})"
                )
            scores = output[found[0]]
    else:
        scores = output
    if not torch.is_tensor(scores) or scores.dim() != 4:
        shape = tuple(scores.shape) if torch.is_tensor(scores) else type(scores).__name__
        raise EvaluationError(f"model scores should be an NxCxHxW tensor, got {shape}")
    return scores.argmax(dim=1)  # torch returns the first maximal index


def load_model(path: str | Path) -> torch.nn.Module:
    """A converted Caffe net (``python -m converter``) or a trained segnet checkpoint."""
    return checkpoint.load_model(path)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def model_predictions(
    model: Model, dataset: CamVidDataset, batch_size: int = 1, device: str | torch.device = "cpu"
) -> Iterator[np.ndarray]:
    """Class-id maps (HxW uint8) of ``model`` on every image, in dataset order."""
    if isinstance(model, torch.nn.Module):
        model = model.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    done = 0
    with torch.no_grad():
        for images, _ in loader:
            try:
                output = model(images.to(device))
            except Exception as exc:  # a failing model becomes one line, not a traceback
                name = dataset.samples[done].name
                raise EvaluationError(f"model failed on the batch starting at {name}: {_one_line(exc)}") from None
            labels = labels_from_output(output)
            if labels.shape[0] != images.shape[0]:
                raise EvaluationError(
                    f"model returned {labels.shape[0]} predictions for a batch of {images.shape[0]} images"
                )
            if labels.numel() and (labels.min() < 0 or labels.max() > VOID):
                raise EvaluationError(
                    f"model predicts class ids {labels.min().item()}..{labels.max().item()}; expected 0..{VOID}"
                )
            for label in labels.cpu().numpy():
                yield label.astype(np.uint8)
            done += images.shape[0]


def saved_predictions(folder: str | Path, dataset: CamVidDataset) -> Iterator[np.ndarray]:
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
        yield read_label(folder / sample.name, kind="prediction")


def evaluate(
    predictions: Iterable[np.ndarray],
    dataset: CamVidDataset,
    out: str | Path | None = None,
    workers: int = 1,
    progress: bool = False,
    boundary: bool = True,
) -> dict:
    """Score predictions (one HxW class-id map per dataset image, in order).

    Writes ``labels/`` and ``colour/`` PNGs under ``out`` when given (the
    caller writes the report). Returns :meth:`SegmentationMetrics.summary`
    plus the confusion matrix and the per-image BF.
    """
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        (out_dir / "labels").mkdir(parents=True, exist_ok=True)
        (out_dir / "colour").mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(dataset), desc="evaluating", unit="img", disable=not progress, file=sys.stderr)
    with SegmentationMetrics(boundary=boundary, workers=workers) as metrics:
        count = 0
        for index, pred in enumerate(predictions):
            if index >= len(dataset):
                raise EvaluationError(f"got more predictions than the {len(dataset)} images")
            sample = dataset.samples[index]
            gt = read_label(sample.label)
            metrics.add(gt, pred, sample.name)
            if out_dir is not None:
                Image.fromarray(pred).save(out_dir / "labels" / sample.name)
                Image.fromarray(colorize(pred)).save(out_dir / "colour" / sample.name)
            count += 1
            bar.update()
        bar.close()
        if count != len(dataset):
            raise EvaluationError(f"got {count} predictions for {len(dataset)} images")
        summary = metrics.summary()
        summary["confusion_matrix"] = metrics.confusion.tolist()
        summary["confusion_columns"] = [*CLASS_NAMES, "void/other"]
        if boundary:
            summary["per_image_bf"] = dict(zip(metrics.names, metrics.image_bf().tolist()))
    return summary


def evaluate_model(
    model: Model,
    dataset: CamVidDataset,
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
    lines += ["", f"{'class':<12}{'accuracy':>10}{'IoU':>8}{'BF':>8}"]
    for row in summary["classes"]:
        bf = "-" if row["bf"] is None else f"{100 * row['bf']:.2f}"
        note = "" if row["present"] else "  (absent from gt)"
        lines.append(f"{row['name']:<12}{100 * row['accuracy']:>10.2f}{100 * row['iou']:>8.2f}{bf:>8}{note}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m segnet.evaluate",
        description="Evaluate a model or saved predictions on CamVid with the SegNet paper's "
        "metrics (G, C, mIoU, BF).",
    )
    parser.add_argument("--data", required=True, help="CamVid root folder")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a converted Caffe net (python -m converter) or a trained segnet checkpoint")
    source.add_argument("--predictions", help="folder of prediction PNGs named like the labels")
    parser.add_argument("--out", help="folder for prediction PNGs, colour PNGs and report.json")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images")
    parser.add_argument("--compare-paper", metavar="ROW", help="print this row of the paper's Table 1 beside ours")
    parser.add_argument("--device", default="cpu", help="torch device for --model (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default: 1)")
    parser.add_argument("--workers", type=int, default=1, help="processes computing BF (default: 1)")
    add_progress_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(lambda: _command(args))


def _command(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise EvaluationError("--limit must be at least 1")
    if args.batch_size < 1 or args.workers < 1:
        raise EvaluationError("--batch-size and --workers must be at least 1")
    try:
        paper = paper_row(args.compare_paper) if args.compare_paper else None
    except KeyError as exc:
        raise EvaluationError(exc.args[0]) from None
    dataset = CamVidDataset(args.data, args.split, limit=args.limit)
    if args.model:
        try:
            device = torch.device(args.device)
        except RuntimeError as exc:
            raise EvaluationError(f"bad --device {args.device!r}: {_one_line(exc)}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise EvaluationError("--device cuda asked for, but torch sees no CUDA device")
        model = load_model(args.model)
        predictions = model_predictions(model, dataset, args.batch_size, device)
        source = {"model": str(args.model)}
    else:
        predictions = saved_predictions(args.predictions, dataset)
        source = {"predictions": str(args.predictions)}
    summary = evaluate(predictions, dataset, out=args.out, workers=args.workers, progress=args.progress)
    what = source.get("model") or source.get("predictions")
    print(format_report(summary, f"CamVid {args.split}, {summary['images']} images, {what}", paper))
    if args.out:
        report = {"data": str(args.data), "split": args.split, **source, "bf_tolerance": BF_TOLERANCE}
        report.update(summary)
        if paper is not None:
            report["paper"] = {"row": paper.name, "source": SOURCE, **paper.values()}
        path = Path(args.out) / "report.json"
        path.write_text(json.dumps(report, indent=1) + "\n")
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
