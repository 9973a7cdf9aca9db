"""Local response normalisation, as caffe-segnet computes it.

ACROSS_CHANNELS  y = x * (k + alpha/n * sum of x^2 over n neighbouring
                 channels)^-beta, channels outside the blob counting as zero.
WITHIN_CHANNEL   y = x * (1 + alpha/n^2 * sum of x^2 over an n x n window)^-beta,
                 zero padded by (n-1)/2. caffe-segnet builds this from an
                 average pooling whose divisor is always n^2, and ignores k.
SegNet-Basic uses ACROSS_CHANNELS on the raw 0..255 image as its input
normalisation.
"""

from __future__ import annotations


from caffe_proto import caffe_pb2

# Caffe's arithmetic lives in converter.functional; its names stay importable from here.
from ..functional import lrn_across_channels, lrn_within_channel  # noqa: F401
from .base import CaffeLayer, register


@register("LRN")
class LRN(CaffeLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.lrn_param
        if p.local_size % 2 != 1:
            raise self.fail(f"local_size must be odd, got {p.local_size}")
        if len(bottom_shapes[0]) != 4:
            raise self.fail(f"expects a 4-D bottom, got shape {list(bottom_shapes[0])}")
        self.size, self.alpha, self.beta, self.k = p.local_size, p.alpha, p.beta, p.k
        self.region = caffe_pb2.LRNParameter.NormRegion.Name(p.norm_region)

    def forward(self, x):
        if self.region == "ACROSS_CHANNELS":
            return (lrn_across_channels(x, self.size, self.alpha, self.beta, self.k),)
        return (lrn_within_channel(x, self.size, self.alpha, self.beta),)

    def extra_repr(self):
        return f"{super().extra_repr()} {self.region} size={self.size} alpha={self.alpha} beta={self.beta} k={self.k}"
