"""Changing a model's modules in place: ``replace_module``, and every change of a BN layer's kind.

BN comes in three kinds here: PyTorch's ``BatchNorm2d`` and caffe-segnet's
BN in LEARN mode (batch statistics) or INFERENCE mode (y = scale * x +
shift, see segnet.models.layers). This module holds every change between
them: converting (``convert_bn``), folding into the preceding convolution
(``fold_bn``), the layout a checkpoint records and restores, measuring
dataset statistics and folding them in (SegNet-Tutorial's BN statistics
step, ``python -m segnet.bn_stats``), and unfolding INFERENCE BN back into
a trainable BatchNorm. Outputs stay the same up to float rounding, except
where statistics are measured anew.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Literal

import torch
from torch import nn
from tqdm import tqdm

from caffe_proto import caffe_pb2
from converter import CaffeNet, UserError
from converter.functional import SEGNET_BN_EPS, batch_moments, fold_bn_statistics, fold_into_conv
from converter.layers.batchnorm import BN as CaffeGraphBN

from segnet.models.caffe_graph import CaffeSegmenter
from segnet.models.layers import BNKind, CaffeBN


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule called ``name`` (a dotted path from ``model``) is."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def bn_to_pytorch(module: CaffeBN) -> nn.BatchNorm2d:
    """Same outputs as ``module``, as a ``torch.nn.BatchNorm2d``.

    LEARN becomes BatchNorm2d with eps 1e-9 (its training-mode forward is the
    same batch normalisation); INFERENCE becomes an eval-mode BatchNorm2d with
    running mean 0 and running variance 1 - eps, which computes
    scale * x + shift (to float rounding: torch evaluates it in another order).
    """
    channels = module.num_features
    bn = nn.BatchNorm2d(channels, eps=SEGNET_BN_EPS).to(module.scale.device)
    with torch.no_grad():
        bn.weight.copy_(module.scale.view(-1))
        bn.bias.copy_(module.shift.view(-1))
        if module.mode == "INFERENCE":
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - SEGNET_BN_EPS)  # 1 - 1e-9 + 1e-9 == 1 in float32
            bn.eval()
    return bn


def bn_to_caffe(module: nn.BatchNorm2d, mode: Literal["learn", "inference"]) -> CaffeBN:
    """A ``CaffeBN`` from a ``torch.nn.BatchNorm2d``.

    "inference" folds the running statistics into scale and shift (the
    eval-mode outputs are kept, up to float rounding); "learn" keeps the
    affine parameters and normalises with batch statistics.
    """
    bn = CaffeBN(module.num_features, mode).to(module.weight.device)
    weight = module.weight.detach() if module.affine else torch.ones(module.num_features)
    bias = module.bias.detach() if module.affine else torch.zeros(module.num_features)
    with torch.no_grad():
        if mode.upper() == "INFERENCE":
            scale, shift = fold_bn_statistics(weight, bias, module.running_mean, module.running_var, module.eps)
            bn.scale.copy_(scale.view(1, -1, 1, 1))
            bn.shift.copy_(shift.view(1, -1, 1, 1))
        else:
            bn.scale.copy_(weight.view(1, -1, 1, 1))
            bn.shift.copy_(bias.view(1, -1, 1, 1))
    return bn


def convert_bn(model: nn.Module, kind: BNKind) -> nn.Module:
    """Replace every BN module of ``model`` (in place) by the ``kind`` given; returns ``model``."""
    for name, child in list(model.named_children()):
        if isinstance(child, CaffeBN):
            if kind == "pytorch":
                setattr(model, name, bn_to_pytorch(child))
            elif child.mode != kind.upper():
                # LEARN -> INFERENCE needs dataset statistics (segnet.bn_stats computes them);
                # INFERENCE -> LEARN has lost the statistics it would need to undo.
                raise ValueError(f"cannot turn a {child.mode.upper()} BN into {kind.upper()} without statistics: "
                                 "use segnet.bn_stats, or convert to 'pytorch' first")
        elif isinstance(child, nn.BatchNorm2d) and kind != "pytorch":
            setattr(model, name, bn_to_caffe(child, kind))
        else:
            convert_bn(child, kind)
    return model


@torch.no_grad()
def fold_bn(model: nn.Module) -> nn.Module:
    """Fold every BN that directly follows a convolution into it, for inference; returns ``model``.

    A BN module named ``X_bn`` is folded into the convolution ``X`` (the
    naming of all SegNet models): W' = W * s, b' = b * s + t per output
    channel, with y = s * x + t the BN's evaluation-mode transform, and the
    BN becomes an identity. LEARN-mode BN (batch statistics) cannot be folded.
    """
    modules = dict(model.named_modules())
    for name, bn in list(modules.items()):
        conv = modules.get(name[: -len("_bn")]) if name.endswith("_bn") else None
        if conv is None or not isinstance(conv, nn.Conv2d) or not isinstance(bn, (CaffeBN, nn.BatchNorm2d)):
            continue
        if isinstance(bn, CaffeBN):
            if bn.mode != "INFERENCE":
                raise ValueError(f"{name}: a LEARN-mode BN normalises with batch statistics and cannot be folded")
            scale, shift = bn.scale.view(-1), bn.shift.view(-1)
        else:
            scale, shift = fold_bn_statistics(bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)
        weight, new_bias = fold_into_conv(conv.weight, conv.bias, scale, shift)
        conv.weight.copy_(weight)
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias)
        else:
            conv.bias.copy_(new_bias)
        replace_module(model, name, nn.Identity())
    return model


def bn_layout(model: nn.Module) -> dict[str, str]:
    """Which BN kind each BN module is ("pytorch", or Caffe's mode "LEARN" / "INFERENCE"), to rebuild it."""
    kinds = {}
    for name, module in model.named_modules():
        if isinstance(module, CaffeBN):
            kinds[name] = module.mode
        elif isinstance(module, nn.BatchNorm2d):
            kinds[name] = "pytorch"
    return kinds


def apply_bn_layout(model: nn.Module, layout: dict[str, str]) -> nn.Module:
    """Give ``model`` the BN kinds of ``layout`` (from :func:`bn_layout`); returns ``model``."""
    modules = dict(model.named_modules())
    for name, kind in layout.items():
        if kind != "pytorch" and name in modules:
            replace_module(model, name, CaffeBN(modules[name].num_features, kind))
    return model


@contextmanager
def input_moments(modules: dict[str, nn.Module], unbiased: bool = False, float64: bool = False
                  ) -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor]]]:  # fmt: skip
    """Average the per-channel batch mean and variance of each module's input over the forward passes run inside.

    Yields a dict that, once the block ends, maps each name to its (mean,
    var) over the batches seen, float32 of shape (C,), summed in float64.
    Each batch's moments are computed in float32 as Caffe does, or in
    float64 (``float64``); ``unbiased`` applies the m/(m-1) correction.
    """
    sums: dict[str, list] = {name: [0.0, 0.0, 0] for name in modules}
    averages: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str) -> Callable:
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs[0]
            mean, var = batch_moments(x.double() if float64 else x)
            if unbiased:
                m = x.numel() // x.shape[1]
                var = var * (m / (m - 1))
            entry = sums[name]
            entry[0] = entry[0] + mean.view(-1).double()
            entry[1] = entry[1] + var.view(-1).double()
            entry[2] += 1

        return record

    hooks = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
    try:
        yield averages
    finally:
        for h in hooks:
            h.remove()
    for name, (mean, var, count) in sums.items():
        if count:
            averages[name] = ((mean / count).float(), (var / count).float())


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
    was_training = model.training
    model.eval()  # LEARN-mode BN uses batch statistics in either mode; dropout stays off
    try:
        with input_moments(bns, unbiased) as stats:
            for batch in tqdm(batches, total=total, disable=not progress, desc="BN statistics", unit="batch"):
                run(batch)
    finally:
        model.train(was_training)
    return stats


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


@torch.no_grad()
def unfold_inference_bn(model: nn.Module, images: torch.Tensor, batch_size: int = 4, limit: int = 64) -> str | None:
    """Turn every INFERENCE-mode ``CaffeBN`` of a readable model into a PyTorch BatchNorm with the same outputs.

    The folded form ``y = s * x + t`` lost the statistics BN needs to train.
    They are measured again: the per-channel mean and (biased) variance of
    each such layer's input over the first ``limit`` of ``images`` (averaged
    over batches of ``batch_size``, as segnet.bn_stats does; the outputs are
    kept whatever the statistics, which only set where training starts). Then ``running_mean = mean``,
    ``running_var = var``, ``weight = s * sqrt(var + eps)``, ``bias = t + s * mean``
    computes ``s * x + t`` again in evaluation mode. Returns a note for the
    user, or None when there was nothing to unfold.
    """
    folded = {name: m for name, m in model.named_modules() if isinstance(m, CaffeBN) and m.mode == "INFERENCE"}
    if not folded or isinstance(model, CaffeSegmenter):
        return None
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    images = images[:limit]
    try:
        with input_moments(folded, float64=True) as stats:
            for start in range(0, len(images), batch_size):
                model(images[start : start + batch_size].float().to(device))
    finally:
        model.train(was_training)
    for name, module in folded.items():
        mean, var = stats[name]
        bn = nn.BatchNorm2d(module.num_features).to(device)
        scale, shift = module.scale.view(-1), module.shift.view(-1)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_(scale * torch.sqrt(var + bn.eps))
        bn.bias.copy_(shift + scale * mean)
        replace_module(model, name, bn)
    return (f"{len(folded)} BN layer(s) had their statistics folded in (INFERENCE mode): measured them again on "
            f"{len(images)} training image(s) and made the layers PyTorch BatchNorm (same outputs when evaluating, "
            "batch statistics while training)")
