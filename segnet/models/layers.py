"""Building blocks of the SegNet models, with caffe-segnet's exact semantics.

The numbers come from ``converter.functional`` (the one home of Caffe's
arithmetic, which the converted layers call too); this module wraps them as
ordinary torch modules:

- ``MaxPoolIndices`` / ``Unpool``: Caffe's ceil-mode max pooling (first
  maximum on ties) returning the pooling indices, and unpooling to the size
  the pooling started from (45 -> 23 -> 45).
- ``CaffeBN``: caffe-segnet's BN in its LEARN mode (batch statistics, biased
  variance, eps 1e-9, in training and evaluation alike) or INFERENCE mode
  (y = scale * x + shift); ``convert_bn`` switches a model between these and
  ``torch.nn.BatchNorm2d`` without changing its outputs beyond float rounding.
- ``LRN``: cross-channel local response normalisation, SegNet-Basic's input
  normalisation.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from converter.functional import (
    SEGNET_BN_EPS,
    bn_inference,
    bn_learn,
    fold_into_conv,
    fold_bn_statistics,
    lrn_across_channels,
    max_pool2d,
    unpool2d,
)

BNKind = Literal["pytorch", "learn", "inference"]


class MaxPoolIndices(nn.Module):
    """2x2 (by default) max pooling in Caffe's ceil mode, returning (values, indices)."""

    def __init__(self, kernel: int = 2, stride: int = 2):
        super().__init__()
        self.kernel, self.stride = (kernel, kernel), (stride, stride)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return max_pool2d(x, self.kernel, self.stride, return_indices=True)


class Unpool(nn.Module):
    """Place values at their pooling indices in a zero map of ``size`` (caffe-segnet's Upsample)."""

    def forward(self, x: torch.Tensor, indices: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return unpool2d(x, indices, size[0], size[1], unique=True)  # 2x2 windows do not overlap


class LRN(nn.Module):
    """Caffe's ACROSS_CHANNELS LRN: x * (k + alpha/n * sum of x^2 over n channels)^-beta."""

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lrn_across_channels(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class CaffeBN(nn.Module):
    """caffe-segnet's BN layer. Parameters ``scale`` and ``shift`` have shape (1, C, 1, 1), as in Caffe.

    mode LEARN: y = scale * (x - mean) / sqrt(var + 1e-9) + shift with the
    current batch's statistics, whether training or not (as caffe-segnet).
    mode INFERENCE: y = scale * x + shift (statistics folded in).
    ``mode`` is spelled as Caffe spells it (the converted BN layers' ``mode``
    too); "learn" and "inference" are accepted.
    """

    def __init__(self, channels: int, mode: str = "LEARN"):
        super().__init__()
        if mode.upper() not in ("LEARN", "INFERENCE"):
            raise ValueError(f"BN mode must be LEARN or INFERENCE, not {mode!r}")
        self.mode = mode.upper()
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.shift = nn.Parameter(torch.zeros(1, channels, 1, 1))

    @property
    def num_features(self) -> int:
        return self.scale.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "INFERENCE":
            return bn_inference(x, self.scale, self.shift)
        return bn_learn(x, self.scale, self.shift)[0]

    def extra_repr(self) -> str:
        return f"{self.num_features}, mode={self.mode}"


def make_bn(channels: int, kind: BNKind) -> nn.Module:
    if kind == "pytorch":
        return nn.BatchNorm2d(channels)
    return CaffeBN(channels, kind)


# ------------------------------------------------------------------ conversions


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
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())
    return model


__all__ = [
    "BNKind", "CaffeBN", "LRN", "MaxPoolIndices", "Unpool", "bn_to_caffe",
    "bn_to_pytorch", "convert_bn", "fold_bn", "make_bn",
]  # fmt: skip
