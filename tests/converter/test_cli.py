"""The command line: conversion, checkpoints, dumps, comparison, summaries."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import converter
from converter.cli import main


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "converter", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)  # fmt: skip


def test_help_explains_usage():
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in ("--input", "--dump", "--compare", "--input-shape", "--summary-json", "Exit status"):
        assert flag in result.stdout


def test_segnet_basic_reproduces_the_oracle_through_the_cli(oracle_dir, tmp_path):
    result = run_cli(
        oracle_dir / "segnet_basic_inference.prototxt", oracle_dir / "segnet_basic.caffemodel",
        "--input", f"data={_save_input(oracle_dir, tmp_path)}",
        "--compare", oracle_dir / "segnet_basic.outputs.npz", "-o", tmp_path / "sb.pt",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pool4_mask" in result.stdout and "verdict: consistent with Caffe" in result.stdout
    assert (tmp_path / "sb.pt").exists()  # -o asks for the checkpoint besides the comparison


def _save_input(oracle_dir, tmp_path):
    path = tmp_path / "data.npy"
    with np.load(oracle_dir / "segnet_input_360x480.inputs.npz") as f:
        np.save(path, f["data"])
    return path


def test_compare_fails_on_wrong_reference(oracle_dir, tmp_path, capsys):
    with np.load(oracle_dir / "v1_mini.outputs.npz") as f:
        ref = {k: f[k] for k in f.files}
    ref["conv2"] = ref["conv2"] + 0.5
    np.savez(tmp_path / "bad.npz", **ref)
    code = main([str(oracle_dir / "v1_mini.prototxt"), str(oracle_dir / "v1_mini.caffemodel"),
                 "--input", str(oracle_dir / "v1_mini.inputs.npz"), "--compare", str(tmp_path / "bad.npz"),
                 "--no-save", "-q"])  # fmt: skip
    assert code == 1
    assert "conv2" in capsys.readouterr().out


def test_checkpoint_round_trip_and_weights_only_load(oracle_dir, tmp_path):
    out = tmp_path / "mini.pt"
    assert main([str(oracle_dir / "v1_mini.prototxt"), str(oracle_dir / "v1_mini.caffemodel"), "-o", str(out), "-q"]) == 0
    payload = torch.load(out, weights_only=True)
    assert payload["format"] == "caffe-net" and "layers {" not in payload["prototxt"]
    net = converter.load(out)
    direct = converter.convert(oracle_dir / "v1_mini.prototxt", oracle_dir / "v1_mini.caffemodel")
    x = torch.rand(2, 3, 45, 61) * 255
    with torch.no_grad():
        assert torch.equal(net(data=x)["prob"], direct(data=x)["prob"])


def test_dump_selected_blobs_and_summary_json(oracle_dir, tmp_path):
    dump, summary = tmp_path / "blobs.npz", tmp_path / "summary.json"
    code = main([str(oracle_dir / "v1_mini.prototxt"), str(oracle_dir / "v1_mini.caffemodel"), "--input",
                 str(oracle_dir / "v1_mini.inputs.npz"), "--dump", str(dump), "--blobs", "pool1,pool1_mask",
                 "--summary-json", str(summary), "--no-save", "-q"])  # fmt: skip
    assert code == 0
    with np.load(dump) as f, np.load(oracle_dir / "v1_mini.outputs.npz") as ref:
        assert sorted(f.files) == ["pool1", "pool1_mask"]
        assert f["pool1_mask"].dtype == np.float32  # as Caffe stores masks
        np.testing.assert_array_equal(f["pool1_mask"], ref["pool1_mask"])
    info = json.loads(summary.read_text())
    conv1 = next(layer for layer in info["layers"] if layer["name"] == "conv1")
    assert conv1["params"] == [[8, 3, 3, 3], [8]] and conv1["tops"][0]["shape"] == [2, 8, 45, 61]
    assert info["total_params"] == 8 * 27 + 8 + 5 * 8 + 5


def test_summary_json_without_output_writes_no_checkpoint(oracle_dir, tmp_path):
    result = run_cli(oracle_dir / "v1_mini.prototxt", oracle_dir / "v1_mini.caffemodel", "--summary-json", "s.json",
                     "-q", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((tmp_path / "s.json").read_text())["layers"]
    assert not list(tmp_path.rglob("*.pt")), "only -o or the plain NET WEIGHTS form writes a checkpoint"


def test_plain_form_writes_the_default_checkpoint(oracle_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([str(oracle_dir / "v1_mini.prototxt"), str(oracle_dir / "v1_mini.caffemodel"), "-q"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1_mini.pt"]
    assert "wrote v1_mini.pt" in capsys.readouterr().out


def test_net_without_weights_or_output_writes_nothing(oracle_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([str(oracle_dir / "v1_mini.prototxt"), "-q"]) == 0
    assert not list(tmp_path.iterdir())
    assert "no checkpoint written" in capsys.readouterr().out


def test_prototxt_without_weights_is_filled(prototxt_dir, tmp_path, capsys):
    out = tmp_path / "basic.pt"
    code = main([str(prototxt_dir / "Models" / "segnet_basic_train.prototxt"), "--phase", "TRAIN",
                 "--input-shape", "data=2,3,120,160", "-o", str(out), "-q"])  # fmt: skip
    assert code == 0
    assert "fillers" in capsys.readouterr().out
    net = converter.load(out)
    weight = net.layer("conv1").weight
    # msra filler: std sqrt(2 / fan_in), fan_in = 3 * 7 * 7
    assert weight.std().item() == pytest.approx((2 / 147) ** 0.5, rel=0.1)
    assert net.input_shapes["label"] == (2, 1, 120, 160)


def test_learn_mode_bn_in_a_test_net_warns(prototxt_dir, capsys):
    main([str(prototxt_dir / "Models" / "segnet_basic_train.prototxt"), "--no-save", "-q"])
    assert "LEARN mode" in capsys.readouterr().err
