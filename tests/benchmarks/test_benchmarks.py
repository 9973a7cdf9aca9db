"""The benchmark scripts' reports: committed results are what the scripts print, and Caffe ratios only from one run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_gpu  # noqa: E402
import bench_inference  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def test_the_committed_gpu_table_is_what_the_report_prints_from_its_json():
    result = json.loads((RESULTS / "gpu_h200.json").read_text())
    assert bench_gpu.markdown(result) + "\n" == (RESULTS / "gpu_h200.md").read_text()


def test_the_gpu_table_marks_failed_and_unrun_rows():
    row = {"model": "segnet", "precision": "bf16", "mode": "eager", "ms_per_batch": 2.0, "images_per_s": 500.0}
    result = {"device": "GPU", "torch": "t", "cuda": "c", "cudnn": 1, "size": [360, 480], "paper_titan_forward_ms": 422.5,
              "rows": [{**row, "batch": 1, "setup_s": 3.0}, {**row, "batch": 8, "error": "RuntimeError: out of memory"}],
              "skipped": ["segnet batch 32 bf16 eager: out of time"]}  # fmt: skip
    text = bench_gpu.markdown(result)
    assert "| segnet | bf16 | eager | 500 | failed | not run | 2.00 | 3.0 |" in text
    assert "- segnet batch 8 bf16 eager: RuntimeError: out of memory" in text and "Not run (out of time): 1 rows." in text


def test_no_ratio_against_caffe_figures_from_another_run(capsys):
    recorded = {"date": "2026-12-04", "machine": "2-core CPU",
                "models": {"segnet": {"forward_s": 5.0, "peak_rss_mb": 3700.0, "train_s": 19.0}}}  # fmt: skip
    bench_inference.print_caffe_comparison("segnet", {"caffe-graph": {"median_s": 2.5}}, recorded)
    text = capsys.readouterr().out
    assert "measured 2026-12-04 on 2-core CPU (another run: no ratio)" in text and "x caffe" not in text

    same_run = {"caffe-graph": {"median_s": 2.5}, "caffe-segnet": {"median_s": 5.0}}
    bench_inference.print_caffe_comparison("segnet", same_run, recorded)
    assert "caffe-graph: 2.00x caffe-segnet's speed (same run)" in capsys.readouterr().out


def test_the_recorded_caffe_figures_name_their_machine_and_date():
    recorded = json.loads((RESULTS / "caffe_cpu.json").read_text())
    assert recorded["date"] and recorded["machine"] and set(recorded["models"]) == {"segnet", "segnet-basic"}


def test_rows_are_measured_in_interleaved_rounds_and_merged(monkeypatch, tmp_path):
    calls = []

    def fake(kind, name, folder, repeats, out):
        calls.append(kind)
        if kind == "broken":
            raise RuntimeError("no compiler\nmore")
        n = calls.count(kind)
        return {"median_s": 0.0, "times_s": [float(n), 10.0 * n], "peak_rss_mb": 100.0 * n, "loaded_rss_mb": 50.0,
                "first_call_s": 7.0 * n}  # fmt: skip

    monkeypatch.setattr(bench_inference, "in_fresh_process", fake)
    rows = [("a", "A"), ("broken", "B"), ("c", "C")]
    merged = bench_inference.measure_rows(rows, "segnet", tmp_path, repeats=2, rounds=3)
    assert calls == ["a", "broken", "c", "a", "c", "a", "c"]  # ABCABC..., a failed row not retried
    assert merged["broken"] == {"error": "RuntimeError: no compiler"}
    a = merged["a"]
    assert sorted(a["times_s"]) == [1.0, 2.0, 3.0, 10.0, 20.0, 30.0] and a["median_s"] == 6.5
    assert a["rounds"] == 3 and a["peak_rss_mb"] == 300.0 and a["first_call_s"] == 7.0
