"""Convolution through the DFT: the same convolution as the direct one, within the float32 accuracy gate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segnet.deploy.dftconv import DFTConv2d, dft_conv2d, transform_weight
from segnet.deploy.winograd import WinogradConv2d
from support import results_in_threads

#: The accuracy gate, as for Winograd (test_winograd.ERROR_GATE): the DFT path's float32 error against float64 is
#: at most this many times the direct float32 convolution's, max and RMS. Its error comes from the transforms'
#: sums over T terms of at most unit coefficients and from the products' sums over 2C terms; the direct one's from
#: sums over C k^2 terms in whatever order the CPU's kernel takes, so the ratio depends on the CPU, and the margin
#: holds it on any: 0.3-1.0x measured on AVX-512, and up to 1.6x on the tiny random case below.
ERROR_GATE = 2.0


def _case(n, c, k_out, h, w, kernel, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).relu()  # post-ReLU inputs, as inside the nets
    weight = torch.randn(k_out, c, kernel, kernel, generator=g) / (kernel * c**0.5)
    bias = torch.randn(k_out, generator=g) * 0.1
    return x, weight, bias


def _errors(x, weight, bias, tile):
    """Max and RMS error, against a float64 convolution, of the direct and the DFT float32 convolutions."""
    pad = weight.shape[-1] // 2
    exact = F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), padding=pad)
    direct = F.conv2d(x, weight, bias, padding=pad).double() - exact
    dft = dft_conv2d(x, transform_weight(weight, tile), bias, weight.shape[-1], tile).double() - exact
    return {name: (e.abs().max().item(), e.pow(2).mean().sqrt().item()) for name, e in
            (("direct", direct), ("dft", dft))}  # fmt: skip


SHAPES = [(1, 5, 7, 7, 9), (2, 4, 6, 1, 1), (2, 8, 3, 23, 31), (1, 16, 16, 45, 61), (3, 3, 8, 10, 6)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kernel, tile", [(3, 16), (5, 16), (7, 16), (7, 32)])
def test_same_convolution_as_the_direct_one_on_any_size(shape, kernel, tile):
    x, weight, bias = _case(*shape, kernel)
    errors = _errors(x, weight, bias, tile)
    scale = F.conv2d(x.double(), weight.double(), padding=kernel // 2).abs().max().item()
    # of the direct convolution's order, up to a few units of float32 rounding at this scale
    assert errors["dft"][0] <= max(2 * errors["direct"][0], 8 * torch.finfo(torch.float32).eps * scale), errors


@pytest.mark.parametrize("tile", [16, 32])
@pytest.mark.parametrize("channels, size", [(3, (90, 120)), (64, (45, 60)), (64, (90, 120))])
def test_float32_error_within_the_gate_of_the_direct_convolution(tile, channels, size):
    # SegNet-Basic's 7x7 layers: its first (3 -> 64) and the 64 -> 64 ones, at a quarter of their sizes and more.
    for seed in range(2):
        errors = _errors(*_case(1, channels, 64, *size, 7, seed=seed), tile)
        assert errors["dft"][0] <= ERROR_GATE * errors["direct"][0], errors
        assert errors["dft"][1] <= ERROR_GATE * errors["direct"][1], errors


def test_the_gate_catches_a_coarser_kernel_transform():
    # The gate can fail: the same algorithm with its transformed kernels rounded to 16 bits of mantissa.
    x, weight, bias = _case(1, 64, 64, 45, 60, 7)
    coarse = transform_weight(weight, 16).view(torch.int32).bitwise_and(~0x7F).view(torch.float32)
    exact = F.conv2d(x.double(), weight.double(), bias.double(), padding=3)
    direct = (F.conv2d(x, weight, bias, padding=3).double() - exact).abs().max().item()
    dft = (dft_conv2d(x, coarse, bias, 7, 16).double() - exact).abs().max().item()
    assert dft > ERROR_GATE * direct


def test_any_input_layout_keeps_its_memory_format():
    for h, w in ((30, 40), (24, 36)):  # cut at the bottom and right edges (tiles give 12x12 outputs), or whole tiles
        x, weight, bias = _case(2, 8, 5, h, w, 5)
        expected = F.conv2d(x, weight, bias, padding=2)
        wf = transform_weight(weight, 16)
        cl = x.contiguous(memory_format=torch.channels_last)
        for view, channels_last in ((x, False), (cl, True), (x.transpose(2, 3).contiguous().transpose(2, 3), False)):
            y = dft_conv2d(view, wf, bias, 5, 16)
            assert y.shape == expected.shape
            assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_bands_of_tile_rows_give_the_same_result(monkeypatch):
    from segnet.deploy import dftconv

    x, weight, bias = _case(1, 6, 7, 53, 29, 7)
    wf = transform_weight(weight, 16)
    whole = dft_conv2d(x, wf, bias, 7, 16)
    monkeypatch.setattr(dftconv, "BAND_FLOATS", 1)  # one tile row per band
    # equal up to rounding: the matrix products' shapes change with the band, and with them the BLAS's blocking
    torch.testing.assert_close(dft_conv2d(x, wf, bias, 7, 16), whole, rtol=1e-5, atol=1e-5)


def test_threads_keep_their_own_buffers():
    cases = [_case(1, 8, 8, 20 + 7 * i, 30, 7, seed=i) for i in range(4)]

    def work(i):
        x, w, b = cases[i]
        wf = transform_weight(w, 16)
        return [dft_conv2d(x, wf, b, 7, 16) for _ in range(10)][-1]

    for y, (x, w, b) in zip(results_in_threads(work, len(cases)), cases):
        torch.testing.assert_close(y, F.conv2d(x, w, b, padding=3), rtol=1e-5, atol=1e-5)


def test_the_module_refuses_other_convolutions_and_training():
    for conv in (nn.Conv2d(4, 4, 7, stride=2, padding=3), nn.Conv2d(4, 4, 4, padding=2), nn.Conv2d(4, 4, 7, padding=1),
                 nn.Conv2d(4, 4, 7, padding=3, groups=2), nn.Conv2d(4, 4, 7, padding=3, dilation=2)):  # fmt: skip
        with pytest.raises(ValueError, match="odd k x k convolution"):
            DFTConv2d(conv)
    with pytest.raises(ValueError, match="leaves no outputs"):
        DFTConv2d(nn.Conv2d(4, 4, 17, padding=8), tile=16)
    module = DFTConv2d(nn.Conv2d(4, 4, 7, padding=3))
    with pytest.raises(RuntimeError, match="inference only"):
        module(torch.randn(1, 4, 9, 9, requires_grad=True))
    assert "DFT on 16x16 tiles" in repr(module) and "Winograd" not in repr(module)
    assert not isinstance(module, WinogradConv2d)


def test_buffers_made_under_inference_mode_do_not_break_later_calls():
    x, weight, bias = _case(1, 4, 4, 12, 12, 5)
    wf = transform_weight(weight, 16)
    with torch.inference_mode():
        dft_conv2d(x, wf, bias, 5, 16)
    with torch.no_grad():  # inference tensors are read-only outside inference mode
        torch.testing.assert_close(dft_conv2d(x, wf, bias, 5, 16), F.conv2d(x, weight, bias, padding=2))


@pytest.fixture(scope="module")
def camvid_test_labels(camvid_dir):
    """The example net, the 233 CamVid test images at its input size, and the converted Caffe graph's labels."""
    import converter
    from segnet.data.imageio import load_image
    from segnet.models.caffe_graph import as_segmenter, declared_input_size

    from conftest import ROOT

    example = ROOT / "examples" / "segnet_basic_camvid"
    net = converter.convert(example / "segnet_basic_camvid.prototxt", example / "segnet_basic_camvid.caffemodel")
    graph, size = as_segmenter(net).eval(), declared_input_size(net)
    paths = sorted((camvid_dir / "test").glob("*.png"))
    assert len(paths) == 233
    batches = [torch.stack([torch.from_numpy(load_image(p, size)) for p in paths[i : i + 8]]) for i in range(0, 233, 8)]
    with torch.inference_mode():
        return net, batches, [graph(x).argmax(1) for x in batches]


@pytest.mark.parametrize("tile", [16, 32])
def test_labels_agree_with_the_converted_graph_on_the_camvid_test_set(camvid_test_labels, tile, monkeypatch):
    # The end-to-end gate: the engine on the trained example, with every layer the DFT is offered (the decoder's)
    # run through it whatever the timing would choose, labels the 233 test images as the converted Caffe graph
    # does, at 99.99% of the pixels or more. (With the encoder through the DFT too: 99.87%, see conv_paths.)
    from segnet.deploy import conv_paths
    from segnet.deploy.engine import build_engine

    net, batches, expected = camvid_test_labels
    monkeypatch.setattr(conv_paths, "_fastest", lambda conv, shape, paths, channels_last: next(
        (p for p in paths if p == f"dft{tile}"), "direct"))  # fmt: skip
    engine = build_engine(net, "cpu", batch_size=8)
    assert sum(isinstance(m, DFTConv2d) for m in engine.forward.modules()) == 4
    same = sum(int((engine.labels(x).long() == labels).sum()) for x, labels in zip(batches, expected))
    assert same / sum(labels.numel() for labels in expected) >= 0.9999
