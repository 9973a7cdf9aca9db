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

import math

import torch
import torch.nn.functional as F

from caffe_proto import caffe_pb2

from .base import CaffeLayer, pair, register


def pool_output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Caffe's pooled size along one axis."""
    out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _torch_ceil_size(size: int, kernel: int, stride: int, pad: int) -> int:
    out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    if (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _torch_agrees(size: tuple[int, int], kernel, stride, pad) -> bool:
    """Whether torch's ceil-mode pooling gives Caffe's windows for this geometry."""
    return all(
        p <= k // 2 and _torch_ceil_size(s, k, st, p) == pool_output_size(s, k, st, p)
        for s, k, st, p in zip(size, kernel, stride, pad)
    )


def _overhang(size: int, kernel: int, stride: int, pad: int) -> int:
    """Padding needed past the input's end so that every Caffe window fits."""
    out = pool_output_size(size, kernel, stride, pad)
    return max(0, (out - 1) * stride + kernel - (size + 2 * pad)) + pad


def max_pool2d(
    x: torch.Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pad: tuple[int, int] = (0, 0),
    return_indices: bool = False,
):
    """Caffe's MAX pooling; with ``return_indices``, also the mask (int64)."""
    size = tuple(x.shape[-2:])
    if _torch_agrees(size, kernel, stride, pad):
        return F.max_pool2d(x, kernel, stride, pad, ceil_mode=True, return_indices=return_indices)
    # General case: pad with -inf so every Caffe window is a whole window,
    # then translate indices from the padded plane back to the input plane.
    (ph, pw), (h, w) = pad, size
    bottom, right = _overhang(h, kernel[0], stride[0], ph), _overhang(w, kernel[1], stride[1], pw)
    padded = F.pad(x, (pw, right, ph, bottom), value=float("-inf"))
    if not return_indices:
        return F.max_pool2d(padded, kernel, stride)
    out, idx = F.max_pool2d(padded, kernel, stride, return_indices=True)
    padded_w = w + pw + right
    idx = (idx // padded_w - ph) * w + (idx % padded_w - pw)
    return out, idx


def avg_pool2d(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int] = (0, 0)):
    """Caffe's AVE pooling (divisor rule in the module docstring)."""
    size = tuple(x.shape[-2:])
    if _torch_agrees(size, kernel, stride, pad):
        # torch's count_include_pad divisor clips window ends to in + pad, as Caffe does.
        return F.avg_pool2d(x, kernel, stride, pad, ceil_mode=True, count_include_pad=True)
    (ph, pw), (h, w) = pad, size
    bottom, right = _overhang(h, kernel[0], stride[0], ph), _overhang(w, kernel[1], stride[1], pw)
    sums = F.avg_pool2d(F.pad(x, (pw, right, ph, bottom)), kernel, stride, divisor_override=1)
    div_h = _window_extent(h, kernel[0], stride[0], ph, sums.shape[-2])
    div_w = _window_extent(w, kernel[1], stride[1], pw, sums.shape[-1])
    return sums / (div_h[:, None] * div_w[None, :]).to(x.dtype)


def _window_extent(size: int, kernel: int, stride: int, pad: int, out: int) -> torch.Tensor:
    start = torch.arange(out) * stride - pad
    end = torch.clamp(start + kernel, max=size + pad)
    return (end - start).double()


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
            self.kernel = pair(p, "kernel_size", "kernel_h", "kernel_w", what="kernel size")
        self.stride = pair(p, "stride", "stride_h", "stride_w", default=1, what="stride")
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
