"""reproduce/device.py and pack_data.py: the GPU runner end to end on a tiny budget, a cut row resumed, the pack."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import segnet.training.loop

from support import make_tiny_camvid
from segnet.data.imageio import read_label
from segnet.models.checkpoint import read_checkpoint, save_model
from segnet.models.registry import build_model
from segnet.training.optim import caffe_param_groups
from segnet.data.labels import get_label_space
from segnet.data.splits import list_samples

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "reproduce"))
import device  # noqa: E402
import experiment  # noqa: E402
import packing  # noqa: E402
import returns  # noqa: E402


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


# ------------------------------------------------------------------ grouped rows: --group, 4 rows in one call, what comes back

PAIRS = ["SegNet-Basic:median", "SegNet-Basic:natural", "FCN-Basic:median", "FCN-Basic:natural"]


def _run(camvid: Path, out: Path, work: Path, rows: list[str], *extra: str) -> int:
    return device.main(["run", "--minutes", "3", "--tiny", "--out", str(out), "--work", str(work), "--data",
                        str(camvid), "--results", str(out.parent / "done"), "--rows", ",".join(rows), "--log-every",
                        "1", "--carry-room", "64", "--no-progress", *extra])  # fmt: skip


def _losses(folder: Path) -> list[float]:
    events = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    return [e["loss"] for e in events if e["event"] == "train"]


def _assert_same_weights(a: Path, b: Path) -> None:
    mine, theirs = read_checkpoint(a)["state_dict"], read_checkpoint(b)["state_dict"]
    for key, value in theirs.items():
        torch.testing.assert_close(mine[key], value, rtol=1e-3, atol=1e-4 * (value.abs().max().item() + 1), msg=key)


@pytest.fixture(scope="module")
def alone(camvid, tmp_path_factory) -> Path:
    """The four rows trained one by one as segnet.train trains them (--group 1): the reference."""
    root = tmp_path_factory.mktemp("alone")
    assert _run(camvid, root / "out", root / "work", PAIRS, "--group", "1") == 0
    assert json.loads((root / "out" / "runner.json").read_text())["sets"] == []
    return root / "work"


@pytest.mark.parametrize("group", [2, 4])
def test_grouped_rows_train_as_they_do_alone_and_collect_files_them(camvid, alone, tmp_path, group):
    rows = PAIRS[:2] if group == 2 else PAIRS  # --group 4 in one call: two sets, a variant's pair each
    out, work, results = tmp_path / "out", tmp_path / "work", tmp_path / "results"
    assert _run(camvid, out, work, rows, "--group", str(group)) == 0
    report = json.loads((out / "runner.json").read_text())
    names = [experiment.job_name(*r.split(":")) for r in rows]
    assert report["sets"] == [names[i : i + 2] for i in range(0, len(names), 2)]
    assert report["rows"] == dict.fromkeys(names, "finished") and report["bundle_bytes"] <= 4 * device.PART
    for name in names:
        assert _losses(work / name) == pytest.approx(_losses(alone / name), rel=1e-4) and len(_losses(work / name)) == 4
        _assert_same_weights(work / name / "last.pt", alone / name / "last.pt")
        mine, theirs = (json.loads((w / name / "row.json").read_text()) for w in (work, alone))
        assert mine["best_iteration"] == theirs["best_iteration"]
        assert mine["group_images_per_s"] == pytest.approx(2 * mine["images_per_s"], rel=0.01)
        assert mine["grouped_with"] == [n for n in names if n != name and n.split("__")[0] == name.split("__")[0]]

    assert device.main(["collect", str(out), "--results-root", str(results), "--state", str(tmp_path / "state"),
                        "--data", str(camvid), "--no-progress"]) == 0  # fmt: skip
    for name in names:
        row = json.loads((results / "runs" / "tiny" / f"{name}.json").read_text())
        pair = names[:2] if name in names[:2] else names[2:]
        assert set(row["test"]) == {"G", "C", "mIoU", "BF"} and row["segments"][0]["group"] == pair
        assert read_checkpoint(results / "runs" / "tiny" / name / "best.pt")["meta"]["iteration"] == row["best_iteration"]
    assert "for its set)" in (results / "table1_tiny.md").read_text()


def test_a_grouped_set_cut_short_resumes_as_the_same_set(camvid, alone, tmp_path, monkeypatch):
    rows, names = PAIRS[:2], ["SegNet-Basic__median", "SegNet-Basic__natural"]
    monkeypatch.setattr(segnet.training.loop, "past", lambda deadline, run: True)  # stop at the first check
    assert _run(camvid, tmp_path / "first", tmp_path / "w1", rows) == 0
    monkeypatch.undo()
    report = json.loads((tmp_path / "first" / "runner.json").read_text())
    assert report["rows"] == dict.fromkeys(names, "cut at 1") and report["sets"] == [names]
    state, results = tmp_path / "device_state", tmp_path / "results"
    assert device.collect(tmp_path / "first", results, state) == ([], names)
    for name in names:  # the state travels; the best so far (iteration 0) stays here
        assert sorted(p.name for p in (state / name).iterdir()) == ["last.pt", "log.jsonl", "segments.json"]
        assert read_checkpoint(results / "runs" / "tiny" / name / "best.pt")["meta"]["iteration"] == 0

    assert _run(camvid, tmp_path / "second", state, rows) == 0  # the next call, carrying device_state
    assert "SegNet-Basic__median + SegNet-Basic__natural: resuming at iteration 1 as one grouped network" in \
        (tmp_path / "second" / "runner.log").read_text()  # fmt: skip
    for name in names:
        assert _losses(state / name) == pytest.approx(_losses(alone / name), rel=1e-4)
        _assert_same_weights(state / name / "last.pt", alone / name / "last.pt")
    assert device.collect(tmp_path / "second", results, state) == (names, [])
    for name in names:
        row = json.loads((results / "runs" / "tiny" / f"{name}.json").read_text())
        assert [(s["from_iteration"], s["to_iteration"], s["group"]) for s in row["segments"]] == [
            (0, 1, names), (1, 4, names)]  # fmt: skip
        assert read_checkpoint(results / "runs" / "tiny" / name / "best.pt")["meta"]["iteration"] == row["best_iteration"]
        assert not (state / name).exists()


def _segnet_basic_cut_row(folder: Path, iteration: int, best: int) -> None:
    """A cut SegNet-Basic row's files at their real sizes: last.pt (weights, momentum), best.pt, the state at
    its best, logs."""
    model = build_model("segnet-basic")
    optimizer = torch.optim.SGD(caffe_param_groups(model, 5e-4), lr=0.1, momentum=0.9)
    for p in model.parameters():
        optimizer.state[p]["momentum_buffer"] = torch.randn_like(p)  # random: nothing compresses
    config = {"config": {"model": "segnet-basic"}, "label_space": "camvid", "class_weights": "median"}
    for name, at in (("last.pt", iteration), ("best_state.pt", best)):
        save_model(folder / name, model, {**config, "iteration": at, "best": {"accuracy": 0.8, "iteration": best},
                                          "optimizer": optimizer.state_dict(), "batches": {"epoch": 3, "pos": 5}})
    save_model(folder / "best.pt", model, {**config, "iteration": best, "val_global_accuracy": 0.8})
    (folder / "log.jsonl").write_text("x" * 50_000)
    (folder / "segments.json").write_text(json.dumps([{"from_iteration": 0, "to_iteration": iteration}]))
    (folder / "cut.json").write_text(json.dumps({"iteration": iteration, "best": {"accuracy": 0.8, "iteration": best},
                                                 "from_iteration": 0}))  # fmt: skip


def test_the_plan_lets_four_segnet_basic_rows_in_flight_only_when_grouped():
    limit, carry = returns.PLAN_LIMIT, 64 * experiment.MIB
    cut = returns.cut_bytes("SegNet-Basic")
    assert returns.admit("SegNet-Basic", 2, returns.Held(), limit, carry) == (2, None)
    assert returns.admit("SegNet-Basic", 2, returns.Held(2 * cut, 2 * cut), limit, carry) == (2, None)  # rows 3, 4
    alone = returns.worst_bytes("SegNet-Basic", grouped=False)  # rows alone may come back with a new best.pt each
    count, why = returns.admit("SegNet-Basic", 1, returns.Held(3 * alone, 3 * cut), limit, carry)
    assert count == 0 and "could add" in why
    # what the pack leaves today for cut rows' state holds one SegNet-Basic row, not a set of two
    count, why = returns.admit("SegNet-Basic", 2, returns.Held(), limit, packing.state_reserve())
    assert count == 1 and "next call to carry" in why


def test_four_cut_segnet_basic_rows_come_back_within_four_parts_nothing_lost(tmp_path):
    work, out, names = tmp_path / "work", tmp_path / "out", [f"SegNet-Basic-{i}__median" for i in range(4)]
    for name in names:
        (work / name).mkdir(parents=True)
        _segnet_basic_cut_row(work / name, 5000, 4000)
    out.mkdir()
    size, plan = device.bundle(work, names, out, device.OUT_LIMIT, frozenset(names))
    parts = sorted(out.glob("bundle.tar.*"))
    assert size <= 4 * device.PART and len(parts) <= 4 and all(p.stat().st_size <= device.PART for p in parts)
    assert plan.rewound and set(plan.rewound) == {n for n, text in plan.notes.items() if "rewound" in text}
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts))) as tar:
        members = set(tar.getnames())
    for name in names:  # every row's state comes back; its selection as best.pt, or as its rewound state
        assert f"{name}/last.pt" in members
        assert (f"{name}/best.pt" in members) != (name in plan.rewound)
        assert read_checkpoint(work / name / "last.pt")["meta"]["iteration"] == (4000 if name in plan.rewound else 5000)
    (out / "runner.json").write_text(json.dumps({"budget": {"name": "full"}}))
    state, results = tmp_path / "state", tmp_path / "results"
    assert device.collect(out, results, state) == ([], names)
    for name in names:
        assert read_checkpoint(results / "runs" / "full" / name / "best.pt")["meta"]["iteration"] == 4000


def test_a_best_pt_that_cannot_come_back_is_named_in_runner_json(camvid, tmp_path):
    names = [f"SegNet-Basic-{i}__median" for i in range(4)]
    args = device.build_parser().parse_args(["run", "--minutes", "1", "--out", str(tmp_path / "out"), "--work",
                                             str(tmp_path / "work"), "--data", str(camvid)])  # fmt: skip
    args.work, args.results = Path(args.work), tmp_path / "done"
    runner = device.Runner(args)
    for name in names:  # rows trained alone: no state kept at their best to rewind to
        (args.work / name).mkdir()
        _segnet_basic_cut_row(args.work / name, 5000, 4000)
        (args.work / name / "best_state.pt").unlink()
    runner.touched, runner.report["rows"] = names, dict.fromkeys(names, "cut at 5000")
    runner.finish_files(final=True)
    runner.log.close()
    report = json.loads((tmp_path / "out" / "runner.json").read_text())
    assert report["bundle_bytes"] <= 4 * device.PART
    assert any("best.pt (iteration 4000) left out: it did not fit" in note for note in report["notes"])


def test_group_outside_1_to_4_is_one_line_and_status_2(camvid, tmp_path, capsys):
    assert device.main(["run", "--minutes", "1", "--out", str(tmp_path), "--group", "5", "--data", str(camvid)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: --group 5: give 1 to 4 rows per grouped network"]


def test_test_time_scores_the_example_model_on_pngs_and_their_jpeg_copies(camvid, tmp_path):
    import jpeg_effect

    assert jpeg_effect.test_time(camvid, [94, 50], tmp_path / "runs", results=tmp_path) == 0
    result = json.loads((tmp_path / "jpeg_test_time.json").read_text())
    assert result["images"] == 3 and set(result["png"]) == {"G", "C", "mIoU", "BF"} and set(result["jpeg"]) == {"94", "50"}
    for entry in result["jpeg"].values():
        assert entry["pixels"] == 3 * 24 * 32 and 0 < entry["label_agreement"] <= 1
        assert entry["difference"]["G"] == pytest.approx(entry["scores"]["G"] - result["png"]["G"], abs=0.011)
    copies = sorted((tmp_path / "runs" / "jpeg_q94" / "labels").iterdir())  # scored by segnet.evaluate itself
    assert len(copies) == 3 and (tmp_path / "runs" / "png" / "report.json").is_file()
    assert "| JPEG q50 (JPEG - PNG) |" in (tmp_path / "jpeg_test_time.md").read_text()


def test_a_row_whose_set_mate_diverges_goes_on_alone_in_the_same_call(camvid, alone, tmp_path, monkeypatch):
    import segnet.training.grouped

    real = segnet.training.grouped.class_weights
    monkeypatch.setattr(segnet.training.grouped, "class_weights",
                        lambda balancing, *args: real(balancing, *args) * float("nan"))  # median's loss: NaN
    assert _run(camvid, tmp_path / "out", tmp_path / "work", PAIRS[2:]) == 0
    report = json.loads((tmp_path / "out" / "runner.json").read_text())
    assert report["rows"] == {"FCN-Basic__median": "diverged", "FCN-Basic__natural": "finished"}
    row = json.loads((tmp_path / "work" / "FCN-Basic__natural" / "row.json").read_text())
    assert [(s["from_iteration"], s.get("group")) for s in row["segments"]] == [
        (0, ["FCN-Basic__median", "FCN-Basic__natural"]), (1, None)]  # fmt: skip
    assert _losses(tmp_path / "work" / "FCN-Basic__natural") == pytest.approx(
        _losses(alone / "FCN-Basic__natural"), rel=1e-4)  # fmt: skip
