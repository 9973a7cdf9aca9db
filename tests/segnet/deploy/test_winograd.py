"""Winograd F(2x2, 3x3): the same convolution as the direct one, within the float32 accuracy gate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segnet.deploy.conv_paths import WINOGRAD_MIN_CHANNELS
from segnet.deploy.inference import optimize_for_inference
from segnet.models.family import segnet, segnet_basic
from segnet.deploy.winograd import WinogradConv2d, transform_weight, winograd_conv3x3
from support import results_in_threads


def _case(n, c, k, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).relu()  # post-ReLU inputs, as inside the nets
    weight = torch.randn(k, c, 3, 3, generator=g) / (3 * c**0.5)
    bias = torch.randn(k, generator=g) * 0.1
    return x, weight, bias


def _errors(x, weight, bias):
    """Max and RMS error, against a float64 convolution, of the direct and the Winograd float32 convolutions."""
    exact = F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), padding=1)
    direct = F.conv2d(x, weight, bias, padding=1).double() - exact
    winograd = winograd_conv3x3(x, transform_weight(weight), bias).double() - exact
    return {name: (e.abs().max().item(), e.pow(2).mean().sqrt().item()) for name, e in
            (("direct", direct), ("winograd", winograd))}  # fmt: skip


@pytest.mark.parametrize("shape", [(1, 5, 7, 7, 9), (2, 4, 6, 1, 1), (2, 8, 3, 2, 3), (1, 16, 16, 45, 61), (3, 32, 8, 10, 6)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_same_convolution_as_the_direct_one_on_any_size(shape, with_bias):
    x, weight, bias = _case(*shape)
    bias = bias if with_bias else None
    errors = _errors(x, weight, bias)
    scale = F.conv2d(x.double(), weight.double(), padding=1).abs().max().item()
    # no worse than the direct float32 convolution, up to a few units of float32 rounding at this scale
    assert errors["winograd"][0] <= max(1.5 * errors["direct"][0], 8 * torch.finfo(torch.float32).eps * scale)


#: The accuracy gate: Winograd's float32 error against float64 is at most this many times the direct float32
#: convolution's, max and RMS. Both errors come from the machine's accumulation order (the BLAS's blocking for
#: Winograd's products, the convolution kernel's for the direct one), which differs between CPUs: the direct error
#: of the same case measured 0.6-0.9e-6 on an AVX-512 EPYC and up to 2.4e-6 on an AVX2 one. The Winograd path fixes
#: its own chains (winograd.ACCUMULATION_CHUNK), and its exact transforms add at most two roundings per input and
#: four per output, so its error stays of the direct one's order on any CPU; F(4x4, 3x3), whose transforms multiply
#: by 4, 5 and 1/24, measured 4-8x and fails.
ERROR_GATE = 2.0


@pytest.mark.parametrize("channels, size", [(128, (46, 60)), (256, (23, 30)), (512, (12, 15))])
def test_float32_error_within_the_gate_of_the_direct_convolution(channels, size):
    # The layer shapes where the lean path uses it.
    for seed in range(2):
        errors = _errors(*_case(1, channels, channels, *size, seed=seed))
        assert errors["winograd"][0] <= ERROR_GATE * errors["direct"][0], errors
        assert errors["winograd"][1] <= ERROR_GATE * errors["direct"][1], errors


def test_the_gate_catches_a_coarser_kernel_transform():
    # The gate can fail: the same algorithm with its transformed kernels rounded to 16 bits of mantissa.
    x, weight, bias = _case(1, 128, 128, 23, 30)
    coarse = transform_weight(weight).view(torch.int32).bitwise_and(~0x7F).view(torch.float32)
    exact = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    direct = (F.conv2d(x, weight, bias, padding=1).double() - exact).abs().max().item()
    winograd = (winograd_conv3x3(x, coarse, bias).double() - exact).abs().max().item()
    assert winograd > ERROR_GATE * direct


def test_any_input_layout_and_a_channels_last_result():
    x, weight, bias = _case(2, 8, 5, 9, 11)
    expected = F.conv2d(x, weight, bias, padding=1)
    wt = transform_weight(weight)
    for view in (x, x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3).contiguous().transpose(2, 3)):
        y = winograd_conv3x3(view, wt, bias)
        assert y.shape == expected.shape and y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_threads_keep_their_own_buffers():
    cases = [_case(1, 8, 8, 20 + 7 * i, 30, seed=i) for i in range(4)]

    def work(i):
        x, w, b = cases[i]
        wt = transform_weight(w)
        return [winograd_conv3x3(x, wt, b) for _ in range(20)][-1]

    for y, (x, w, b) in zip(results_in_threads(work, len(cases)), cases):
        torch.testing.assert_close(y, F.conv2d(x, w, b, padding=1), rtol=1e-5, atol=1e-5)


def test_the_module_refuses_other_convolutions_and_training():
    with pytest.raises(ValueError, match="3x3 convolution with stride 1"):
        WinogradConv2d(nn.Conv2d(4, 4, 3, stride=2, padding=1))
    module = WinogradConv2d(nn.Conv2d(4, 4, 3, padding=1))
    with pytest.raises(RuntimeError, match="inference only"):
        module(torch.randn(1, 4, 5, 5, requires_grad=True))


def test_the_lean_path_uses_it_on_wide_3x3_layers_only():
    model = optimize_for_inference(segnet().eval(), winograd=True)
    replaced = [m for m in model.modules() if isinstance(m, WinogradConv2d)]
    direct = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert replaced and all(min(m.in_channels, m.out_channels) >= WINOGRAD_MIN_CHANNELS for m in replaced)
    assert all(min(m.in_channels, m.out_channels) < WINOGRAD_MIN_CHANNELS for m in direct)
    # SegNet-Basic has 7x7 convolutions and a 1x1 classifier: nothing to replace
    basic = optimize_for_inference(segnet_basic().eval(), winograd=True)
    assert not any(isinstance(m, WinogradConv2d) for m in basic.modules())
    with pytest.raises(ValueError, match="float32 path"):
        optimize_for_inference(segnet().eval(), winograd=True, bf16=True)


def test_buffers_made_under_inference_mode_do_not_break_later_calls():
    x, weight, bias = _case(1, 4, 4, 6, 6)
    wt = transform_weight(weight)
    with torch.inference_mode():
        winograd_conv3x3(x, wt, bias)
    with torch.no_grad():  # inference tensors are read-only outside inference mode
        torch.testing.assert_close(winograd_conv3x3(x, wt, bias), F.conv2d(x, weight, bias, padding=1))
