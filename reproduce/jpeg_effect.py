"""Does training on the packed JPEG images (reproduce/pack_data.py) change the result? Measured, not assumed.

SegNet-Basic (median frequency balancing) is trained on CPU at a small
budget from the original PNG training split and from the packed one (JPEG
4:4:4, the pack's quality; labels identical), with the same seeds, so the
two runs of a seed see the same batches in the same order and differ only
in the pixels. Each is scored on the original CamVid test PNGs (G, C, mIoU;
images in at the training size, scored at the labels' size). The JPEG
effect is the mean of the per-seed differences, set beside the spread from
the seed alone (standard deviation over seeds of the PNG runs).

    python reproduce/pack_data.py                  # device_data/CamVid
    python reproduce/jpeg_effect.py [--seeds 0,1,2] [--iterations 80]

Writes reproduce/results/jpeg_effect.md and .json (runs under runs/jpeg_effect/).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import experiment
from packing import PACK

from segnet.models.checkpoint import load_model
from converter.errors import run_command
from segnet.cli import add_common_options, data_root
from segnet.training.config import TrainConfig
from segnet.training.loop import train

ROOT = experiment.ROOT
METRICS = ("G", "C", "mIoU")


def train_and_score(data: Path, test_data: Path, seed: int, args: argparse.Namespace, out: Path) -> dict:
    """One training run from ``data``, scored on ``test_data``'s test split; cached in ``out``."""
    cache = out / "scores.json"
    if cache.exists():
        return json.loads(cache.read_text())
    cfg = TrainConfig(
        data=str(data), out=str(out), model="segnet-basic", iterations=args.iterations, batch_size=args.batch_size,
        image_size=args.image_size, val_every=args.iterations, class_weights="median", seed=seed,
        bf16=False, device="cpu", resume="auto", progress=args.progress,
    )  # fmt: skip
    train(cfg)
    model = load_model(out / "last.pt", map_location="cpu")  # the last step, not a validation pick: less noise
    scores = experiment.test_scores(model, test_data, args.image_size, boundary=False)
    cache.write_text(json.dumps(scores))
    return scores


def report(results: dict, args: argparse.Namespace, manifest: dict) -> str:
    seeds = sorted(results["png"])
    lines = [
        "# Training on the packed JPEG images against the original PNGs",
        "",
        f"SegNet-Basic, median frequency balancing, {args.iterations} iterations of batch {args.batch_size} at "
        f"{args.image_size[0]}x{args.image_size[1]}, fp32 on CPU; seeds {', '.join(map(str, seeds))}; the same "
        "seed gives both runs the same batches. Scored on the original CamVid test PNGs (percent). "
        f"Pack: {manifest['images']} (train PSNR {manifest['splits']['train']['psnr_db']} dB).",
        "",
        "| seed | " + " | ".join(f"{m} PNG | {m} JPEG" for m in METRICS) + " |",
        "|---|" + "---|---|" * len(METRICS),
    ]
    for seed in seeds:
        png, jpeg = results["png"][seed], results["jpeg"][seed]
        lines.append(f"| {seed} | " + " | ".join(f"{png[m]:.2f} | {jpeg[m]:.2f}" for m in METRICS) + " |")
    lines += ["", "| | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    effect = {m: statistics.mean(results["jpeg"][s][m] - results["png"][s][m] for s in seeds) for m in METRICS}
    spread = {m: statistics.stdev(results["png"][s][m] for s in seeds) for m in METRICS}
    lines.append("| JPEG effect (mean of JPEG - PNG per seed) | " + " | ".join(f"{effect[m]:+.2f}" for m in METRICS) + " |")
    lines.append("| seed spread (sd of the PNG runs) | " + " | ".join(f"{spread[m]:.2f}" for m in METRICS) + " |")
    outside = [m for m in METRICS if abs(effect[m]) > spread[m]]
    verdict = f"NOT within the seed's own spread on: {', '.join(outside)}." if outside else \
        "within the seed's own spread on every metric."  # fmt: skip
    lines += ["", f"Verdict: the JPEG effect is {verdict}"]
    results["effect"], results["spread"], results["within_noise"] = effect, spread, not outside
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="original CamVid (default: as every command finds it)")
    parser.add_argument("--pack", type=Path, default=PACK / "CamVid", help="the packed training data")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--iterations", type=int, default=experiment.CPU_BUDGET.iterations)
    parser.add_argument("--batch-size", type=int, default=experiment.CPU_BUDGET.batch_size)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "jpeg_effect")
    add_common_options(parser)
    args = parser.parse_args(argv)
    if len(args.seeds.split(",")) < 2:
        parser.error("--seeds needs at least two seeds: the spread needs them")
    args.image_size = experiment.CPU_BUDGET.image_size
    return run_command(lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    original = Path(data_root(args.data))
    manifest = json.loads((args.pack.parent / "manifest.json").read_text())
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict = {"png": {}, "jpeg": {}}
    for seed in seeds:
        for kind, data in (("png", original), ("jpeg", args.pack)):
            results[kind][seed] = train_and_score(data, original, seed, args, args.out / f"{kind}_seed{seed}")
            print(f"seed {seed} {kind}: " + ", ".join(f"{m} {results[kind][seed][m]:.2f}" for m in METRICS), flush=True)
    text = report(results, args, manifest)
    (experiment.RESULTS / "jpeg_effect.md").write_text(text)
    (experiment.RESULTS / "jpeg_effect.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
