"""GPU inference throughput of SegNet and SegNet-Basic at 360x480, beside the paper's Table 6.

Images/s at batch 1, 8 and 32, in float32, TF32 and bf16 autocast
(channels-last, cuDNN benchmark on), run three ways: eager, replayed as a
CUDA graph, and ``torch.compile`` (inductor; its compile time is reported).
Times come from CUDA events over at least ``--seconds`` of runs after
warm-up. Weights are He-initialised (speed does not depend on them). The
whole benchmark stops starting new rows after ``--budget`` seconds; every
row is written to ``--json`` as soon as it is measured, so a cut run keeps
what it measured.

    python benchmarks/bench_gpu.py --json runs/gpu_bench.json [--budget 80]
    python benchmarks/bench_gpu.py --report FILE.json   # the Markdown table of a finished run
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from segnet.models.registry import build_model

MODELS = ["segnet", "segnet-basic"]
BATCHES = [1, 8, 32]
PRECISIONS = ["fp32", "tf32", "bf16"]
MODES = ["eager", "cuda-graph", "compiled"]
SIZE = (360, 480)
#: The paper's Table 6: SegNet forward pass on a 2015 NVIDIA Titan, batch 1, 360x480.
PAPER_TITAN_FORWARD_MS = 422.50


def set_precision(precision: str) -> None:
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def timed(step, seconds: float) -> float:
    """Milliseconds per call of ``step``, from CUDA events over at least ``seconds``."""
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    calls, elapsed_ms = 0, 0.0
    while elapsed_ms < seconds * 1000:
        n = max(1, calls or 5)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            step()
        end.record()
        end.synchronize()
        elapsed_ms += start.elapsed_time(end)
        calls += n
    return elapsed_ms / calls


def runner(model: torch.nn.Module, x: torch.Tensor, precision: str, mode: str):
    """A no-argument callable running one forward pass the given way."""

    def forward(inp: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            return model(inp)

    if mode == "eager":
        return lambda: forward(x)
    if mode == "compiled":
        compiled = torch.compile(forward)
        return lambda: compiled(x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up outside the capture (cuDNN benchmark picks algorithms here)
            forward(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward(x)
    return graph.replay


def measure(name: str, batch: int, precision: str, mode: str, seconds: float) -> dict:
    set_precision(precision)
    model = build_model(name).cuda().eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, *SIZE, device="cuda").contiguous(memory_format=torch.channels_last)
    row = {"model": name, "batch": batch, "precision": precision, "mode": mode}
    with torch.inference_mode(mode != "compiled"), torch.no_grad():
        begin = time.perf_counter()
        step = runner(model, x, precision, mode)
        step()
        torch.cuda.synchronize()
        row["setup_s"] = round(time.perf_counter() - begin, 2)
        ms = timed(step, seconds)
    row["ms_per_batch"] = round(ms, 3)
    row["images_per_s"] = round(batch * 1000 / ms, 1)
    row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write every measured row here as it is measured")
    parser.add_argument("--budget", type=float, default=80.0, help="seconds after which no new row starts")
    parser.add_argument("--seconds", type=float, default=0.5, help="timed seconds per row")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--report", type=Path, help="print the Markdown table of a finished run's JSON and stop")
    args = parser.parse_args(argv)
    if args.report:
        print(markdown(json.loads(args.report.read_text())))
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    torch.backends.cudnn.benchmark = True
    began = time.monotonic()
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
        "size": list(SIZE),
        "paper_titan_forward_ms": PAPER_TITAN_FORWARD_MS,
        "rows": [],
        "skipped": [],
    }
    # Cheap rows first: every eager and CUDA-graph row, then compiled ones (each pays its compile).
    plan = [(m, b, p, mode) for mode in MODES for m in args.models.split(",") for p in PRECISIONS for b in BATCHES]
    for name, batch, precision, mode in plan:
        if time.monotonic() - began > args.budget:
            result["skipped"].append(f"{name} batch {batch} {precision} {mode}: out of time")
            continue
        try:
            row = measure(name, batch, precision, mode, args.seconds)
        except Exception as error:  # noqa: BLE001 - a failed row is reported, the others still run
            row = {"model": name, "batch": batch, "precision": precision, "mode": mode,
                   "error": f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"}  # fmt: skip
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    """Images/s per model, precision and mode (columns: batch sizes), and batch-1 ms beside the paper's Titan."""
    lines = [
        f"{result['device']}, torch {result['torch']} (CUDA {result['cuda']}, cuDNN {result['cudnn']}), "
        f"input {result['size'][0]}x{result['size'][1]}, channels-last, cuDNN benchmark; images/s "
        f"(batch 1 also as ms per image; the paper's Table 6: SegNet forward {result['paper_titan_forward_ms']} ms "
        "on a 2015 NVIDIA Titan, fp32 Caffe). First call: the slowest first run of the row's batches, "
        "i.e. cuDNN's algorithm search, plus the CUDA graph capture or the compilation",
        "",
        "| model | precision | mode | " + " | ".join(f"batch {b}" for b in BATCHES) + " | batch 1 ms | first call s |",
        "|---|---|---|" + "---|" * len(BATCHES) + "---|---|",
    ]
    rows = {(r["model"], r["precision"], r["mode"], r["batch"]): r for r in result["rows"]}
    for name in MODELS:
        for precision in PRECISIONS:
            for mode in MODES:
                cells = [rows.get((name, precision, mode, b)) for b in BATCHES]
                if not any(cells):
                    continue
                text = [("failed" if "error" in c else f"{c['images_per_s']:.0f}") if c else "not run" for c in cells]
                one = cells[0]
                ms = f"{one['ms_per_batch']:.2f}" if one and "error" not in one else ""
                setup = max((c.get("setup_s", 0) for c in cells if c and "error" not in c), default="")
                lines.append(f"| {name} | {precision} | {mode} | " + " | ".join(text) + f" | {ms} | {setup} |")
    errors = [r for r in result["rows"] if "error" in r]
    if errors:
        lines += ["", "Failed rows:"] + [
            f"- {r['model']} batch {r['batch']} {r['precision']} {r['mode']}: {r['error']}" for r in errors
        ]
    if result.get("skipped"):
        lines += ["", f"Not run (out of time): {len(result['skipped'])} rows."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
