"""DummyData: blobs made from fillers, with no bottom.

Each top has a shape (``shape``, or the legacy num/channels/height/width
lists; one entry for all tops or one per top) and a filler (none: constant
0; one for all tops, or one per top). A constant filler gives the same blob
on every pass, which is what nets use DummyData for. Any other filler is
drawn again on every forward pass, as Caffe does; Caffe draws from its own
unseeded generator, so those values can only match Caffe in distribution.
"""

from __future__ import annotations

import torch

from caffe_proto import caffe_pb2

from ..fillers import fill
from .base import CaffeLayer, register

_FILLERS = {"constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra", "bilinear"}


@register("DummyData")
class DummyData(CaffeLayer):
    n_bottoms = (0, 0)
    n_tops = (1, None)

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.dummy_data_param
        n = self.num_tops
        fillers = list(p.data_filler) or [caffe_pb2.FillerParameter(type="constant", value=0)]
        if len(fillers) not in (1, n):
            raise self.fail(f"{len(p.data_filler)} data_filler entries for {n} tops: give 0, 1 or {n}")
        self.fillers = [fillers[min(i, len(fillers) - 1)] for i in range(n)]
        for f in self.fillers:
            if f.type not in _FILLERS:
                raise self.fail(f"unknown filler type '{f.type}'")
        legacy = [list(p.num), list(p.channels), list(p.height), list(p.width)]
        if any(legacy):
            if p.shape:
                raise self.fail("give shape or num/channels/height/width, not both")
            for name, values in zip(("num", "channels", "height", "width"), legacy):
                if len(values) not in (1, n):
                    raise self.fail(f"{len(values)} '{name}' values for {n} tops: give 1 or {n}")
            self.shapes = [tuple(v[min(i, len(v) - 1)] for v in legacy) for i in range(n)]
        else:
            if len(p.shape) not in (1, n):
                raise self.fail(f"{len(p.shape)} shapes for {n} tops: give 1 or {n}")
            self.shapes = [tuple(p.shape[min(i, len(p.shape) - 1)].dim) for i in range(n)]
        # A 0-d anchor carries the dtype and device that .double() / .to() give the module.
        self.register_buffer("anchor", torch.zeros(()), persistent=False)

    def top_shapes(self, bottom_shapes):
        return list(self.shapes)

    def forward(self):
        tops = []
        for shape, filler in zip(self.shapes, self.fillers):
            if filler.type == "constant":
                tops.append(self.anchor.new_full(shape, filler.value))
            else:
                value = self.anchor.new_empty(shape)
                fill(value, filler)
                tops.append(value)
        return tuple(tops)
