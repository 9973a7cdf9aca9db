"""BatchReindex (mainline Caffe): items of bottom 0 picked by the indices in bottom 1.

Bottom 1 must have one axis; the top is (len(bottom 1),) + bottom 0's shape
after axis 0, and top item i is bottom 0's item ``int(bottom1[i])``. Caffe
checks every index on each pass (it must be >= 0 and < bottom 0's size on
axis 0, compared before the cast, so -0.5 fails and 2.5 reads item 2);
here the same check is a one-line error naming the layer.

Gradient: bottom 0 gets each top item's gradient added into the item it was
picked from (zeros where nothing was picked); bottom 1 gets none.
"""

from __future__ import annotations

import torch

from .base import CaffeLayer, register


@register("BatchReindex")
class BatchReindex(CaffeLayer):
    n_bottoms = (2, 2)

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        data, index = bottom_shapes
        if len(index) != 1:
            raise self.fail(f"bottom 1 (the indices) must have 1 axis, got shape {list(index)}")
        if len(data) < 1:
            raise self.fail("bottom 0 needs at least 1 axis")

    def top_shapes(self, bottom_shapes):
        data, index = bottom_shapes
        return [(index[0], *data[1:])]

    def forward(self, x, index):
        values = index.detach()
        items = x.shape[0]
        low = ~(values >= 0)  # NaN fails too, as Caffe's CHECK_GE does
        if bool(low.any()):
            raise self.fail(f"index {values[low][0].item():g} is not >= 0")
        high = values >= items
        if bool(high.any()):
            raise self.fail(f"index {values[high][0].item():g} is not below bottom 0's {items} items")
        return (x.index_select(0, values.to(torch.int64)),)
