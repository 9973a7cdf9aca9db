"""Convolution, Deconvolution and InnerProduct.

Caffe blob layouts: convolution weights (Cout, Cin/group, kh, kw);
deconvolution weights (Cin, Cout/group, kh, kw); inner product weights
(Cout, Cin); biases (Cout,). These are also PyTorch's layouts, so the blobs
map one to one. Mainline Caffe's InnerProduct ``transpose: true`` stores its
weight as (Cin, Cout); it is kept so and used transposed.
"""

from __future__ import annotations

import math

import torch.nn.functional as F

from .base import Shape, WeightAndBias, canonical_axis, pair, register


def conv_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    """Caffe's (and PyTorch's) convolution output size: floor division."""
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def deconv_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    return stride * (size - 1) + dilation * (kernel - 1) + 1 - 2 * pad


class _ConvBase(WeightAndBias):
    transposed = False
    #: the per-axis output size rule
    size_rule = staticmethod(conv_output_size)

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.convolution_param
        if p.axis != 1:
            raise self.fail("convolution over an axis other than 1 is not supported")
        if len(bottom_shapes[0]) != 4:
            raise self.fail(f"expects a 4-D bottom, got shape {list(bottom_shapes[0])}")
        self.kernel = pair(p, "kernel_size", "kernel_h", "kernel_w", what="kernel size", minimum=1)
        self.stride = pair(p, "stride", "stride_h", "stride_w", default=1, what="stride", minimum=1)
        self.pad = pair(p, "pad", "pad_h", "pad_w", default=0, what="pad")
        dilation = list(p.dilation) or [1]
        if len(dilation) > 2:
            raise self.fail(f"only 2-D dilation is supported, got {dilation}")
        if min(dilation) < 1:
            raise self.fail(f"dilation must be at least 1, got {dilation}")
        self.dilation = (dilation[0], dilation[-1])
        self.group = p.group
        if self.group < 1:
            raise self.fail(f"group must be at least 1, got {self.group}")
        channels = bottom_shapes[0][1]
        if not p.HasField("num_output") or p.num_output == 0:
            raise self.fail("num_output is required")
        self.num_output = p.num_output
        if channels % self.group or self.num_output % self.group:
            raise self.fail(f"group {self.group} must divide input channels {channels} and num_output {self.num_output}")
        if self.transposed:
            weight_shape = (channels, self.num_output // self.group, *self.kernel)
        else:
            weight_shape = (self.num_output, channels // self.group, *self.kernel)
        self.init_weight_and_bias(weight_shape, self.num_output, p)

    def top_shapes(self, bottom_shapes):
        n, _, h, w = bottom_shapes[0]
        size = [self.size_rule(s, k, st, p, d) for s, k, st, p, d in
                zip((h, w), self.kernel, self.stride, self.pad, self.dilation)]  # fmt: skip
        return [(n, self.num_output, *size)]


@register("Convolution")
class Convolution(_ConvBase):
    def forward(self, x):
        return (F.conv2d(x, self.weight, self.bias, self.stride, self.pad, self.dilation, self.group),)


@register("Deconvolution")
class Deconvolution(_ConvBase):
    transposed = True
    size_rule = staticmethod(deconv_output_size)

    def forward(self, x):
        return (F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.pad, 0, self.group, self.dilation),)


@register("InnerProduct")
class InnerProduct(WeightAndBias):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.inner_product_param
        shape = bottom_shapes[0]
        self.axis = canonical_axis(p.axis, len(shape), self.caffe_name)
        fan_in = math.prod(shape[self.axis :])
        self.num_output = p.num_output
        self.transpose = p.transpose
        self.init_weight_and_bias((fan_in, p.num_output) if p.transpose else (p.num_output, fan_in), p.num_output,
                                  p)

    def top_shapes(self, bottom_shapes: list[Shape]):
        return [(*bottom_shapes[0][: self.axis], self.num_output)]

    def forward(self, x):
        weight = self.weight.t() if self.transpose else self.weight
        return (F.linear(x.flatten(self.axis), weight, self.bias),)
