"""PReLU: a ReLU whose negative slope is learned, per channel or shared.

    y = x                 where x > 0
    y = a_c * x           where x <= 0

``c`` is the index on axis 1 (so a 2-D N x C blob has one slope per column).
Blob: the slopes, shape (C,); with ``channel_shared: true`` one slope, which
Caffe keeps in a 0-axis blob and the weight reader gives as shape (1,).
Without a filler the slopes start at 0.25.

Caffe's gradient treats 0 as negative: the input gradient at x == 0 is
``a_c * dy`` and the slope gradient sums ``dy * x`` over x <= 0. Written with
``torch.where`` on ``x > 0``, autograd gives exactly that.
"""

from __future__ import annotations

import torch
from torch import nn

from caffe_proto import caffe_pb2

from ..fillers import fill
from .base import CaffeLayer, register

#: The slope Caffe starts from when the prototxt gives no filler.
DEFAULT_SLOPE = 0.25


def prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """Caffe's PReLU; ``slope`` has one value per channel (axis 1), or one value for all."""
    return torch.where(x > 0, x, x * slope.view(1, -1, *([1] * (x.dim() - 2))))


@register("PReLU")
class PReLU(CaffeLayer):
    blob_attrs = ("weight",)

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.prelu_param
        shape = bottom_shapes[0]
        if len(shape) < 2:
            raise self.fail(f"needs a bottom of at least 2 axes, got shape {list(shape)}")
        self.channel_shared = p.channel_shared
        self.weight = nn.Parameter(torch.full((1 if self.channel_shared else shape[1],), DEFAULT_SLOPE))
        if p.HasField("filler"):
            self._filler = p.filler
        else:
            self._filler = caffe_pb2.FillerParameter(type="constant", value=DEFAULT_SLOPE)

    def fill(self, generator):
        fill(self.weight, self._filler, generator)

    def forward(self, x):
        return (prelu(x, self.weight),)

    def extra_repr(self):
        return f"{super().extra_repr()} {'shared' if self.channel_shared else 'per channel'}"
