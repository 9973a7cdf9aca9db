"""Every case recorded from caffe-segnet, judged by the command line's verdict.

Each case of the oracle's index files (``cases.json``, ``cases_layers.json``)
runs through ``python -m converter PROTOTXT CAFFEMODEL --input ... --compare
...`` (``--phase TRAIN`` for TRAIN cases, whose gradients are compared too)
and must exit 0: consistent with Caffe under the rule of
``converter/verdict.py``, the same for every case. The oracle's ``argmax`` key
(the argmax of ``prob``, taken in numpy) is compared with ``--argmax``.
The run's summary prints, per case, how much of the allowance the worst
check used and Caffe's largest deviation from the exact result.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import ORACLE, oracle_cases

import converter

ROOT = Path(__file__).resolve().parents[2]


def _argmax_option(case) -> list[str]:
    """The oracle's convention: a reference key ``argmax`` that no layer writes is prob's argmax."""
    with np.load(ORACLE / case["outputs"]) as f:
        if "argmax" not in f.files:
            return []
    tops = {top for layer in converter.read_net(ORACLE / case["prototxt"]).layer for top in layer.top}
    return [] if "argmax" in tops else ["--argmax", "argmax=prob"]


@pytest.mark.parametrize("case", oracle_cases("cases.json") + oracle_cases("cases_layers.json"))
def test_case_is_consistent_with_caffe(case, tmp_path, fidelity_report):
    report = tmp_path / "verdict.json"
    command = [
        sys.executable, "-m", "converter", str(ORACLE / case["prototxt"]), str(ORACLE / case["caffemodel"]),
        "--phase", case["phase"], "--input", str(ORACLE / case["inputs"]), "--compare", str(ORACLE / case["outputs"]),
        "--compare-json", str(report), "-q", *_argmax_option(case),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=1800)
    assert result.returncode == 0, f"exit status {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    assert not list(tmp_path.glob("*.pt")), "a comparison alone must not write a checkpoint"
    verdict = json.loads(report.read_text())
    checks = verdict["checks"]
    assert verdict["passed"] and checks
    with np.load(ORACLE / case["outputs"]) as f:
        gradients = [k for k in f.files if k.startswith(("diff:", "param_diff:"))]
    compared = {c["key"] for c in checks if c["kind"] == "gradient"}
    assert compared == set(gradients), f"gradients not compared: {sorted(set(gradients) - compared)}"
    worst = max(checks, key=lambda c: c["use"])
    values = [c for c in checks if c["kind"] != "indices"]
    largest = max((c["caffe"] for c in values if c["scope"] == "net"), default=0.0)
    fidelity_report[case["name"]] = (
        f"{len(checks)} checks, worst uses {worst['use']:.2f} of its allowance ({worst['key']}, {worst['scope']}); "
        f"largest scaled deviation of Caffe from the exact result {largest:.1e}"
    )


@pytest.mark.parametrize("name, prototxt, caffemodel", [
    ("segnet_basic", "segnet_basic_inference.prototxt", "segnet_basic.caffemodel"),
    ("segnet_full", "segnet_inference.prototxt", "segnet_full.caffemodel.gz"),
])  # fmt: skip
def test_caffe_with_another_blas_kernel_is_consistent(oracle_dir, name, prototxt, caffemodel):
    """caffe-segnet rerun with another sgemm kernel (its argmax only) passes the same verdict."""
    result = subprocess.run([
        sys.executable, "-m", "converter", str(oracle_dir / prototxt), str(oracle_dir / caffemodel),
        "--input", str(oracle_dir / "segnet_input_360x480.inputs.npz"),
        "--compare", str(oracle_dir / f"{name}.argmax_skylakex.npz"), "--argmax", "argmax=prob", "-q",
    ], capture_output=True, text=True, cwd=ROOT, timeout=1800)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verdict: consistent with Caffe (1 of 1" in result.stdout
