"""Tile (mainline Caffe): repeat the block from ``axis`` on ``tiles`` times.

With outer = the product of the sizes before ``axis`` (canonical) and inner
= the product of the sizes from ``axis`` on, the top holds, for each outer
index, ``tiles`` copies of that index's inner block, one after another; the
top's size on ``axis`` is ``tiles`` times the bottom's. ``tiles`` must be
given and positive.

Gradient: each bottom value gets the sum of its ``tiles`` copies' gradients,
added in Caffe's order (the first copy, then each later one in turn) in the
top's dtype, so a float32 net rounds as Caffe's loop does.
"""

from __future__ import annotations

import math

import torch

from .base import CaffeLayer, canonical_axis, register


class _TileFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, axis, tiles):
        outer, inner = math.prod(x.shape[:axis]), math.prod(x.shape[axis:])
        ctx.shape, ctx.tiles, ctx.outer, ctx.inner = x.shape, tiles, outer, inner
        top_shape = (*x.shape[:axis], x.shape[axis] * tiles, *x.shape[axis + 1 :])
        return x.reshape(outer, 1, inner).expand(outer, tiles, inner).reshape(top_shape)

    @staticmethod
    def backward(ctx, grad):
        copies = grad.reshape(ctx.outer, ctx.tiles, ctx.inner)
        total = copies[:, 0].clone()
        for t in range(1, ctx.tiles):
            total += copies[:, t]
        return total.reshape(ctx.shape), None, None


def tile(x: torch.Tensor, axis: int, tiles: int) -> torch.Tensor:
    """Caffe's Tile along the (non-negative) ``axis``."""
    return _TileFunction.apply(x, axis, tiles)


@register("Tile")
class Tile(CaffeLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.tile_param
        self.axis = canonical_axis(p.axis, len(bottom_shapes[0]), self.caffe_name)
        if not p.HasField("tiles"):
            raise self.fail("tile_param.tiles (the number of copies) must be given")
        if p.tiles < 1:
            raise self.fail(f"tiles must be positive, got {p.tiles}")
        self.tiles = p.tiles

    def top_shapes(self, bottom_shapes):
        shape = list(bottom_shapes[0])
        shape[self.axis] *= self.tiles
        return [tuple(shape)]

    def forward(self, x):
        return (tile(x, self.axis, self.tiles),)

    def extra_repr(self):
        return f"{super().extra_repr()} axis={self.axis} tiles={self.tiles}"
