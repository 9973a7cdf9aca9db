"""Table 1's experiment, shared by table1.py, device.py, pack_data.py and jpeg_effect.py.

Budgets, the rows (variant x class balancing) and their names and paths,
training and scoring one row, inference timing, and the report that
assembles the rows into a Markdown table and a chart. table1.py is its
command (see there for the protocol).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from segnet.models.checkpoint import load_model
from segnet.cli import data_root
from segnet.data.datasets import SegmentationDataset
from segnet.evaluation.core import evaluate, model_predictions
from segnet.deploy.measure import cpu_has_bf16, cpu_name
from segnet.evaluation.metrics import METRICS
from segnet.models.family import count_parameters
from segnet.evaluation.paper import PAPER_PARAMS_M, PAPER_STORAGE, PAPER_TIME_MS, paper_row
from segnet.models.registry import build_model
from segnet.training.config import TrainConfig
from segnet.training.loop import TrainingDiverged, train
from segnet.models.variants import VARIANTS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "reproduce" / "results"
SCRATCH = RESULTS / "scratch"  # ignored by git: runs other than the committed one
BALANCINGS = {"median": "median", "natural": "natural"}  # Table 1's two columns -> segnet.train's weights


@dataclass(frozen=True)
class Budget:
    iterations: int
    batch_size: int
    image_size: tuple[int, int]
    val_every: int
    bf16: bool
    name: str

    def describe(self) -> str:
        return (f"{self.iterations} iterations of batch {self.batch_size}, images {self.image_size[0]}x"
                f"{self.image_size[1]}, validation every {self.val_every}, {'bf16' if self.bf16 else 'fp32'}")  # fmt: skip


FULL_BUDGET = Budget(16000, 12, (360, 480), 1000, False, "full")
#: The full budget as the GPU runner trains it (reproduce/device.py): bf16 autocast (the paper: fp32 Caffe).
DEVICE_BUDGET = replace(FULL_BUDGET, bf16=True)
CPU_BUDGET = Budget(80, 12, (90, 120), 40, True, "cpu")


def bf16_available(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


def job_name(variant: str, balancing: str) -> str:
    return f"{variant}__{balancing}"


def model_name(variant: str) -> str:
    """The registry name of a Table 1 variant."""
    return "segnet-basic" if variant == "SegNet-Basic" else variant


def run_job(variant: str, balancing: str, budget: Budget, data: Path, out: Path, device: str = "auto",
            progress: bool = True, reuse: Path | None = None) -> dict:  # fmt: skip
    """Train (resuming if interrupted) and evaluate one Table 1 cell; cached as JSON under ``out``.

    A result cached for the same job and budget under ``reuse`` (the
    committed results) is taken as it is.
    """
    cache = out / "runs" / f"{job_name(variant, balancing)}.json"
    for known in (cache, (reuse / "runs" / cache.name) if reuse else None):
        if known is not None and known.exists():
            cached = json.loads(known.read_text())
            if cached.get("budget") == json.loads(json.dumps(asdict(budget))):
                return cached
    run_dir = out / "runs" / job_name(variant, balancing)
    cfg = TrainConfig(
        data=str(data), out=str(run_dir), model=model_name(variant),
        iterations=budget.iterations, batch_size=budget.batch_size, image_size=budget.image_size,
        val_every=budget.val_every, class_weights=BALANCINGS[balancing], bf16=budget.bf16, device=device,
        resume="auto", progress=progress,
    )  # fmt: skip
    started = time.perf_counter()
    try:
        summary = train(cfg)
    except TrainingDiverged as exc:  # a diverged run is a result too: record it, go on with the others
        result = {"variant": variant, "balancing": balancing, "budget": asdict(budget), "diverged": str(exc),
                  "hardware": hardware()}  # fmt: skip
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(result, indent=1))
        return json.loads(cache.read_text())
    train_seconds = time.perf_counter() - started
    model = load_model(run_dir / "best.pt", map_location=cfg.device if cfg.device != "auto" else "cpu")
    result = {
        "variant": variant,
        "balancing": balancing,
        "budget": asdict(budget),
        "best_iteration": summary["best"]["iteration"],
        "val_global_accuracy": summary["best"]["accuracy"],
        "test": test_scores(model, data, budget.image_size),
        "params": count_parameters(build_model(cfg.model)),
        "inference_ms": inference_ms(model.cpu(), budget.image_size),
        "train_seconds": train_seconds,
        "hardware": hardware(),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result, indent=1))
    return json.loads(cache.read_text())  # the same form a cached result has


def test_scores(model: torch.nn.Module, data: Path, size: tuple[int, int], progress: bool = False,
                boundary: bool = True) -> dict:  # fmt: skip
    """G, C, mIoU, BF (percent) on the test split: images in at ``size``, scored at the labels' 360x480.

    ``boundary=False`` leaves BF (the slow one) out.
    """
    test = SegmentationDataset(data, "test", size=size)
    predictions = model_predictions(model, test, batch_size=4, device=next(model.parameters()).device)
    metrics = evaluate(predictions, test, progress=progress, boundary=boundary)
    return {k: 100 * metrics[k] for k in METRICS if metrics[k] is not None}


@torch.no_grad()
def inference_ms(model: torch.nn.Module, size: tuple[int, int], repeats: int = 5) -> float:
    """Median time of one image's forward pass (fp32) where the model is."""
    model.eval()
    device = next(model.parameters()).device
    x = torch.rand(1, 3, *size, device=device) * 255
    model(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def cpu_vector_units() -> str:
    """The widest vector extensions this CPU has (speed and rounding differ with them), e.g. ", AVX-512 BF16"."""
    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("flags")).split(":", 1)[1].split())  # fmt: skip
    except (OSError, StopIteration):
        return ""
    for flag, name in (("amx_tile", "AMX"), ("avx512_bf16", "AVX-512 BF16"), ("avx512f", "AVX-512"), ("avx2", "AVX2")):
        if flag in flags:
            return f", {name}"
    return ""


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{os.cpu_count()}-core CPU, {cpu_name()} ({platform.machine()}{cpu_vector_units()}), no GPU"


def assemble_table(results: list[dict], budget: Budget, command: str, hw: str) -> str:
    """The Markdown report: header (hardware, budget, command) and paper | ours | delta per cell."""
    lines = [
        "# Table 1 re-run: decoder variants on CamVid",
        "",
        f"- command: `{command}`",
        f"- hardware: {hw}",
        f"- budget: {budget.describe()}" + ("" if budget == FULL_BUDGET else
                                            f" (REDUCED; the full budget: {FULL_BUDGET.describe()})"),
        "- test: 233 CamVid test images, metrics at 360x480 (G, C, mIoU, BF at 0.75% of the diagonal), percent",
        "- model selection: best validation global accuracy, as in the paper",
        "",
        "| variant | balancing | params (M) ours / paper | G paper / ours / delta | C paper / ours / delta "
        "| mIoU paper / ours / delta | BF paper / ours / delta | best iter | inference ms ours / paper |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in results:
        if "diverged" in r:
            lines.append(f"| {r['variant']} | {r['balancing']} | | {r['diverged']} | | | | | |")
            continue
        cells = score_cells(r)
        lines.append(
            f"| {r['variant']} | {r['balancing']} | {r['params'] / 1e6:.3f} / {PAPER_PARAMS_M[r['variant']]} | "
            + " | ".join(cells)
            + f" | {r['best_iteration']} | {r['inference_ms']:.0f} / {PAPER_TIME_MS[r['variant']]} |"
        )
    lines += ["", "Paper's inference times: 2015 NVIDIA Titan at 360x480. Ours: this machine at the budget's "
              "image size, fp32. Storage multipliers (paper): " + ", ".join(
                  f"{v} {PAPER_STORAGE[v]}" for v in VARIANTS) + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


def score_cells(result: dict) -> list[str]:
    """``paper / ours / delta`` per metric of a scored row."""
    paper = paper_values(result)
    return [f"{paper[m]:.1f} / {result['test'][m]:.1f} / {result['test'][m] - paper[m]:+.1f}" for m in METRICS]


TRAIN_IMAGES = 367  # CamVid's training split


def budget_note(done: list[dict]) -> str:
    """Why the full budget is what it is: the project's choice, the references it was weighed against."""
    images = FULL_BUDGET.iterations * FULL_BUDGET.batch_size
    text = (f"{FULL_BUDGET.iterations:,} iterations of batch {FULL_BUDGET.batch_size} is this project's choice, "
            "not a number from the paper: the paper trains each variant until its training loss converges "
            f"(mini-batches of {FULL_BUDGET.batch_size}, fp32 Caffe) and gives no iteration count, and "
            "SegNet-Tutorial's Models/segnet_basic_solver.prototxt stops at 10,000 iterations of the batch of 4 its "
            f"train prototxt ships with (40,000 images, {40000 / TRAIN_IMAGES:.0f} epochs). {FULL_BUDGET.iterations:,} "
            f"iterations of {FULL_BUDGET.batch_size} images are {images:,} images, {images / TRAIN_IMAGES:.0f} epochs of the "
            f"{TRAIN_IMAGES} training images, {images / 40000:.1f} times the Tutorial's")  # fmt: skip
    picked = sorted({r["best_iteration"] for r in done if "best_iteration" in r})
    if picked:
        text += (f"; the rows run so far peaked on validation at iteration {', '.join(map(str, picked))} of "
                 f"{FULL_BUDGET.iterations}, inside the budget")  # fmt: skip
    return text + "."


def _values(scores: dict, keys: list[str], form: str = ".2f") -> str:
    return " / ".join(format(scores[k], form) for k in keys)


def data_note(packs: list[str], results: Path = RESULTS) -> str:
    """What the JPEG pack was measured to do: at test time (the example model) and in training (a CPU budget)."""
    notes = []
    test_time = results / "jpeg_test_time.json"
    if test_time.exists():
        measured = json.loads(test_time.read_text())
        qualities = [m.group(1) for m in (re.search(r"quality (\d+)", p) for p in packs) if m] or ["94"]
        for quality in dict.fromkeys(qualities):
            entry = measured["jpeg"].get(quality)
            if entry is None:
                notes.append(f"JPEG quality {quality} was not measured at test time")
                continue
            keys = list(measured["png"])
            notes.append(
                "its effect at test time, measured on the example model (SegNet-Basic, examples/segnet_basic_camvid) "
                "by `python reproduce/jpeg_effect.py --test-time` (reproduce/results/jpeg_test_time.md): "
                f"{' / '.join(keys)} {_values(measured['png'], keys)} from the {measured['images']} test PNGs, "
                f"{_values(entry['scores'], keys)} from JPEG q{quality} copies of them "
                f"({_values(entry['difference'], keys, '+.2f')}), "
                f"predicted labels equal on {100 * entry['label_agreement']:.2f}% of the test pixels (that model takes "
                "180x240: halving the images hides part of the JPEG error a 360x480 model sees)")  # fmt: skip
    training = results / "jpeg_effect.json"
    if training.exists():
        effect = json.loads(training.read_text())
        verdict = "within" if effect.get("within_noise") else "not shown to be within"
        notes.append("its effect on training was measured only at a tiny CPU budget (reproduce/results/jpeg_effect.md"
                     f"), where it was {verdict} the seeds' own spread; at this budget it is not measured")  # fmt: skip
    return "; ".join(notes)


def assemble_device_table(rows: dict[tuple[str, str], dict | None], name: str) -> str:
    """The report of the rows trained by reproduce/device.py: every Table 1 row, those not run marked so."""
    done = [r for r in rows.values() if r is not None]
    budgets = sorted({Budget(**{**r["budget"], "image_size": tuple(r["budget"]["image_size"])}).describe()
                      for r in done}) or [DEVICE_BUDGET.describe()]  # fmt: skip
    machines = sorted({r.get("hardware", "not recorded") for r in done}) or ["none yet"]
    packs = sorted({r["data"]["images"] for r in done if "data" in r})
    scored = sorted({r["scored_on"] for r in done if "scored_on" in r})
    measured = data_note(packs)
    lines = [
        "# Table 1 at the full budget: decoder variants on CamVid",
        "",
        "- trained by `bash reproduce/device.sh --minutes 9 --out $OUT` on a GPU machine (reproduce/DEVICE.md), "
        "filed and scored by `python reproduce/device.py collect FOLDER`, assembled by "
        f"`python reproduce/table1.py --report{'' if name == 'full' else ' --tag ' + name}`",
        f"- budget: {'; '.join(budgets)}. {budget_note(done)}",
        f"- training hardware: {'; '.join(machines)}",
        "- training data: CamVid train (367) and val (101) as packed by reproduce/pack_data.py"
        + (f": {'; '.join(packs)}" if packs else "") + (f"; {measured}" if measured else ""),
        "- test: the 233 original CamVid test PNGs, metrics at 360x480 (G, C, mIoU, BF at 0.75% of the diagonal), "
        f"percent, scored on {'; '.join(scored) if scored else 'this machine (none scored yet)'}",
        "- model selection: best validation global accuracy, as in the paper",
        f"- rows run: {len(done)} of {len(rows)}",
        "",
        "| variant | balancing | params (M) ours / paper | G paper / ours / delta | C paper / ours / delta "
        "| mIoU paper / ours / delta | BF paper / ours / delta | best iter | train images/s | train wall s "
        "| inference ms ours / paper |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for (variant, balancing), r in rows.items():
        if r is None or "diverged" in r or "test" not in r:
            status = "not run yet" if r is None else r.get("diverged", "trained, not scored yet (no checkpoint here)")
            lines.append(f"| {variant} | {balancing} | | {status} | | | | | | | |")
            continue
        rate = f"{r['images_per_s']:.0f}" + (f" ({r['group_images_per_s']:.0f} for its set)"
                                             if "group_images_per_s" in r else "")  # fmt: skip
        lines.append(
            f"| {variant} | {balancing} | {r['params'] / 1e6:.3f} / {PAPER_PARAMS_M[variant]} | "
            + " | ".join(score_cells(r))
            + f" | {r['best_iteration']} | {rate} | {r['wall_seconds']:.0f} | "
            f"{r['inference_ms']:.1f} / {PAPER_TIME_MS[variant]} |"
        )
    lines += ["", "Train images/s: training steps only (validation and checkpoints left out), over all of a row's "
              "device calls; a row trained with its variant's other row as one grouped network "
              "(`reproduce/device.py run --group`) shows the set's total in brackets. Inference: one 360x480 image, "
              "fp32, on the training GPU; the paper's on a 2015 NVIDIA Titan."]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_report(results_root: Path, name: str, data: str | None, progress: bool = False) -> int:
    """Score the rows under ``results_root/runs/<name>/`` that have a checkpoint but no test scores, then
    write ``table1_<name>.md`` and ``.png`` in ``results_root`` with every Table 1 row."""
    folder = results_root / "runs" / name
    rows: dict[tuple[str, str], dict | None] = {}
    for variant in VARIANTS:
        for balancing in BALANCINGS:
            path = folder / f"{job_name(variant, balancing)}.json"
            row = json.loads(path.read_text()) if path.exists() else None
            checkpoint = folder / job_name(variant, balancing) / "best.pt"
            if row is not None and "test" not in row and "diverged" not in row and checkpoint.exists():
                print(f"scoring {job_name(variant, balancing)} on the test set ({checkpoint})", flush=True)
                model = load_model(checkpoint, map_location="cpu")
                row["test"] = test_scores(model, Path(data_root(data)), tuple(row["budget"]["image_size"]), progress)
                row["scored_on"] = hardware()
                path.write_text(json.dumps(row, indent=1) + "\n")
            rows[(variant, balancing)] = row
    text = assemble_device_table(rows, name)
    md, png = results_root / f"table1_{name}.md", results_root / f"table1_{name}.png"
    print(text)
    if write_if_changed(md, text) or not png.exists():
        plot([r for r in rows.values() if r is not None], png,
             f"Table 1 at the full budget: mIoU and BF, paper vs ours ({sum(r is not None for r in rows.values())} "
             f"of {len(rows)} rows run)")  # fmt: skip
        print(f"wrote {md} and {png}")
    else:
        print(f"{md} is up to date")
    return 0


def plot(results: list[dict], path: Path, title: str = "Table 1 re-run: mIoU and BF, paper vs ours") -> None:
    """Grouped bars of mIoU and BF, paper and ours, one group per (variant, balancing).

    With matplotlib (the ``plots`` extra) a labelled chart; without it a plain Pillow drawing.
    """
    done = [r for r in results if "test" in r]
    rows = [(f"{r['variant']} ({r['balancing']})", paper_values(r), r["test"]) for r in done]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib
    except ImportError:
        _plot_with_pillow(rows, path, title)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [("paper mIoU", 0, "mIoU", "#969696"), ("ours mIoU", 1, "mIoU", "#1f77b4"),
              ("paper BF", 0, "BF", "#c8c8c8"), ("ours BF", 1, "BF", "#ff7f0e")]  # fmt: skip
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) * 2 + 1.5))
    height = 0.2
    for k, (label, which, metric, colour) in enumerate(series):
        ys = [i + (k - 1.5) * height for i in range(len(rows))]
        ax.barh(ys, [row[1 + which][metric] for row in rows], height, label=label, color=colour)
    ax.set_yticks(range(len(rows)), [row[0] for row in rows])
    ax.invert_yaxis()
    ax.set_xlabel("percent on CamVid test")
    ax.set_xlim(0, 100)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def _plot_with_pillow(rows: list[tuple[str, dict, dict]], path: Path, title: str) -> None:
    from PIL import Image, ImageDraw

    from segnet.evaluation.figures import font

    text = font(12)

    width, bar, gap, left, top = 1100, 9, 14, 330, 56
    height = top + len(rows) * (4 * bar + gap) + 48
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    scale = (width - left - 40) / 100
    colours = {"paper mIoU": (150, 150, 150), "ours mIoU": (31, 119, 180), "paper BF": (200, 200, 200),
               "ours BF": (255, 127, 14)}  # fmt: skip
    draw.text((10, 10), title, fill="black", font=text)
    for i, (label, colour) in enumerate(colours.items()):  # the legend on its own line, under the title
        draw.rectangle([10 + i * 150, 30, 22 + i * 150, 42], fill=colour)
        draw.text((26 + i * 150, 30), label, fill="black", font=text)
    y = top
    for name, paper, ours in rows:
        draw.text((10, y + bar), name, fill="black", font=text)
        for value, colour in ((paper["mIoU"], colours["paper mIoU"]), (ours["mIoU"], colours["ours mIoU"]),
                              (paper["BF"], colours["paper BF"]), (ours["BF"], colours["ours BF"])):  # fmt: skip
            draw.rectangle([left, y, left + max(1, value * scale), y + bar - 2], fill=colour)
            draw.text((left + value * scale + 4, y - 2), f"{value:.1f}", fill="black", font=text)
            y += bar
        y += gap
    for tick in range(0, 101, 20):
        x = left + tick * scale
        draw.line([x, height - 40, x, height - 36], fill="black")
        draw.text((x - 6, height - 32), str(tick), fill="black", font=text)
    draw.text((left, height - 18), "percent on CamVid test", fill="black", font=text)
    image.save(path)


def paper_values(result: dict) -> dict[str, float]:
    return paper_row(result["variant"] + ("/natural" if result["balancing"] == "natural" else "")).values()


def write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` unless the file already holds it (a cached re-run leaves the checkout untouched)."""
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True


def reproducing_command(args: argparse.Namespace, budget: Budget) -> str:
    """The command line that gives these results: the options that change them, in a fixed order."""
    parts = ["python reproduce/table1.py"]
    if args.full:
        parts.append("--full")
    for flag, value in (("--variants", args.variants), ("--balancing", args.balancing),
                        ("--iterations", args.iterations), ("--batch-size", args.batch_size),
                        ("--val-every", args.val_every)):  # fmt: skip
        if value is not None and value != {"--variants": ",".join(VARIANTS), "--balancing": "median,natural"}.get(flag):
            parts.append(f"{flag} {value}")
    if args.image_size:
        parts.append(f"--image-size {args.image_size[0]},{args.image_size[1]}")
    if args.fp32:
        parts.append("--fp32")
    if args.tag:
        parts.append(f"--tag {args.tag}")
    return " ".join(parts)


def recorded_hardware(results: list[dict]) -> str:
    """The machines the results were computed on, as each job recorded it."""
    machines = sorted({r.get("hardware", "not recorded") for r in results})
    return "; ".join(machines) if machines else hardware()


MIB = 2**20


LOG_BYTES = MIB // 4  # a row's logs and small JSON files (log.jsonl at 16,000 iterations: about 50 KiB)


def row_sizes(variant: str) -> tuple[int, int]:
    """Bytes of a variant's weights (a checkpoint's state_dict) and of its SGD momentum (one per parameter)."""
    model = build_model(model_name(variant))
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    momentum = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights, momentum


def row_state_bytes(variant: str) -> int:
    """Bytes a cut row's state takes: last.pt (weights and momentum) and best.pt, plus logs."""
    weights, momentum = row_sizes(variant)
    return 2 * weights + momentum + LOG_BYTES
