"""Batch normalisation: caffe-segnet's BN, and mainline Caffe's BatchNorm + Scale/Bias.

caffe-segnet BN (blobs: scale and shift, each 1 x C x 1 x 1)
  LEARN      y = scale * (x - mean) / sqrt(var + 1e-9) + shift, with mean and
             var taken over (N, H, W) of the current batch in every phase.
             var is the biased variance, computed as E[x^2] - E[x]^2 (as
             caffe-segnet does; it loses precision when |mean| >> std).
             Optional 2nd and 3rd tops: the batch mean and var (without eps).
  INFERENCE  y = scale * x + shift: statistics already folded into scale/shift.

mainline BatchNorm (blobs: mean, variance, scale factor s, all unscaled sums)
  y = (x - mean/s) / sqrt(var/s + eps) with stored statistics when
  use_global_stats (default: in TEST), else with batch statistics; a Scale
  layer (and optional bias) follows it for the affine part.
"""

from __future__ import annotations

import torch
from torch import nn

from caffe_proto import caffe_pb2

from ..fillers import fill
# Caffe's arithmetic lives in converter.functional; its names stay importable from here.
from ..functional import SEGNET_BN_EPS, batch_moments, bn_inference, bn_learn  # noqa: F401
from .base import CaffeLayer, register


@register("BN")
class BN(CaffeLayer):
    n_tops = (1, 3)
    blob_attrs = ("scale", "shift")

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.bn_param
        shape = bottom_shapes[0]
        if len(shape) != 4:
            raise self.fail(f"expects a 4-D bottom, got shape {list(shape)}")
        self.channels = shape[1]
        self.mode = caffe_pb2.BNParameter.BNMode.Name(p.bn_mode)
        self.scale = nn.Parameter(torch.ones(1, self.channels, 1, 1))
        self.shift = nn.Parameter(torch.zeros(1, self.channels, 1, 1))
        self._fillers = (p.scale_filler, p.shift_filler)

    def fill(self, generator):
        fill(self.scale, self._fillers[0], generator)
        fill(self.shift, self._fillers[1], generator)

    def top_shapes(self, bottom_shapes):
        stats = (1, self.channels, 1, 1)
        return [tuple(bottom_shapes[0]), stats, stats][: self.num_tops]

    def forward(self, x):
        if self.mode == "INFERENCE":
            if self.num_tops > 1:
                raise self.fail("INFERENCE mode has no batch statistics to output")
            return (bn_inference(x, self.scale, self.shift),)
        y, mean, var = bn_learn(x, self.scale, self.shift)
        return (y, mean, var)[: self.num_tops]

    def extra_repr(self):
        return f"{super().extra_repr()} mode={self.mode}"


@register("BatchNorm")
class BatchNorm(CaffeLayer):
    blob_attrs = ("mean", "variance", "scale_factor")

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.batch_norm_param
        self.channels = bottom_shapes[0][1] if len(bottom_shapes[0]) > 1 else 1
        self.use_global_stats = p.use_global_stats if p.HasField("use_global_stats") else None
        self.momentum = p.moving_average_fraction
        self.eps = p.eps
        self.register_buffer("mean", torch.zeros(self.channels))
        self.register_buffer("variance", torch.zeros(self.channels))
        self.register_buffer("scale_factor", torch.zeros(1))

    def _global(self) -> bool:
        return (not self.training) if self.use_global_stats is None else self.use_global_stats

    def forward(self, x):
        view = (1, self.channels) + (1,) * (x.dim() - 2)
        if self._global():
            s = self.scale_factor[0]
            factor = 0.0 if s == 0 else 1.0 / s
            mean, var = self.mean * factor, self.variance * factor
            return ((x - mean.view(view)) / torch.sqrt(var.view(view) + self.eps),)
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dim=dims)
        var = (x - mean.view(view)).square().mean(dim=dims)
        with torch.no_grad():  # Caffe's running sums, unbiased variance
            m = x.numel() // self.channels
            self.scale_factor.mul_(self.momentum).add_(1)
            self.mean.mul_(self.momentum).add_(mean)
            self.variance.mul_(self.momentum).add_(var * (m / max(m - 1, 1)))
        return ((x - mean.view(view)) / torch.sqrt(var.view(view) + self.eps),)


class _AffineBase(CaffeLayer):
    """Scale and Bias: a per-channel (axis 1, one axis) parameter, or a second bottom."""

    n_bottoms = (1, 2)

    def _param_shape(self, p, bottom_shapes):
        shape = bottom_shapes[0]
        axis = p.axis % len(shape)
        num_axes = p.num_axes if p.num_axes >= 0 else len(shape) - axis
        return axis, tuple(shape[axis : axis + num_axes])

    def _broadcast(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        trailing = x.dim() - self.axis - t.dim()
        return t.view(*t.shape, *([1] * trailing))


@register("Scale")
class Scale(_AffineBase):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.scale_param
        self.axis, shape = self._param_shape(p, bottom_shapes)
        self.from_bottom = len(bottom_shapes) == 2
        attrs = []
        if not self.from_bottom:
            self.weight = nn.Parameter(torch.ones(shape))
            attrs.append("weight")
        if p.bias_term:
            self.bias = nn.Parameter(torch.zeros(shape))
            attrs.append("bias")
        self.blob_attrs = tuple(attrs)
        self._fillers = (p.filler, p.bias_filler)

    def fill(self, generator):
        if not self.from_bottom:
            if self._fillers[0].ByteSize():
                fill(self.weight, self._fillers[0], generator)
            else:
                nn.init.ones_(self.weight)
        if "bias" in self.blob_attrs:
            fill(self.bias, self._fillers[1], generator)

    def forward(self, x, factor=None):
        y = x * self._broadcast(factor if self.from_bottom else self.weight, x)
        if "bias" in self.blob_attrs:
            y = y + self._broadcast(self.bias, x)
        return (y,)


@register("Bias")
class Bias(_AffineBase):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.bias_param
        self.axis, shape = self._param_shape(p, bottom_shapes)
        self.from_bottom = len(bottom_shapes) == 2
        if not self.from_bottom:
            self.bias = nn.Parameter(torch.zeros(shape))
            self.blob_attrs = ("bias",)
        self._filler = p.filler

    def fill(self, generator):
        if not self.from_bottom:
            fill(self.bias, self._filler, generator)

    def forward(self, x, offset=None):
        return (x + self._broadcast(offset if self.from_bottom else self.bias, x),)
