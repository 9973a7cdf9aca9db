"""1x1 convolutions as matrix products: the same numbers as the direct convolution, up to float32 rounding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segnet.deploy.pointwise import PointwiseConv2d


@pytest.mark.parametrize("bias", [True, False])
def test_same_as_the_direct_convolution_in_any_layout(bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 11, 1, bias=bias)
    x = torch.randn(3, 16, 9, 13).relu()
    exact = F.conv2d(x.double(), conv.weight.double(), None if conv.bias is None else conv.bias.double())
    direct = (conv(x).double() - exact).abs().max().item()
    module = PointwiseConv2d(conv)
    with torch.no_grad():
        for view in (x, x.contiguous(memory_format=torch.channels_last)):
            y = module(view)
            assert y.shape == exact.shape
            # both sum the same 16 products: errors of the same order, a few float32 units of the result
            scale = exact.abs().max().item()
            bound = max(2 * direct, 4 * torch.finfo(torch.float32).eps * scale)
            assert (y.double() - exact).abs().max().item() <= bound


def test_refuses_other_convolutions_and_training():
    others = (nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 1, stride=2), nn.Conv2d(4, 4, 1, padding=1), nn.Conv2d(4, 4, 1, groups=2))
    for conv in others:
        with pytest.raises(ValueError, match="1x1 convolution"):
            PointwiseConv2d(conv)
    with pytest.raises(RuntimeError, match="inference only"):
        PointwiseConv2d(nn.Conv2d(4, 4, 1))(torch.randn(1, 4, 3, 3, requires_grad=True))
