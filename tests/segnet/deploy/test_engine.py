"""The inference engine: each path it picks computes the converted graph's (or the plain model's) labels."""

from __future__ import annotations

import pytest
import torch

import converter
from converter.errors import UserError
from segnet.deploy import conv_paths
from segnet.deploy import engine as engines
from segnet.deploy.dftconv import DFTConv2d
from segnet.deploy.engine import build_engine, check_precision
from segnet.deploy.inference import optimize_for_inference
from segnet.deploy.winograd import WinogradConv2d
from segnet.models.caffe_graph import as_segmenter
from segnet.models.family import bayesian_segnet_basic, segnet, segnet_basic
from segnet.models.registry import build_model
from support import randomize_bn_statistics

from conftest import ROOT

EXAMPLE = ROOT / "examples" / "segnet_basic_camvid"


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.long() == b.long()).double().mean())


def _images(n, size, seed=0):
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed)) * 255


def test_the_example_runs_as_the_lean_readable_model_with_the_converted_graphs_labels():
    net = converter.convert(EXAMPLE / "segnet_basic_camvid.prototxt", EXAMPLE / "segnet_basic_camvid.caffemodel")
    engine = build_engine(net, "cpu", batch_size=2)
    assert "readable SegNet model" in engine.describe() and "BN folded" in engine.describe()
    x = _images(2, engine.input_size)
    with torch.no_grad():
        reference = as_segmenter(net, probabilities=True).eval()(x).argmax(1)
    ids = engine.labels(x)
    assert ids.dtype == torch.uint8 and ids.shape == (2, *engine.input_size)
    assert _agreement(ids, reference) >= 0.9999


def test_winograd_is_chosen_per_layer_and_keeps_the_labels():
    torch.manual_seed(0)
    model = randomize_bn_statistics(segnet().eval())
    x = _images(1, (64, 96))
    with torch.no_grad():
        reference = model(x).argmax(1)
    forced = build_engine(model, "cpu", input_size=(64, 96), fast_conv=True)
    assert any(isinstance(m, WinogradConv2d) for m in forced.forward.modules())
    assert "Winograd" in forced.describe() and "forced" in forced.describe()
    off = build_engine(model, "cpu", input_size=(64, 96), fast_conv=False)
    assert not any(isinstance(m, WinogradConv2d) for m in off.forward.modules())
    # random weights leave many near-ties: folding BN alone moves 0.16% of these labels, Winograd no more
    assert _agreement(off.labels(x), reference) >= 0.998
    assert _agreement(forced.labels(x), off.labels(x)) >= 0.999


def test_convolution_paths_are_timed_once_and_kept(tmp_path, monkeypatch):
    lean = optimize_for_inference(segnet().eval())
    calls = []
    monkeypatch.setattr(conv_paths, "_fastest", lambda conv, shape, paths, cl: calls.append(shape) or paths[0])
    first = conv_paths.choose(lean, (1, 3, 32, 48))
    assert first and set(first.values()) == {"winograd"} and calls
    measured = len(calls)
    assert conv_paths.choose(lean, (1, 3, 32, 48)) == first
    assert len(calls) == measured  # read from the cache file, not timed again
    assert (tmp_path / "cache" / "conv_paths.json").is_file()


def test_the_dft_path_is_offered_for_large_kernels_and_keeps_the_labels(monkeypatch):
    torch.manual_seed(0)
    model = randomize_bn_statistics(segnet_basic().eval())
    x = _images(1, (48, 64))
    with torch.no_grad():
        reference = model(x).argmax(1)
    # every 7x7 layer through the DFT on 16x16 tiles, the 1x1 classifier as a matrix product, as if timed faster
    monkeypatch.setattr(conv_paths, "_fastest", lambda conv, shape, paths, channels_last: sorted(paths)[0])
    engine = build_engine(model, "cpu", input_size=(48, 64))
    dft = [m for m in engine.forward.modules() if isinstance(m, DFTConv2d)]
    assert len(dft) == 4 and all(m.tile == 16 for m in dft)
    # the encoder stays direct: its poolings break exact ties as Caffe's do (see conv_paths)
    lean = engine.forward
    assert all(type(getattr(lean, name)) is torch.nn.Conv2d for name, _ in list(lean.conv_units())[:4])
    assert "DFT on 4 of 4 large-kernel decoder layers (tiles 16x16" in engine.describe()
    assert "matrix products on 1 of 1 1x1 layers" in engine.describe()
    assert _agreement(engine.labels(x), reference) >= 0.999


def test_pixel_by_pixel_rounding_is_offered_only_where_no_pooling_follows():
    model = segnet_basic().eval()
    decoder = model.decoder_layers()
    assert decoder == ["conv_decode4", "conv_decode3", "conv_decode2", "conv_decode1", "conv_classifier"]
    assert conv_paths.offered(model.conv2, "conv2", decoder) == []
    assert conv_paths.offered(model.conv2, "conv2") == ["dft16", "dft32"]
    assert conv_paths.offered(model.conv_decode2, "conv_decode2", decoder) == ["dft16", "dft32"]
    assert conv_paths.offered(model.conv_classifier, "conv_classifier", []) == ["matmul"]
    wide = segnet().eval()
    assert conv_paths.offered(wide.conv3_2, "conv3_2", wide.decoder_layers()) == []
    assert conv_paths.offered(wide.conv3_2_D, "conv3_2_D", wide.decoder_layers()) == ["winograd"]


def test_a_path_is_taken_only_when_it_is_timed_faster(monkeypatch):
    conv = torch.nn.Conv2d(4, 4, 7, padding=3)
    # three rounds of (direct, dft16, dft32); each keeps its best: 1.0, 0.97 (within the noise margin), 0.5
    times = iter([1.2, 0.97, 0.9, 1.0, 1.5, 0.5, 1.1, 1.0, 0.6])
    monkeypatch.setattr(conv_paths, "_elapsed", lambda run, x: next(times))
    assert conv_paths._fastest(conv, (1, 4, 20, 20), ["dft16", "dft32"], False) == "dft32"
    times = iter([1.0, 0.97] * 3)
    assert conv_paths._fastest(conv, (1, 4, 20, 20), ["dft16"], True) == "direct"
    times = iter([1.0] * 3)
    assert conv_paths._fastest(conv, (1, 4, 20, 20), [], True) == "direct"


def test_models_outside_the_family_and_bayesian_ones_run_as_they_are():
    fcn = build_model("FCN-Basic").eval()
    engine = build_engine(fcn, "cpu", input_size=(32, 48))
    x = _images(2, (32, 48))
    with torch.no_grad():
        assert torch.equal(engine.labels(x).long(), fcn(x).argmax(1))
    bayesian = bayesian_segnet_basic().eval()
    engine = build_engine(bayesian, "cpu", input_size=(32, 48))
    assert "as it is" in engine.describe()
    first, second = engine.labels(x), engine.labels(x)
    assert torch.equal(first, second)  # dropout in its test mode: no sampling


def test_precisions_the_hardware_lacks_are_refused_in_one_line(monkeypatch):
    with pytest.raises(UserError, match="fp16 is for CUDA"):
        check_precision("fp16", torch.device("cpu"))
    monkeypatch.setattr(engines, "cpu_has_bf16", lambda: False)
    with pytest.raises(UserError, match="no native bfloat16"):
        build_engine(segnet_basic().eval(), "cpu", "bf16")
    with pytest.raises(UserError, match="unknown --precision"):
        check_precision("int8", torch.device("cpu"))


def test_bf16_reports_its_agreement_with_float32_on_the_first_batch(monkeypatch):
    monkeypatch.setattr(engines, "cpu_has_bf16", lambda: True)  # the arithmetic is emulated where not native
    torch.manual_seed(0)
    model = randomize_bn_statistics(segnet_basic().eval())
    engine = build_engine(model, "cpu", "bf16", input_size=(24, 32))
    assert "bfloat16" in engine.describe()
    engine.labels(_images(1, (24, 32)))
    assert engine.agreement is not None and 0.9 <= engine.agreement <= 1.0
    assert engine.reference is None  # the float32 copy is freed after the first batch


def test_a_cuda_device_is_refused_in_one_line_without_one():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match="no CUDA device"):
        build_engine(segnet_basic().eval(), "cuda")
