"""Softmax, and SoftmaxWithLoss with caffe-segnet's and mainline Caffe's normalisation.

SoftmaxWithLoss, per position with label l (skipping ``ignore_label``):
    term = -log(max(p_l, FLT_MIN)) * w[l]
with w = ``class_weighting`` when ``weight_by_label_freqs`` is set (caffe-segnet),
else 1, and the loss is sum(term) / divisor. The class weights scale the terms
but are not part of the divisor. The divisor:

- ``loss_param.normalization`` set (mainline Caffe): FULL every position
  (outer * inner, ignored ones included); VALID the positions whose label is
  not ``ignore_label`` (all of them without one); BATCH_SIZE the outer size
  (the batch, for axis 1); NONE 1. Mainline divides by max(1, that), so a
  batch without a labelled position gives 0, not 0/0.
- otherwise ``normalize`` (caffe-segnet; mainline reads an explicit
  ``normalize`` the same way): true (the default) the number of non-ignored
  positions, false the outer size, each as it is (0 non-ignored positions
  give 0/0 = NaN, as in caffe-segnet).

The gradient is ``w[l] * (p - onehot(l)) / divisor`` and zero at ignored
positions; it is written here rather than left to autograd so that it is
exactly Caffe's (the FLT_MIN clamp does not cut it off).
"""

from __future__ import annotations

import math

import torch

from caffe_proto import caffe_pb2

# Caffe's arithmetic lives in converter.functional; its names stay importable from here.
from ..functional import FLT_MIN, normalizer, softmax_with_loss  # noqa: F401
from .base import CaffeLayer, canonical_axis, register


@register("Softmax")
class Softmax(CaffeLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.axis = canonical_axis(param.softmax_param.axis, len(bottom_shapes[0]), self.caffe_name)

    def forward(self, x):
        return (torch.softmax(x, dim=self.axis),)


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
        #: mainline's normalization mode when the file sets one; None: ``normalize`` decides
        self.normalization = (caffe_pb2.LossParameter.NormalizationMode.Name(lp.normalization)
                              if lp.HasField("normalization") else None)  # fmt: skip
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
        # Caffe accumulates the loss over every position in one float32 loop.
        shape = self.bottom_shapes[0]
        return math.prod(shape) // shape[self.axis] if top == 0 else 0

    def forward(self, logits, labels):
        try:
            divisor = self.normalize if self.normalization is None else self.normalization  # flag, or mode by name
            loss, prob = softmax_with_loss(logits, labels, self.class_weighting, self.ignore_label, divisor,
                                           self.axis)  # fmt: skip
        except ValueError as exc:
            raise self.fail(str(exc)) from None
        return (loss, prob)[: self.num_tops]

    def extra_repr(self):
        how = self.normalization or ("VALID (normalize)" if self.normalize else "BATCH_SIZE (normalize: false)")
        return f"{super().extra_repr()} normalization={how}"
