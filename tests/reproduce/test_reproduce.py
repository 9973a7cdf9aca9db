"""reproduce/: the Table 1 report, its job cache and resume, and the Caffe evaluation script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import make_tiny_camvid
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


sys.path.insert(0, str(ROOT / "reproduce"))  # the scripts import each other as python reproduce/X.py runs them
import experiment  # noqa: E402
import table1  # noqa: E402


def _result(variant, balancing, g, c, miou, bf, params=1_416_587):
    return {"variant": variant, "balancing": balancing, "test": {"G": g, "C": c, "mIoU": miou, "BF": bf},
            "params": params, "best_iteration": 40, "inference_ms": 12.0}  # fmt: skip


def test_table_states_budget_hardware_command_and_deltas():
    budget = experiment.Budget(80, 12, (90, 120), 40, True, "cpu")
    text = experiment.assemble_table([_result("SegNet-Basic", "median", 80.0, 60.0, 45.0, 30.0),
                                  _result("FCN-Basic", "natural", 85.0, 50.0, 40.0, 40.0, 645_979)],
                                 budget, "python reproduce/table1.py", "test machine")  # fmt: skip
    assert "- command: `python reproduce/table1.py`" in text and "- hardware: test machine" in text
    assert "80 iterations of batch 12, images 90x120" in text and "REDUCED" in text
    segnet_row = next(line for line in text.splitlines() if line.startswith("| SegNet-Basic | median"))
    assert "82.7 / 80.0 / -2.7" in segnet_row and "35.8 / 30.0 / -5.8" in segnet_row and "1.417 / 1.425" in segnet_row
    fcn_row = next(line for line in text.splitlines() if line.startswith("| FCN-Basic | natural"))
    assert "83.9 / 85.0 / +1.1" in fcn_row  # natural-frequency column of the paper
    full = experiment.assemble_table([], experiment.FULL_BUDGET, "x", "y")
    assert "REDUCED" not in full
    diverged = {"variant": "FCN-Basic", "balancing": "median", "diverged": "loss became nan at iteration 11"}
    assert "| FCN-Basic | median | | loss became nan at iteration 11 |" in experiment.assemble_table(
        [diverged], budget, "x", "y")


def test_jobs_are_cached_and_resumed(tmp_path, monkeypatch):
    data = make_tiny_camvid(tmp_path / "camvid")
    out = tmp_path / "results"
    small = experiment.Budget(2, 2, (12, 16), 1, False, "tiny")
    first = experiment.run_job("FCN-Basic", "natural", small, data, out, "cpu", progress=False)
    assert set(first["test"]) == {"G", "C", "mIoU", "BF"} and first["budget"]["iterations"] == 2
    cache = out / "runs" / "FCN-Basic__natural.json"
    assert json.loads(cache.read_text()) == first

    def no_training(cfg):
        raise AssertionError("a cached job must not train again")

    monkeypatch.setattr(experiment, "train", no_training)
    assert experiment.run_job("FCN-Basic", "natural", small, data, out, "cpu", progress=False) == first
    monkeypatch.undo()

    # A larger budget reuses the run folder and continues from its last checkpoint.
    longer = experiment.Budget(4, 2, (12, 16), 1, False, "tiny")
    second = experiment.run_job("FCN-Basic", "natural", longer, data, out, "cpu", progress=False)
    assert second["budget"]["iterations"] == 4
    log = (out / "runs" / "FCN-Basic__natural" / "log.jsonl").read_text().splitlines()
    starts = [json.loads(line)["start_iteration"] for line in log if '"start"' in line]
    assert starts == [0, 2]


def test_plot_is_written(tmp_path):
    path = tmp_path / "t.png"
    experiment.plot([_result("SegNet-Basic", "median", 80.0, 60.0, 45.0, 30.0)], path)
    image = Image.open(path)
    assert image.size[0] > 500 and image.mode in ("RGB", "RGBA")


def _fake_results(root: Path) -> Path:
    """A copy of the committed Table 1 results (cached runs and report) to run the script against."""
    results = root / "results"
    shutil.copytree(ROOT / "reproduce" / "results", results, ignore=shutil.ignore_patterns("scratch", "*__*"))
    for cached in (ROOT / "reproduce" / "results" / "runs").glob("*.json"):
        shutil.copy(cached, results / "runs" / cached.name)
    return results


def test_a_cached_default_run_leaves_the_committed_report_as_it_is(tmp_path, monkeypatch, capsys):
    results = _fake_results(tmp_path)
    monkeypatch.setattr(table1, "RESULTS", results)
    monkeypatch.setattr(table1, "SCRATCH", results / "scratch")
    monkeypatch.setattr(table1, "bf16_available", lambda device: True)  # the machine the results came from
    monkeypatch.setattr(experiment, "train", lambda cfg: pytest.fail("every cell is cached"))
    before = {p.name: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    data = make_tiny_camvid(tmp_path / "camvid", count=1)
    assert table1.main(["--no-progress", "--data", str(data)]) == 0
    assert "is up to date" in capsys.readouterr().out
    after = {p.name: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    assert after == before


def test_other_budgets_and_subsets_write_only_to_their_own_ignored_folder(tmp_path, monkeypatch, capsys):
    results = _fake_results(tmp_path)
    monkeypatch.setattr(table1, "RESULTS", results)
    monkeypatch.setattr(table1, "SCRATCH", results / "scratch")
    before = {p.relative_to(results): p.read_bytes() for p in results.rglob("*") if p.is_file()}
    data = make_tiny_camvid(tmp_path / "camvid", count=2)
    assert table1.main(["--variants", "SegNet-Basic", "--balancing", "natural", "--iterations", "1",
                        "--batch-size", "2", "--image-size", "12,16", "--val-every", "1", "--fp32", "--no-progress",
                        "--data", str(data)]) == 0  # fmt: skip
    now = {p.relative_to(results): p.read_bytes() for p in results.rglob("*") if p.is_file()}
    assert {k: v for k, v in now.items() if k in before} == before  # nothing committed was touched
    new = sorted(str(k) for k in now if k not in before)
    name = "cpu-1it-b2-12x16-val1-fp32"
    assert all(path.startswith(f"scratch/{name}/") for path in new), new
    assert f"scratch/{name}/table1_{name}.md" in new
    report = (results / "scratch" / name / f"table1_{name}.md").read_text()
    assert "`python reproduce/table1.py --variants SegNet-Basic --balancing natural --iterations 1" in report
    ignored = subprocess.run(["git", "check-ignore", "-q", f"reproduce/results/scratch/{name}/x.md"], cwd=ROOT)
    assert ignored.returncode == 0


def test_command_rejects_unknown_variants(tmp_path, capsys):
    code = table1.main(["--variants", "SegNet-Huge", "--data", str(make_tiny_camvid(tmp_path / "c"))])
    assert code == 2 and "unknown variant" in capsys.readouterr().err


def test_evaluate_caffe_prints_the_papers_rows(oracle_dir, camvid_dir, capsys):
    import evaluate_caffe
    code = evaluate_caffe.main([str(oracle_dir / "segnet_basic_inference.prototxt"),
                                str(oracle_dir / "segnet_basic.caffemodel"), "--data", str(camvid_dir), "--limit", "2"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "Table 1 SegNet-Basic " in out and "82.70" in out
    assert any(line.startswith("ours ") for line in out.splitlines())


def test_evaluate_caffe_takes_a_training_prototxt(oracle_dir, camvid_dir, capsys):
    """A LEARN-mode training net: only the layers the scores need run (no label input), with a warning."""
    import evaluate_caffe
    code = evaluate_caffe.main([str(oracle_dir / "segnet_basic_train.prototxt"), str(oracle_dir / "segnet_basic_train.caffemodel"),
                                "--data", str(camvid_dir), "--limit", "1", "--no-progress"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "LEARN mode" in captured.err and any(line.startswith("ours ") for line in captured.out.splitlines())


def test_evaluate_caffe_without_data_is_one_line(oracle_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEGNET_SHARED", str(tmp_path))  # nothing there
    import evaluate_caffe
    code = evaluate_caffe.main([str(oracle_dir / "segnet_basic_inference.prototxt"),
                                str(oracle_dir / "segnet_basic.caffemodel"), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: no data set: give --data ROOT") and err.count("\n") == 1
