"""Embed (mainline Caffe): a lookup table, y[..., :] = W[index] + b.

Blobs: the weight W, shape (input_dim, num_output), one row per index, and,
with ``bias_term`` (default true), the bias b, shape (num_output,). Fillers:
``weight_filler`` and ``bias_filler`` (Caffe's default: constant 0). The top's
shape is the bottom's with num_output appended; every bottom value is an
index. Both num_output and input_dim must be positive.

Indices are read as Caffe reads them, ``int(value)``; Caffe only checks them
in debug builds (a release build reads outside the table). Here a value that
is not a whole number or lies outside 0..input_dim-1 is an error at run time,
naming the layer and the value.

Gradients: none to the bottom (Caffe refuses to backpropagate to it); W's
gradient adds each position's top gradient into its index's row, position by
position in order, as Caffe's loop does; b's is the sum over positions.
"""

from __future__ import annotations

import torch

from .base import WeightAndBias, register


class _EmbedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, index, weight):
        ctx.save_for_backward(index)
        ctx.rows = weight.shape[0]
        return weight.index_select(0, index.reshape(-1)).reshape(*index.shape, weight.shape[1])

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        flat = grad.reshape(-1, grad.shape[-1])
        weight_grad = flat.new_zeros(ctx.rows, flat.shape[1])
        weight_grad.index_add_(0, index.reshape(-1), flat)
        return None, weight_grad


@register("Embed")
class Embed(WeightAndBias):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.embed_param
        if p.num_output <= 0:
            raise self.fail(f"num_output must be positive, got {p.num_output}")
        if p.input_dim <= 0:
            raise self.fail(f"input_dim (the number of indices) must be positive, got {p.input_dim}")
        self.num_output, self.input_dim = p.num_output, p.input_dim
        self.init_weight_and_bias((self.input_dim, self.num_output), self.num_output, p)

    def top_shapes(self, bottom_shapes):
        return [(*bottom_shapes[0], self.num_output)]

    def indices(self, x: torch.Tensor) -> torch.Tensor:
        """The bottom's values as row indices; a fraction or a value outside the table is an error."""
        values = x.detach()
        index = values.to(torch.int64)  # truncates, as C's cast does
        bad = (index.to(values.dtype) != values) | (index < 0) | (index >= self.input_dim)
        if bool(bad.any()):
            value = values[bad][0].item()
            raise self.fail(f"index {value:g} is not a whole number in 0..{self.input_dim - 1} (input_dim "
                            f"{self.input_dim}); Embed reads each bottom value as a row of its table")  # fmt: skip
        return index

    def forward(self, x):
        y = _EmbedFunction.apply(self.indices(x), self.weight)
        if self.bias is not None:
            y = y + self.bias
        return (y,)

    def extra_repr(self):
        return f"{super().extra_repr()} input_dim={self.input_dim} num_output={self.num_output}"
