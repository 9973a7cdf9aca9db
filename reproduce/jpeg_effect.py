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

``--test-time`` measures the other side: how much a trained model's test
scores move when its input images are the pack's JPEG encoding instead of
the PNGs. The shipped example model (examples/segnet_basic_camvid,
SegNet-Basic) is scored with ``python -m segnet.evaluate`` (its protocol:
the inference engine at fp32, images at the model's 180x240, predictions
scored at the labels' 360x480, BF included) on the 233 CamVid test PNGs
and on JPEG copies of them (the pack's encoder: 4:4:4, each of ``--qualities``,
default the pack's 94; labels the same files), and the two prediction sets
are compared pixel by pixel. Writes reproduce/results/jpeg_test_time.md and
.json.

    python reproduce/jpeg_effect.py --test-time [--qualities 94,90]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import experiment
from packing import PACK, encode_jpeg

from segnet.models.checkpoint import load_model
from converter.errors import UserError, run_command
from segnet.cli import add_common_options, data_root
from segnet.data.imageio import read_image_bgr, read_label
from segnet.data.labels import get_label_space
from segnet.data.splits import list_samples
from segnet.evaluation.metrics import match_size
from segnet.training.config import TrainConfig
from segnet.training.loop import train

ROOT = experiment.ROOT
METRICS = ("G", "C", "mIoU")
EXAMPLE = ROOT / "examples" / "segnet_basic_camvid" / "segnet_basic_camvid"


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
    parser.add_argument("--test-time", action="store_true",
                        help="no training: score the example model on the test PNGs and on JPEG copies of them")
    parser.add_argument("--qualities", default="94", help="--test-time: JPEG qualities, comma-separated (default: "
                        "the pack's 94)")
    add_common_options(parser)
    args = parser.parse_args(argv)
    if args.test_time:
        return run_command(lambda: test_time(Path(data_root(args.data)), _qualities(args.qualities),
                                             args.out / "test_time", args.progress))  # fmt: skip
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


def _qualities(text: str) -> list[int]:
    try:
        qualities = [int(q) for q in text.split(",")]
    except ValueError:
        qualities = []
    if not qualities or any(not 1 <= q <= 100 for q in qualities):
        raise UserError(f"--qualities {text!r}: JPEG qualities 1..100, comma-separated")
    return qualities


def jpeg_copy(data: Path, split: str, quality: int, out: Path) -> Path:
    """``split`` of ``data`` with each image re-encoded as the pack encodes it, the labels the same files."""
    for sample in list_samples(data, split):
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        (out / split / "labels").mkdir(exist_ok=True)
        (out / split / "images" / f"{sample.image.stem}.jpg").write_bytes(encode_jpeg(read_image_bgr(sample.image),
                                                                                      quality))  # fmt: skip
        (out / split / "labels" / f"{sample.image.stem}.png").symlink_to(sample.label.resolve())
    return out


def _run(module: str, *argv: str) -> int:
    """``python -m module argv...`` in this interpreter; its exit status (its messages go to the terminal)."""
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=experiment.ROOT).returncode


def test_time(data: Path, qualities: list[int], out: Path, progress: bool = False,
              results: Path = experiment.RESULTS) -> int:  # fmt: skip
    """The example model scored by segnet.evaluate on the test PNGs and their JPEG copies; written to ``results``."""
    # The commands run as a user runs them (their own processes): the protocol is theirs, unchanged.
    out.mkdir(parents=True, exist_ok=True)
    model = out / "segnet_basic_camvid.pt"
    if not model.exists() and _run("converter", f"{EXAMPLE}.prototxt", f"{EXAMPLE}.caffemodel", "-o", str(model), "-q"):
        raise UserError("the example model did not convert (the message above says why)")
    space = get_label_space("camvid")
    samples = list_samples(data, "test")

    def score(kind: str, root: Path) -> dict:
        argv = ["--data", str(root), "--split", "test", "--model", str(model), "--out", str(out / kind)]
        if not (out / kind / "report.json").exists() and \
                _run("segnet.evaluate", *argv, *([] if progress else ["--no-progress"])):  # fmt: skip
            raise UserError(f"scoring the {kind} images failed (the message above says why)")
        report = json.loads((out / kind / "report.json").read_text())
        return {m: round(100 * report[m], 2) for m in ("G", "C", "mIoU", "BF")}

    png = score("png", data)
    result: dict = {
        "model": "examples/segnet_basic_camvid (SegNet-Basic, 180x240 input, 1500 iterations)",
        "images": len(samples), "encoding": "JPEG 4:4:4 as the pack encodes it (reproduce/packing.encode_jpeg)",
        "protocol": "python -m segnet.evaluate --model MODEL --data ROOT --split test: fp32 inference engine, "
                    "images at 180x240, scored at the labels' 360x480; percent",
        "png": png, "jpeg": {}, "hardware": experiment.hardware(),
    }  # fmt: skip
    for quality in qualities:
        with tempfile.TemporaryDirectory() as tmp:
            jpeg = score(f"jpeg_q{quality}", jpeg_copy(data, "test", quality, Path(tmp) / "CamVid"))
        agree, pixels = 0, 0
        for sample in samples:  # predictions compared where they are scored: at the labels' size
            shape = read_label(sample.label, space).shape
            a, b = (match_size(read_label(out / kind / "labels" / sample.label.name, space), shape)
                    for kind in ("png", f"jpeg_q{quality}"))  # fmt: skip
            agree, pixels = agree + int(np.count_nonzero(a == b)), pixels + a.size
        result["jpeg"][str(quality)] = {"scores": jpeg, "difference": {m: round(jpeg[m] - png[m], 2) for m in png},
                                        "label_agreement": round(agree / pixels, 5), "pixels": pixels}  # fmt: skip
    (results / "jpeg_test_time.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# The example model's test scores from the PNGs and from JPEG copies",
        "",
        (f"{result['model']}; the {result['images']} CamVid test images, as PNGs and as {result['encoding']}. "
         f"Protocol: `{result['protocol'].split(': ', 1)[0]}` ({result['protocol'].split(': ', 1)[1]}). Made by "
         f"`python reproduce/jpeg_effect.py --test-time --qualities {','.join(map(str, qualities))}` on "
         f"{result['hardware']}."),
        "",
        "| input | G | C | mIoU | BF | labels equal to the PNGs' |",
        "|---|---|---|---|---|---|",
        "| PNG | " + " | ".join(f"{png[m]:.2f}" for m in png) + " | |",
    ]  # fmt: skip
    caveat = ("The model takes 180x240 images: each 360x480 test image is halved first, which averages away part "
              "of the JPEG error that a model fed 360x480 (the full budget's) sees whole.")
    for quality, entry in result["jpeg"].items():
        lines.append(f"| JPEG q{quality} (JPEG - PNG) | " + " | ".join(
            f"{entry['scores'][m]:.2f} ({entry['difference'][m]:+.2f})" for m in png)
            + f" | {100 * entry['label_agreement']:.2f}% of {entry['pixels']} pixels |")  # fmt: skip
    lines += ["", caveat]
    (results / "jpeg_test_time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
