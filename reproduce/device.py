"""Table 1 at the full budget on a GPU machine lent for minutes: train what fits, bring it back, score it here.

``run`` (what ``reproduce/device.sh`` calls on the device machine) trains
the pending Table 1 rows at the full budget, 16,000 iterations of batch
12 at 360x480 with validation every 1000, in bf16 autocast and
channels-last on CUDA, from the packed data (reproduce/pack_data.py).
``--group R`` (default 2) trains up to R pending rows of one variant, at
one iteration, as one grouped network (segnet.training.grouped: each row
its own weights, class weights, loss and selection; a variant's median and
natural rows together, SegNet-Basic's first); a Table 1 variant has two
rows, so sets have at most two, and ``--group 1`` trains every row alone
as segnet.train does. Sets run one after another (``--concurrent N``: N at
once, each in its own process). Training stops cleanly before ``--minutes``
have passed since the machine began the command: a row cut short keeps its
``last.pt`` (written at every validation and at the stop) and resumes next
time, a grouped set as the same set. Everything that must come back goes
to ``--out`` as at most four ``bundle.tar.NNN`` parts of at most 15 MiB
(the device returns at most 8 files of 16 MiB, 64 MiB in all) beside
``runner.json`` and ``runner.log``: each finished row's JSON (budget,
hardware, images/s per row and for its set, wall time), its selected
checkpoint and log, and the state of a row cut short. A set starts only if,
cut short, its state would fit both what comes back and what the next call
can carry (reproduce/returns.py); runner.json says what was held back,
rewound or left out, and why.

``collect FOLDER`` (here, on what came back) files finished rows under
``reproduce/results/runs/full/`` (JSON committed, checkpoints ignored),
keeps a cut row's state in ``device_state/`` (carried to the next device
call; its best.pt stays here, beside the finished rows'), scores the new
rows on the original CamVid test PNGs on this machine and rewrites
``reproduce/results/table1_full.md`` and ``.png``.

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
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import torch

import experiment
import returns
from converter.checkpoint import CHECKSUM, write_payload
from converter.errors import UserError, run_command
from experiment import MIB
from packing import PACK, STATE, verify
from returns import BUNDLE_LIMIT, PART, PLAN_LIMIT, Held
from segnet.models.checkpoint import load_model, read_checkpoint
from segnet.cli import add_common_options, add_data_option, data_root
from segnet.models.family import count_parameters
from segnet.models.registry import build_model
from segnet.devices import pick_device
from segnet.training.config import TrainConfig
from segnet.training.grouped import train_grouped
from segnet.training.loop import TrainingDiverged, train
from segnet.models.variants import VARIANTS

ROOT = experiment.ROOT
#: Rows in the order they are trained: SegNet-Basic's two first, then the table's order.
JOBS = [(v, b) for v in ["SegNet-Basic"] + [v for v in VARIANTS if v != "SegNet-Basic"] for b in experiment.BALANCINGS]
TINY_BUDGET = experiment.Budget(4, 2, (24, 32), 2, False, "tiny")  # the end-to-end check on a CPU
OUT_LIMIT = BUNDLE_LIMIT  # the bundle's parts; with runner.json and runner.log, under the 64 MiB returned in all
#: A variant's median and natural rows share an architecture; rows of different variants never do.
DEFAULT_GROUP = 2
CARRIED = ("last.pt", "log.jsonl", "segments.json")  # what a cut row needs in the next call
FINISHED = ("row.json", "best.pt", "log.jsonl", "segments.json", "summary.json")
TAR_FILE = 1024  # a tar member's header and padding, at most
TAR_END = 10240  # the end-of-archive blocks, padded to tarfile's record


def pending(results: Path, budget: experiment.Budget, only: list[tuple[str, str]] | None) -> list[tuple[str, str]]:
    """Rows without a result of this budget in ``results``, in training order (``only``: just these)."""
    todo = []
    for job in only or JOBS:
        path = results / f"{experiment.job_name(*job)}.json"
        if not (path.exists() and json.loads(path.read_text()).get("budget") == json.loads(json.dumps(asdict(budget)))):
            todo.append(job)
    return todo


# ------------------------------------------------------------------ on the device


def row_config(variant: str, balancing: str, budget: experiment.Budget, data: str, folder: str, deadline: float,
               began: float, device: str, compile_model: bool, log_every: int) -> TrainConfig:  # fmt: skip
    """segnet.train's settings for one row, stopping at ``deadline`` (time.time())."""
    return TrainConfig(
        data=data, out=folder, model=experiment.model_name(variant), iterations=budget.iterations,
        batch_size=budget.batch_size, image_size=budget.image_size, val_every=budget.val_every,
        class_weights=experiment.BALANCINGS[balancing], bf16=budget.bf16,
        channels_last=pick_device(device).type == "cuda", compile=compile_model, device=device, resume="auto",
        progress=False, log_every=log_every, time_limit=max(deadline - began, 0.0) / 60,
    )  # fmt: skip


def add_segment(folder: Path, summary: dict, began: float, cfg: TrainConfig) -> None:
    """Append this attempt (hardware, iterations, images/s, times; its set's, if grouped) to segments.json."""
    segment = {"hardware": experiment.hardware(), "torch": torch.__version__, "from_iteration": summary["start_iteration"],
               "to_iteration": summary["stopped_at"] or summary["iterations"], "train_images": summary["train_images"],
               "train_seconds": round(summary["train_seconds"], 3), "images_per_s": round(summary["images_per_s"], 2),
               "wall_seconds": round(time.time() - began, 3), "bf16": cfg.bf16, "channels_last": cfg.channels_last,
               "compile": cfg.compile}  # fmt: skip
    if "group" in summary:
        segment.update(group=summary["group"], group_images_per_s=round(summary["group_images_per_s"], 2))
    segments_file = folder / "segments.json"
    segments = json.loads(segments_file.read_text()) if segments_file.exists() else []
    segments_file.write_text(json.dumps(segments + [segment], indent=1))


def train_row(variant: str, balancing: str, budget: experiment.Budget, data: str, folder: str, deadline: float,
              device: str, compile_model: bool, log_every: int) -> dict:  # fmt: skip
    """Train one row until it is done or ``deadline`` (time.time()) comes; returns this attempt's record."""
    began = time.time()
    cfg = row_config(variant, balancing, budget, data, folder, deadline, began, device, compile_model, log_every)
    try:
        summary = train(cfg)
    except TrainingDiverged as exc:
        return {"variant": variant, "balancing": balancing, "finished": True, "diverged": str(exc)}
    add_segment(Path(folder), summary, began, cfg)
    return {"variant": variant, "balancing": balancing, "finished": not summary["stopped_at"], "summary": summary}


def train_group(jobs: list[tuple[str, str]], budget: experiment.Budget, data: str, folders: list[str],
                deadline: float, device: str, compile_model: bool, log_every: int) -> list[dict]:  # fmt: skip
    """Train rows of one variant at one iteration as one grouped network; returns each row's record.

    Each row's full state at its best validation is kept (best_state.pt)
    so that a cut row whose best.pt cannot come back can be rewound to it.
    A row whose sibling diverged is stopped with its state written and
    marked ``again``: it goes on without it in the same call.
    """
    began = time.time()
    cfgs = [row_config(*job, budget, data, folder, deadline, began, device, compile_model, log_every)
            for job, folder in zip(jobs, folders)]  # fmt: skip
    for folder in folders:  # a state kept by an earlier attempt may not match this one's best
        Path(folder, "best_state.pt").unlink(missing_ok=True)
    results = []
    for (variant, balancing), cfg, outcome in zip(jobs, cfgs, train_grouped(cfgs, keep_best_state=True)):
        if "diverged" in outcome:
            results.append({"variant": variant, "balancing": balancing, "finished": True, "diverged": outcome["diverged"]})
            continue
        summary = outcome["summary"]
        add_segment(Path(cfg.out), summary, began, cfg)
        results.append({"variant": variant, "balancing": balancing, "finished": not summary["stopped_at"],
                        "summary": summary, "again": bool(summary["stopped_at"] and summary["sibling_diverged"])})  # fmt: skip
    return results


def run_set(jobs: list[tuple[str, str]], budget: experiment.Budget, data: str, folders: list[str], deadline: float,
            device: str, compile_model: bool, log_every: int) -> list[dict]:  # fmt: skip
    """One row alone (segnet.train), or a grouped set: each row's record."""
    if len(jobs) == 1:
        return [train_row(*jobs[0], budget, data, folders[0], deadline, device, compile_model, log_every)]
    return train_group(jobs, budget, data, folders, deadline, device, compile_model, log_every)


def start_iteration(folder: Path) -> int:
    """The iteration a row continues from: its last.pt's, else 0."""
    last = folder / "last.pt"
    return int(read_checkpoint(last)["meta"]["iteration"]) if last.exists() else 0


def row_record(variant: str, balancing: str, budget: experiment.Budget, folder: Path, pack: dict, device: str) -> dict:
    """A finished row's JSON: the selection, and the budget, hardware, images/s and times of its attempts."""
    summary = json.loads((folder / "summary.json").read_text())
    segments = json.loads((folder / "segments.json").read_text())
    seconds = sum(s["train_seconds"] for s in segments)
    # inference timed on the training device; best.pt selected in an earlier call stayed there: the same net
    weights = folder / "best.pt" if (folder / "best.pt").exists() else folder / "last.pt"
    model = load_model(weights, map_location=pick_device(device))
    grouped = [s for s in segments if "group" in s]
    set_info = {} if not grouped else {
        "group_images_per_s": round(sum(s["train_images"] * len(s.get("group", [0])) for s in segments)
                                    / max(seconds, 1e-9), 2),
        "grouped_with": sorted({n for s in grouped for n in s["group"]} - {folder.name}),
    }  # fmt: skip
    return {
        "variant": variant,
        "balancing": balancing,
        "budget": asdict(budget),
        "best_iteration": summary["best"]["iteration"],
        "val_global_accuracy": summary["best"]["accuracy"],
        "params": count_parameters(build_model(experiment.model_name(variant))),
        "inference_ms": experiment.inference_ms(model, budget.image_size),
        "images_per_s": round(sum(s["train_images"] for s in segments) / max(seconds, 1e-9), 2),
        **set_info,
        "train_seconds": round(seconds, 1),
        "wall_seconds": round(sum(s["wall_seconds"] for s in segments), 1),
        "hardware": "; ".join(sorted({s["hardware"] for s in segments})),
        "segments": segments,
        "data": pack,
    }


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def returned_files(folder: Path) -> tuple[list[Path], Path | None]:
    """A row's files that must come back, and its best.pt when that must come back too.

    Finished: row.json, best.pt (when selected in this call: one selected
    earlier stayed here), logs. Cut or in flight: last.pt and logs; best.pt
    when it is newer than the row's earlier calls and not the same weights
    as last.pt (collect makes it from last.pt then).
    """
    if (folder / "row.json").exists():
        return [folder / n for n in FINISHED if (folder / n).exists()], None
    must = [folder / n for n in (*CARRIED, "cut.json") if (folder / n).exists()]
    best, cut = folder / "best.pt", _read(folder / "cut.json")
    if not best.exists():
        return must, None
    if cut and cut["best"]:
        at, since = cut["best"]["iteration"], cut["from_iteration"]
        if at == cut["iteration"] or (since and at <= since):  # last.pt's own weights; or came back before
            return must, None
    return must, best


def rewind(folder: Path) -> int | None:
    """Put a cut row back to its best validation (its kept state there); returns that iteration, None if it
    cannot be. At iteration 0 the row has no state to keep: it starts afresh next call (its folder goes)."""
    cut = _read(folder / "cut.json")
    if not cut or not cut["best"]:
        return None
    best = cut["best"]["iteration"]
    if best == 0 and cut["from_iteration"] == 0:
        shutil.rmtree(folder)
        return 0
    if not (folder / "best_state.pt").exists():
        return None
    os.replace(folder / "best_state.pt", folder / "last.pt")
    cut.update(rewound_from=cut["iteration"], iteration=best)
    (folder / "cut.json").write_text(json.dumps(cut, indent=1))
    segments = json.loads((folder / "segments.json").read_text())
    segments[-1]["rewound_to"] = best  # the iterations after it are trained again
    (folder / "segments.json").write_text(json.dumps(segments, indent=1))
    return best


@dataclass
class BundlePlan:
    files: list[Path] = field(default_factory=list)  # under the work folder, in the order they go in
    notes: dict[str, str] = field(default_factory=dict)  # per row: what was rewound or left out, and why
    rewound: dict[str, str] = field(default_factory=dict)  # per row: its status's addition


def plan_bundle(work: Path, jobs: list[str], limit: int = OUT_LIMIT,
                may_rewind: frozenset[str] = frozenset()) -> BundlePlan:  # fmt: skip
    """The files that come back, within ``limit`` bytes of tar; and, per row, what was rewound or left out.

    Every row's files that must come back first, in order; then cut rows'
    best.pt while they fit. A row in ``may_rewind`` whose best.pt does not
    fit is rewound to its best validation (:func:`rewind`); any other that
    does not fit is left out and named, never dropped silently.
    """
    plan, room, extras = BundlePlan(), limit - TAR_END, []

    def cost(paths: list[Path]) -> int:
        return sum(p.stat().st_size + TAR_FILE for p in paths)

    for job in jobs:
        if not (work / job).exists():
            continue
        must, best = returned_files(work / job)
        if cost(must) > room:
            plan.notes[job] = f"left out: its {cost(must) / MIB:.1f} MiB did not fit in the {room / MIB:.1f} MiB left"
            continue
        plan.files += must
        room -= cost(must)
        if best is not None:
            extras.append((job, best))
    for job, best in extras:
        if cost([best]) <= room:
            plan.files.append(best)
            room -= cost([best])
            continue
        cut, mine = _read(work / job / "cut.json") or {}, [f for f in plan.files if f.parent == work / job]
        before = cost(mine)
        back = rewind(work / job) if job in may_rewind else None
        if back is None:
            plan.notes[job] = (f"best.pt (iteration {(cut.get('best') or {}).get('iteration')}) left out: it did not "
                               f"fit; it stays on the device in {work / job}")  # fmt: skip
        elif not (work / job).exists():  # its best was iteration 0: nothing to keep
            plan.files = [f for f in plan.files if f not in mine]
            room += before
            plan.rewound[job] = "starts afresh next call"
            plan.notes[job] = f"cut at {cut['iteration']} with its best at iteration 0 and no room for its best.pt: " \
                              "starts afresh next call"  # fmt: skip
        else:
            room -= cost(mine) - before  # the state at its best is the size of the one it replaced, give or take
            plan.rewound[job] = f"rewound to {back}"
            plan.notes[job] = (f"cut at {cut['iteration']}, rewound to its best validation at {back}: its best.pt did "
                               f"not fit; iterations {back}-{cut['iteration']} are trained again next call")  # fmt: skip
    return plan


def write_bundle(work: Path, files: list[Path], out: Path) -> int:
    """Write ``files`` (paths under ``work``) as ``out/bundle.tar.NNN`` parts; returns the bytes written."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in files:
            tar.add(path, arcname=str(path.relative_to(work)))
    data = buffer.getvalue()
    for old in out.glob("bundle.tar.*"):
        old.unlink()
    for i in range(math.ceil(len(data) / PART)):
        part = out / f"bundle.tar.{i:03d}"
        part.write_bytes(data[i * PART : (i + 1) * PART])
    return len(data)


def bundle(work: Path, jobs: list[str], out: Path, limit: int = OUT_LIMIT,
           may_rewind: frozenset[str] = frozenset()) -> tuple[int, BundlePlan]:  # fmt: skip
    """Write the listed row folders' results and state to ``out/bundle.tar.NNN``; returns (bytes, the plan)."""
    plan = plan_bundle(work, jobs, limit, may_rewind)
    return write_bundle(work, plan.files, out), plan


def make_sets(todo: list[tuple[str, str]], group: int, start: dict[tuple[str, str], int]) -> list[list[tuple[str, str]]]:
    """Consecutive rows of one variant that continue from one iteration, up to ``group`` a set, in order."""
    sets: list[list[tuple[str, str]]] = []
    for job in todo:
        last = sets[-1] if sets else None
        if last and len(last) < group and last[0][0] == job[0] and start[last[0]] == start[job]:
            last.append(job)
        else:
            sets.append([job])
    return sets


class Runner:
    """What one device call does: sets of rows trained within the time budget, results bundled as they come."""

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
        self.in_flight: dict[str, tuple[str, bool]] = {}  # row -> (variant, grouped)
        self.grouped: set[str] = set()  # rows trained in a set this call (they can be rewound)
        self.carry_limit = returns.carry_room(args.data, args.carry_room)
        self.report: dict = {"budget": asdict(self.budget), "minutes": args.minutes, "group": args.group, "rows": {},
                             "sets": [], "limits": {"bundle_bytes": OUT_LIMIT, "planned_bytes": PLAN_LIMIT,
                                                    "carry_bytes": self.carry_limit}, "notes": []}  # fmt: skip

    def say(self, text: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def note(self, text: str) -> None:
        if text not in self.report["notes"]:  # a set waiting for room is asked again after each set
            self.say(text)
            self.report["notes"].append(text)

    def left(self) -> float:
        return self.deadline - time.time()

    def start(self) -> None:
        hw = experiment.hardware()
        self.report.update(hardware=hw, torch=torch.__version__, started=time.strftime("%Y-%m-%d %H:%M:%S"))
        self.say(f"{hw}; torch {torch.__version__}; budget {self.budget.describe()}; {self.left():.0f} s to train; "
                 f"sets of up to {self.args.group}; room: {OUT_LIMIT / MIB:.0f} MiB back, "
                 f"{self.carry_limit / MIB:.1f} MiB of state carried to the next call")  # fmt: skip
        manifest = Path(self.args.data).parent / "manifest.json"
        if manifest.exists():
            info = json.loads(manifest.read_text())
            same = verify(manifest.parent)
            self.pack = {"images": info["images"], "labels": info["labels"], "decoded_identical": same}
            self.say(f"data: {info['images']}; decoded here as where it was packed: {same}")
        else:
            self.pack = {"images": f"as stored in {self.args.data}"}
        self.report["data"] = self.pack

    def held(self) -> Held:
        """What the bundle and the next call's carry are committed to: settled rows' files, rows in flight cut."""
        returned = carried = 0
        for job in self.touched:
            if job in self.in_flight:
                variant, grouped = self.in_flight[job]
                returned += returns.worst_bytes(variant, grouped)
                carried += returns.cut_bytes(variant)
                continue
            must, best = returned_files(self.work / job)
            returned += sum(p.stat().st_size for p in must)
            if best is not None and job not in self.grouped:  # a grouped row's is rewound if it does not fit
                returned += best.stat().st_size
            if not (self.work / job / "row.json").exists():
                carried += sum(p.stat().st_size for p in must)
        return Held(returned, carried)

    def admit(self, jobs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The rows of a set that may start now (maybe fewer), and the rest; a note says why not all."""
        names = ", ".join(experiment.job_name(*j) for j in jobs)
        if self.left() < self.args.min_start:
            self.say(f"{self.left():.0f} s left: no row started (--min-start {self.args.min_start:.0f})")
            return [], jobs
        count, why = returns.admit(jobs[0][0], len(jobs), self.held(), PLAN_LIMIT, self.carry_limit)
        if why and count:
            self.note(f"{names}: {count} of {len(jobs)} started now ({'alone' if count == 1 else 'as a set'}), the "
                      f"rest after: {why}")  # fmt: skip
        elif why:
            self.note(f"{names}: not started: {why}")
        return jobs[:count], jobs[count:]

    def launch(self, jobs: list[tuple[str, str]], start: int) -> tuple:
        names = [experiment.job_name(*job) for job in jobs]
        for name, job in zip(names, jobs):
            if name not in self.touched:
                self.touched.append(name)
            self.in_flight[name] = (job[0], len(jobs) > 1)
            (self.work / name / "cut.json").unlink(missing_ok=True)
        if len(jobs) > 1:
            self.grouped.update(names)
            self.report["sets"].append(names)
        what = "resuming" if start else "starting"
        self.say(f"{' + '.join(names)}: {what}{f' at iteration {start}' if start else ''}"
                 f"{' as one grouped network' if len(jobs) > 1 else ''}, {self.left():.0f} s left")  # fmt: skip
        return (jobs, self.budget, self.args.data, [str(self.work / n) for n in names], self.deadline,
                self.args.device, self.args.compile, self.args.log_every)  # fmt: skip

    def done(self, result: dict) -> None:
        name = experiment.job_name(result["variant"], result["balancing"])
        folder = self.work / name
        self.in_flight.pop(name, None)
        if "diverged" in result:
            row = {"variant": result["variant"], "balancing": result["balancing"], "budget": asdict(self.budget),
                   "diverged": result["diverged"], "hardware": experiment.hardware()}  # fmt: skip
            (folder / "row.json").write_text(json.dumps(row, indent=1))
            self.say(f"{name}: {result['diverged']}")
        elif result["finished"]:
            row = row_record(result["variant"], result["balancing"], self.budget, folder, self.pack, self.args.device)
            (folder / "row.json").write_text(json.dumps(row, indent=1))
            (folder / "best_state.pt").unlink(missing_ok=True)
            rate = f"{row['images_per_s']:.1f} images/s" + (
                f" ({row['group_images_per_s']:.1f} for its set)" if "group_images_per_s" in row else "")
            self.say(f"{name}: done, best validation G {row['val_global_accuracy']:.4f} at iteration "
                     f"{row['best_iteration']}, {rate}, {row['wall_seconds']:.0f} s")  # fmt: skip
        elif result.get("again"):
            self.say(f"{name}: stopped at iteration {result['summary']['stopped_at']} (a row of its set diverged); "
                     "goes on without it")  # fmt: skip
            return
        else:
            summary = result["summary"]
            stop = summary["stopped_at"]
            cut = {"iteration": stop, "best": summary["best"], "from_iteration": summary["start_iteration"]}
            (folder / "cut.json").write_text(json.dumps(cut, indent=1))
            self.say(f"{name}: stopped at iteration {stop} of {self.budget.iterations}; resumes next time")
        self.report["rows"][name] = "diverged" if "diverged" in result else (
            "finished" if result["finished"] else f"cut at {result['summary']['stopped_at']}")  # fmt: skip

    def failed(self, jobs: list[tuple[str, str]], exc: BaseException) -> None:
        for job in jobs:
            name = experiment.job_name(*job)
            self.in_flight.pop(name, None)
            self.report["rows"][name] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        names = " + ".join(experiment.job_name(*job) for job in jobs)
        self.say(f"{names}: FAILED\n" + "".join(traceback.format_exception(exc)).rstrip())

    def finish_files(self, final: bool = False) -> None:
        """Bundle what there is; at the end, rows cut in a set may be rewound to fit (never while in flight)."""
        settled = frozenset(self.grouped - set(self.in_flight)) if final else frozenset()
        size, plan = bundle(self.work, self.touched, self.out, OUT_LIMIT, settled)
        for job, text in plan.notes.items() if final else ():
            self.note(f"{job}: {text}")
        for job, status in plan.rewound.items():
            self.report["rows"][job] += f", {status}"
        self.report["bundle_bytes"] = size
        (self.out / "runner.json").write_text(json.dumps(self.report, indent=1))

    def go(self) -> int:
        self.start()
        todo = pending(self.results, self.budget, self.args.rows)
        self.say(f"{len(todo)} rows pending: " + ", ".join(experiment.job_name(*j) for j in todo))
        # rows cut last time first: their state is carried here and costs room until they are done
        start = {job: start_iteration(self.work / experiment.job_name(*job)) for job in todo}
        todo.sort(key=lambda job: not start[job])
        queue = make_sets(todo, self.args.group, start)
        if self.args.concurrent == 1:
            while queue:
                jobs, rest = self.admit(queue.pop(0))
                if not jobs:
                    break
                if rest:
                    queue.insert(0, rest)
                results = self.settle(jobs, lambda: run_set(*self.launch(jobs, start[jobs[0]])), queue, start)
                if results is not None and not any(r.get("again") for r in results) and \
                        not all(r["finished"] for r in results):  # fmt: skip
                    break
        else:
            self.go_concurrently(queue, start)
        self.finish_files(final=True)
        self.say(f"bundle: {self.report['bundle_bytes'] / MIB:.1f} MiB in {self.out}; rows: {self.report['rows']}")
        return 0

    def go_concurrently(self, queue: list[list[tuple[str, str]]], start: dict[tuple[str, str], int]) -> None:
        """Up to --concurrent sets at once, each in its own process on the same device."""
        running: dict[Future, list[tuple[str, str]]] = {}  # each set in flight, by its future
        with ProcessPoolExecutor(self.args.concurrent, mp_context=get_context("spawn")) as pool:
            while queue or running:
                while queue and len(running) < self.args.concurrent:
                    jobs, rest = self.admit(queue[0])
                    if not jobs:
                        break
                    queue[0:1] = [rest] if rest else []
                    running[pool.submit(run_set, *self.launch(jobs, start[jobs[0]]))] = jobs
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    self.settle(running.pop(future), future.result, queue, start)

    def settle(self, jobs: list[tuple[str, str]], results_of, queue: list[list[tuple[str, str]]],
               start: dict[tuple[str, str], int]) -> list[dict] | None:  # fmt: skip
        """File a set's results (None when it failed: reported, the other sets still run); queue rows to go again."""
        try:
            results = results_of()
        except Exception as exc:  # noqa: BLE001 (a set's failure is reported; the others still run)
            self.failed(jobs, exc)
            self.finish_files()
            return None
        for result in results:
            self.done(result)
        self.finish_files()
        again = [(r["variant"], r["balancing"]) for r in results if r.get("again")]
        if again:
            start.update({job: start_iteration(self.work / experiment.job_name(*job)) for job in again})
            queue.insert(0, again)
        return results


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_rows(args: argparse.Namespace) -> int:
    if not 1 <= args.group <= 4:
        raise UserError(f"--group {args.group}: give 1 to 4 rows per grouped network")
    if args.carry_room is not None and args.carry_room < 0:
        raise UserError(f"--carry-room {args.carry_room}: give the MiB the next call can carry, 0 or more")
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


def best_from_last(last: Path, best: Path) -> None:
    """The best.pt a row's validation wrote, made from its last.pt at that same iteration (same weights)."""
    payload = read_checkpoint(last)
    meta = payload["meta"]
    payload["meta"] = {**{k: v for k, v in meta.items() if k not in ("iteration", "best", "optimizer", "batches")},
                       "iteration": meta["iteration"], "val_global_accuracy": meta["best"]["accuracy"]}  # fmt: skip
    payload.pop(CHECKSUM, None)
    write_payload(payload, best)


def collect(folder: Path, results_root: Path, state: Path) -> tuple[list[str], list[str]]:
    """File what a device call returned; returns (finished rows, rows cut short).

    A finished row goes to ``results_root/runs/<budget>/`` (its JSON, and
    its folder with best.pt and logs). A cut row's state (last.pt, logs)
    goes to ``state`` for the next call; its best.pt, returned or made from
    last.pt when that is the same iteration, goes beside the finished rows'
    (it never travels back to the device), where the finished row finds it.
    """
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
            name, kept = job_dir.name, rows / job_dir.name
            if (job_dir / "row.json").exists():
                rows.mkdir(parents=True, exist_ok=True)
                row = json.loads((job_dir / "row.json").read_text())
                (rows / f"{name}.json").write_text(json.dumps(row, indent=1) + "\n")
                (job_dir / "row.json").unlink()
                if not (job_dir / "best.pt").exists() and (kept / "best.pt").exists():  # selected in an earlier call
                    shutil.move(kept / "best.pt", job_dir / "best.pt")
                if kept.exists():
                    shutil.rmtree(kept)
                shutil.copytree(job_dir, kept)  # best.pt and logs, ignored by git
                _check_selection(row, kept / "best.pt")
                shutil.rmtree(state / name, ignore_errors=True)
                finished.append(name)
            elif (job_dir / "last.pt").exists():
                shutil.rmtree(state / name, ignore_errors=True)
                (state / name).mkdir(parents=True)
                for file in CARRIED:
                    if (job_dir / file).exists():
                        shutil.copy2(job_dir / file, state / name / file)
                kept.mkdir(parents=True, exist_ok=True)
                selection = _read(job_dir / "cut.json") or {}
                if (job_dir / "best.pt").exists():
                    shutil.copy2(job_dir / "best.pt", kept / "best.pt")
                elif selection.get("best") and selection["best"]["iteration"] == selection["iteration"]:
                    best_from_last(job_dir / "last.pt", kept / "best.pt")
                cut.append(name)
    return finished, cut


def _check_selection(row: dict, best: Path) -> None:
    """Say so when a finished row's selected checkpoint is missing or is not the iteration its JSON names."""
    if "diverged" in row:
        return
    if not best.exists():
        print(f"warning: no best.pt for {best.parent.name}: it cannot be scored here", file=sys.stderr)
        return
    iteration = read_checkpoint(best)["meta"].get("iteration")
    if iteration != row["best_iteration"]:
        print(f"warning: {best} is iteration {iteration}, but the row selected iteration {row['best_iteration']}",
              file=sys.stderr)  # fmt: skip


def collect_command(args: argparse.Namespace) -> int:
    if not (args.folder / "runner.json").is_file():
        raise UserError("no runner.json here: not the output of reproduce/device.sh", args.folder)
    name = json.loads((args.folder / "runner.json").read_text())["budget"]["name"]
    state = args.state or (STATE if name == "full" else args.results_root / "state")
    finished, cut = collect(args.folder, args.results_root, state)
    for line in json.loads((args.folder / "runner.json").read_text()).get("notes", []):
        print(f"runner: {line}")
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
    r.add_argument("--group", type=int, default=DEFAULT_GROUP,
                   help=f"rows of one variant trained as one grouped network, 1 to 4 (default {DEFAULT_GROUP}: a "
                        "variant's median and natural rows together; 1: every row alone)")  # fmt: skip
    r.add_argument("--concurrent", type=int, default=1, help="sets trained at once on the device (default 1)")
    r.add_argument("--carry-room", type=float, metavar="MIB",
                   help="MiB of cut rows' state the next call can carry (default: what the pack's manifest left, "
                        "else what pack_data.py reserves)")  # fmt: skip
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
