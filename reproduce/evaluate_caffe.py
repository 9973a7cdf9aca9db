"""Convert a SegNet Caffe model and score it on CamVid test with the paper's protocol.

    python reproduce/evaluate_caffe.py PROTOTXT CAFFEMODEL [--data CAMVID] [--limit N] [--out DIR]

Prints G, C, mIoU and BF (and the per-class table) beside the paper's
numbers for that architecture: Table 1's SegNet-Basic rows for SegNet-Basic
nets, Table 3's SegNet rows for SegNet. Images are fed as caffe-segnet's
DenseImageData fed them (BGR, 0..255), resized to the prototxt's input size;
predictions are scored at the labels' own size (360x480).
Warns when BN layers are still in LEARN mode (statistics not folded in:
run python -m segnet.bn_stats first).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import converter
from converter.errors import run_command
from segnet.cli import add_common_options, add_data_option, data_root
from segnet.models.caffe_graph import CaffeSegmenter
from segnet.data.datasets import SegmentationDataset
from segnet.models.mc_dropout import dropout_layers, dropout_sampling
from segnet.evaluation.metrics import METRICS
from segnet.evaluation.core import evaluate, format_report, model_predictions
from segnet.evaluation.paper import TABLE3_SEGNET, paper_row
from segnet.models.family import SEGNET, SEGNET_BASIC
from segnet.models.weights import architecture_of

def paper_rows(net: converter.CaffeNet) -> dict[str, dict[str, float]]:
    arch = architecture_of(net)
    keys = METRICS
    if arch is SEGNET_BASIC:
        return {f"Table 1 {r}": paper_row(r).values() for r in ("SegNet-Basic", "SegNet-Basic/natural")}
    if arch is SEGNET:
        return {f"Table 3 SegNet {it} (3.5K images, no balancing)": dict(zip(keys, v)) for it, v in TABLE3_SEGNET.items()}
    return {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python reproduce/evaluate_caffe.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("prototxt")
    p.add_argument("caffemodel")
    add_data_option(p)
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, help="score only the first N images")
    p.add_argument("--out", help="folder for predictions and report.json")
    p.add_argument("--device", default="cpu")
    add_common_options(p)
    args = p.parse_args(argv)
    return run_command(lambda: _command(args))


def _command(args: argparse.Namespace) -> int:
    data = data_root(args.data)
    net = converter.convert(args.prototxt, args.caffemodel).eval()
    learn = [s.name for s, m in net.named_layers() if s.type == "BN" and m.mode == "LEARN"]
    if learn:
        print(f"warning: {len(learn)} BN layer(s) are in LEARN mode (batch statistics); results on single "
              "images will be poor: fold BN statistics first with python -m segnet.bn_stats", file=sys.stderr)  # fmt: skip
    model = CaffeSegmenter(net, probabilities=True)  # only the layers the scores need: no label input
    if dropout_layers(model):
        print("note: the net has dropout layers; scored with dropout off (no Monte-Carlo sampling)", file=sys.stderr)
    # images at the net's input size; predictions are scored at the labels' own size
    dataset = SegmentationDataset(data, args.split, size=model.input_size, limit=args.limit)
    with dropout_sampling(model, False):
        summary = evaluate(model_predictions(model, dataset, device=args.device), dataset, out=args.out,
                           progress=args.progress)  # fmt: skip
    print(format_report(summary, f"{Path(args.caffemodel).name} on CamVid {args.split}, {summary['images']} images"))
    rows = paper_rows(net)
    if rows:
        print(f"\n{'':<50} {'G':>6} {'C':>6} {'mIoU':>6} {'BF':>6}")
        print(f"{'ours':<50} " + " ".join(f"{100 * summary[k]:>6.2f}" for k in METRICS))
        for label, values in rows.items():
            print(f"{label:<50} " + " ".join(f"{values[k]:>6.2f}" for k in METRICS))
    if args.out:
        Path(args.out, "report.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "confusion_matrix"},
                                                            indent=1, default=float))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
