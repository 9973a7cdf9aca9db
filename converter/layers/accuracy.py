"""Accuracy and ArgMax, with Caffe's tie rule.

Both rank classes by (score, class index) in descending order, so on exactly
equal scores the larger class index comes first.
"""

from __future__ import annotations

import math

import torch

from .base import CaffeLayer, canonical_axis, register


def topk_larger_index_first(x: torch.Tensor, k: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k values and indices along ``dim``; ties go to the larger index."""
    size = x.shape[dim]
    flipped = x.flip(dim)
    if k == 1:
        values, idx = flipped.max(dim=dim, keepdim=True)  # first maximum of the flipped order
    else:
        values, idx = torch.sort(flipped, dim=dim, descending=True, stable=True)
        values, idx = values.narrow(dim, 0, k), idx.narrow(dim, 0, k)
    return values, size - 1 - idx


@register("ArgMax")
class ArgMax(CaffeLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.argmax_param
        shape = bottom_shapes[0]
        self.top_k, self.out_max_val = p.top_k, p.out_max_val
        self.axis = canonical_axis(p.axis, len(shape), self.caffe_name) if p.HasField("axis") else None
        limit = shape[self.axis] if self.axis is not None else math.prod(shape[1:])
        if not 1 <= self.top_k <= limit:
            raise self.fail(f"top_k {self.top_k} must lie in 1..{limit}")

    def index_tops(self):
        return () if self.out_max_val else (0,)

    def top_shapes(self, bottom_shapes):
        shape = list(bottom_shapes[0])
        if self.axis is not None:
            shape[self.axis] = self.top_k
            return [tuple(shape)]
        out = [1] * max(3, len(shape))
        out[0], out[2] = shape[0], self.top_k
        if self.out_max_val:
            out[1] = 2
        return [tuple(out)]

    def forward(self, x):
        if self.axis is not None:
            values, idx = topk_larger_index_first(x, self.top_k, self.axis)
            return ((values if self.out_max_val else idx.to(x.dtype)),)
        flat = x.reshape(x.shape[0], -1)
        values, idx = topk_larger_index_first(flat, self.top_k, 1)
        out = torch.cat([idx.to(x.dtype), values], dim=1) if self.out_max_val else idx.to(x.dtype)
        return (out.reshape(self.top_shapes([tuple(x.shape)])[0]),)


@register("Accuracy")
class Accuracy(CaffeLayer):
    """Top-k accuracy over non-ignored positions; optional per-class accuracy top.

    In the per-class top (caffe-segnet), a class with no positions reports 1.
    """

    n_bottoms = (2, 2)
    n_tops = (1, 2)

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.accuracy_param
        shape = bottom_shapes[0]
        self.axis = canonical_axis(p.axis, len(shape), self.caffe_name)
        self.top_k = p.top_k
        self.ignore_label = p.ignore_label if p.HasField("ignore_label") else None
        self.classes = shape[self.axis]
        if not 1 <= self.top_k <= self.classes:
            raise self.fail(f"top_k {self.top_k} must lie in 1..{self.classes}")

    def top_shapes(self, bottom_shapes):
        return [(), (bottom_shapes[0][1], 1, 1, 1)][: self.num_tops]

    def forward(self, x, labels):
        outer = math.prod(x.shape[: self.axis])
        scores = x.reshape(outer, self.classes, -1)
        label = labels.reshape(outer, -1).to(torch.int64)
        valid = torch.ones_like(label, dtype=torch.bool) if self.ignore_label is None else label != self.ignore_label
        bad = valid & ((label < 0) | (label >= self.classes))
        if bad.any():
            raise self.fail(
                f"label {int(label[bad][0])} is outside 0..{self.classes - 1} "
                "(set accuracy_param.ignore_label for void labels)"
            )
        _, top = topk_larger_index_first(scores, self.top_k, 1)
        hit = (top == label.unsqueeze(1)).any(dim=1) & valid
        count = valid.sum()
        accuracy = (hit.sum().to(x.dtype) / count.to(x.dtype)).reshape(())
        if self.num_tops == 1:
            return (accuracy,)
        safe = torch.where(valid, label, torch.zeros_like(label))
        totals = torch.zeros(self.classes, dtype=x.dtype, device=x.device)
        totals.index_add_(0, safe[valid], torch.ones_like(safe[valid], dtype=x.dtype))
        hits = torch.zeros_like(totals).index_add_(0, safe[hit], torch.ones_like(safe[hit], dtype=x.dtype))
        per_class = torch.where(totals > 0, hits / totals.clamp(min=1), torch.ones_like(totals))
        return accuracy, per_class.reshape(self.classes, 1, 1, 1)

