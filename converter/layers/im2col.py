"""Im2col: the patches a convolution would see, laid out as channels.

Parameters come from ``convolution_param`` (kernel, pad, stride, and
mainline Caffe's dilation). The top is N x (C*kh*kw) x Hout x Wout with
convolution's floor size rule; channel ``c*kh*kw + i*kw + j`` holds
``x[n, c, y*sh - ph + i*dh, x*sw - pw + j*dw]``, zero outside the input.
The gradient (Caffe's col2im) adds each patch gradient back where it came
from; autograd of ``unfold`` is exactly that.

caffe-segnet takes each of kernel, pad and stride either as the single value
or as both ``_h`` and ``_w``, never one of a pair alone nor both forms, and
aborts otherwise; so does this layer.
"""

from __future__ import annotations

import torch.nn.functional as F

from .base import CaffeLayer, register
from .conv import conv_output_size


def _size_pair(p, single: str, default: int | None) -> tuple[int, int]:
    """A 2-D size given as ``single`` or as ``single``_h + ``single``_w (exactly one form)."""
    name = "kernel" if single == "kernel_size" else single
    h, w = f"{name}_h", f"{name}_w"
    values = list(getattr(p, single))
    has_h, has_w = p.HasField(h), p.HasField(w)
    if has_h != has_w:
        raise ValueError(f"give both {h} and {w}, not one of them")
    if has_h:
        if values:
            raise ValueError(f"give {single} or {h} + {w}, not both")
        return getattr(p, h), getattr(p, w)
    if not values:
        if default is None:
            raise ValueError(f"{single} (or {h} + {w}) is required")
        return default, default
    if len(values) > 2:
        raise ValueError(f"{single}: only 2-D sizes are supported, got {values}")
    return values[0], values[-1]


@register("Im2col")
class Im2col(CaffeLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.convolution_param
        shape = bottom_shapes[0]
        if len(shape) != 4:
            raise self.fail(f"expects a 4-D bottom, got shape {list(shape)}")
        try:
            self.kernel = _size_pair(p, "kernel_size", None)
            self.pad = _size_pair(p, "pad", 0)
            self.stride = _size_pair(p, "stride", 1)
        except ValueError as exc:
            raise self.fail(f"convolution_param: {exc}") from None
        dilation = list(p.dilation) or [1]
        if len(dilation) > 2:
            raise self.fail(f"only 2-D dilation is supported, got {dilation}")
        self.dilation = (dilation[0], dilation[-1])
        if min(self.kernel) < 1 or min(self.stride) < 1 or min(self.dilation) < 1:
            raise self.fail(f"kernel {self.kernel}, stride {self.stride} and dilation {self.dilation} must be positive")
        out = self.top_shapes(bottom_shapes)[0]
        if out[2] < 1 or out[3] < 1:
            raise self.fail(f"a {shape[2]}x{shape[3]} bottom is smaller than the kernel {self.kernel} "
                            f"(pad {self.pad}, dilation {self.dilation})")  # fmt: skip

    def top_shapes(self, bottom_shapes):
        n, c, h, w = bottom_shapes[0]
        size = [conv_output_size(s, k, st, p, d) for s, k, st, p, d in
                zip((h, w), self.kernel, self.stride, self.pad, self.dilation)]  # fmt: skip
        return [(n, c * self.kernel[0] * self.kernel[1], *size)]

    def forward(self, x):
        cols = F.unfold(x, self.kernel, self.dilation, self.pad, self.stride)
        return (cols.reshape(self.top_shapes([tuple(x.shape)])[0]),)

    def extra_repr(self):
        return f"{super().extra_repr()} kernel={self.kernel} stride={self.stride} pad={self.pad}"
