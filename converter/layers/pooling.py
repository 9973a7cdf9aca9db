"""Pooling as Caffe computes it.

Output size, ``round_mode`` CEIL (the default, and caffe-segnet's only rule):
``ceil((in + 2*pad - k) / stride) + 1``; FLOOR (mainline Caffe): ``floor((in +
2*pad - k) / stride) + 1``, convolution's rule. In either mode, when padding
is used, one less if the last window would start inside the padding (mainline
applies this to both modes; with pad < kernel it never fires in FLOOR mode).
Without padding a CEIL-mode last window may hang over the edge and pools the
part that lies inside; FLOOR-mode windows always lie inside ``in + 2*pad``, and
are exactly the first FLOOR-size windows of CEIL mode (same starts, same
divisors), which is how they are computed here.

MAX: the window is scanned row by row and only a strictly larger value
replaces the current one, so the first maximum wins; padding is never
selected. The optional second top (the mask) holds, for each output, the
flat index ``h*W + w`` of the chosen input inside its (unpadded) H x W plane.

AVE: a window's divisor is its area after clipping its end to ``in + pad``
(so padded zeros inside the border count, positions beyond it do not), and
the sum runs over the real input only.
"""

from __future__ import annotations


from caffe_proto import caffe_pb2

# Caffe's arithmetic lives in converter.functional; its names stay importable from here.
from ..functional import avg_pool2d, max_pool2d, pool_output_size  # noqa: F401
from .base import CaffeLayer, pair, register


def pooled_size(size: int, kernel: int, stride: int, pad: int, round_mode: str = "CEIL") -> int:
    """Caffe's pooled size along one axis for ``round_mode`` CEIL or FLOOR."""
    if round_mode == "CEIL":
        return pool_output_size(size, kernel, stride, pad)
    out = (size + 2 * pad - kernel) // stride + 1  # floor division, as C's floor() of the quotient
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@register("Pooling")
class Pooling(CaffeLayer):
    n_tops = (1, 2)

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.pooling_param
        if len(bottom_shapes[0]) != 4:
            raise self.fail(f"expects a 4-D bottom, got shape {list(bottom_shapes[0])}")
        self.method = caffe_pb2.PoolingParameter.PoolMethod.Name(p.pool)
        self.round_mode = caffe_pb2.PoolingParameter.RoundMode.Name(p.round_mode)
        if self.method == "STOCHASTIC":
            raise self.fail("STOCHASTIC pooling is not supported")
        self.global_pooling = p.global_pooling
        if self.global_pooling:
            if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
                raise self.fail("global pooling takes no kernel size")
            self.kernel = None
        else:
            self.kernel = pair(p, "kernel_size", "kernel_h", "kernel_w", what="kernel size", minimum=1)
        self.stride = pair(p, "stride", "stride_h", "stride_w", default=1, what="stride", minimum=1)
        self.pad = pair(p, "pad", "pad_h", "pad_w", default=0, what="pad")
        if self.global_pooling and (self.pad != (0, 0) or self.stride != (1, 1)):
            raise self.fail("global pooling needs pad 0 and stride 1")
        if self.kernel and any(p >= k for p, k in zip(self.pad, self.kernel)):
            raise self.fail(f"pad {self.pad} must be smaller than the kernel {self.kernel}")
        if self.num_tops == 2 and self.method != "MAX":
            raise self.fail("only MAX pooling has a mask top")

    def index_tops(self):
        return (1,) if self.num_tops == 2 else ()

    def kernel_for(self, shape) -> tuple[int, int]:
        return tuple(shape[-2:]) if self.global_pooling else self.kernel

    def top_shapes(self, bottom_shapes):
        n, c, h, w = bottom_shapes[0]
        k = self.kernel_for(bottom_shapes[0])
        out = (n, c, pooled_size(h, k[0], self.stride[0], self.pad[0], self.round_mode),
               pooled_size(w, k[1], self.stride[1], self.pad[1], self.round_mode))  # fmt: skip
        return [out] * self.num_tops

    def forward(self, x):
        kernel = self.kernel_for(x.shape)
        if self.method == "AVE":
            tops = (avg_pool2d(x, kernel, self.stride, self.pad),)
        elif self.num_tops == 2:
            tops = tuple(max_pool2d(x, kernel, self.stride, self.pad, return_indices=True))
        else:
            tops = (max_pool2d(x, kernel, self.stride, self.pad),)
        if self.round_mode == "FLOOR":  # the first windows of CEIL mode (see the module docstring)
            h, w = (pooled_size(size, k, s, p, "FLOOR")
                    for size, k, s, p in zip(x.shape[-2:], kernel, self.stride, self.pad))  # fmt: skip
            tops = tuple(t[..., :h, :w] for t in tops)
        return tops

    def extra_repr(self):
        return f"{super().extra_repr()} {self.method} round_mode={self.round_mode}"
