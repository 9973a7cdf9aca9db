"""What several test files share: small data builders and the oracle's helpers (see conftest for the fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED


def make_tiny_camvid(root: Path, splits=("train", "val", "test"), count: int = 3, size=(24, 32)) -> Path:
    """A CamVid-layout folder of random images and labels (0..11, 11 = void)."""
    rng = np.random.default_rng(0)
    for split in splits:
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(count):
            Image.fromarray(rng.integers(0, 12, size=size, dtype=np.uint8)).save(root / f"{split}annot" / f"{i}.png")
            Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(root / split / f"{i}.png")
    return root


def randomize_bn_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Give every BatchNorm2d non-trivial running statistics, as a trained model has."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return model


# ---------------------------------------------------------------- the caffe-segnet oracle vectors

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


def results_in_threads(work, count: int) -> list:
    """``work(i)`` for i < ``count``, each in its own thread, all at once; their results in order (errors raised)."""
    import threading

    results, errors = [None] * count, []

    def run(i):
        try:
            results[i] = work(i)
        except Exception as exc:  # raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
