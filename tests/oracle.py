"""Helpers for comparing against the caffe-segnet oracle vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SHARED

ORACLE = SHARED / "oracle"


def oracle_cases(index: str = "cases.json") -> list:
    """pytest params, one per case of the oracle's ``index`` file (a single skipped param when absent)."""
    path = ORACLE / index
    if not path.exists():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"oracle vectors not found at {path}"))]
    cases = json.loads(path.read_text())["cases"]
    return [pytest.param(case, id=case["name"]) for case in cases]


def scaled_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max(1, max |ref|): the forward tolerance's measure."""
    return float(np.abs(ours.astype(np.float64) - ref).max() / max(1.0, float(np.abs(ref).max())))


def relative_l2(ours: np.ndarray, ref: np.ndarray) -> float:
    diff = np.linalg.norm((ours.astype(np.float64) - ref).ravel())
    return float(diff / max(np.linalg.norm(ref.astype(np.float64).ravel()), 1e-30))


def is_index_blob(name: str) -> bool:
    return name.endswith("_mask")
