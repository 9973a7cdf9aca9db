"""Dataset BN statistics: gathered over a split and folded into scale and shift (``python -m segnet.bn_stats``)."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

from converter import CaffeNet, UserError
from converter.functional import batch_moments, fold_bn_statistics
from converter.layers.batchnorm import BN as CaffeGraphBN

from caffe_proto import caffe_pb2

from segnet.models.layers import CaffeBN


def learn_bns(model: nn.Module) -> dict[str, nn.Module]:
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
    bns = learn_bns(model)
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


def caffe_runner(net: CaffeNet) -> Callable:
    """Feed the images of (images, labels) batches to a Caffe net's first input."""
    data = net.input_names[0]
    # Only what the BN layers need runs: a training prototxt's loss and accuracy layers are skipped.
    bn_tops = [step.tops[0] for step, module in net.named_layers() if isinstance(module, CaffeGraphBN)]

    def run(batch):
        net(**{data: batch[0]}, blobs=bn_tops)

    return run
