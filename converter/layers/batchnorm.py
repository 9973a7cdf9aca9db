"""Batch normalisation: caffe-segnet's BN, and mainline Caffe's BatchNorm + Scale/Bias.

caffe-segnet BN (blobs: scale and shift, each 1 x C x 1 x 1)
  LEARN      y = scale * (x - mean) / sqrt(var + 1e-9) + shift, with mean and
             var taken over (N, H, W) of the current batch in every phase.
             var is the biased variance, computed as E[x^2] - E[x]^2 (as
             caffe-segnet does; it loses precision when |mean| >> std).
             Optional 2nd and 3rd tops: the batch mean and var (without eps).
  INFERENCE  y = scale * x + shift: statistics already folded into scale/shift.

mainline BatchNorm (blobs: mean, variance, scale factor s; each (C,), s (1,))
  C is the size of axis 1; the statistics run over every other axis.
  use_global_stats (default: true in the TEST phase, false in TRAIN; here the
  module's mode, which the net sets from its phase, so ``.eval()`` acts as
  Caffe's TEST net): y = (x - mean * f) / sqrt(var * f + eps) with f = 1/s,
  or f = 0 when s is 0. Otherwise y = (x - m) / sqrt(v + eps) with the batch
  mean m and biased variance v, and each such forward pass updates the blobs
  as Caffe's does: s = s * maf + 1, mean = mean * maf + m, var = var * maf +
  v * n/(n-1) (n values per channel; factor 1 when n is 1), maf being
  ``moving_average_fraction`` (default 0.999). eps defaults to 1e-5. Caffe's
  gradients are the exact derivatives: dy / sqrt(var * f + eps) with stored
  statistics, the batch-norm backward with batch statistics. The blobs are
  statistics, not learned: a ``param`` entry for them must say lr_mult: 0.

mainline Scale: y = x * scale (+ bias with ``bias_term``); Bias: y = x + bias.
  The scale (bias) is a learned blob or, with a second bottom, that bottom.
  It covers bottom 0's axes from ``axis`` (negative counts from the end) on:
  ``num_axes`` of them for a blob (-1: to the end; 0: a scalar), as many as
  the second bottom has for a bottom (a 0-axis bottom: a scalar, any axis),
  and broadcasts over the rest. Scale's blob starts at 1 without a filler,
  biases at their filler (Caffe's default: 0). Blobs: Scale [scale, bias] or
  with a second bottom [bias]; Bias [bias] or none. Gradients (the exact
  derivatives, as Caffe's): dy * scale to x; the sum of dy * x over the
  broadcast positions to the scale, blob or second bottom; the sum of dy to
  the bias.
"""

from __future__ import annotations

import torch
from torch import nn

from caffe_proto import caffe_pb2

from ..fillers import fill
# Caffe's arithmetic lives in converter.functional; its names stay importable from here.
from ..functional import SEGNET_BN_EPS, batch_moments, bn_inference, bn_learn  # noqa: F401
from .base import CaffeLayer, canonical_axis, register
from .statistics import mean_rounding, with_rounded_backward


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

    def coherent_rounding(self, bottoms, tops, uniform):
        """The rounding of the batch mean and of caffe-segnet's variance ``E[x^2] - E[x]^2``.

        Each statistic is a float32 mean over N*H*W values, rounded as
        ``mean_rounding`` says; the variance inherits both means' errors,
        amplified where |mean| is large against the spread. The same random
        numbers serve every channel: sums of like values in like order round
        alike (on raw images with flat regions Caffe's channels all err the
        same way).
        """
        if self.mode == "INFERENCE":
            return tops
        x = bottoms[0]
        with torch.no_grad():
            dims = (0, 2, 3)
            mean = x.mean(dim=dims, keepdim=True)
            mean_sq = x.square().mean(dim=dims, keepdim=True)
            var = mean_sq - mean.square()
            r_mean, r_sq = uniform(2, x.dtype)
            d_mean = r_mean * mean_rounding(x, dims)
            d_var = r_sq * mean_rounding(x.square(), dims) - 2 * mean * d_mean
            inv_std = torch.rsqrt(var + SEGNET_BN_EPS)
            gain_over_std = self.scale.detach() * inv_std
            std_error = d_var / (2 * (var + SEGNET_BN_EPS))
            xhat = (x - mean) * inv_std
            delta = -gain_over_std * d_mean - (tops[0] - self.shift.detach()) * std_error
        y = tops[0] + delta  # outside no_grad: the gradient through y stays the exact one
        moved = [with_rounded_backward(y, x, xhat, gain_over_std, std_error, dims, uniform, gain=self.scale,
                                       mean_error=d_mean * inv_std), *tops[1:]]  # fmt: skip
        for i, d in ((1, d_mean), (2, d_var)):  # the optional mean and variance tops
            if i < len(tops):
                moved[i] = tops[i] + d
        return tuple(moved)

    def extra_repr(self):
        return f"{super().extra_repr()} mode={self.mode}"


@register("BatchNorm")
class BatchNorm(CaffeLayer):
    blob_attrs = ("mean", "variance", "scale_factor")

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.batch_norm_param
        shape = bottom_shapes[0]
        if len(shape) < 2:
            raise self.fail(f"needs a bottom of at least 2 axes (Caffe reads the channels from axis 1), got shape "
                            f"{list(shape)}")  # fmt: skip
        for i, spec in enumerate(param.param[:3]):
            if spec.lr_mult != 0:
                raise self.fail(f"param {i} has lr_mult {spec.lr_mult:g}: BatchNorm's blobs are statistics, not "
                                "parameters to learn; give lr_mult: 0 or leave the param entries out")  # fmt: skip
        self.channels = shape[1]
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
            factor = torch.where(s == 0, torch.zeros_like(s), 1 / s)  # Caffe's 0 -> 0 rule
            mean, var = self.mean * factor, self.variance * factor
            return ((x - mean.view(view)) / torch.sqrt(var.view(view) + self.eps),)
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dim=dims)
        centred = x - mean.view(view)
        var = centred.square().mean(dim=dims)
        with torch.no_grad():  # Caffe's running sums, unbiased variance
            n = x.numel() // self.channels
            self.scale_factor.mul_(self.momentum).add_(1)
            self.mean.mul_(self.momentum).add_(mean.detach().to(self.mean.dtype))
            correction = n / (n - 1) if n > 1 else 1.0
            self.variance.mul_(self.momentum).add_((var.detach() * correction).to(self.variance.dtype))
        return (centred / torch.sqrt(var.view(view) + self.eps),)

    def coherent_rounding(self, bottoms, tops, uniform):
        """The rounding of the batch mean and variance (mainline takes the variance of the centred values)."""
        if self._global():
            return tops
        x = bottoms[0]
        with torch.no_grad():
            dims = [0] + list(range(2, x.dim()))
            mean = x.mean(dim=dims, keepdim=True)
            var = (x - mean).square().mean(dim=dims, keepdim=True)
            r_mean, r_var = uniform(2, x.dtype)
            d_mean = r_mean * mean_rounding(x, dims)
            d_var = r_var * mean_rounding((x - mean).square(), dims)
            inv_std = torch.rsqrt(var + self.eps)
            std_error = d_var / (2 * (var + self.eps))
            delta = -inv_std * d_mean - tops[0] * std_error
            xhat = (x - mean) * inv_std
        return (with_rounded_backward(tops[0] + delta, x, xhat, inv_std, std_error, dims, uniform),)

    def extra_repr(self):
        stats = "stored" if self.use_global_stats else "batch" if self.use_global_stats is False else "by mode"
        return f"{super().extra_repr()} statistics={stats} eps={self.eps} maf={self.momentum}"


def covered_axes(layer: CaffeLayer, shape, axis: int, num_axes: int, what: str) -> tuple[int, tuple[int, ...]]:
    """Caffe's rule for a learned Scale/Bias blob: (canonical axis, the blob's shape)."""
    first = canonical_axis(axis, len(shape), layer.caffe_name)
    if num_axes < -1:
        raise layer.fail(f"num_axes must be -1 (to the end) or at least 0, got {num_axes}")
    if num_axes >= 0 and first + num_axes > len(shape):
        raise layer.fail(f"the {what} blob would cover axes {first}..{first + num_axes - 1}, past bottom 0's "
                         f"shape {list(shape)}")  # fmt: skip
    end = len(shape) if num_axes == -1 else first + num_axes
    return first, tuple(shape[first:end])


def operand_axis(layer: CaffeLayer, shape, operand, axis: int, what: str) -> int:
    """Caffe's Reshape rule: where a scale/bias of shape ``operand`` starts in bottom 0 (checked)."""
    first = 0 if len(operand) == 0 else canonical_axis(axis, len(shape), layer.caffe_name)
    if first + len(operand) > len(shape) or tuple(shape[first : first + len(operand)]) != tuple(operand):
        raise layer.fail(f"the {what} of shape {list(operand)} does not match bottom 0's shape {list(shape)} "
                         f"from axis {first} on")  # fmt: skip
    return first


def broadcast(t: torch.Tensor, first: int, dims: int) -> torch.Tensor:
    """``t`` (covering axes from ``first`` on) viewed to broadcast against a ``dims``-axis blob."""
    return t.reshape(*t.shape, *([1] * (dims - first - t.dim())))


@register("Scale")
class Scale(CaffeLayer):
    n_bottoms = (1, 2)

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.scale_param
        shape = bottom_shapes[0]
        self.from_bottom = len(bottom_shapes) == 2
        attrs = []
        if self.from_bottom:
            scale_shape = tuple(bottom_shapes[1])
        else:
            _, scale_shape = covered_axes(self, shape, p.axis, p.num_axes, "scale")
            self.weight = nn.Parameter(torch.ones(scale_shape))
            attrs.append("weight")
        self.axis = operand_axis(self, shape, scale_shape, p.axis, "scale")
        self.bias_axis = None
        if p.bias_term:  # Caffe's inner Bias layer: axis as given, num_axes the scale's
            bias_axes = len(scale_shape) if self.from_bottom else p.num_axes
            _, bias_shape = covered_axes(self, shape, p.axis, bias_axes, "bias")
            self.bias_axis = operand_axis(self, shape, bias_shape, p.axis, "bias")
            self.bias = nn.Parameter(torch.zeros(bias_shape))
            attrs.append("bias")
        self.blob_attrs = tuple(attrs)
        self._fillers = (p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(type="constant", value=1),
                         p.bias_filler)  # fmt: skip

    def fill(self, generator):
        if not self.from_bottom:
            fill(self.weight, self._fillers[0], generator)
        if self.bias_axis is not None:
            fill(self.bias, self._fillers[1], generator)

    def forward(self, x, factor=None):
        scale = factor if self.from_bottom else self.weight
        y = x * broadcast(scale, self.axis, x.dim())
        if self.bias_axis is not None:
            y = y + broadcast(self.bias, self.bias_axis, x.dim())
        return (y,)


@register("Bias")
class Bias(CaffeLayer):
    n_bottoms = (1, 2)

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.bias_param
        shape = bottom_shapes[0]
        self.from_bottom = len(bottom_shapes) == 2
        if self.from_bottom:
            bias_shape = tuple(bottom_shapes[1])
        else:
            _, bias_shape = covered_axes(self, shape, p.axis, p.num_axes, "bias")
            self.bias = nn.Parameter(torch.zeros(bias_shape))
            self.blob_attrs = ("bias",)
        self.axis = operand_axis(self, shape, bias_shape, p.axis, "bias")
        self._filler = p.filler

    def fill(self, generator):
        if not self.from_bottom:
            fill(self.bias, self._filler, generator)

    def forward(self, x, offset=None):
        return (x + broadcast(offset if self.from_bottom else self.bias, self.axis, x.dim()),)
