"""Softmax and caffe-segnet's SoftmaxWithLoss.

SoftmaxWithLoss, per position with label l (skipping ``ignore_label``):
    term = -log(max(p_l, FLT_MIN)) * w[l]
with w = ``class_weighting`` when ``weight_by_label_freqs`` is set, else 1;
    loss = sum(term) / (number of non-ignored positions)   (normalize: true)
    loss = sum(term) / outer size (the batch, for axis 1)  (normalize: false)
The class weights scale the terms but are not part of the divisor. The
gradient is ``w[l] * (p - onehot(l)) / divisor`` and zero at ignored
positions; it is written here rather than left to autograd so that it is
exactly Caffe's (the FLT_MIN clamp does not cut it off).
"""

from __future__ import annotations

import math

import torch

from .base import CaffeLayer, canonical_axis, register

FLT_MIN = torch.finfo(torch.float32).tiny


@register("Softmax")
class Softmax(CaffeLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.axis = canonical_axis(param.softmax_param.axis, len(bottom_shapes[0]), self.caffe_name)

    def forward(self, x):
        return (torch.softmax(x, dim=self.axis),)


class _SoftmaxLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, weights, ignore_label, normalize, axis):
        # Work on (outer, C, inner) views.
        shape = logits.shape
        outer = math.prod(shape[:axis])
        classes = shape[axis]
        x = logits.reshape(outer, classes, -1)
        prob = torch.softmax(x, dim=1)
        label = labels.reshape(outer, -1).to(torch.int64)  # Caffe truncates float labels
        valid = torch.ones_like(label, dtype=torch.bool) if ignore_label is None else label != ignore_label
        bad = valid & ((label < 0) | (label >= classes))
        if bad.any():
            value = int(label[bad][0])
            raise ValueError(f"label {value} is outside 0..{classes - 1} and is not the ignore_label")
        safe = torch.where(valid, label, torch.zeros_like(label))
        p = prob.gather(1, safe.unsqueeze(1)).squeeze(1)
        term = -torch.log(torch.clamp(p, min=FLT_MIN))
        w = weights[safe].to(prob.dtype) if weights is not None else None
        if w is not None:
            term = term * w
        term = torch.where(valid, term, torch.zeros_like(term))
        count = int(valid.sum())
        divisor = float(count) if normalize else float(outer)
        loss = term.double().sum() / divisor
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(prob, safe, valid)
        ctx.weights = w
        ctx.divisor = divisor
        ctx.shape = shape
        return loss.to(logits.dtype).reshape(()), prob.reshape(shape)

    @staticmethod
    def backward(ctx, grad_loss, grad_prob):
        prob, label, valid = ctx.saved_tensors
        grad = torch.zeros_like(prob)
        if grad_loss is not None:
            grad = prob.clone()
            grad.scatter_add_(1, label.unsqueeze(1), -torch.ones_like(prob[:, :1]))
            if ctx.weights is not None:
                grad = grad * ctx.weights.unsqueeze(1)
            grad = grad * valid.unsqueeze(1).to(grad.dtype)
            grad = grad * (grad_loss / ctx.divisor)
        if grad_prob is not None:  # the prob top used elsewhere: plain softmax backward
            g = grad_prob.reshape(prob.shape)
            grad = grad + prob * (g - (g * prob).sum(dim=1, keepdim=True))
        return grad.reshape(ctx.shape), None, None, None, None, None


def softmax_with_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    ignore_label: int | None = None,
    normalize: bool = True,
    axis: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """caffe-segnet's weighted softmax loss. Returns (loss, prob)."""
    return _SoftmaxLossFunction.apply(logits, labels, class_weights, ignore_label, normalize, axis)


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(CaffeLayer):
    default_loss_weight = 1.0
    n_bottoms = (2, 2)
    n_tops = (1, 2)

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        shape, label_shape = bottom_shapes
        self.axis = canonical_axis(param.softmax_param.axis, len(shape), self.caffe_name)
        lp = param.loss_param
        self.ignore_label = lp.ignore_label if lp.HasField("ignore_label") else None
        self.normalize = lp.normalize
        outer, inner = math.prod(shape[: self.axis]), math.prod(shape[self.axis + 1 :])
        label_count = math.prod(label_shape)
        if outer * inner != label_count:
            raise self.fail(f"label count {label_count} does not match the predictions' {outer * inner} positions")
        if lp.weight_by_label_freqs:
            if len(lp.class_weighting) != shape[self.axis]:
                raise self.fail(
                    f"class_weighting lists {len(lp.class_weighting)} values for {shape[self.axis]} classes"
                )
            self.register_buffer("class_weighting", torch.tensor(list(lp.class_weighting), dtype=torch.float32))
        else:
            self.class_weighting = None

    def top_shapes(self, bottom_shapes):
        return [()] + [tuple(bottom_shapes[0])] * (self.num_tops - 1)

    def sequential_terms(self, top=0):
        # caffe-segnet accumulates the loss over every position in one float32 loop.
        shape = self.bottom_shapes[0]
        return math.prod(shape) // shape[self.axis] if top == 0 else 0

    def forward(self, logits, labels):
        try:
            loss, prob = softmax_with_loss(logits, labels, self.class_weighting, self.ignore_label,
                                           self.normalize, self.axis)  # fmt: skip
        except ValueError as exc:
            raise self.fail(str(exc)) from None
        return (loss, prob)[: self.num_tops]
