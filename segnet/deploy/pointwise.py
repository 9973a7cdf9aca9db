"""1x1 convolutions as one matrix product per image.

oneDNN runs a 1x1 convolution on a contiguous (NCHW) map far below the
speed of the same arithmetic as a matrix product: SegNet-Basic's classifier
(64 -> 11 channels at 360x480) took 20 ms direct against about 3 ms as
[K, C] x [C, H W]. The product sums over the same C terms as the direct
convolution, so its float32 error is of the same order.
"""

from __future__ import annotations

import torch
from torch import nn

from segnet.deploy.workspace import refuse_training


class PointwiseConv2d(nn.Module):
    """A 1x1, stride-1, unpadded ``nn.Conv2d`` as ``[K, C] x [C, H W]`` per image (inference only)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not is_pointwise(conv):
            raise ValueError("the matrix-product path needs a 1x1 convolution with stride 1, no padding, no groups")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.register_buffer("weight", conv.weight.detach().reshape(conv.out_channels, conv.in_channels).clone())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        refuse_training(self, x)
        n, c, h, w = x.shape
        flat = x.reshape(n, c, h * w)  # a view for NCHW maps, a copy for others
        y = x.new_empty(n, self.out_channels, h * w)
        for i in range(n):
            if self.bias is None:
                torch.mm(self.weight, flat[i], out=y[i])
            else:
                torch.addmm(self.bias[:, None], self.weight, flat[i], out=y[i])
        return y.view(n, self.out_channels, h, w)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, 1x1 as a matrix product"


def is_pointwise(conv: nn.Module) -> bool:
    """A plain 1x1 convolution: stride 1, no padding, one group."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding in ((0, 0), "valid")
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )
