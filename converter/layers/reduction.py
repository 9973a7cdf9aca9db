"""Reduction: SUM, ASUM, SUMSQ or MEAN over every axis from ``axis`` to the end.

The top keeps the bottom's shape up to ``axis`` (axis 0, the default: a
0-axis blob holding one value); negative axes count from the end. Each top
value is

    SUM    coeff * sum(x)          ASUM  coeff * sum(|x|)
    SUMSQ  coeff * sum(x^2)        MEAN  coeff / D * sum(x)

over the D reduced values. Gradients (autograd gives Caffe's): coeff * dy
(SUM), coeff * sign(x) * dy with sign(0) = 0 (ASUM), 2 * coeff * x * dy
(SUMSQ), coeff / D * dy (MEAN).
"""

from __future__ import annotations

import math

from caffe_proto import caffe_pb2

from .base import CaffeLayer, canonical_axis, register


@register("Reduction")
class Reduction(CaffeLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.reduction_param
        shape = bottom_shapes[0]
        self.operation = caffe_pb2.ReductionParameter.ReductionOp.Name(p.operation)
        self.axis = canonical_axis(p.axis, len(shape), self.caffe_name)
        count = math.prod(shape[self.axis :])
        self.coeff = p.coeff / count if self.operation == "MEAN" else p.coeff

    def top_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0][: self.axis])]

    def forward(self, x):
        flat = x.reshape(*x.shape[: self.axis], -1)
        if self.operation == "ASUM":
            flat = flat.abs()
        elif self.operation == "SUMSQ":
            flat = flat.square()
        total = flat.sum(dim=-1)
        return ((total * self.coeff if self.coeff != 1 else total),)

    def extra_repr(self):
        return f"{super().extra_repr()} {self.operation} axis={self.axis} coeff={self.coeff}"
