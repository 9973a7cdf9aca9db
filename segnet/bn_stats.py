"""``python -m segnet.bn_stats``: fold dataset BN statistics into scale and shift.

SegNet trains its BN layers in caffe-segnet's LEARN mode, which normalises
with the statistics of each batch, also at test time: a net used that way on
single images gives poor output. SegNet-Tutorial's compute_bn_statistics.py
fixes that; this is its equivalent:

1. run the LEARN-mode net over the training set (batch statistics in every
   BN, as during training), recording each BN layer's batch mean and
   (biased) variance;
2. average them over the batches;
3. fold them in: scale' = scale / sqrt(var + 1e-9),
   shift' = shift - scale * mean / sqrt(var + 1e-9), and switch the layers to
   INFERENCE (y = scale' * x + shift').

The script multiplies the variance by m / (m - 1) (m = values per channel in
a batch) to unbias it, but under the Python 2 it was written for that is an
integer division equal to 1: the released inference weights were made
without the correction. That is the default here; ``--unbiased-variance``
applies it.

Works on converted Caffe nets (prototxt + caffemodel, or a converter ``.pt``)
and on this project's model checkpoints with LEARN-mode or PyTorch BN.
"""


from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import converter
from converter import CaffeNet
from converter.atomic import refuse_overwriting_inputs
from converter.writer import save_caffemodel

from segnet.cli import add_input_size_option, add_common_options, add_data_option, data_root
from converter.errors import run_command
from segnet.data.datasets import SegmentationDataset
from segnet.data.labels import label_space_for
from segnet.models.surgery import caffe_runner, compute_bn_statistics, fold_statistics, learn_bns
from segnet.models.caffe_graph import declared_input_size, num_outputs
from segnet.models.checkpoint import load_model, save_model
from segnet.models.surgery import convert_bn


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m segnet.bn_stats",
        description="Compute BN statistics over the training set and fold them into INFERENCE-mode BN layers.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="a converted Caffe net (.pt), a segnet checkpoint, or a prototxt (then give --caffemodel)")
    p.add_argument("--caffemodel", help="weights for a prototxt given as MODEL")
    add_data_option(p)
    p.add_argument("--labels", help="label space of the data's labels: a name, a class count or a JSON file "
                   "(default: the model's)")  # fmt: skip
    p.add_argument("--split", default="train", help="split to gather statistics on (default train)")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4, as SegNet-Tutorial's training nets)")
    add_input_size_option(p, "image_size",
                   help="resize images to this (default: the size the model declares, else as stored)")
    p.add_argument("--unbiased-variance", action="store_true", help="apply the m/(m-1) correction (not in the released weights)")
    p.add_argument("--limit", type=int, help="use only the first N images")
    add_common_options(p)
    p.add_argument("-o", "--output", required=True,
                   help="where to write: a .pt checkpoint, or a .caffemodel for Caffe nets (use it with an "
                        "inference prototxt, as SegNet-Tutorial does)")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command(lambda: _command(args))


def _command(args: argparse.Namespace) -> int:
    refuse_overwriting_inputs([args.output], [args.model, args.caffemodel])
    if args.caffemodel:
        model = converter.convert(args.model, args.caffemodel)
    else:
        model = load_model(args.model)
    if not isinstance(model, CaffeNet) and not learn_bns(model):
        convert_bn(model, "learn")  # PyTorch BatchNorm: use batch statistics, keep gamma and beta
    size = args.image_size or declared_input_size(model)
    space, _ = label_space_for(args.labels, num_outputs(model), getattr(model, "label_space", None))
    dataset = SegmentationDataset(data_root(args.data), args.split, size=size, label_space=space, limit=args.limit)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=False)
    run = caffe_runner(model) if isinstance(model, CaffeNet) else (lambda batch: model(batch[0]))
    stats = compute_bn_statistics(model, loader, args.unbiased_variance, progress=args.progress,
                                  total=len(loader), run=run)  # fmt: skip
    fold_statistics(model, stats)
    out = Path(args.output)
    if isinstance(model, CaffeNet):
        if out.suffix == ".caffemodel":
            save_caffemodel(model, out)
        else:
            converter.save(model, out)
    else:
        meta = {"bn_statistics": {"split": args.split, "images": len(dataset), "unbiased": args.unbiased_variance}}
        save_model(out, model, meta)
    print(f"folded statistics of {len(stats)} BN layer(s) over {len(dataset)} images into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
