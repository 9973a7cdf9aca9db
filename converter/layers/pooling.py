"""Pooling as Caffe computes it.

Output size (Caffe's ceil mode): ``ceil((in + 2*pad - k) / stride) + 1``,
minus one when padding is used and the last window would start inside the
padding. Without padding the last window may hang over the edge and pools
the part that lies inside.

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


@register("Pooling")
class Pooling(CaffeLayer):
    n_tops = (1, 2)

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.pooling_param
        if len(bottom_shapes[0]) != 4:
            raise self.fail(f"expects a 4-D bottom, got shape {list(bottom_shapes[0])}")
        self.method = caffe_pb2.PoolingParameter.PoolMethod.Name(p.pool)
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
        out = (n, c, pool_output_size(h, k[0], self.stride[0], self.pad[0]),
               pool_output_size(w, k[1], self.stride[1], self.pad[1]))  # fmt: skip
        return [out] * self.num_tops

    def forward(self, x):
        kernel = self.kernel_for(x.shape)
        if self.method == "AVE":
            return (avg_pool2d(x, kernel, self.stride, self.pad),)
        if self.num_tops == 2:
            return max_pool2d(x, kernel, self.stride, self.pad, return_indices=True)
        return (max_pool2d(x, kernel, self.stride, self.pad),)
