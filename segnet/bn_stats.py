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
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

import converter
from converter import CaffeNet, UserError
from converter.atomic import refuse_overwriting_inputs
from converter.functional import batch_moments, fold_bn_statistics
from converter.layers.batchnorm import BN as CaffeGraphBN
from converter.writer import save_caffemodel

from caffe_proto import caffe_pb2

from .cli import add_common_options, add_data_option, data_root, parse_size
from .cli import run as run_command
from .caffe_graph import declared_input_size, num_outputs
from .checkpoint import load_model, save_model
from .data import SegmentationDataset
from .labels import label_space_for
from .nn import CaffeBN, convert_bn


def _learn_bns(model: nn.Module) -> dict[str, nn.Module]:
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, (CaffeBN, CaffeGraphBN)) and m.mode == "LEARN"
    }


@torch.no_grad()
def compute_bn_statistics(
    model: nn.Module,
    batches: Iterable,
    unbiased: bool = False,
    progress: bool = True,
    total: int | None = None,
    run: Callable | None = None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Average batch mean and variance of every LEARN-mode BN of ``model`` over ``batches``.

    Each batch is passed to ``run`` (default: ``model`` itself); returns
    {module name: (mean, var)} with shapes (C,).
    """
    run = run or model
    bns = _learn_bns(model)
    if not bns:
        raise UserError("the model has no BN layer in LEARN mode (already INFERENCE, or no BN at all)")
    sums = {name: [0.0, 0.0, 0] for name in bns}
    hooks = []
    for name, module in bns.items():

        def record(mod, inputs, outputs, name=name):
            x = inputs[0]
            mean, var = batch_moments(x)
            if unbiased:
                m = x.numel() // x.shape[1]
                var = var * (m / (m - 1))
            entry = sums[name]
            entry[0] = entry[0] + mean.view(-1).double()
            entry[1] = entry[1] + var.view(-1).double()
            entry[2] += 1

        hooks.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()  # LEARN-mode BN uses batch statistics in either mode; dropout stays off
    try:
        for batch in tqdm(batches, total=total, disable=not progress, desc="BN statistics", unit="batch"):
            run(batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {name: ((s[0] / s[2]).float(), (s[1] / s[2]).float()) for name, s in sums.items()}


@torch.no_grad()
def fold_statistics(model: nn.Module, stats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> nn.Module:
    """Fold averaged statistics into the LEARN BN layers and switch them to INFERENCE; returns ``model``."""
    modules = dict(model.named_modules())
    for name, (mean, var) in stats.items():
        bn = modules[name]
        scale, shift = fold_bn_statistics(bn.scale, bn.shift, mean.view_as(bn.scale), var.view_as(bn.scale))
        bn.scale.copy_(scale)
        bn.shift.copy_(shift)
        bn.mode = "INFERENCE"
    if isinstance(model, CaffeNet):  # keep the net definition in step with the modules
        for layer in model.net_param.layer:
            if layer.type == "BN":
                layer.bn_param.bn_mode = caffe_pb2.BNParameter.INFERENCE
                del layer.top[1:]
    return model


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
    p.add_argument("--image-size", type=parse_size, metavar="H,W",
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
    if not isinstance(model, CaffeNet) and not _learn_bns(model):
        convert_bn(model, "learn")  # PyTorch BatchNorm: use batch statistics, keep gamma and beta
    size = args.image_size or declared_input_size(model)
    space, _ = label_space_for(args.labels, num_outputs(model), getattr(model, "label_space", None))
    dataset = SegmentationDataset(data_root(args.data), args.split, size=size, label_space=space, limit=args.limit)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=False)
    run = _caffe_runner(model) if isinstance(model, CaffeNet) else (lambda batch: model(batch[0]))
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


def _caffe_runner(net: CaffeNet) -> Callable:
    """Feed the images of (images, labels) batches to a Caffe net's first input."""
    data = net.input_names[0]
    # Only what the BN layers need runs: a training prototxt's loss and accuracy layers are skipped.
    bn_tops = [step.tops[0] for step, module in net.named_layers() if isinstance(module, CaffeGraphBN)]

    def run(batch):
        net(**{data: batch[0]}, blobs=bn_tops)

    return run


if __name__ == "__main__":
    sys.exit(main())
