"""Several models of one architecture trained as one grouped network: independent weights, one pass.

Table 1's rows come in pairs that differ only in their class weights (the
two balancings of a variant), and a small net such as SegNet-Basic leaves a
large GPU mostly idle. :func:`group` stacks R models of the same
architecture into one: every convolution gets R times the channels and R
times the groups, so that output block r sees only input block r; BN is
per channel and ReLU, pooling, unpooling and additions act channel by
channel, so nothing mixes the blocks; the one layer that mixes channels
(cross-channel LRN) runs per block. The image enters R times, the scores
come out as R blocks of K channels. Each row's loss takes its own block and
class weights; their sum's gradient with respect to row r's weights is row
r's own gradient, and SGD with momentum and weight decay acts elementwise:
each row is trained by its own arithmetic, up to the rounding of the
grouped kernels. :func:`ungroup` gives the rows back as ordinary models.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from segnet.models.layers import LRN, CaffeBN
from segnet.models.surgery import replace_module


class PerBlock(nn.Module):
    """A module that mixes channels, run on each of the R channel blocks with that row's own copy."""

    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        self.rows = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([row(block) for row, block in zip(self.rows, x.chunk(len(self.rows), dim=1))], dim=1)


class Grouped(nn.Module):
    """R models as one: ``forward(images)`` -> R score tensors (N x K x H x W each)."""

    def __init__(self, net: nn.Module, rows: int):
        super().__init__()
        self.net, self.rows = net, rows

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.net(images.repeat(1, self.rows, 1, 1)).chunk(self.rows, dim=1))


def _stack(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    return torch.cat([p.detach() for p in parts], dim=dim)


def _grouped_conv(convs: list[nn.Module]) -> nn.Module:
    first, r = convs[0], len(convs)
    transposed = isinstance(first, nn.ConvTranspose2d)
    kind = nn.ConvTranspose2d if transposed else nn.Conv2d
    extra = {"output_padding": first.output_padding} if transposed else {}
    conv = kind(r * first.in_channels, r * first.out_channels, first.kernel_size, stride=first.stride,
                padding=first.padding, dilation=first.dilation, groups=r * first.groups,
                bias=first.bias is not None, **extra)  # fmt: skip
    with torch.no_grad():
        conv.weight.copy_(_stack([c.weight for c in convs], 0))  # blocks of output (or, transposed, input) channels
        if first.bias is not None:
            conv.bias.copy_(_stack([c.bias for c in convs], 0))
    return conv


def _grouped_bn(bns: list[nn.Module]) -> nn.Module:
    first, r = bns[0], len(bns)
    if isinstance(first, CaffeBN):
        bn = CaffeBN(r * first.num_features, first.mode)
        with torch.no_grad():
            bn.scale.copy_(_stack([b.scale for b in bns], 1))
            bn.shift.copy_(_stack([b.shift for b in bns], 1))
        return bn
    bn = nn.BatchNorm2d(r * first.num_features, eps=first.eps, momentum=first.momentum, affine=first.affine,
                        track_running_stats=first.track_running_stats)  # fmt: skip
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(first, name) is not None:
                getattr(bn, name).copy_(_stack([getattr(b, name) for b in bns], 0))
        if first.num_batches_tracked is not None:
            bn.num_batches_tracked.copy_(first.num_batches_tracked)
    return bn.train(first.training)


def group(models: list[nn.Module]) -> Grouped:
    """One grouped network computing each of ``models`` (same architecture) on its own channel block."""
    if len(models) < 2:
        raise ValueError("grouping needs two models or more")
    names = [name for name, _ in models[0].named_modules()]
    if any([name for name, _ in m.named_modules()] != names for m in models[1:]):
        raise ValueError("grouped models must have the same architecture")
    net = copy.deepcopy(models[0])
    modules = [dict(m.named_modules()) for m in models]
    for name, module in list(net.named_modules()):
        same = [m[name] for m in modules]
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            replace_module(net, name, _grouped_conv(same))
        elif isinstance(module, (nn.BatchNorm2d, CaffeBN)):
            replace_module(net, name, _grouped_bn(same))
        elif isinstance(module, LRN):  # mixes channels: each block by itself
            replace_module(net, name, PerBlock([copy.deepcopy(m) for m in same]))
    if hasattr(net, "in_channels"):
        net.in_channels = len(models) * models[0].in_channels
    return Grouped(net, len(models))


def ungroup(grouped: Grouped, like: nn.Module) -> list[nn.Module]:
    """The rows of ``grouped`` as ordinary models built like ``like`` (their weights and BN statistics)."""
    rows = []
    source = dict(grouped.net.named_modules())
    for r in range(grouped.rows):
        model = copy.deepcopy(like)
        for name, module in model.named_modules():
            _copy_block(source.get(name), module, r, grouped.rows)
        rows.append(model)
    return rows


@torch.no_grad()
def _copy_block(source: nn.Module | None, target: nn.Module, r: int, rows: int) -> None:
    if isinstance(target, (nn.Conv2d, nn.ConvTranspose2d)):
        target.weight.copy_(source.weight.chunk(rows, dim=0)[r])
        if target.bias is not None:
            target.bias.copy_(source.bias.chunk(rows, dim=0)[r])
    elif isinstance(target, CaffeBN):
        target.scale.copy_(source.scale.chunk(rows, dim=1)[r])
        target.shift.copy_(source.shift.chunk(rows, dim=1)[r])
    elif isinstance(target, nn.BatchNorm2d):
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(target, name) is not None:
                getattr(target, name).copy_(getattr(source, name).chunk(rows, dim=0)[r])
