"""Evaluate a segmentation model, or saved predictions, on a data-set split.

    python -m segnet.evaluate --data ROOT --split test \\
        (--model MODEL.pt | --predictions DIR) [--labels camvid] [--input-size H,W] \\
        [--out DIR] [--limit N] [--compare-paper ROW] [--device auto] [--precision fp32] \\
        [--batch-size N] [--workers N]

Prints G, C, mIoU and BF (see :mod:`segnet.evaluation.metrics`) and the per-class
table; with ``--out`` also writes ``labels/<name>.png`` (palette-mode PNGs:
the pixel values are the label ids, shown in the label space's colours) and
``report.json``. Prediction PNGs read with ``--predictions`` are named like
the label files.

Images are fed at the size the model declares (a converted net's input
shape, or the size a segnet checkpoint was trained at), or ``--input-size``;
predictions are scored at the labels' own size (nearest neighbour), as the
paper's protocol does.

A model runs on the inference engine (segnet.deploy.engine), as
``segnet.predict`` runs it: the fastest path that computes the converted
graph's labels on the device. The scoring itself is the library's
(segnet.evaluation.core).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from converter.atomic import refuse_overwriting_inputs, staged_outputs

from converter.errors import run_command
from segnet.cli import add_input_size_option, add_common_options, add_data_option, data_root
from segnet.data.datasets import SegmentationDataset
from segnet.data.labels import label_space_for
from segnet.deploy.engine import PRECISIONS, build_engine
from segnet.devices import pick_device
from segnet.evaluation.boundary import BF_TOLERANCE
from segnet.evaluation.core import (EvaluationError, evaluate, format_report, load_model, model_predictions,
                                    saved_predictions)
from segnet.evaluation.paper import SOURCE, paper_row
from segnet.models.caffe_graph import declared_input_size, num_outputs
from segnet.models.mc_dropout import dropout_layers


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m segnet.evaluate",
        description="Evaluate a model or saved predictions on a data-set split with the SegNet paper's "
        "metrics (G, C, mIoU, BF).",
    )
    add_data_option(parser)
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a converted Caffe net (python -m converter) or a trained segnet checkpoint")
    source.add_argument("--predictions", help="folder of prediction PNGs named like the labels")
    parser.add_argument("--labels", help="label space: a name (camvid, sun-rgbd), a class count or a JSON file "
                        "(default: the model's, else camvid)")
    add_input_size_option(parser, "input_size",
                        help="resize images to this before the model (default: the size the model declares)")
    parser.add_argument("--out", help="folder for prediction PNGs (palette mode) and report.json")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images")
    parser.add_argument("--compare-paper", metavar="ROW", help="print this row of the paper's Table 1 beside ours")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 (default, Caffe's numbers), bf16 or fp16 where the hardware computes it natively")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default: 1)")
    parser.add_argument("--workers", type=int, default=1, help="processes computing BF (default: 1)")
    add_common_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command(lambda: _command(args))


def _command(args: argparse.Namespace) -> int:
    args.data = data_root(args.data)
    if args.limit is not None and args.limit < 1:
        raise EvaluationError("--limit must be at least 1")
    if args.batch_size < 1 or args.workers < 1:
        raise EvaluationError("--batch-size and --workers must be at least 1")
    try:
        paper = paper_row(args.compare_paper) if args.compare_paper else None
    except KeyError as exc:
        raise EvaluationError(exc.args[0]) from None
    if args.model:
        device = pick_device(args.device)
        model = load_model(args.model)
        if dropout_layers(model):
            print(f"note: {args.model} has dropout layers (a Bayesian model): scored with dropout in its test mode, "
                  "no Monte-Carlo sampling", file=sys.stderr)  # fmt: skip
        space, note = label_space_for(args.labels, num_outputs(model), getattr(model, "label_space", None))
        if note:
            print(f"note: {note}", file=sys.stderr)
        size = args.input_size or declared_input_size(model)
        dataset = SegmentationDataset(args.data, args.split, size=size, label_space=space, limit=args.limit)
        engine = build_engine(model, device, args.precision, size, args.batch_size, num_classes=space.num_outputs)
        predictions = model_predictions(engine, dataset, args.batch_size)
        source = {"model": str(args.model), "input_size": list(size) if size else None}
    else:
        space, _ = label_space_for(args.labels, None)
        dataset = SegmentationDataset(args.data, args.split, label_space=space, limit=args.limit)
        predictions = saved_predictions(args.predictions, dataset)
        source = {"predictions": str(args.predictions)}
    if args.out:
        refuse_overwriting_inputs([args.out], [args.model, args.predictions])
    # The predictions and the report appear together once all is scored, or not at all.
    with staged_outputs(args.out) if args.out else contextlib.nullcontext() as staging:
        summary = evaluate(predictions, dataset, out=staging, workers=args.workers, progress=args.progress)
        if staging is not None:
            report = {"data": str(args.data), "split": args.split, **source, "bf_tolerance": BF_TOLERANCE}
            report.update(summary)
            if paper is not None:
                report["paper"] = {"row": paper.name, "source": SOURCE, **paper.values()}
            (staging / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    what = source.get("model") or source.get("predictions")
    print(format_report(summary, f"{space.name} {args.split}, {summary['images']} images, {what}", paper))
    if args.out:
        print(f"\nwrote {Path(args.out) / 'report.json'} and {len(dataset)} predictions in "
              f"{Path(args.out) / 'labels'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
