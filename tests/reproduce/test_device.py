"""reproduce/device.py and pack_data.py: the GPU runner end to end on a tiny budget, a cut row resumed, the pack."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

import segnet.training.loop

from support import make_tiny_camvid
from segnet.data.imageio import read_label
from segnet.data.labels import get_label_space
from segnet.data.splits import list_samples

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "reproduce"))
import device  # noqa: E402
import experiment  # noqa: E402
import packing  # noqa: E402


@pytest.fixture(scope="module")
def camvid(tmp_path_factory) -> Path:
    return make_tiny_camvid(tmp_path_factory.mktemp("data") / "camvid", count=3)


def test_the_runner_trains_two_rows_and_collect_scores_and_reports_them(camvid, tmp_path):
    out, work, results = tmp_path / "out", tmp_path / "state", tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if k != "SEGNET_DEVICE_START"}
    env["PYTHON"] = sys.executable  # the interpreter running the tests, whichever python3 PATH finds first
    done = subprocess.run(["bash", "reproduce/device.sh", "--minutes", "3", "--tiny", "--concurrent", "2", "--out",
                           str(out), "--data", str(camvid), "--work", str(work), "--results", str(results / "runs" / "tiny")],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    returned = sorted(p.name for p in out.iterdir())
    assert returned == ["bundle.tar.000", "runner.json", "runner.log"]  # what the device may return: few, flat
    assert json.loads((out / "runner.json").read_text())["rows"] == {
        "SegNet-Basic__median": "finished", "SegNet-Basic__natural": "finished"}  # fmt: skip

    assert device.main(["collect", str(out), "--results-root", str(results), "--state", str(work), "--data",
                        str(camvid), "--no-progress"]) == 0  # fmt: skip
    rows = results / "runs" / "tiny"
    for job in ("SegNet-Basic__median", "SegNet-Basic__natural"):
        row = json.loads((rows / f"{job}.json").read_text())
        assert row["budget"] == json.loads(json.dumps(asdict(device.TINY_BUDGET)))
        assert row["images_per_s"] > 0 and row["wall_seconds"] > 0 and "CPU" in row["hardware"]
        assert set(row["test"]) == {"G", "C", "mIoU", "BF"} and row["best_iteration"] in (0, 2, 4)
        assert (rows / job / "best.pt").is_file() and not (work / job).exists()
    report = (results / "table1_tiny.md").read_text()
    assert "- rows run: 2 of 16" in report and report.count("not run yet") == 14
    assert "| SegNet-Basic | median | 1.417 / 1.425 | 82.7 / " in report and (results / "table1_tiny.png").exists()


def test_a_row_cut_by_the_deadline_comes_back_as_state_and_resumes(camvid, tmp_path, monkeypatch):
    monkeypatch.delenv("SEGNET_DEVICE_START", raising=False)
    monkeypatch.setattr(device, "PART", 2**20)  # parts of 1 MiB: a row's state spans several
    common = ["--tiny", "--rows", "FCN-Basic:natural", "--data", str(camvid), "--results", str(tmp_path / "done"),
              "--log-every", "1", "--reserve", "0", "--min-start", "0", "--no-progress"]  # fmt: skip
    first = tmp_path / "first"
    checked = []

    def deadline_passed(deadline: float, run) -> bool:  # a fast machine must not finish the 4 steps first
        checked.append(deadline)
        return True

    monkeypatch.setattr(segnet.training.loop, "past", deadline_passed)
    assert device.main(["run", "--minutes", "0.05", "--out", str(first), "--work", str(tmp_path / "w1"), *common]) == 0
    assert checked and all(d <= time.time() + 3 for d in checked)  # the runner gave training its deadline
    monkeypatch.undo()
    monkeypatch.delenv("SEGNET_DEVICE_START", raising=False)
    monkeypatch.setattr(device, "PART", 2**20)
    status = json.loads((first / "runner.json").read_text())["rows"]["FCN-Basic__natural"]
    assert status.startswith("cut at ")
    cut = int(status.split()[-1])
    assert 1 <= cut < 4 and len(list(first.glob("bundle.tar.*"))) > 1
    state, results = tmp_path / "device_state", tmp_path / "results"
    assert device.collect(first, results, state) == ([], ["FCN-Basic__natural"])
    assert (state / "FCN-Basic__natural" / "last.pt").is_file()

    second = tmp_path / "second"  # the next device call, carrying device_state
    assert device.main(["run", "--minutes", "3", "--out", str(second), "--work", str(state), *common]) == 0
    assert device.collect(second, results, state) == (["FCN-Basic__natural"], [])
    row = json.loads((results / "runs" / "tiny" / "FCN-Basic__natural.json").read_text())
    assert [(s["from_iteration"], s["to_iteration"]) for s in row["segments"]] == [(0, cut), (cut, 4)]
    log = (results / "runs" / "tiny" / "FCN-Basic__natural" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["start_iteration"] for line in log if '"start"' in line] == [0, cut]
    assert not (state / "FCN-Basic__natural").exists()


def test_a_report_with_no_rows_marks_every_row_not_run(tmp_path):
    assert experiment.write_report(tmp_path, "full", None) == 0
    text = (tmp_path / "table1_full.md").read_text()
    assert text.count("not run yet") == 16 and "- rows run: 0 of 16" in text
    assert "16000 iterations of batch 12, images 360x480, validation every 1000, bf16" in text


def test_the_committed_full_report_is_what_report_assembles(tmp_path):
    rows = ROOT / "reproduce" / "results" / "runs" / "full"
    (tmp_path / "runs" / "full").mkdir(parents=True)
    for row in rows.glob("*.json"):  # committed rows are scored already: nothing to compute
        shutil.copy(row, tmp_path / "runs" / "full" / row.name)
    experiment.write_report(tmp_path, "full", None)
    assert (tmp_path / "table1_full.md").read_text() == (ROOT / "reproduce" / "results" / "table1_full.md").read_text()


def test_the_pack_is_a_data_folder_with_lossless_labels_and_a_checked_manifest(camvid, tmp_path):
    manifest = packing.pack(camvid, tmp_path / "pack", quality=None, say=lambda text: None)
    assert manifest["quality"] == 98  # a tiny set fits at the best quality tried
    space = get_label_space("camvid")
    for split in ("train", "val"):
        samples = list_samples(tmp_path / "pack" / "CamVid", split)
        originals = list_samples(camvid, split)
        assert [s.image.suffix for s in samples] == [".jpg"] * 3
        assert all(np.array_equal(read_label(a.label, space), read_label(b.label, space))
                   for a, b in zip(samples, originals))  # fmt: skip
        assert 0 < manifest["splits"][split]["psnr_db"] < 100
    assert packing.verify(tmp_path / "pack") == {"train": True, "val": True}
    next(iter((tmp_path / "pack" / "CamVid" / "val" / "images").iterdir())).write_bytes(
        packing.encode_jpeg(np.zeros((24, 32, 3), np.uint8), 90))
    assert packing.verify(tmp_path / "pack") == {"train": True, "val": False}


def test_the_jpeg_effect_verdict_compares_the_mean_difference_with_the_seed_spread():
    import argparse

    import jpeg_effect

    args = argparse.Namespace(iterations=80, batch_size=12, image_size=(90, 120))
    manifest = {"images": "JPEG", "splits": {"train": {"psnr_db": 42.0}}}
    png = {0: {"G": 50.0, "C": 30.0, "mIoU": 20.0}, 1: {"G": 54.0, "C": 34.0, "mIoU": 22.0}}
    close = {s: {m: v + 0.5 for m, v in scores.items()} for s, scores in png.items()}
    results = {"png": png, "jpeg": close}
    assert "is within the seed's own spread" in jpeg_effect.report(results, args, manifest)
    assert results["within_noise"] and results["effect"]["G"] == pytest.approx(0.5)
    far = {s: {**scores, "mIoU": scores["mIoU"] - 3} for s, scores in png.items()}  # sd of mIoU is 1.41
    text = jpeg_effect.report({"png": png, "jpeg": far}, args, manifest)
    assert "NOT within the seed's own spread on: mIoU." in text
