"""Dropout, including caffe-segnet's Monte-Carlo dropout at test time.

While training (Caffe's TRAIN phase) each value is kept with probability
1 - ratio and scaled by 1 / (1 - ratio). Otherwise the layer is the identity,
unless the prototxt sets ``sample_weights_test`` (Bayesian SegNet): then it
keeps sampling in the TEST phase as caffe-segnet does. ``mc_dropout`` on the
layer (or ``CaffeNet.set_mc_dropout``) switches that sampling off or on.
"""

from __future__ import annotations

import torch.nn.functional as F

from .base import CaffeLayer, register


@register("Dropout")
class Dropout(CaffeLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.dropout_param
        if not 0.0 < p.dropout_ratio < 1.0:
            raise self.fail(f"dropout_ratio must lie in (0, 1), got {p.dropout_ratio}")
        self.ratio = p.dropout_ratio
        self.sample_weights_test = p.sample_weights_test
        self.mc_dropout = p.sample_weights_test

    def forward(self, x):
        active = self.training or self.mc_dropout
        return (F.dropout(x, self.ratio, training=active),)

    def extra_repr(self):
        return f"{super().extra_repr()} ratio={self.ratio} mc_dropout={self.mc_dropout}"
