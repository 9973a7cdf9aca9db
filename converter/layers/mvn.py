"""MVN: mean-variance normalisation of each (n, c) plane, as caffe-segnet computes it.

Statistics are taken over H*W values per (n, c), or over C*H*W per n with
``across_channels``:

    normalize_variance (default)  y = (x - E[x]) / (sqrt(E[x^2] - E[x]^2) + eps)
    normalize_variance: false     y = x - E[x]

The variance is the biased one, computed as E[x^2] - E[x]^2; ``eps``
(default 1e-9) is added to the standard deviation, not to the variance. The
top is always 4-D: Caffe reshapes it to the bottom's num, channels, height,
width (missing axes count as 1).

Gradients are caffe-segnet's formulas, which are not the exact derivatives:
    normalize_variance  dx = (dy - mean(dy) - y * mean(y * dy)) / (std + eps)
                        (the exact one has (std + eps) / std on the last term)
    mean only           dx = dy  (the mean's own gradient is left out)

``across_channels`` with more than one channel is refused: caffe-segnet then
reads past a buffer of H*W ones and its output is garbage.
"""

from __future__ import annotations

import torch

from .base import CaffeLayer, Shape, register
from .statistics import mean_rounding, with_rounded_backward


class _MVNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dims, normalize_variance, eps):
        mean = x.mean(dim=dims, keepdim=True)
        centred = x - mean
        ctx.dims = dims
        ctx.normalize_variance = normalize_variance
        if not normalize_variance:
            return centred
        variance = x.square().mean(dim=dims, keepdim=True) - mean.square()
        scale = variance.sqrt() + eps
        y = centred / scale
        ctx.save_for_backward(y, scale)
        return y

    @staticmethod
    def backward(ctx, dy):
        if not ctx.normalize_variance:
            return dy, None, None, None
        y, scale = ctx.saved_tensors
        dims = ctx.dims
        dx = (dy - dy.mean(dim=dims, keepdim=True) - y * (y * dy).mean(dim=dims, keepdim=True)) / scale
        return dx, None, None, None


def mvn(x: torch.Tensor, across_channels: bool = False, normalize_variance: bool = True, eps: float = 1e-9):
    """caffe-segnet's MVN on a 4-D blob, with its gradient."""
    dims = (1, 2, 3) if across_channels else (2, 3)
    return _MVNFunction.apply(x, dims, normalize_variance, eps)


def legacy_4d(shape: Shape) -> Shape:
    """num, channels, height, width as Caffe's legacy accessors give them (missing axes are 1)."""
    return tuple(shape) + (1,) * (4 - len(shape))


@register("MVN")
class MVN(CaffeLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.mvn_param
        shape = bottom_shapes[0]
        if len(shape) > 4:
            raise self.fail(f"takes a bottom of at most 4 axes, got shape {list(shape)}")
        self.across_channels = p.across_channels
        self.normalize_variance = p.normalize_variance
        self.eps = p.eps
        channels = legacy_4d(shape)[1]
        if self.across_channels and channels > 1:
            raise self.fail(
                f"across_channels on {channels} channels: caffe-segnet computes garbage there (it reads past a "
                "buffer of H*W ones; only 1 channel works); Reshape the bottom to N x 1 x (C*H) x W first"
            )

    def top_shapes(self, bottom_shapes):
        return [legacy_4d(bottom_shapes[0])]

    def forward(self, x):
        x = x.reshape(legacy_4d(tuple(x.shape)))
        return (mvn(x, self.across_channels, self.normalize_variance, self.eps),)

    def coherent_rounding(self, bottoms, tops, uniform):
        """The rounding of each plane's mean and of its variance ``E[x^2] - E[x]^2`` (see BN's, the same sums)."""
        x = bottoms[0].reshape(legacy_4d(tuple(bottoms[0].shape)))
        dims = (1, 2, 3) if self.across_channels else (2, 3)
        with torch.no_grad():
            mean = x.mean(dim=dims, keepdim=True)
            r_mean, r_sq = uniform(2, x.dtype)
            d_mean = r_mean * mean_rounding(x, dims)
        if not self.normalize_variance:  # outside no_grad: the top keeps its gradient
            return (tops[0] - d_mean,)
        with torch.no_grad():
            mean_sq = x.square().mean(dim=dims, keepdim=True)
            std = (mean_sq - mean.square()).clamp(min=0).sqrt()
            d_var = r_sq * mean_rounding(x.square(), dims) - 2 * mean * d_mean
            inv_scale = 1 / (std + self.eps)
            std_error = torch.where(std > 0, d_var / (2 * std.clamp(min=torch.finfo(x.dtype).tiny)), 0) * inv_scale
            delta = -d_mean * inv_scale - tops[0] * std_error
        return (with_rounded_backward(tops[0] + delta, x, tops[0].detach(), inv_scale, std_error, dims, uniform),)

    def extra_repr(self):
        return (f"{super().extra_repr()} normalize_variance={self.normalize_variance} "
                f"across_channels={self.across_channels} eps={self.eps}")  # fmt: skip
