"""Building blocks of the SegNet models, with caffe-segnet's exact semantics.

The numbers come from ``converter.functional`` (the one home of Caffe's
arithmetic, which the converted layers call too); this module wraps them as
ordinary torch modules:

- ``MaxPoolIndices`` / ``Unpool``: Caffe's ceil-mode max pooling (first
  maximum on ties) returning the pooling indices, and unpooling to the size
  the pooling started from (45 -> 23 -> 45).
- ``CaffeBN``: caffe-segnet's BN in its LEARN mode (batch statistics, biased
  variance, eps 1e-9, in training and evaluation alike) or INFERENCE mode
  (y = scale * x + shift); segnet.models.surgery switches a model between
  these and ``torch.nn.BatchNorm2d`` without changing its outputs beyond
  float rounding.
- ``LRN``: cross-channel local response normalisation, SegNet-Basic's input
  normalisation.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from converter.functional import (
    bn_inference,
    bn_learn,
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


__all__ = [
    "BNKind", "CaffeBN", "LRN", "MaxPoolIndices", "Unpool", "make_bn",
]  # fmt: skip
