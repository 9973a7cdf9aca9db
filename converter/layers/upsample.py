"""caffe-segnet's Upsample layer: unpooling with the pooling mask.

The output starts as zeros and each input value is written at the flat
position its mask gives, ``top[mask[i]] = bottom[i]`` plane by plane (a later
write wins where masks repeat). The output is ``upsample_h x upsample_w``
when both are given (any scale is then ignored); otherwise it is
``in * scale - pad_out`` per axis, where ``pad_out_h``/``pad_out_w`` remove one
row/column and need a scale of 2.

The gradient flows back as ``bottom_diff[i] = top_diff[mask[i]]``.
"""

from __future__ import annotations

# Caffe's arithmetic lives in converter.functional; its names stay importable from here.
from ..functional import unpool2d  # noqa: F401
from .base import CaffeLayer, register


@register("Upsample")
class Upsample(CaffeLayer):
    n_bottoms = (2, 2)

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.upsample_param
        if p.HasField("upsample_h") and p.HasField("upsample_w"):
            if p.upsample_h <= 1 or p.upsample_w <= 1:
                raise self.fail("upsample_h and upsample_w must be greater than 1")
            self.size = (p.upsample_h, p.upsample_w)
            self.scale = self.pad_out = None
        else:
            if p.HasField("scale_h") != p.HasField("scale_w") or (p.HasField("scale_h") and p.HasField("scale")):
                raise self.fail("give upsample_h and upsample_w, or scale, or both scale_h and scale_w")
            self.scale = (p.scale_h, p.scale_w) if p.HasField("scale_h") else (p.scale, p.scale)
            if min(self.scale) <= 1:
                raise self.fail(f"scale must be greater than 1, got {self.scale}")
            self.pad_out = (int(p.pad_out_h), int(p.pad_out_w))
            for s, pad_out in zip(self.scale, self.pad_out):
                if pad_out and s != 2:
                    raise self.fail("pad_out_h/pad_out_w need a scale of 2")
            self.size = None
        x, mask = bottom_shapes
        if tuple(x) != tuple(mask):
            raise self.fail(f"data {list(x)} and mask {list(mask)} bottoms differ in shape")
        #: set by the graph when the mask comes from non-overlapping MAX pooling
        self.unique_indices = False

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        if self.size is not None:
            return self.size
        return (h * self.scale[0] - self.pad_out[0], w * self.scale[1] - self.pad_out[1])

    def top_shapes(self, bottom_shapes):
        n, c, h, w = bottom_shapes[0]
        return [(n, c, *self.output_size(h, w))]

    def forward(self, x, mask):
        out_h, out_w = self.output_size(*x.shape[-2:])
        if mask.numel() and int(mask.max()) >= out_h * out_w:
            raise self.fail(
                f"mask index {int(mask.max())} is outside the {out_h}x{out_w} output: "
                "the upsample size does not match the pooling that made the mask"
            )
        return (unpool2d(x, mask, out_h, out_w, self.unique_indices),)
