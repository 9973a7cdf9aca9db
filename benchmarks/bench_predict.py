"""End-to-end prediction speed: images/s for a folder of CamVid test images, decoded, segmented and written.

Each row segments the same folder as ``segnet.predict`` does (model
loading, the inference engine segnet.deploy.engine at one path and batch
size, decoding in 2 workers, writing on a background thread), beside the plain
converted graph run one image at a time (read, forward, argmax, write: what
``segnet.predict`` did before the engine), in the same run. The list of
rows runs ``--rounds`` times over, interleaved, so that a slow spell of a
shared machine falls on every row; a row's figure is its median. On CUDA
the engine's rows run at batch 1, 8 and 32. The model is the shipped
example (examples/segnet_basic_camvid) unless ``--model`` names another.

    python benchmarks/bench_predict.py [--images 233] [--rounds 2] [--model MODEL.pt] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import converter
from segnet.cli import shared_dir
from segnet.data.imageio import load_image
from segnet.data.labels import get_label_space
from segnet.data.resize import resize_nearest
from segnet.deploy.measure import cpu_has_bf16, cpu_name
from segnet.models.caffe_graph import as_segmenter
from segnet.deploy.engine import build_engine
from segnet.deploy.prediction import segment_images
from segnet.deploy.sources import collect
from segnet.models.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "segnet_basic_camvid"
RESULTS = ROOT / "benchmarks" / "results"


def plain_graph(model: Path, images: list[Path], out: Path) -> None:
    """The baseline: the converted graph, one image at a time, labels written as palette PNGs."""
    graph = as_segmenter(converter.load(model), probabilities=True).eval()
    space = get_label_space("camvid")
    with torch.no_grad():
        for path in images:
            ids = graph(torch.from_numpy(load_image(path, graph.input_size))[None]).argmax(1)[0].numpy()
            original = load_image(path).shape[1:]
            space.to_image(resize_nearest(ids.astype(np.uint8), original)).save(out / f"{path.stem}.png")


def rows(device: str) -> list[tuple[str, dict | None]]:
    """(name, engine settings) of each engine row on this machine."""
    if device == "cuda":
        return [(f"engine {precision}, batch {b}", {"device": "cuda", "batch_size": b, "precision": precision})
                for precision in ("fp32", "bf16") for b in (1, 8, 32)]  # fmt: skip
    precisions = ("fp32", "bf16") if cpu_has_bf16() else ("fp32",)  # emulated bf16 is not worth timing
    return [(f"engine {precision}, batch {b}", {"device": "cpu", "batch_size": b, "precision": precision})
            for precision in precisions for b in (1, 4)]  # fmt: skip


def engine_run(model: Path, folder: Path, out: Path, device: str, batch_size: int, precision: str) -> None:
    """What ``segnet.predict MODEL FOLDER`` does with these settings: load, build the engine, segment, write."""
    loaded = load_model(model)
    engine = build_engine(loaded, device, precision, batch_size=batch_size)
    segment_images(engine, collect([str(folder)]), get_label_space("camvid"), out, batch_size, workers=2)


def timed(run) -> float:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        run()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--images", type=int, default=233, help="how many CamVid test images (default all 233)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--model", help="a converted net or segnet checkpoint (default: the shipped example)")
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args(argv)
    camvid = shared_dir() / "CamVid" / "test"
    images = sorted(camvid.glob("*.png"))[: args.images]
    if not images:
        sys.exit(f"no CamVid test images at {camvid} (set SEGNET_SHARED)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        folder = work / "images"
        folder.mkdir()
        for path in images:
            os.symlink(path, folder / path.name)
        model = Path(args.model) if args.model else work / "example.pt"
        if not args.model:
            converter.save(converter.convert(EXAMPLE / "segnet_basic_camvid.prototxt",
                                             EXAMPLE / "segnet_basic_camvid.caffemodel"), model)  # fmt: skip
        table = [("plain converted graph, one image at a time", None)] + rows(device)
        times: dict[str, list[float]] = {name: [] for name, _ in table}
        for round_ in range(args.rounds):
            for name, options in table:
                out = work / f"out-{round_}-{len(times[name])}-{abs(hash(name))}"
                out.mkdir()
                if options is None:
                    seconds = timed(lambda: plain_graph(model, images, out))
                else:
                    seconds = timed(lambda: engine_run(model, folder, out, **options))
                times[name].append(seconds)
                print(f"  round {round_ + 1}: {name}: {len(images) / seconds:.2f} images/s", flush=True)
    base = len(images) / statistics.median(times[table[0][0]])
    machine = (f"{os.cpu_count()} CPU cores ({cpu_name()})" if device == "cpu" else torch.cuda.get_device_name()) + \
        f", torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"  # fmt: skip
    print(f"\n{len(images)} CamVid test images, end to end (decode, infer, write), {machine}:\n")
    print(f"| {'path':<44} | images/s | vs plain graph |")
    print(f"|{'-' * 46}|----------|----------------|")
    results = {"machine": machine, "images": len(images), "rounds": args.rounds, "rows": {}}
    for name, _ in table:
        rate = len(images) / statistics.median(times[name])
        results["rows"][name] = {"images_per_s": rate, "times_s": times[name], "ratio_vs_plain_graph": rate / base}
        print(f"| {name:<44} | {rate:8.2f} | {rate / base:13.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
