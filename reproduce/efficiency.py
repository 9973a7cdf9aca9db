"""The paper's Table 6 figures for SegNet and SegNet-Basic, measured on this machine.

    python reproduce/efficiency.py [--device cpu|cuda] [--repeats 5] [--bf16]

At 1 x 3 x 360 x 480, as in the paper: forward time, backward time (a
training forward + backward minus the training forward), peak inference
memory and model size, beside the paper's (SegNet on a 2015 NVIDIA Titan;
the paper's table has no SegNet-Basic row). Inference memory on a CPU is the
peak resident memory a fresh process adds while running the net (so
Python, PyTorch and the weights loaded before are not counted; the total is
shown too); on a GPU it is torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time

import torch

from converter.errors import run_command
from segnet.cli import add_common_options
from segnet.training.loss import segnet_loss
from segnet.deploy.measure import current_rss_mb, peak_rss_mb, reset_peak_rss
from segnet.evaluation.paper import TABLE6_SEGNET
from segnet.models.registry import build_model


def _timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(name: str, device: str, repeats: int, bf16: bool) -> dict:
    """Runs in a fresh process so that its memory figures are its own."""
    torch.manual_seed(0)
    dev = torch.device(device)
    model = build_model(name).to(dev)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    model_mb = buffer.getbuffer().nbytes / 1e6  # decimal MB, as the caffemodel size the paper lists
    del buffer
    x = torch.rand(1, 3, 360, 480, device=dev) * 255
    labels = torch.randint(0, 11, (1, 360, 480), device=dev)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)
    before = current_rss_mb()
    reset_peak_rss()
    model.eval()
    with torch.inference_mode(), autocast:
        forward = _timed(lambda: model(x), repeats)
    if dev.type == "cuda":
        inference_mb = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        inference_mb = peak_rss_mb() - before
    total_mb = peak_rss_mb()  # the whole process while running the net
    model.train()

    def train_forward():
        with autocast:
            return segnet_loss(model(x), labels, ignore_index=11)  # CamVid's void

    def train_step():
        loss = train_forward()
        model.zero_grad(set_to_none=True)
        loss.backward()

    train_fwd = _timed(train_forward, repeats)
    step = _timed(train_step, repeats)
    return {"forward_ms": forward, "backward_ms": step - train_fwd, "inference_memory_mb": inference_mb,
            "process_peak_mb": total_mb, "model_mb": model_mb}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python reproduce/efficiency.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    add_common_options(p)  # accepted for uniform scripting; this script prints one line per model
    args = p.parse_args(argv)
    return run_command(lambda: _command(args))


def _command(args: argparse.Namespace) -> int:
    hw = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else \
        f"{os.cpu_count()}-core CPU ({platform.machine()})"  # fmt: skip
    print(f"1x3x360x480, {hw}, torch {torch.__version__}, {'bf16' if args.bf16 else 'fp32'}, median of {args.repeats}")
    print(f"{'':<28} {'forward ms':>11} {'backward ms':>12} {'inference MiB':>13} {'model MB':>9}")
    paper = TABLE6_SEGNET
    print(f"{'SegNet, paper (Titan 2015)':<28} {paper['forward_ms']:>11.1f} {paper['backward_ms']:>12.1f} "
          f"{paper['inference_memory_mb']:>13.0f} {paper['model_mb']:>9.0f}")  # fmt: skip
    for name, label in (("segnet", "SegNet, ours"), ("segnet-basic", "SegNet-Basic, ours")):
        with mp.get_context("spawn").Pool(1) as pool:
            r = pool.apply(measure, (name, args.device, args.repeats, args.bf16))
        memory = f"{r['inference_memory_mb']:.0f}"
        print(f"{label:<28} {r['forward_ms']:>11.1f} {r['backward_ms']:>12.1f} {memory:>13} {r['model_mb']:>9.1f}"
              + (f"   (whole process {r['process_peak_mb']:.0f} MB)" if args.device == "cpu" else ""))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
