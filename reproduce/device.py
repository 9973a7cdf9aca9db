"""Table 1 at the paper's budget on a GPU machine lent for minutes: train what fits, bring it back, score it here.

``run`` (what ``reproduce/device.sh`` calls on the device machine) trains
the pending Table 1 rows one after another (``--concurrent N``: N at once)
at the paper's budget, 16,000 iterations of batch 12 at 360x480 with
validation every 1000, in bf16 autocast and channels-last on CUDA, from the
packed data (reproduce/pack_data.py). It stops cleanly before ``--minutes``
have passed since the machine began the command: a row cut short keeps its
``last.pt`` (written at every validation and at the stop) and resumes next
time. Everything that must come back goes to ``--out`` as at most four
``bundle.tar.NNN`` parts of at most 15 MiB (the device returns at most 8
files of 16 MiB, 64 MiB in all) beside ``runner.json`` and ``runner.log``:
each finished row's JSON (budget, hardware, images/s, wall time), its
selected checkpoint and log, and the state of a row cut short.

``collect FOLDER`` (here, on what came back) files finished rows under
``reproduce/results/runs/full/`` (JSON committed, checkpoints ignored),
keeps a cut row's state in ``device_state/`` (carried to the next device
call), scores the new rows on the original CamVid test PNGs on this
machine and rewrites ``reproduce/results/table1_full.md`` and ``.png``.

    bash reproduce/device.sh --minutes 9 --out $OUT      # on the device (reproduce/DEVICE.md)
    python reproduce/device.py collect FOLDER            # here
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import signal
import sys
import tarfile
import tempfile
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import torch

import experiment
from converter.errors import UserError, run_command
from experiment import MIB, row_state_bytes
from packing import PACK, STATE, verify
from segnet.models.checkpoint import load_model
from segnet.cli import add_common_options, add_data_option, data_root
from segnet.models.family import count_parameters
from segnet.models.registry import build_model
from segnet.devices import pick_device
from segnet.training.config import TrainConfig
from segnet.training.loop import TrainingDiverged, train
from segnet.models.variants import VARIANTS

ROOT = experiment.ROOT
#: Rows in the order they are trained: SegNet-Basic's two first, then the table's order.
JOBS = [(v, b) for v in ["SegNet-Basic"] + [v for v in VARIANTS if v != "SegNet-Basic"] for b in experiment.BALANCINGS]
TINY_BUDGET = experiment.Budget(4, 2, (24, 32), 2, False, "tiny")  # the end-to-end check on a CPU
PART = 15 * MIB  # each file the device returns holds at most 16 MiB
OUT_LIMIT = 60 * MIB  # and all of them together at most 64 MiB, runner.json and runner.log included


def pending(results: Path, budget: experiment.Budget, only: list[tuple[str, str]] | None) -> list[tuple[str, str]]:
    """Rows without a result of this budget in ``results``, in training order (``only``: just these)."""
    todo = []
    for job in only or JOBS:
        path = results / f"{experiment.job_name(*job)}.json"
        if not (path.exists() and json.loads(path.read_text()).get("budget") == json.loads(json.dumps(asdict(budget)))):
            todo.append(job)
    return todo


# ------------------------------------------------------------------ on the device


def train_row(variant: str, balancing: str, budget: experiment.Budget, data: str, folder: str, deadline: float,
              device: str, compile_model: bool, log_every: int) -> dict:  # fmt: skip
    """Train one row until it is done or ``deadline`` (time.time()) comes; returns this attempt's record."""
    began = time.time()
    cuda = pick_device(device).type == "cuda"
    cfg = TrainConfig(
        data=data, out=folder, model=experiment.model_name(variant), iterations=budget.iterations,
        batch_size=budget.batch_size, image_size=budget.image_size, val_every=budget.val_every,
        class_weights=experiment.BALANCINGS[balancing], bf16=budget.bf16, channels_last=cuda, compile=compile_model,
        device=device, resume="auto", progress=False, log_every=log_every,
        time_limit=max(deadline - began, 0.0) / 60,
    )  # fmt: skip
    try:
        summary = train(cfg)
    except TrainingDiverged as exc:
        return {"variant": variant, "balancing": balancing, "finished": True, "diverged": str(exc)}
    segment = {"hardware": experiment.hardware(), "torch": torch.__version__, "from_iteration": summary["start_iteration"],
               "to_iteration": summary["stopped_at"] or summary["iterations"], "train_images": summary["train_images"],
               "train_seconds": round(summary["train_seconds"], 3), "images_per_s": round(summary["images_per_s"], 2),
               "wall_seconds": round(time.time() - began, 3), "bf16": cfg.bf16, "channels_last": cfg.channels_last,
               "compile": compile_model}  # fmt: skip
    segments_file = Path(folder) / "segments.json"
    segments = json.loads(segments_file.read_text()) if segments_file.exists() else []
    segments_file.write_text(json.dumps(segments + [segment], indent=1))
    return {"variant": variant, "balancing": balancing, "finished": not summary["stopped_at"], "summary": summary}


def row_record(variant: str, balancing: str, budget: experiment.Budget, folder: Path, pack: dict, device: str) -> dict:
    """A finished row's JSON: the selection, and the budget, hardware, images/s and times of its attempts."""
    summary = json.loads((folder / "summary.json").read_text())
    segments = json.loads((folder / "segments.json").read_text())
    seconds = sum(s["train_seconds"] for s in segments)
    model = load_model(folder / "best.pt", map_location=pick_device(device))  # inference timed on the training device
    return {
        "variant": variant,
        "balancing": balancing,
        "budget": asdict(budget),
        "best_iteration": summary["best"]["iteration"],
        "val_global_accuracy": summary["best"]["accuracy"],
        "params": count_parameters(build_model(experiment.model_name(variant))),
        "inference_ms": experiment.inference_ms(model, budget.image_size),
        "images_per_s": round(sum(s["train_images"] for s in segments) / max(seconds, 1e-9), 2),
        "train_seconds": round(seconds, 1),
        "wall_seconds": round(sum(s["wall_seconds"] for s in segments), 1),
        "hardware": "; ".join(sorted({s["hardware"] for s in segments})),
        "segments": segments,
        "data": pack,
    }


def bundle(work: Path, jobs: list[str], out: Path) -> int:
    """Write the listed row folders' results and state to ``out/bundle.tar.NNN``; returns the bytes written."""
    keep = ("row.json", "best.pt", "last.pt", "log.jsonl", "segments.json", "summary.json")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for job in jobs:
            finished = (work / job / "row.json").exists()
            for name in keep:
                path = work / job / name
                if path.exists() and not (finished and name == "last.pt"):  # a finished row needs no state
                    tar.add(path, arcname=f"{job}/{name}")
    data = buffer.getvalue()
    for old in out.glob("bundle.tar.*"):
        old.unlink()
    for i in range(math.ceil(len(data) / PART)):
        part = out / f"bundle.tar.{i:03d}"
        part.write_bytes(data[i * PART : (i + 1) * PART])
    return len(data)


class Runner:
    """What one device call does: rows trained within the time budget, results bundled as they come."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.budget = TINY_BUDGET if args.tiny else experiment.DEVICE_BUDGET
        began = float(os.environ.get("SEGNET_DEVICE_START") or time.time())  # device.sh: before installing
        self.hard_deadline = began + 60 * args.minutes
        self.deadline = self.hard_deadline - args.reserve  # training stops here: saving and bundling take the rest
        self.out, self.work, self.results = args.out, args.work, args.results
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = open(self.out / "runner.log", "a")  # noqa: SIM115 (open for the runner's whole life)
        self.touched: list[str] = []
        self.report: dict = {"budget": asdict(self.budget), "minutes": args.minutes, "rows": {}}

    def say(self, text: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def left(self) -> float:
        return self.deadline - time.time()

    def start(self) -> None:
        hw = experiment.hardware()
        self.report.update(hardware=hw, torch=torch.__version__, started=time.strftime("%Y-%m-%d %H:%M:%S"))
        self.say(f"{hw}; torch {torch.__version__}; budget {self.budget.describe()}; {self.left():.0f} s to train")
        manifest = Path(self.args.data).parent / "manifest.json"
        if manifest.exists():
            info = json.loads(manifest.read_text())
            same = verify(manifest.parent)
            self.pack = {"images": info["images"], "labels": info["labels"], "decoded_identical": same}
            self.say(f"data: {info['images']}; decoded here as where it was packed: {same}")
        else:
            self.pack = {"images": f"as stored in {self.args.data}"}
        self.report["data"] = self.pack

    def room(self, variant: str) -> bool:
        """Whether the returned files could still hold this row's state: finished rows as they are, others cut."""
        used = 0
        for job in self.touched:
            folder = self.work / job
            if (folder / "row.json").exists():
                used += sum(f.stat().st_size for f in folder.iterdir() if f.name != "last.pt")
            else:
                used += row_state_bytes(job.split("__")[0])
        return used + row_state_bytes(variant) <= OUT_LIMIT - MIB

    def launch(self, job: tuple[str, str]) -> tuple:
        name = experiment.job_name(*job)
        self.touched.append(name)
        self.say(f"{name}: {'resuming' if (self.work / name / 'last.pt').exists() else 'starting'}, "
                 f"{self.left():.0f} s left")  # fmt: skip
        return (*job, self.budget, self.args.data, str(self.work / name), self.deadline, self.args.device,
                self.args.compile, self.args.log_every)  # fmt: skip

    def done(self, result: dict) -> None:
        name = experiment.job_name(result["variant"], result["balancing"])
        folder = self.work / name
        if "diverged" in result:
            row = {"variant": result["variant"], "balancing": result["balancing"], "budget": asdict(self.budget),
                   "diverged": result["diverged"], "hardware": experiment.hardware()}  # fmt: skip
            (folder / "row.json").write_text(json.dumps(row, indent=1))
            self.say(f"{name}: {result['diverged']}")
        elif result["finished"]:
            row = row_record(result["variant"], result["balancing"], self.budget, folder, self.pack, self.args.device)
            (folder / "row.json").write_text(json.dumps(row, indent=1))
            self.say(f"{name}: done, best validation G {row['val_global_accuracy']:.4f} at iteration "
                     f"{row['best_iteration']}, {row['images_per_s']:.1f} images/s, {row['wall_seconds']:.0f} s")  # fmt: skip
        else:
            stop = result["summary"]["stopped_at"]
            self.say(f"{name}: stopped at iteration {stop} of {self.budget.iterations}; resumes next time")
        self.report["rows"][name] = "diverged" if "diverged" in result else (
            "finished" if result["finished"] else f"cut at {result['summary']['stopped_at']}")  # fmt: skip
        self.finish_files()

    def failed(self, job: tuple[str, str], exc: BaseException) -> None:
        name = experiment.job_name(*job)
        self.say(f"{name}: FAILED\n" + "".join(traceback.format_exception(exc)).rstrip())
        self.report["rows"][name] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        self.finish_files()

    def finish_files(self) -> None:
        size = bundle(self.work, self.touched, self.out)
        self.report["bundle_bytes"] = size
        (self.out / "runner.json").write_text(json.dumps(self.report, indent=1))

    def go(self) -> int:
        self.start()
        todo = pending(self.results, self.budget, self.args.rows)
        self.say(f"{len(todo)} rows pending: " + ", ".join(experiment.job_name(*j) for j in todo))
        # a row cut last time first: its state is carried here and costs room until it is done
        todo.sort(key=lambda job: not (self.work / experiment.job_name(*job) / "last.pt").exists())
        if self.args.concurrent == 1:
            for job in todo:
                if not self.can_start(job):
                    break
                try:
                    result = train_row(*self.launch(job))
                except Exception as exc:  # noqa: BLE001 (one row's failure is reported; the others still run)
                    self.failed(job, exc)
                    continue
                self.done(result)
                if not result["finished"]:
                    break
        else:
            self.go_concurrently(todo)
        self.finish_files()
        self.say(f"bundle: {self.report['bundle_bytes'] / MIB:.1f} MiB in {self.out}; rows: {self.report['rows']}")
        return 0

    def can_start(self, job: tuple[str, str]) -> bool:
        if self.left() < self.args.min_start:
            self.say(f"{self.left():.0f} s left: no row started (--min-start {self.args.min_start:.0f})")
            return False
        if not self.room(job[0]):
            self.say("the returned files could not hold another row: stopping")
            return False
        return True

    def go_concurrently(self, todo: list[tuple[str, str]]) -> None:
        """Up to --concurrent rows at once, each in its own process on the same device."""
        todo = list(todo)
        running: dict[Future, tuple[str, str]] = {}  # each row in flight, by its future
        with ProcessPoolExecutor(self.args.concurrent, mp_context=get_context("spawn")) as pool:
            while todo or running:
                while todo and len(running) < self.args.concurrent and self.can_start(todo[0]):
                    job = todo.pop(0)
                    running[pool.submit(train_row, *self.launch(job))] = job
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    job = running.pop(future)
                    try:
                        self.done(future.result())
                    except Exception as exc:  # noqa: BLE001 (reported; the other rows still run)
                        self.failed(job, exc)


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_rows(args: argparse.Namespace) -> int:
    if not args.data:
        args.data = str(PACK / "CamVid") if (PACK / "CamVid").is_dir() else data_root(None)
    default = ROOT / "runs" / "device-tiny" if args.tiny else None
    args.work = Path(args.work or (default / "state" if default else STATE))
    args.results = Path(args.results or (default / "results" / "runs" / "tiny" if default
                                         else experiment.RESULTS / "runs" / "full"))  # fmt: skip
    if args.tiny and not args.rows:
        args.rows = JOBS[:2]
    runner = Runner(args)
    previous = signal.signal(signal.SIGTERM, _interrupted)  # a timeout: still bundle what there is
    try:
        return runner.go()
    except KeyboardInterrupt as exc:
        runner.say(f"interrupted ({exc}): bundling what there is")
        runner.finish_files()
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        runner.log.close()


# ------------------------------------------------------------------ here


def collect(folder: Path, results_root: Path, state: Path) -> tuple[list[str], list[str]]:
    """File what a device call returned; returns (finished rows, rows cut short)."""
    parts = sorted(folder.glob("bundle.tar.*"))
    if not parts:
        raise UserError("no bundle.tar.NNN parts here: not the output of reproduce/device.sh", folder)
    report = json.loads((folder / "runner.json").read_text())
    rows = results_root / "runs" / report["budget"]["name"]
    finished, cut = [], []
    with tempfile.TemporaryDirectory() as tmp:
        data = b"".join(p.read_bytes() for p in parts)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(tmp, filter="data")  # names and kinds checked: nothing lands outside tmp
        for job_dir in sorted(Path(tmp).iterdir()):
            name = job_dir.name
            if (job_dir / "row.json").exists():
                rows.mkdir(parents=True, exist_ok=True)
                row = json.loads((job_dir / "row.json").read_text())
                (rows / f"{name}.json").write_text(json.dumps(row, indent=1) + "\n")
                if (rows / name).exists():
                    shutil.rmtree(rows / name)
                (job_dir / "row.json").unlink()
                shutil.copytree(job_dir, rows / name)  # best.pt and logs, ignored by git
                shutil.rmtree(state / name, ignore_errors=True)
                finished.append(name)
            elif (job_dir / "last.pt").exists():
                shutil.rmtree(state / name, ignore_errors=True)
                shutil.copytree(job_dir, state / name)
                cut.append(name)
    return finished, cut


def collect_command(args: argparse.Namespace) -> int:
    if not (args.folder / "runner.json").is_file():
        raise UserError("no runner.json here: not the output of reproduce/device.sh", args.folder)
    name = json.loads((args.folder / "runner.json").read_text())["budget"]["name"]
    state = args.state or (STATE if name == "full" else args.results_root / "state")
    finished, cut = collect(args.folder, args.results_root, state)
    print(f"finished rows filed under {args.results_root / 'runs' / name}: {', '.join(finished) or 'none'}")
    print(f"rows cut short, kept in {state} for the next device call: {', '.join(cut) or 'none'}")
    return experiment.write_report(args.results_root, name, args.data, progress=args.progress)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python reproduce/device.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train pending rows within --minutes (on the device machine)")
    r.add_argument("--minutes", type=float, required=True, help="the whole command's time, install included")
    r.add_argument("--out", type=Path, required=True, help="where the files to bring back go ($OUT)")
    r.add_argument("--data", help=f"training data (default: the pack in {PACK.name}/CamVid)")
    r.add_argument("--work", help=f"row folders (default: {STATE.name}/, carried from here; --tiny: runs/device-tiny/state)")
    r.add_argument("--results", help="finished rows to skip (default: reproduce/results/runs/full)")
    r.add_argument("--rows", type=_rows, help="only these rows, e.g. SegNet-Basic:median,FCN-Basic:natural")
    r.add_argument("--tiny", action="store_true",
                   help=f"a check on any machine: {TINY_BUDGET.describe()}, SegNet-Basic's two rows unless --rows")  # fmt: skip
    r.add_argument("--device", default="auto")
    r.add_argument("--compile", action="store_true", help="torch.compile the models (eager if it fails)")
    r.add_argument("--concurrent", type=int, default=1, help="rows trained at once on the device (default 1)")
    r.add_argument("--log-every", type=int, default=50, help="iterations between reads of the loss (and deadline checks)")
    r.add_argument("--min-start", type=float, default=45.0, help="seconds that must be left to start a row")
    r.add_argument("--reserve", type=float, default=25.0, help="seconds kept after training for saving and bundling")
    c = sub.add_parser("collect", help="file what a device call returned, score new rows here, update the report")
    c.add_argument("folder", type=Path, help="the folder holding bundle.tar.NNN and runner.json")
    c.add_argument("--results-root", type=Path, default=experiment.RESULTS, help="default reproduce/results")
    c.add_argument("--state", type=Path, help=f"where cut rows wait (default {STATE.name}/; other budgets than the "
                   "paper's: RESULTS_ROOT/state)")  # fmt: skip
    add_data_option(c)
    for q in (r, c):
        add_common_options(q)
    return p


def _rows(text: str) -> list[tuple[str, str]]:
    jobs = []
    for item in text.split(","):
        variant, _, balancing = item.strip().partition(":")
        if (variant, balancing) not in JOBS:
            raise argparse.ArgumentTypeError(f"{item!r}: not VARIANT:median or VARIANT:natural of Table 1")
        jobs.append((variant, balancing))
    return jobs


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: run_rows(args) if args.command == "run" else collect_command(args))


if __name__ == "__main__":
    sys.exit(main())
