"""Swish (mainline Caffe): y = x * sigmoid(beta * x).

Caffe's gradient, written out (it reads the top y and s = sigmoid(beta * x)):
dx = dy * (beta * y + s * (1 - beta * y)).
"""

from __future__ import annotations

import torch

from .base import CaffeLayer, register


class _SwishFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, beta):
        s = torch.sigmoid(x * beta)
        y = x * s
        ctx.save_for_backward(y, s)
        ctx.beta = beta
        return y

    @staticmethod
    def backward(ctx, grad):
        y, s = ctx.saved_tensors
        beta_y = ctx.beta * y
        return grad * (beta_y + s * (1 - beta_y)), None


def swish(x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Caffe's Swish with its hand-written gradient."""
    return _SwishFunction.apply(x, beta)


@register("Swish")
class Swish(CaffeLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.beta = param.swish_param.beta

    def forward(self, x):
        return (swish(x, self.beta),)

    def extra_repr(self):
        return f"{super().extra_repr()} beta={self.beta}"
