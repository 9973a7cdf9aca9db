"""The rounding of statistics a layer takes over many positions, for converter.verdict's noise runs.

A batch mean or variance is one float32 number per channel (per plane, for
MVN): its rounding moves every value computed from it together, which noise
on each value does not model. Layers with such statistics use these in
``CaffeLayer.coherent_rounding``: ``mean_rounding`` says how much a float32
mean rounds, and ``with_rounded_backward`` adds the rounding of a
normalisation's backward (its division by the rounded std and its two
means) to the input's gradient.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .base import FLOAT32_ROUNDING


def mean_rounding(values: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """The rms rounding error of a float32 mean over ``dims`` taken by a running sum (per remaining position).

    Adding m values of mean a and spread s one by one, the k-th addition
    rounds the partial sum, about k a + sqrt(k) s, by 2^-24 of it: in all
    2^-24 (|a| m^1.5 / sqrt(3) + s m / sqrt(2)), divided by m for the mean.
    Like values (raw pixels) err much more than zero-mean ones (gradients).
    """
    m = math.prod(values.shape[d] for d in dims)
    mean = values.mean(dim=list(dims), keepdim=True)
    spread = (values - mean).square().mean(dim=list(dims), keepdim=True).sqrt()
    return FLOAT32_ROUNDING * (mean.abs() * math.sqrt(m / 3) + spread / math.sqrt(2))


class _RoundedBackward(torch.autograd.Function):
    """Identity on y; in backward, what the rounded statistics change in the gradients of x and of the gain.

    A normalisation's backward is ``dx = gain / std * (dy - mean(dy) - xhat * mean(dy * xhat))``: it divides by
    the forward's rounded std (relative error ``std_error``), and each mean is a float32 sum over ``dims``. A
    learned gain's gradient is the sum of ``dy * xhat`` with Caffe's own, rounded, xhat: ``xhat * (1 -
    std_error) - mean_error`` (``mean_error``: the mean's rounding over the std).
    """

    @staticmethod
    def forward(ctx, y, x, gain, xhat, gain_over_std, std_error, mean_error, dims, draws):
        ctx.save_for_backward(xhat, gain_over_std, std_error, mean_error)
        ctx.dims, ctx.draws = dims, draws
        ctx.gain_shape = None if gain is None else gain.shape
        return y.view_as(y)

    @staticmethod
    def backward(ctx, dy):
        xhat, gain_over_std, std_error, mean_error = ctx.saved_tensors
        dims = ctx.dims
        exact = gain_over_std * (dy - dy.mean(dim=dims, keepdim=True) - xhat * (dy * xhat).mean(dim=dims, keepdim=True))
        r_sum, r_dot = ctx.draws
        rounding = r_sum * mean_rounding(dy, dims) + xhat * r_dot * mean_rounding(dy * xhat, dims)
        dx = -std_error * exact - gain_over_std * rounding
        dgain = None
        if ctx.gain_shape is not None:
            dgain = -(dy * (xhat * std_error + mean_error)).sum(dim=dims, keepdim=True).reshape(ctx.gain_shape)
        return dy, dx, dgain, None, None, None, None, None, None


def with_rounded_backward(y: torch.Tensor, x: torch.Tensor, xhat: torch.Tensor, gain_over_std: torch.Tensor,
                          std_error: torch.Tensor, dims: Sequence[int],
                          uniform: Callable[[int, torch.dtype], torch.Tensor], gain: torch.Tensor | None = None,
                          mean_error: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """``y`` (already moved by the forward statistics' rounding), whose backward also adds the rounding of the
    normalisation's backward to ``x``'s gradient (and, for a learned ``gain``, to its gradient); one random
    number per mean, shared by the channels (sums of like values in like order round alike)."""
    mean_error = torch.zeros_like(std_error) if mean_error is None else mean_error
    return _RoundedBackward.apply(y, x, gain, xhat, gain_over_std, std_error, mean_error, list(dims),
                                  tuple(uniform(2, x.dtype)))  # fmt: skip
