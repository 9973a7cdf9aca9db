"""Parameter (mainline Caffe): no bottom; its one top is its learnable blob.

The blob's shape is ``parameter_param.shape`` (no dims: a 0-axis blob of one
value). Caffe gives it no filler: a new net starts it at 0. The top's
gradient is the blob's gradient.

Caffe's top shares the blob's memory, so a later layer working in place on
that top overwrites the blob itself; here the top is a copy of the blob (same
values and gradient) and the blob is never changed by other layers.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import CaffeLayer, register

MAX_COUNT = 2**31 - 1  # Caffe's Blob::Reshape bound


@register("Parameter")
class Parameter(CaffeLayer):
    n_bottoms = (0, 0)
    blob_attrs = ("weight",)

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        dims = tuple(param.parameter_param.shape.dim)
        if any(d < 0 for d in dims):
            raise self.fail(f"parameter_param.shape {list(dims)} has a negative size")
        if math.prod(dims) > MAX_COUNT:
            raise self.fail(f"parameter_param.shape {list(dims)} holds more than the 2^31-1 values Caffe allows")
        self.shape = dims
        self.weight = nn.Parameter(torch.zeros(dims))

    def top_shapes(self, bottom_shapes):
        return [self.shape]

    def fill(self, generator):
        with torch.no_grad():
            self.weight.zero_()

    def forward(self):
        return (self.weight.clone(),)

    def extra_repr(self):
        return f"{super().extra_repr()} shape={list(self.shape)}"
