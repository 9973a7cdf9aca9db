"""The comparison verdict: what it accepts, what it rejects, what it reports.

Without ../shared: the rule on synthetic arrays, and small nets judged
against references made by other nets (the same net: consistent; a planted
error: not). With ../shared: the planted errors on caffe-segnet's own
vectors through the command line (exit status 1), and the report's handling
of keys that match nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import converter
from converter import verdict
from converter.writer import save_caffemodel

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "converter", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=1800)  # fmt: skip


# ---------------------------------------------------------------- the rule on arrays


def test_values_within_the_noise_pass_and_beyond_it_fail():
    rng = np.random.default_rng(0)
    exact = rng.normal(size=10_000)
    noise = [exact + rng.normal(scale=1e-6, size=exact.size) for _ in range(3)]
    caffe = exact + rng.normal(scale=2e-6, size=exact.size)  # coarser rounding than ours: allowed
    assert verdict.judge_values("x", caffe, exact, noise).ok
    assert not verdict.judge_values("x", exact + rng.normal(scale=1e-4, size=exact.size), exact, noise).ok
    wrong_scale = exact * 1.0001  # tiny next to the values, but a scale no rounding makes
    assert not verdict.judge_values("x", wrong_scale, exact, noise).ok


def test_values_allow_more_positions_but_not_many_more():
    exact = np.zeros(1000)
    noise = [exact.copy() for _ in range(3)]
    for k, run in enumerate(noise):
        run[k * 10 : k * 10 + 10] = 0.5  # each noise run moves 10 values by 0.5
    few = exact.copy()
    few[500:530] = 0.5  # 30 values: within 4x
    many = exact.copy()
    many[500:560] = 0.5  # 60 values: beyond 4x
    assert verdict.judge_values("x", few, exact, noise).ok
    assert not verdict.judge_values("x", many, exact, noise).ok


def test_exactly_equal_results_need_no_noise():
    exact = np.arange(10.0)
    assert verdict.judge_values("x", exact.copy(), exact, [exact.copy()]).use == 0
    assert not verdict.judge_values("x", exact + 1, exact, [exact.copy()]).ok
    nan = np.array([np.nan, 1.0])
    assert verdict.judge_values("x", nan.copy(), nan, [nan.copy()]).ok  # NaN where the exact result has NaN
    assert not verdict.judge_values("x", np.array([1.0, 1.0]), nan, [nan.copy()]).ok


def test_indices_count_and_place_of_differences():
    exact = np.zeros(1000, dtype=np.int64)
    noise = []
    for k in range(3):
        run = exact.copy()
        run[k * 10 : k * 10 + 20] = 1  # each run changes 20 entries, at most 10 that no other run changes
        noise.append(run)
    inside = exact.copy()
    inside[0:40] = 1  # where rounding moves entries
    elsewhere = exact.copy()
    elsewhere[500:560] = 1  # as many, where no run moved anything
    assert verdict.judge_indices("i", inside, exact, noise).ok
    check = verdict.judge_indices("i", elsewhere, exact, noise)
    assert not check.ok and "where no float32 noise run differs" in check.detail
    assert not verdict.judge_indices("i", exact + 1, exact, noise).ok  # far too many


# ---------------------------------------------------------------- small nets: the same net, and planted errors

SMALL_NET = """
name: "small"
input: "data" input_shape { dim: 2 dim: 3 dim: 12 dim: 16 }
layer { name: "norm" type: "LRN" bottom: "data" top: "norm" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 } }
layer { name: "conv1" type: "Convolution" bottom: "norm" top: "conv1"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 weight_filler { type: "msra" } } }
layer { name: "bn1" type: "BN" bottom: "conv1" top: "conv1" bn_param { bn_mode: INFERENCE
        scale_filler { type: "constant" value: 1.3 } shift_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" top: "pool1_mask"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "up1" type: "Upsample" bottom: "pool1" bottom: "pool1_mask" top: "up1" upsample_param { scale: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "up1" top: "conv2"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "msra" } } }
layer { name: "prob" type: "Softmax" bottom: "conv2" top: "prob" }
"""


def _small(text: str = SMALL_NET) -> converter.CaffeNet:
    net = converter.CaffeNet(converter.parse_net_text(text))
    net.init_weights(seed=3)
    return net


def _dump(net: converter.CaffeNet, data: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = net(data=torch.from_numpy(data), blobs="all")
    return {k: v.float().numpy() for k, v in out.items() if k != "data"}


def test_a_net_is_consistent_with_itself_and_not_with_planted_errors():
    data = np.random.default_rng(1).uniform(0, 4, size=(2, 3, 12, 16)).astype(np.float32)
    reference = _dump(_small(), data)
    assert verdict.compare(_small(), {"data": data}, reference).passed

    scaled = _small()
    with torch.no_grad():
        scaled.layer("conv2").weight.mul_(1.001)
    report = verdict.compare(scaled, {"data": data}, reference)
    assert not report.passed
    assert report.first_layer_failing().scope.startswith("conv2")  # named on Caffe's own inputs

    alpha = _small(SMALL_NET.replace("alpha: 0.5", "alpha: 0.55"))
    assert not verdict.compare(alpha, {"data": data}, reference).passed
    learn = _small(SMALL_NET.replace("bn_mode: INFERENCE", "bn_mode: LEARN"))
    assert not verdict.compare(learn, {"data": data}, reference).passed


def test_gradients_are_compared_and_a_scaled_gradient_fails():
    text = SMALL_NET.replace('layer { name: "prob" type: "Softmax" bottom: "conv2" top: "prob" }', """
        input: "label" input_shape { dim: 2 dim: 1 dim: 12 dim: 16 }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv2" bottom: "label" top: "loss" }""")
    text = text.replace("bn_mode: INFERENCE", "bn_mode: LEARN")
    rng = np.random.default_rng(2)
    inputs = {"data": rng.uniform(0, 4, size=(2, 3, 12, 16)).astype(np.float32),
              "label": rng.integers(0, 4, size=(2, 1, 12, 16)).astype(np.float32)}  # fmt: skip
    net = converter.CaffeNet(converter.parse_net_text(text), phase="TRAIN")
    net.init_weights(seed=3)
    feed = {k: torch.from_numpy(v) for k, v in inputs.items()}
    out = net(**feed, blobs=["loss", "conv2"])
    net.total_loss(out).backward()
    reference = {"loss": out["loss"].detach().numpy().reshape(1)}
    for layer in ("conv1", "bn1", "conv2"):
        for i, t in enumerate(net.layer(layer).blob_tensors()):
            reference[f"param_diff:{layer}:{i}"] = t.grad.numpy().copy()
    report = verdict.compare(net, inputs, reference)
    assert report.passed and sum(c.kind == "gradient" for c in report.checks) == 6
    reference["param_diff:conv1:0"] = reference["param_diff:conv1:0"] * 1.05
    failed = [c.key for c in verdict.compare(net, inputs, reference).checks if not c.ok]
    assert failed == ["param_diff:conv1:0"]


def test_report_lists_keys_that_match_nothing():
    data = np.random.default_rng(1).uniform(0, 4, size=(2, 3, 12, 16)).astype(np.float32)
    reference = _dump(_small(), data)
    reference["no_such_blob"] = np.zeros(3, np.float32)
    report = verdict.compare(_small(), {"data": data}, reference)
    assert report.passed and report.unmatched == ["no_such_blob"]
    assert "no_such_blob" in report.format() and '"unmatched": [' in report.to_json()
    with pytest.raises(ValueError, match="no reference key"):
        verdict.compare(_small(), {"data": data}, {"nothing": np.zeros(1)})


# ---------------------------------------------------------------- the command line on caffe-segnet's vectors


def _oracle_run(oracle_dir, name: str, *extra, prototxt=None, caffemodel=None, outputs=None, inputs=None, cwd=None):
    return run_cli(prototxt or oracle_dir / f"{name}.prototxt", caffemodel or oracle_dir / f"{name}.caffemodel",
                   "--input", inputs or oracle_dir / f"{name}.inputs.npz",
                   "--compare", outputs or oracle_dir / f"{name}.outputs.npz", "-q", *extra, cwd=cwd)  # fmt: skip


def test_planted_conv_scale_fails_on_segnet_basic(oracle_dir, tmp_path):
    net = converter.convert(oracle_dir / "segnet_basic_inference.prototxt", oracle_dir / "segnet_basic.caffemodel")
    with torch.no_grad():
        net.layer("conv2").weight.mul_(1.001)
    save_caffemodel(net, tmp_path / "planted.caffemodel")
    result = _oracle_run(oracle_dir, "", "--argmax", "argmax=prob",
                         prototxt=oracle_dir / "segnet_basic_inference.prototxt",
                         caffemodel=tmp_path / "planted.caffemodel", outputs=oracle_dir / "segnet_basic.outputs.npz",
                         inputs=oracle_dir / "segnet_input_360x480.inputs.npz")  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "NOT consistent with Caffe" in result.stdout
    pool4 = next(line for line in result.stdout.splitlines() if line.startswith("pool4 "))
    assert "NOT CONSISTENT" in pool4  # the encoder's output already differs


def test_planted_reference_gradient_fails(oracle_dir, tmp_path):
    with np.load(oracle_dir / "train_prelu_mvn_spp.outputs.npz") as f:
        reference = {k: f[k] for k in f.files}
    reference["param_diff:conv1:0"] = reference["param_diff:conv1:0"] * 1.05
    np.savez(tmp_path / "planted.npz", **reference)
    result = _oracle_run(oracle_dir, "train_prelu_mvn_spp", "--phase", "TRAIN", outputs=tmp_path / "planted.npz")
    assert result.returncode == 1, result.stdout + result.stderr
    failing = [line for line in result.stdout.splitlines() if "NOT CONSISTENT" in line]
    assert len(failing) == 1 and failing[0].startswith("param_diff:conv1:0")


@pytest.mark.parametrize("case, old, new", [
    ("lrn", "alpha: 0.0001", "alpha: 0.00011"),
    ("bn_inference", "bn_mode: INFERENCE", "bn_mode: LEARN"),
])  # fmt: skip
def test_planted_layer_setting_fails(oracle_dir, tmp_path, case, old, new):
    text = (oracle_dir / f"{case}.prototxt").read_text()
    assert old in text
    (tmp_path / "planted.prototxt").write_text(text.replace(old, new))
    result = _oracle_run(oracle_dir, case, prototxt=tmp_path / "planted.prototxt")
    assert result.returncode == 1, result.stdout + result.stderr


def test_unmatched_keys_are_listed_and_nothing_to_compare_is_an_error(oracle_dir, tmp_path):
    with np.load(oracle_dir / "softmax.outputs.npz") as f:
        reference = {k: f[k] for k in f.files}
    np.savez(tmp_path / "extra.npz", **reference, not_a_blob=np.zeros(2, np.float32))
    result = _oracle_run(oracle_dir, "softmax", outputs=tmp_path / "extra.npz", cwd=tmp_path)
    assert result.returncode == 0 and "match nothing in this net (not compared): not_a_blob" in result.stdout
    assert not list(tmp_path.glob("*.pt"))  # comparing writes no checkpoint
    np.savez(tmp_path / "none.npz", not_a_blob=np.zeros(2, np.float32))
    result = _oracle_run(oracle_dir, "softmax", outputs=tmp_path / "none.npz")
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr


# ---------------------------------------------------------------- Caffe's biased reductions (ships with the tests)

BN_RAW = ROOT / "tests" / "data" / "oracle_segnet"


def _bn_raw_report() -> verdict.Report:
    net = converter.convert(BN_RAW / "bn_learn_raw.prototxt", BN_RAW / "bn_learn_raw.caffemodel", phase="TRAIN")
    with np.load(BN_RAW / "bn_learn_raw.inputs.npz") as f:
        inputs = {k: f[k] for k in f.files}
    with np.load(BN_RAW / "bn_learn_raw.outputs.npz") as f:
        reference = {k: f[k] for k in f.files}
    return verdict.compare(net, inputs, reference)


def test_bn_learn_on_raw_images_with_flat_regions_is_consistent():
    """caffe-segnet's E[x^2] - E[x]^2 on raw 0..255 pixels rounds a whole channel at once: still consistent."""
    report = _bn_raw_report()
    assert report.passed, report.format()
    assert {c.key for c in report.checks} >= {"conv1_bn", "diff:data", "param_diff:conv1_bn:0"}


def test_a_planted_bn_eps_is_caught_on_raw_images(monkeypatch):
    """mainline's eps (1e-5) in place of caffe-segnet's 1e-9 moves the faint channel by about 1%: caught."""
    from converter import functional
    from converter.layers import batchnorm

    monkeypatch.setattr(batchnorm, "bn_learn", lambda x, scale, shift: functional.bn_learn(x, scale, shift, eps=1e-5))
    report = _bn_raw_report()
    assert not report.passed
    failing = {c.key for c in report.checks if not c.ok}
    assert "conv1_bn" in failing


def test_a_scale_error_is_printed_with_its_deviation():
    exact = np.linspace(1, 2, 1000)
    check = verdict.judge_values("x", exact * (1 - 3e-6), exact, [exact], "net")
    assert not check.ok and "scaled by 1 - 3.00e-06" in check.detail


@pytest.mark.parametrize("layer", [
    'type: "MVN" mvn_param { normalize_variance: false }', 'type: "MVN"', 'type: "BN" bn_param { bn_mode: LEARN }',
    'type: "BatchNorm"',
])  # fmt: skip
def test_statistics_rounding_keeps_the_gradient_path(layer):
    """The noise runs' moved tops still carry x's gradient (else a noise run's upstream gradients would vanish)."""
    from converter.prototxt import parse_net_text
    from converter.graph import CaffeNet

    net = CaffeNet(parse_net_text('input: "data" input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }\n'
                                  f'layer {{ name: "s" {layer} bottom: "data" top: "s" }}'), phase="TRAIN")  # fmt: skip
    module = net.layer("s").double()
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    moved = module.coherent_rounding([x], module(x), lambda n, dtype: torch.full((n,), 0.5, dtype=dtype))
    moved[0].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
