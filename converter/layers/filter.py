"""Filter: keep the items of a batch that a selector marks.

The last bottom is the selector, of shape (N,) or N x 1 x ... x 1; every
other bottom has N items and gives one top. Item n is copied, in order, to
the tops when selector[n] != 0. The number of items in the tops therefore
depends on the data: the net's shape table shows N, as Caffe's net setup
does, and the forward pass gives the number selected.

The gradient of a kept item is the top's gradient, of a dropped one zero;
the selector gets none (Caffe refuses to backpropagate to it).
"""

from __future__ import annotations

import torch

from .base import CaffeLayer, register


@register("Filter")
class Filter(CaffeLayer):
    n_bottoms = (2, None)
    n_tops = (1, None)

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        *data, selector = bottom_shapes
        if self.num_tops != len(data):
            raise self.fail(f"{len(bottom_shapes)} bottoms (the last is the selector) need {len(data)} tops, "
                            f"got {self.num_tops}")  # fmt: skip
        if not selector or any(d != 1 for d in selector[1:]):
            raise self.fail(f"the selector (last bottom) must have shape N x 1 x ... x 1, got {list(selector)}")
        for shape in data:
            if not shape or shape[0] != selector[0]:
                raise self.fail(f"bottom of shape {list(shape)} does not have the selector's {selector[0]} items")

    def top_shapes(self, bottom_shapes):
        return [tuple(s) for s in bottom_shapes[:-1]]

    def forward(self, *bottoms):
        *data, selector = bottoms
        keep = torch.nonzero(selector.detach().reshape(-1) != 0).reshape(-1)
        return tuple(x.index_select(0, keep) for x in data)
