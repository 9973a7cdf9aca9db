"""Crop (mainline Caffe): bottom 0 cut to bottom 1's size on the axes from ``axis`` on.

Two bottoms. The top has bottom 0's sizes on the axes before ``axis`` (the
canonical axis; default 2) and bottom 1's sizes from there on; only bottom
1's shape is read, never its values. ``offset`` gives where the kept block
starts in bottom 0 on each cropped axis: none means 0 everywhere, one value
applies to every cropped axis, otherwise there must be exactly one value per
cropped axis. Each cropped axis must fit: offset + bottom 1's size <= bottom
0's size. Caffe reads bottom 1's size on every cropped axis, so bottom 1 needs
at least as many axes as bottom 0.

Gradient: the top's gradient lands in the kept block of bottom 0, zeros
elsewhere; bottom 1 gets none (Caffe's backward writes bottom 0 only).
"""

from __future__ import annotations

from .base import CaffeLayer, canonical_axis, register


@register("Crop")
class Crop(CaffeLayer):
    n_bottoms = (2, 2)

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.crop_param
        shape, reference = bottom_shapes
        axes = len(shape)
        self.axis = canonical_axis(p.axis, axes, self.caffe_name)
        cropped = axes - self.axis
        offsets = list(p.offset)
        if len(offsets) > 1 and len(offsets) != cropped:
            raise self.fail(f"{len(offsets)} offset values for the {cropped} cropped axes (axis {self.axis} to "
                            f"{axes - 1} of a {axes}-D bottom): give none, one, or one per cropped axis")  # fmt: skip
        if len(reference) < axes:
            raise self.fail(f"bottom 1 has {len(reference)} axes, fewer than bottom 0's {axes}: Caffe reads its size "
                            f"on every cropped axis (shapes {list(shape)} and {list(reference)})")  # fmt: skip
        self.offsets = [0] * self.axis + [offsets[0] if len(offsets) == 1 else offsets[i] if offsets else 0
                                          for i in range(cropped)]  # fmt: skip
        self.sizes = list(shape[: self.axis]) + list(reference[self.axis : axes])
        for i in range(self.axis, axes):
            if self.offsets[i] + self.sizes[i] > shape[i]:
                raise self.fail(f"the crop of axis {i} is out of bounds: size {self.sizes[i]} at offset "
                                f"{self.offsets[i]} does not fit bottom 0's size {shape[i]}")  # fmt: skip

    def top_shapes(self, bottom_shapes):
        return [tuple(self.sizes)]

    def forward(self, x, reference):
        index = tuple(slice(o, o + s) for o, s in zip(self.offsets, self.sizes))
        return (x[index],)

    def extra_repr(self):
        return f"{super().extra_repr()} axis={self.axis} offsets={self.offsets[self.axis:]}"
