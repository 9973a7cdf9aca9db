"""Loss layers besides SoftmaxWithLoss, as caffe-segnet computes them.

N is the size of axis 0 of the first bottom. Each top is the unweighted
loss (a 0-axis blob); ``loss_weight`` (default 1) scales only the gradients,
which the graph applies when it sums the objective. Labels are read as
``int(label)`` (truncated) and never get a gradient.

EuclideanLoss            sum((a - b)^2) / (2N); gradients (a - b)/N and
                         -(a - b)/N: both bottoms get one.
SigmoidCrossEntropyLoss  -sum(t log p + (1 - t) log(1 - p)) / N, p = sigmoid(x),
                         in the overflow-free form; gradient (p - t)/N.
                         Divided by N, not by the number of values. With
                         mainline Caffe's ``normalization`` set: positions whose
                         int(target) is ``ignore_label`` are skipped (gradient 0)
                         and the divisor is max(1, FULL: every value, VALID: the
                         values not ignored, BATCH_SIZE: N, NONE: 1).
HingeLoss                per item, t_j = max(0, 1 - x_j) at the label and
                         max(0, 1 + x_j) elsewhere; L1: sum(t)/N, L2: sum(t^2)/N.
ContrastiveLoss          d^2 = sum over channels of (a - b)^2; similar pairs add
                         d^2, dissimilar ones max(margin - d, 0)^2 (legacy_version:
                         max(margin - d^2, 0)); the sum over 2N. Caffe's gradient
                         for a dissimilar pair divides by d + 1e-4, not by d.
InfogainLoss             -sum_i sum_j H[l_i, j] log(max(p_ij, 1e-20)) / N, with H
                         the third bottom or the BlobProto file ``source``.
MultinomialLogisticLoss  -sum_i log(max(p[i, l_i], 1e-20)) / N.

Where a clamp would cut autograd's gradient off (the 1e-20 floor) or
Caffe's formula is not the exact derivative (ContrastiveLoss), the backward
pass is written out as Caffe computes it.

Mainline Caffe: EuclideanLoss, HingeLoss, ContrastiveLoss and
MultinomialLogisticLoss compute the same there and ignore ``loss_param``'s
``normalization``, as here. Mainline's SigmoidCrossEntropyLoss reads
``normalization``, ``normalize`` and ``ignore_label``, which caffe-segnet's
ignores; a file that sets ``normalization`` gets mainline's meaning, and one
that sets ``normalize`` or ``ignore_label`` without it is refused, since the
two forks read it differently. Mainline's InfogainLoss is another layer under
the same name (a softmax of scores inside, ``axis``, ``normalization``,
``ignore_label``); a file using those fields is refused.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from google.protobuf.message import DecodeError

from caffe_proto import caffe_pb2

from .. import budget
from .base import CaffeLayer, Shape, register
from ..functional import normalizer

#: Caffe's floor on probabilities inside a log (kLOG_THRESHOLD).
LOG_THRESHOLD = 1e-20
#: ContrastiveLoss adds this to the distance it divides by in its gradient.
CONTRASTIVE_EPS = 1e-4


def legacy_dims(shape: Shape) -> Shape:
    """num, channels, height, width as Caffe's legacy accessors read any blob of up to 4 axes."""
    return tuple(shape) + (1,) * (4 - len(shape))


def int_labels(labels: torch.Tensor, count: int) -> torch.Tensor:
    """The first ``count`` labels as integers, truncated as C's cast does."""
    return labels.detach().reshape(-1)[:count].to(torch.int64)


class _LossLayer(CaffeLayer):
    """Shared rules: one 0-axis top, loss weight 1, bottoms 0 and 1 with the same N."""

    default_loss_weight = 1.0
    n_bottoms = (2, 2)

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        for shape in bottom_shapes:
            if len(shape) > 4:
                raise self.fail(f"takes bottoms of at most 4 axes, got shape {list(shape)}")
        self.num = legacy_dims(bottom_shapes[0])[0]
        if legacy_dims(bottom_shapes[1])[0] != self.num:
            raise self.fail(f"bottoms 0 and 1 have {self.num} and {legacy_dims(bottom_shapes[1])[0]} items; "
                            "they must have the same number")  # fmt: skip

    def top_shapes(self, bottom_shapes):
        return [()]

    def _single_labels(self, label_shape: Shape) -> None:
        if legacy_dims(label_shape)[1:] != (1, 1, 1):
            raise self.fail(f"labels must hold one value per item (N x 1 x 1 x 1), got shape {list(label_shape)}")

    def _check_range(self, labels: torch.Tensor, classes: int) -> None:
        bad = (labels < 0) | (labels >= classes)
        if bool(bad.any()):
            raise self.fail(f"label {int(labels[bad][0])} is outside 0..{classes - 1}")


# ---------------------------------------------------------------- EuclideanLoss


def euclidean_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum((a - b)^2) / (2N); autograd's gradients are Caffe's."""
    diff = a - b.reshape(a.shape)
    return diff.square().sum() / a.shape[0] / 2


@register("EuclideanLoss")
class EuclideanLoss(_LossLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        a, b = bottom_shapes
        if math.prod(a[1:]) != math.prod(b[1:]):
            raise self.fail(f"bottoms {list(a)} and {list(b)} differ in size per item")

    def forward(self, a, b):
        return (euclidean_loss(a, b),)


# ---------------------------------------------------------------- SigmoidCrossEntropyLoss


class _SigmoidCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, target, num, valid=None):
        positive = (x >= 0).to(x.dtype)
        terms = x * (target - positive) - torch.log1p(torch.exp(x - 2 * x * positive))
        if valid is not None:
            terms = torch.where(valid, terms, torch.zeros_like(terms))
        ctx.save_for_backward(x, target, valid)
        ctx.num = num
        return -terms.sum() / num

    @staticmethod
    def backward(ctx, grad):
        x, target, valid = ctx.saved_tensors
        diff = torch.sigmoid(x) - target
        if valid is not None:
            diff = torch.where(valid, diff, torch.zeros_like(diff))
        return diff * (grad / ctx.num), None, None, None


def sigmoid_cross_entropy_loss(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Caffe's SigmoidCrossEntropyLoss (divided by N); the target gets no gradient."""
    return _SigmoidCrossEntropyFunction.apply(x, target.reshape(x.shape), x.shape[0])


def normalized_sigmoid_cross_entropy_loss(x: torch.Tensor, target: torch.Tensor, mode: str = "BATCH_SIZE",
                                          ignore_label: int | None = None) -> torch.Tensor:  # fmt: skip
    """Mainline Caffe's SigmoidCrossEntropyLoss: ``ignore_label`` positions skipped, divided by ``mode``."""
    target = target.reshape(x.shape)
    valid = None if ignore_label is None else target.detach().to(torch.int64) != ignore_label
    count = x.numel() if valid is None else int(valid.sum())
    divisor = normalizer(mode, x.shape[0], x.numel() // x.shape[0], count)
    return _SigmoidCrossEntropyFunction.apply(x, target, divisor, valid)


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(_LossLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        x, t = bottom_shapes
        if math.prod(x) != math.prod(t):
            raise self.fail(f"scores {list(x)} and targets {list(t)} must have the same number of values")
        lp = param.loss_param
        self.normalization = None  # caffe-segnet: divide by N
        self.ignore_label = None
        if lp.HasField("normalization"):
            self.normalization = caffe_pb2.LossParameter.NormalizationMode.Name(lp.normalization)
            self.ignore_label = lp.ignore_label if lp.HasField("ignore_label") else None
        else:
            ambiguous = [name for name in ("normalize", "ignore_label") if lp.HasField(name)]
            if ambiguous:
                fields = " and ".join(f"loss_param.{name}" for name in ambiguous)
                raise self.fail(f"{fields} on SigmoidCrossEntropyLoss: caffe-segnet ignores it (divides by N), "
                                "mainline Caffe reads it; add loss_param.normalization (e.g. BATCH_SIZE) for "
                                "mainline's meaning, or remove it for caffe-segnet's")  # fmt: skip

    def sequential_terms(self, top=0):
        return math.prod(self.bottom_shapes[0])  # one float32 loop over every value

    def forward(self, x, target):
        if self.normalization is None:
            return (sigmoid_cross_entropy_loss(x, target),)
        return (normalized_sigmoid_cross_entropy_loss(x, target, self.normalization, self.ignore_label),)


# ---------------------------------------------------------------- HingeLoss


@register("HingeLoss")
class HingeLoss(_LossLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.norm = caffe_pb2.HingeLossParameter.Norm.Name(param.hinge_loss_param.norm)

    def forward(self, x, labels):
        scores = x.reshape(x.shape[0], -1)
        label = int_labels(labels, scores.shape[0])
        self._check_range(label, scores.shape[1])
        # -1 at each item's label, +1 elsewhere; relu's gradient is 0 at 0, as Caffe's sign().
        sign = torch.ones_like(scores).scatter(1, label.unsqueeze(1), -1.0)
        margin = torch.relu(1 + scores * sign)
        total = margin.sum() if self.norm == "L1" else margin.square().sum()
        return (total / scores.shape[0],)

    def extra_repr(self):
        return f"{super().extra_repr()} {self.norm}"


# ---------------------------------------------------------------- ContrastiveLoss


class _ContrastiveFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, similar, margin, legacy):
        num = a.shape[0]
        diff = (a - b).reshape(num, -1)
        dist_sq = diff.square().sum(dim=1)
        if legacy:
            dissimilar = torch.clamp(margin - dist_sq, min=0)
        else:
            dissimilar = torch.clamp(margin - dist_sq.sqrt(), min=0).square()
        loss = torch.where(similar, dist_sq, dissimilar).sum() / num / 2
        ctx.save_for_backward(diff, dist_sq, similar)
        ctx.margin, ctx.legacy, ctx.shapes = margin, legacy, (a.shape, b.shape)
        return loss

    @staticmethod
    def backward(ctx, grad):
        diff, dist_sq, similar = ctx.saved_tensors
        alpha = grad / diff.shape[0]
        if ctx.legacy:
            active = ctx.margin - dist_sq > 0
            factor = -torch.ones_like(dist_sq)
        else:
            dist = dist_sq.sqrt()
            mdist = ctx.margin - dist
            active = mdist > 0
            factor = -mdist / (dist + CONTRASTIVE_EPS)
        factor = torch.where(similar, torch.ones_like(factor), torch.where(active, factor, torch.zeros_like(factor)))
        grad_a = diff * (alpha * factor).unsqueeze(1)
        a_shape, b_shape = ctx.shapes
        return grad_a.reshape(a_shape), -grad_a.reshape(b_shape), None, None, None


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, similar: torch.Tensor, margin: float = 1.0,
                     legacy: bool = False) -> torch.Tensor:  # fmt: skip
    """Caffe's ContrastiveLoss; ``similar`` is a bool per pair."""
    return _ContrastiveFunction.apply(a, b, similar, margin, legacy)


@register("ContrastiveLoss")
class ContrastiveLoss(_LossLayer):
    n_bottoms = (3, 3)

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        a, b, sim = (legacy_dims(s) for s in bottom_shapes)
        if a[2:] != (1, 1) or b[2:] != (1, 1) or a[1] != b[1]:
            raise self.fail(f"the pair bottoms must both be N x C x 1 x 1, got {list(bottom_shapes[0])} and "
                            f"{list(bottom_shapes[1])}")  # fmt: skip
        if sim[1:] != (1, 1, 1) or sim[0] < self.num:
            raise self.fail(f"the similarity bottom must be N x 1 x 1 x 1, got {list(bottom_shapes[2])}")
        p = param.contrastive_loss_param
        self.margin, self.legacy = p.margin, p.legacy_version

    def sequential_terms(self, top=0):
        return self.num  # one float32 loop over the pairs

    def forward(self, a, b, sim):
        similar = int_labels(sim, a.shape[0]) != 0
        return (contrastive_loss(a, b, similar, self.margin, self.legacy),)

    def extra_repr(self):
        return f"{super().extra_repr()} margin={self.margin} legacy_version={self.legacy}"


# ---------------------------------------------------------------- InfogainLoss and MultinomialLogisticLoss


class _InfogainFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, prob, weights):
        # weights: H[l_i, :] per item, (N, D)
        num = prob.shape[0]
        floored = torch.clamp(prob.reshape(num, -1), min=LOG_THRESHOLD)
        ctx.save_for_backward(floored, weights)
        ctx.shape = prob.shape
        return -(weights * torch.log(floored)).sum() / num

    @staticmethod
    def backward(ctx, grad):
        floored, weights = ctx.saved_tensors
        return (-(grad / floored.shape[0]) * weights / floored).reshape(ctx.shape), None


def infogain_loss(prob: torch.Tensor, labels: torch.Tensor, infogain: torch.Tensor) -> torch.Tensor:
    """Caffe's InfogainLoss on probabilities (N x D) with integer labels and a D x D matrix."""
    dim = infogain.shape[-1]
    return _InfogainFunction.apply(prob, infogain.detach().reshape(dim, dim)[labels])


class _MultinomialLogisticFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, prob, labels):
        num = prob.shape[0]
        picked = prob.reshape(num, -1).gather(1, labels.unsqueeze(1)).squeeze(1)
        floored = torch.clamp(picked, min=LOG_THRESHOLD)
        ctx.save_for_backward(floored, labels)
        ctx.shape = prob.shape
        return -torch.log(floored).sum() / num

    @staticmethod
    def backward(ctx, grad):
        floored, labels = ctx.saved_tensors
        num = floored.shape[0]
        out = floored.new_zeros(num, math.prod(ctx.shape[1:]))
        out.scatter_(1, labels.unsqueeze(1), (-(grad / num) / floored).unsqueeze(1))
        return out.reshape(ctx.shape), None


def multinomial_logistic_loss(prob: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Caffe's MultinomialLogisticLoss on probabilities (N x D) with integer labels."""
    return _MultinomialLogisticFunction.apply(prob, labels)


def read_infogain_matrix(path: str | Path) -> np.ndarray:
    """The infogain matrix from a binary BlobProto file, as an array of the blob's shape."""
    with open(path, "rb") as f:
        budget.check(os.fstat(f.fileno()).st_size * 2, "reading this infogain matrix", path)  # bytes, then floats
        try:
            blob = caffe_pb2.BlobProto.FromString(f.read())
        except DecodeError as exc:
            raise ValueError(f"not a binary BlobProto ({exc})") from None
    if blob.HasField("shape"):
        shape = tuple(blob.shape.dim)
    else:
        shape = (blob.num, blob.channels, blob.height, blob.width)
    data = np.asarray(blob.double_data if len(blob.double_data) else blob.data, dtype=np.float32)
    if data.size != math.prod(shape):
        raise ValueError(f"{data.size} values for shape {list(shape)}")
    return data.reshape(shape)


@register("InfogainLoss")
class InfogainLoss(_LossLayer):
    n_bottoms = (2, 3)

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        mainline = [f"{message}.{name}" for message, fields in (("loss_param", ("normalization",)),
                                                               ("infogain_loss_param", ("axis",)))
                    for name in fields if getattr(param, message).HasField(name)]  # fmt: skip
        if mainline:
            raise self.fail(f"{' and '.join(mainline)} belong to mainline Caffe's InfogainLoss, which applies a "
                            "softmax to its scores inside; only caffe-segnet's InfogainLoss (on probabilities) is "
                            "converted: remove the field(s) for caffe-segnet's meaning")  # fmt: skip
        prob, label = bottom_shapes[:2]
        self._single_labels(label)
        self.dim = math.prod(prob) // self.num
        if len(bottom_shapes) == 3:
            matrix_shape = bottom_shapes[2]
            self.infogain = None
        else:
            source = param.infogain_loss_param.source
            if not source:
                raise self.fail("give the infogain matrix as a third bottom or as infogain_loss_param.source")
            try:
                matrix = read_infogain_matrix(source)
            except (OSError, ValueError) as exc:
                raise self.fail(f"cannot read the infogain matrix '{source}' (a binary BlobProto; a relative "
                                f"path is taken from the current folder, as Caffe does): {exc}") from None  # fmt: skip
            matrix_shape = matrix.shape
            self.register_buffer("infogain", torch.from_numpy(matrix), persistent=False)
        if legacy_dims(matrix_shape) != (1, 1, self.dim, self.dim):
            raise self.fail(f"the infogain matrix must be 1 x 1 x {self.dim} x {self.dim} for {self.dim} values "
                            f"per item, got {list(matrix_shape)}")  # fmt: skip

    def sequential_terms(self, top=0):
        return math.prod(self.bottom_shapes[0])  # one float32 loop over every value

    def forward(self, prob, labels, infogain=None):
        label = int_labels(labels, prob.shape[0])
        self._check_range(label, self.dim)
        matrix = infogain if infogain is not None else self.infogain
        return (infogain_loss(prob, label, matrix.to(prob.dtype)),)


@register("MultinomialLogisticLoss")
class MultinomialLogisticLoss(_LossLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self._single_labels(bottom_shapes[1])
        self.dim = math.prod(bottom_shapes[0]) // self.num

    def sequential_terms(self, top=0):
        return self.num  # one float32 loop over the items

    def forward(self, prob, labels):
        label = int_labels(labels, prob.shape[0])
        self._check_range(label, self.dim)
        return (multinomial_logistic_loss(prob, label),)
