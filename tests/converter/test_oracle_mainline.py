"""Every case recorded from mainline BVLC Caffe, judged by the command line's verdict.

The vectors in ``tests/data/oracle_mainline`` come from a mainline Caffe
build (tools/caffe-mainline/build.sh, recorded by record.py beside it): one
case per mainline layer this project converts (Crop, ELU, Tile, Embed,
Parameter, Swish, Clip, BatchNorm in TEST and TRAIN, Scale and Bias with a
second bottom, dilated Convolution and Deconvolution, Pooling's FLOOR
rounding, SoftmaxWithLoss's four normalizations) and a small FCN-8s-shaped
net with Crop and bilinear Deconvolution, forward and backward. Each must be
judged consistent (exit 0) with every recorded gradient compared; planted
errors in the new layers must be caught. The files ship with the tests, so
these run everywhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from converter.dialect import MAINLINE, detect_net
from converter.graph import CaffeNet
from converter.prototxt import read_net
from converter.weights import read_weights

ORACLE = Path(__file__).resolve().parents[1] / "data" / "oracle_mainline"
CASES = json.loads((ORACLE / "cases.json").read_text())["cases"]
BY_NAME = {case["name"]: case for case in CASES}


def compare(case: dict, tmp_path: Path, prototxt: Path | None = None, outputs: Path | None = None):
    report = tmp_path / "verdict.json"
    command = [
        sys.executable, "-m", "converter", str(prototxt or ORACLE / case["prototxt"]),
        str(ORACLE / case["caffemodel"]), "--phase", case["phase"], "--input", str(ORACLE / case["inputs"]),
        "--compare", str(outputs or ORACLE / case["outputs"]), "--compare-json", str(report), "-q",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    return result, (json.loads(report.read_text()) if report.exists() else None)


def test_the_oracle_covers_every_mainline_layer_asked_for():
    types = {t for case in CASES for t in case["layer_types"]}
    assert {"Crop", "ELU", "Tile", "Embed", "Parameter", "Swish", "Clip", "BatchNorm", "Scale", "Bias", "Input",
            "Convolution", "Deconvolution", "Pooling", "SoftmaxWithLoss"} <= types  # fmt: skip
    assert "mainline BVLC Caffe" in json.loads((ORACLE / "cases.json").read_text())["producer"]
    assert all(case["backward"] for case in CASES if case["phase"] == "TRAIN")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case_is_consistent_with_mainline_caffe(case, tmp_path):
    result, verdict = compare(case, tmp_path)
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    assert verdict["passed"] and not verdict["unmatched"]
    with np.load(ORACLE / case["outputs"]) as f:
        gradients = {k for k in f.files if k.startswith(("diff:", "param_diff:"))}
    compared = {c["key"] for c in verdict["checks"] if c["kind"] == "gradient"}
    assert compared == gradients, f"gradients not compared: {sorted(gradients - compared)}"
    assert gradients or not case["backward"]


def test_the_files_are_told_to_be_mainline_caffe():
    # (that each one converts and runs is the comparison tests' business)
    assert {detect_net(read_net(ORACLE / c["prototxt"])).fork for c in CASES} == {MAINLINE}


def test_batchnorm_running_averages_after_a_train_pass_match_caffe():
    """A TRAIN forward updates BatchNorm's three blobs as Caffe does (mean, unbiased variance, scale factor)."""
    for case in (c for c in CASES if c.get("running")):
        net = CaffeNet(read_net(ORACLE / case["prototxt"]), phase="TRAIN")
        net.load_caffe_weights(read_weights(ORACLE / case["caffemodel"]))
        with np.load(ORACLE / case["inputs"]) as f:
            feed = {k: torch.from_numpy(f[k]) for k in f.files if ":" not in k}
        with torch.no_grad():
            net(**feed)
        with np.load(ORACLE / case["running"]) as f:
            for key in f.files:
                _, layer, index = key.split(":")
                ours = net.layer(layer).export_blobs()[int(index)].reshape(-1)
                ref = f[key].reshape(-1)
                # A running statistic is a few float32 operations on a mean over m values: a relative error of
                # a few dozen float32 ulps at most (2**-23 each) bounds any correct rounding.
                assert np.allclose(ours, ref, rtol=64 * 2.0**-23, atol=1e-6), (case["name"], key, ours, ref)


# ---------------------------------------------------------------- planted errors are caught

PLANTED_SETTINGS = [
    ("crop", "crop_param { axis: 2 offset: 3 }", "crop_param { axis: 2 offset: 2 }"),
    ("crop", "offset: 1 offset: 2 offset: 5", "offset: 1 offset: 3 offset: 5"),
    ("elu", "elu_param { alpha: 0.3 }", "elu_param { alpha: 0.31 }"),
    ("swish", "swish_param { beta: 2.5 }", "swish_param { beta: 2.45 }"),
    ("clip", "max: 0.8", "max: 0.79"),
    ("batchnorm_train", "eps: 1e-4", "eps: 1e-5"),
    ("batchnorm_test", 'type: "BatchNorm" bottom: "data" top: "bn"',
     'type: "BatchNorm" bottom: "data" top: "bn" batch_norm_param { eps: 1e-3 }'),
    ("scale_bias_params", "scale_param { axis: 1 num_axes: 2 bias_term: true }",
     "scale_param { axis: 1 num_axes: 2 bias_term: false }"),
    ("loss_valid", "normalization: VALID", "normalization: FULL"),
    ("loss_batch_size", "normalization: BATCH_SIZE", "normalization: NONE"),
    ("fcn8s_mini", "crop_param { axis: 2 offset: 31 }", "crop_param { axis: 2 offset: 30 }"),
    ("fcn8s_mini", "crop_param { axis: 2 offset: 9 }", "crop_param { axis: 2 offset: 8 }"),
    ("embed", "embed_param { num_output: 5 input_dim: 7 }", "embed_param { num_output: 5 input_dim: 7 bias_term: false }"),
]  # fmt: skip


@pytest.mark.parametrize("name, old, new", PLANTED_SETTINGS, ids=[f"{n}:{o[:18]}" for n, o, _ in PLANTED_SETTINGS])
def test_planted_setting_is_caught(name, old, new, tmp_path):
    case = BY_NAME[name]
    text = (ORACLE / case["prototxt"]).read_text()
    assert old in text
    planted = tmp_path / "planted.prototxt"
    planted.write_text(text.replace(old, new))
    result, _ = compare(case, tmp_path, prototxt=planted)
    # 1: judged not consistent; 2: the planted net no longer fits Caffe's weights or blobs (also caught)
    assert result.returncode in (1, 2), result.stdout[-3000:] + result.stderr[-2000:]
    if result.returncode == 1:
        assert "NOT consistent with Caffe" in result.stdout


@pytest.mark.parametrize("name, key, factor", [
    ("crop", "diff:data", 1.001),
    ("tile", "diff:data", 1.001),
    ("embed", "param_diff:embed:0", 1.001),
    ("scale_bias_bottoms", "diff:s_ch", 1.001),
    ("batchnorm_train", "diff:data", 1.001),
    ("fcn8s_mini", "diff:score_pool3", 1.001),  # through Crop's backward
])  # fmt: skip
def test_planted_gradient_is_caught(name, key, factor, tmp_path):
    case = BY_NAME[name]
    with np.load(ORACLE / case["outputs"]) as f:
        reference = {k: f[k] for k in f.files}
    assert key in reference
    reference[key] = (reference[key].astype(np.float64) * factor).astype(np.float32)
    np.savez(tmp_path / "planted.npz", **reference)
    result, verdict = compare(case, tmp_path, outputs=tmp_path / "planted.npz")
    assert result.returncode == 1, result.stdout[-3000:]
    failing = {c["key"] for c in verdict["checks"] if not c["ok"]}
    assert key in failing


def test_fcn_blob_shapes_match_caffe_at_every_input_size():
    """FCN-8s's crops: ``score`` has the input's height and width at any size, every blob Caffe's shape."""
    case = BY_NAME["fcn8s_mini"]
    sizes = case["shapes_by_size"]
    assert len(sizes) >= 5
    net_param = read_net(ORACLE / case["prototxt"])
    for size, caffe_shapes in sizes.items():
        h, w = map(int, size.split("x"))
        net = CaffeNet(net_param, phase="TRAIN", input_shapes={"data": (1, 3, h, w), "label": (1, 1, h, w)})
        ours = {name: list(shape) for name, shape in net.blob_shapes.items()}
        assert {b: ours[b] for b in caffe_shapes} == caffe_shapes, size
        assert ours["score"][2:] == [h, w]
