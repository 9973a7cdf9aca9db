"""Clip (mainline Caffe): y = max(min, min(x, max)); both bounds are required.

The bounds are compared as C++'s std::min and std::max compare, so a NaN
input gives ``min``, and min > max gives ``min`` everywhere (Caffe checks
neither). Gradient: dy where min <= x <= max (both ends included), else 0.
Caffe's backward reads the bottom's values; in place (top = bottom) those are
already clipped, so there the gradient passes wherever min <= y <= max, that
is everywhere unless min > max; the in-place form is computed that way here.
"""

from __future__ import annotations

import torch

from .base import CaffeLayer, register


class _ClipFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, low, high, in_place):
        upper = torch.where(x > high, torch.full_like(x, high), x)  # std::min(x, high)
        y = torch.where(upper > low, upper, torch.full_like(x, low))  # std::max(low, .)
        ctx.save_for_backward(y if in_place else x)
        ctx.low, ctx.high = low, high
        return y

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors  # what Caffe's backward reads as the bottom
        inside = (x >= ctx.low) & (x <= ctx.high)
        return grad * inside.to(grad.dtype), None, None, None


def clip(x: torch.Tensor, low: float, high: float, in_place: bool = False) -> torch.Tensor:
    """Caffe's Clip with its gradient (``in_place``: Caffe's layer writing its top over its bottom)."""
    return _ClipFunction.apply(x, low, high, in_place)


@register("Clip")
class Clip(CaffeLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.clip_param
        missing = [name for name in ("min", "max") if not p.HasField(name)]
        if missing:
            raise self.fail(f"clip_param needs both min and max (Caffe requires them); {' and '.join(missing)} "
                            "missing")  # fmt: skip
        self.min, self.max = p.min, p.max
        #: Caffe's in-place form (top = bottom), which changes its gradient (see the module docstring)
        self.caffe_in_place = list(param.top) == list(param.bottom)

    def forward(self, x):
        return (clip(x, self.min, self.max, self.caffe_in_place),)

    def extra_repr(self):
        return f"{super().extra_repr()} min={self.min} max={self.max}"
