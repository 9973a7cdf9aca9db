"""ELU (mainline Caffe): y = max(x, 0) + alpha * (exp(min(x, 0)) - 1).

Caffe's gradient, written out (it reads the top): dy where x > 0, and
dy * (alpha + y) where x <= 0 (so alpha * dy at x = 0). In place (top =
bottom) Caffe's backward tests the top instead of x; that differs only for a
negative alpha (y > 0 where x < 0), and is computed that way here.
"""

from __future__ import annotations

import torch

from .base import CaffeLayer, register


class _ELUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha, in_place):
        y = x.clamp(min=0) + alpha * (torch.exp(x.clamp(max=0)) - 1)
        ctx.save_for_backward(y if in_place else x, y)
        ctx.alpha = alpha
        return y

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors  # x: what Caffe's backward reads as the bottom
        positive = x > 0
        return grad * torch.where(positive, torch.ones_like(y), ctx.alpha + y), None, None


def elu(x: torch.Tensor, alpha: float = 1.0, in_place: bool = False) -> torch.Tensor:
    """Caffe's ELU with its hand-written gradient (``in_place``: Caffe's layer writing its top over its bottom)."""
    return _ELUFunction.apply(x, alpha, in_place)


@register("ELU")
class ELU(CaffeLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.alpha = param.elu_param.alpha
        #: Caffe's in-place form (top = bottom), which can change its gradient (see the module docstring)
        self.caffe_in_place = list(param.top) == list(param.bottom)

    def forward(self, x):
        return (elu(x, self.alpha, self.caffe_in_place),)

    def extra_repr(self):
        return f"{super().extra_repr()} alpha={self.alpha}"
