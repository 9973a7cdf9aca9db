"""SPP: spatial pyramid pooling, a fixed-length vector from any H x W.

Level l = 0 .. pyramid_height-1 has b = 2^l bins per side and is an ordinary
Caffe Pooling (MAX or AVE) with, per axis of size H,

    kernel = ceil(H / b),  stride = kernel,  pad = (kernel * b - H + 1) // 2

so Pooling's rules hold: the ceil-mode size, windows that never start in
the padding, AVE's divisor counting padded cells inside the padded border.
Each level's N x C x h_l x w_l output is flattened channel-major and the
levels are concatenated in order: the top is N x sum(C * h_l * w_l), 2-D.
The parameters follow the bottom's size, as Caffe recomputes them on
every reshape. Gradients are the pooling gradients (autograd).

caffe-segnet aborts on ``pyramid_height`` below 2 (its internal Concat needs
two inputs) and on inputs too small for the pyramid (a pad not smaller than
its kernel); both are refused here with that reason.
"""

from __future__ import annotations

import torch

from caffe_proto import caffe_pb2

from .base import CaffeLayer, register
from .pooling import avg_pool2d, max_pool2d, pool_output_size


def spp_level(size: int, level: int) -> tuple[int, int]:
    """(kernel = stride, pad) of pyramid level ``level`` along an axis of ``size``."""
    bins = 2**level
    kernel = -(-size // bins)
    return kernel, (kernel * bins - size + 1) // 2


@register("SPP")
class SPP(CaffeLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.spp_param
        shape = bottom_shapes[0]
        if len(shape) != 4:
            raise self.fail(f"expects a 4-D bottom, got shape {list(shape)}")
        self.method = caffe_pb2.SPPParameter.PoolMethod.Name(p.pool)
        if self.method == "STOCHASTIC":
            raise self.fail("STOCHASTIC pooling is not supported")
        self.height = p.pyramid_height
        if self.height < 2:
            raise self.fail(f"pyramid_height {self.height}: caffe-segnet's SPP needs at least 2 levels "
                            "(its internal Concat takes two or more inputs)")  # fmt: skip
        self.levels(shape[2], shape[3])  # validate now

    def levels(self, h: int, w: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """(kernel, pad) per level for an h x w bottom; kernel is also the stride."""
        out = []
        for level in range(self.height):
            (kh, ph), (kw, pw) = spp_level(h, level), spp_level(w, level)
            if ph >= kh or pw >= kw:
                raise self.fail(
                    f"a {h}x{w} bottom is too small for pyramid_height {self.height}: level {level} needs "
                    f"kernel {kh}x{kw} with pad {ph}x{pw}, and Caffe's pooling needs pad < kernel"
                )
            out.append(((kh, kw), (ph, pw)))
        return out

    def top_shapes(self, bottom_shapes):
        n, c, h, w = bottom_shapes[0]
        total = 0
        for (kh, kw), (ph, pw) in self.levels(h, w):
            total += c * pool_output_size(h, kh, kh, ph) * pool_output_size(w, kw, kw, pw)
        return [(n, total)]

    def sequential_terms(self, top=0):
        _, _, h, w = self.bottom_shapes[0]
        return h * w if self.method == "AVE" else 0  # level 0 sums the whole plane in a loop

    def forward(self, x):
        pooled = []
        for kernel, pad in self.levels(x.shape[2], x.shape[3]):
            if self.method == "MAX":
                y = max_pool2d(x, kernel, kernel, pad)
            else:
                y = avg_pool2d(x, kernel, kernel, pad)
            pooled.append(y.flatten(1))
        return (torch.cat(pooled, dim=1),)

    def extra_repr(self):
        return f"{super().extra_repr()} {self.method} pyramid_height={self.height}"
