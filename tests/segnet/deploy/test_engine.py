"""The inference engine: each path it picks computes the converted graph's (or the plain model's) labels."""

from __future__ import annotations

import pytest
import torch

import converter
from converter.errors import UserError
from segnet.deploy import engine as engines
from segnet.deploy.engine import build_engine, check_precision, winograd_choices
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
    forced = build_engine(model, "cpu", input_size=(64, 96), winograd=True)
    assert any(isinstance(m, WinogradConv2d) for m in forced.forward.modules())
    assert "Winograd" in forced.describe() and "forced" in forced.describe()
    assert _agreement(forced.labels(x), reference) >= 0.999  # random weights: many near-ties
    off = build_engine(model, "cpu", input_size=(64, 96), winograd=False)
    assert not any(isinstance(m, WinogradConv2d) for m in off.forward.modules())


def test_winograd_timings_are_measured_once_and_kept(tmp_path, monkeypatch):
    lean = optimize_for_inference(segnet().eval())
    calls = []
    monkeypatch.setattr(engines, "_winograd_is_faster", lambda *shape: calls.append(shape) or True)
    first = winograd_choices(lean, (1, 3, 32, 48))
    assert first and all(first.values()) and calls
    measured = len(calls)
    assert winograd_choices(lean, (1, 3, 32, 48)) == first
    assert len(calls) == measured  # read from the cache file, not timed again
    assert (tmp_path / "cache" / "winograd.json").is_file()


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
