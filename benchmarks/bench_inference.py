"""Inference (and one training step) of SegNet and SegNet-Basic at 1x3x360x480: time and memory.

Every row runs in a fresh process, and its peak resident memory (RSS) is
that process's high-water mark while it runs the net, so it counts
everything: Python, PyTorch, the weights and the activations (the column
"loaded" is the resident memory before the first run). Times
are the median of ``--repeats`` runs after two warm-up runs, over
``--rounds`` interleaved rounds of all rows. Speed-ups are
against the first row, a plain hand-written PyTorch SegNet (Conv2d,
BatchNorm2d, ReLU, F.max_pool2d with indices, F.max_unpool2d) measured in
the same run. Achieved GFLOP/s use the FLOPs counted by
torch.utils.flop_counter, beside the machine's practical peak measured here
with a 4096x4096 matrix product.

    python benchmarks/bench_inference.py [--models segnet,segnet-basic] [--repeats 5] [--rounds 1] [--compile]
        [--json FILE] [--caffe-python PY]

``--caffe-python PY`` (a Python that imports a caffe-segnet build, e.g.
``PYTHONPATH=caffe-segnet/python /usr/bin/python3``) times caffe-segnet in
the same run, on the same weights and image, in a fresh process per row
(benchmarks/caffe_timing.py), and only then prints ratios against it.
Without it no ratio against Caffe is printed: Caffe's figures recorded in
benchmarks/results/caffe_cpu.json are shown with the machine and date they
were measured on. bf16 rows run only on a CPU with native bf16 (AVX-512
BF16 or AMX); elsewhere PyTorch emulates it and they are left out.

Weights: SegNet-Basic uses the example model trained on CamVid
(examples/segnet_basic_camvid); SegNet the oracle's caffemodel when the
reference data is present (synthetic weights with realistic activations),
else random weights. The input is CamVid test image 0001TP_008550. With
CamVid present, the bf16 path's argmax agreement with fp32 is also measured
over the first 50 test images.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shlex
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segnet.deploy.measure import cpu_has_bf16, cpu_name, current_rss_mb, peak_rss_mb, reset_peak_rss

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGNET_SHARED", ROOT.parent / "shared"))
ORACLE = SHARED / "oracle"
IMAGE = ROOT / "examples" / "segnet_basic_camvid" / "0001TP_008550.png"

ORACLE_WEIGHTS = {
    "segnet": ("segnet_inference.prototxt", "segnet_full.caffemodel.gz"),
    "segnet-basic": ("segnet_basic_inference.prototxt", "segnet_basic.caffemodel"),
}
#: caffe-segnet figures measured by an earlier run with --caffe-python (machine and date inside): shown, never divided by.
CAFFE_RECORDED = ROOT / "benchmarks" / "results" / "caffe_cpu.json"
#: The blob compared and timed: the class scores before the softmax.
SCORE_BLOB = {"segnet": "conv1_1_D", "segnet-basic": "conv_classifier"}
#: The paper's Table 6 (SegNet, 2015 NVIDIA Titan).
PAPER_TITAN = {"forward_ms": 422.50, "backward_ms": 488.71, "inference_memory_mb": 1052, "model_mb": 117}


class PlainSegNet(nn.Module):
    """SegNet written the way a PyTorch user would, from the readable model's weights: the baseline."""

    def __init__(self, readable):
        super().__init__()
        from segnet.models.surgery import bn_to_pytorch

        self.arch = readable.arch
        self.norm = readable.norm
        self.blocks = nn.ModuleDict()
        for name, relu in readable.conv_units():
            bn = getattr(readable, f"{name}_bn")
            bn = bn_to_pytorch(bn) if not isinstance(bn, nn.BatchNorm2d) else bn
            layers = [getattr(readable, name), bn.eval()] + ([nn.ReLU(inplace=True)] if relu else [])
            self.blocks[name] = nn.Sequential(*layers)
        self.classifier = getattr(readable, readable.classifier_name)
        self.readable = readable

    def forward(self, x):
        r = self.readable
        if self.norm is not None:
            x = self.norm(x)
        indices, sizes = [], []
        for stage, widths in enumerate(self.arch.encoder, start=1):
            for j in range(1, len(widths) + 1):
                x = self.blocks[r.encoder_name(stage, j)](x)
            sizes.append(x.shape[-2:])
            x, idx = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
            indices.append(idx)
        for depth, widths in enumerate(self.arch.decoder):
            stage = len(self.arch.decoder) - depth
            x = F.max_unpool2d(x, indices.pop(), 2, 2, output_size=sizes.pop())
            for j in range(len(widths)):
                x = self.blocks[r.decoder_name(stage, j)](x)
        return self.classifier(x)


# ------------------------------------------------------------------ one row, in its own process


def _load_readable(name: str, weights_dir: str):
    from segnet.models.checkpoint import load_model

    return load_model(Path(weights_dir) / f"{name}.pt")


def _input(size=(360, 480)) -> torch.Tensor:
    if IMAGE.exists():
        from segnet.data.imageio import load_image

        return torch.from_numpy(load_image(IMAGE, size))[None]
    return torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0)) * 255


def run_row(kind: str, name: str, weights_dir: str, repeats: int, out_path: str) -> dict:
    torch.set_num_threads(os.cpu_count() or 1)
    x = _input()
    if kind.startswith("train"):
        return _train_row(kind, name, weights_dir, repeats)
    runner = _make_runner(kind, name, weights_dir)
    loaded = current_rss_mb()
    reset_peak_rss()  # the peak below is the inference's, with everything already loaded counted
    with torch.inference_mode():
        start = time.perf_counter()
        y = runner(x)  # the first call pays one-time work: torch.compile's compilation, oneDNN's weight packing
        first_call = time.perf_counter() - start
        y = runner(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            y = runner(x)
            times.append(time.perf_counter() - start)
    np.save(out_path, np.asarray(y, dtype=np.float32))
    return {"median_s": statistics.median(times), "times_s": times, "peak_rss_mb": peak_rss_mb(),
            "loaded_rss_mb": loaded, "first_call_s": first_call, "path": getattr(runner, "path", None)}


def _make_runner(kind: str, name: str, weights_dir: str):
    from segnet.deploy.inference import optimize_for_inference

    model = _load_readable(name, weights_dir).eval()
    if kind == "plain":
        plain = PlainSegNet(model).eval()
        return lambda x: plain(x)
    if kind == "caffe-graph":
        import converter

        net = converter.convert(Path(weights_dir) / f"{name}.prototxt", Path(weights_dir) / f"{name}.caffemodel")
        del model
        return lambda x: net(data=x, blobs=[SCORE_BLOB[name]]).popitem()[1]
    if kind == "readable":
        return lambda x: model(x)
    if kind == "optimized":
        fast = optimize_for_inference(model, inplace=True)
        return lambda x: fast(x)
    if kind == "winograd":
        fast = optimize_for_inference(model, winograd=True, inplace=True)
        return lambda x: fast(x)
    if kind == "engine":
        from segnet.deploy.engine import build_engine

        engine = build_engine(model, "cpu", input_size=tuple(_input().shape[-2:]))  # times its layers (cached)

        def run(x):
            return engine.forward(x)

        run.path = engine.describe()
        return run
    if kind == "optimized-bf16":
        fast = optimize_for_inference(model, channels_last=True, bf16=True, inplace=True)
        return lambda x: fast(x)
    if kind == "optimized-bf16-decoder":
        fast = optimize_for_inference(model, channels_last=True, bf16="decoder", inplace=True)
        return lambda x: fast(x)
    if kind == "compiled":
        import torch._inductor.config as inductor

        inductor.freezing = True  # weights as constants: inductor folds and prepacks them for oneDNN
        fast = torch.compile(optimize_for_inference(model, channels_last=True, inplace=True))
        return lambda x: fast(x)
    if kind == "onnxruntime":
        from segnet.deploy.onnx import export_onnx, onnx_session

        path = Path(weights_dir) / f"{name}.onnx"
        if not path.exists():
            export_onnx(model, path)
        session = onnx_session(path)
        return lambda x: torch.from_numpy(session.run(None, {"data": x.numpy()})[0])
    raise ValueError(kind)


def _train_row(kind: str, name: str, weights_dir: str, repeats: int) -> dict:
    from segnet.training.loss import segnet_loss
    from segnet.models.registry import build_model

    model = build_model(name).train()
    bf16 = kind == "train-bf16"
    if kind == "train-channels-last":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = _input()
    if kind == "train-channels-last":
        x = x.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 12, (1, 360, 480), generator=torch.Generator().manual_seed(0))
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = segnet_loss(logits, labels, ignore_index=11)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i:
            times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "peak_rss_mb": peak_rss_mb()}


def in_fresh_process(*args) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_row, args)


def measure_rows(rows: list[tuple[str, str]], name: str, folder: Path, repeats: int, rounds: int) -> dict[str, dict]:
    """Every row, each in a fresh process, the whole list ``rounds`` times over (ABCABC...).

    Interleaving the rounds spreads a slow spell of a shared machine over every
    row instead of one, so the ratios between rows hold; each row's median is
    over all its timed runs, its peak RSS the highest of its processes.
    """
    runs: dict[str, list[dict]] = {kind: [] for kind, _ in rows}
    errors: dict[str, str] = {}
    for _ in range(rounds):
        for kind, _label in rows:
            if kind in errors:
                continue
            try:
                runs[kind].append(in_fresh_process(kind, name, str(folder), repeats, str(folder / f"{name}-{kind}.npy")))
            except Exception as exc:
                errors[kind] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    merged = {}
    for kind, results in runs.items():
        if kind in errors:
            merged[kind] = {"error": errors[kind]}
            continue
        times = [t for r in results for t in r["times_s"]]
        merged[kind] = {"median_s": statistics.median(times), "times_s": times, "rounds": len(results),
                        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
                        "loaded_rss_mb": max(r["loaded_rss_mb"] for r in results),
                        "first_call_s": results[0]["first_call_s"], "path": results[0].get("path")}  # fmt: skip
    return merged


def caffe_row(python: str, mode: str, name: str, folder: Path, repeats: int) -> dict:
    """caffe-segnet's figures for one net, measured now in a fresh process of ``python`` (caffe_timing.py)."""
    x = _input().numpy()
    np.save(folder / "input.npy", x)
    if mode == "forward":
        extra = folder / f"{name}-caffe.npy"  # where Caffe's class scores go
    else:  # labels 0..11, 11 ignored, as the project's training rows draw them
        extra = folder / "label.npy"
        np.save(extra, np.random.default_rng(0).integers(0, 12, (1, 1, *x.shape[-2:])).astype(np.float32))
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(os.cpu_count() or 1), "GLOG_minloglevel": "2"}
    done = subprocess.run(
        [*shlex.split(python), str(ROOT / "benchmarks" / "caffe_timing.py"), mode, str(folder / f"{name}.prototxt"),
         str(folder / f"{name}.caffemodel"), str(folder / "input.npy"), SCORE_BLOB[name], str(extra), str(repeats)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"caffe-segnet run failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ setup and report


def prepare_weights(name: str, folder: Path) -> str:
    """Write <name>.pt (readable model) and <name>.prototxt/.caffemodel (the same weights as Caffe files)."""
    import converter
    from segnet.models.checkpoint import save_model
    from segnet.deploy.caffe_export import export_caffe
    from segnet.models.family import segnet, segnet_basic
    from segnet.models.surgery import convert_bn
    from segnet.models.weights import load_caffe_weights

    build = {"segnet": segnet, "segnet-basic": segnet_basic}[name]
    example = ROOT / "examples" / "segnet_basic_camvid"
    if name == "segnet-basic" and (example / "segnet_basic_camvid.caffemodel").exists():
        net = converter.convert(example / "segnet_basic_camvid.prototxt", example / "segnet_basic_camvid.caffemodel")
        model = load_caffe_weights(build(), net)
        source = "the example SegNet-Basic trained on CamVid (examples/)"
    elif ORACLE.exists():
        prototxt, weights = ORACLE_WEIGHTS[name]
        model = load_caffe_weights(build(), converter.convert(ORACLE / prototxt, ORACLE / weights))
        source = f"caffe-segnet oracle weights ({weights})"
    else:
        torch.manual_seed(0)
        model = build().eval()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2)
        convert_bn(model, "inference")
        source = "random weights"
    save_model(folder / f"{name}.pt", model)
    export_caffe(model, folder / f"{name}.prototxt", folder / f"{name}.caffemodel")
    return source


@torch.inference_mode()
def bf16_agreement(name: str, camvid: Path, count: int = 50) -> dict[str, float]:
    """Fraction of pixels whose bf16 argmax equals the fp32 argmax, over CamVid test images."""
    from segnet.data.datasets import SegmentationDataset
    from segnet.deploy.inference import optimize_for_inference

    with tempfile.TemporaryDirectory() as tmp:
        prepare_weights(name, Path(tmp))
        model = _load_readable(name, tmp).eval()
    paths = {mode: optimize_for_inference(model, channels_last=True, bf16=mode) for mode in (True, "decoder")}
    same, total = {mode: 0 for mode in paths}, 0
    for image, _ in SegmentationDataset(camvid, "test", limit=count):
        x = image[None]
        reference = model(x).argmax(1)
        for mode, fast in paths.items():
            same[mode] += int((fast(x).argmax(1) == reference).sum())
        total += reference.numel()
    return {("whole net" if mode is True else "decoder only"): same[mode] / total for mode in paths}


def matmul_peak_gflops(dtype: torch.dtype, n: int = 4096, repeats: int = 3) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times) / 1e9


def forward_gflop(name: str, folder: Path) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model = _load_readable(name, str(folder)).eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(_input())
    return counter.get_total_flops() / 1e9


ROWS = [
    ("plain", "plain PyTorch SegNet, fp32 (baseline)"),
    ("caffe-graph", "converted Caffe graph, fp32"),
    ("readable", "readable model, fp32"),
    ("optimized", "folded BN + uint8 indices, fp32"),
    ("winograd", "same + Winograd F(2x2,3x3) where >=128 ch, fp32"),
    ("engine", "inference engine's fp32 default (paths timed)"),
    ("optimized-bf16", "same + channels-last, bf16 autocast"),
    ("optimized-bf16-decoder", "same, bf16 in the decoder only"),
    ("compiled", "torch.compile (inductor, frozen weights), fp32"),
    ("onnxruntime", "onnxruntime, fp32 (MaxPool/MaxUnpool graph)"),
]
TRAIN_ROWS = [
    ("train-fp32", "training iteration, batch 1, fp32"),
    ("train-channels-last", "training iteration, channels-last fp32"),
    ("train-bf16", "training iteration, bf16 autocast"),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="segnet,segnet-basic")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per row and round")
    p.add_argument("--rounds", type=int, default=1, help="run the list of rows this many times over, interleaved")
    p.add_argument("--compile", action="store_true", help="include torch.compile (slow to compile)")
    p.add_argument("--no-onnx", action="store_true")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--caffe-python", help="a Python command that imports caffe-segnet: time it in this run")
    p.add_argument("--record-caffe", action="store_true",
                   help=f"with --caffe-python: keep Caffe's figures in {CAFFE_RECORDED.relative_to(ROOT)}, shown by runs without it")
    p.add_argument("--json", help="write the results as JSON")
    args = p.parse_args()
    if args.record_caffe and not args.caffe_python:
        p.error("--record-caffe needs --caffe-python")
    bf16 = cpu_has_bf16()
    rows = [r for r in ROWS if (args.compile or r[0] != "compiled") and (bf16 or "bf16" not in r[0])]
    train_rows = [r for r in TRAIN_ROWS if bf16 or "bf16" not in r[0]]
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        rows = [r for r in rows if r[0] != "onnxruntime"]
    if args.no_onnx:
        rows = [r for r in rows if r[0] != "onnxruntime"]

    peak32 = matmul_peak_gflops(torch.float32)
    peak16 = matmul_peak_gflops(torch.bfloat16) if bf16 else None
    cpu = cpu_name()
    print(f"machine: {os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; "
          f"4096^2 matmul: {peak32:.0f} GFLOP/s fp32, "
          + (f"{peak16:.0f} GFLOP/s bf16" if bf16 else "no native bf16 (bf16 rows left out)"))  # fmt: skip
    results = {"machine": {"cores": os.cpu_count(), "cpu": cpu, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                           "matmul_gflops_fp32": peak32, "matmul_gflops_bf16": peak16}, "models": {}}  # fmt: skip
    recorded = json.loads(CAFFE_RECORDED.read_text()) if CAFFE_RECORDED.exists() else None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models.split(","):
            source = prepare_weights(name, folder)
            gflop = forward_gflop(name, folder)
            print(f"\n{name} at 1x3x360x480, {source}, {gflop:.0f} GFLOP per forward pass")
            print(f"{'path':<50} {'median':>9} {'speed-up':>9} {'GFLOP/s':>8} {'peak RSS':>9} {'loaded':>7} "
                  f"{'argmax =':>9} {'max|diff|':>10}")  # fmt: skip
            measured = measure_rows(rows, name, folder, args.repeats, args.rounds)
            baseline, reference, model_rows = None, None, {}
            for kind, label in rows:
                res = measured[kind]
                if "error" in res:  # a row that cannot run here (e.g. no compiler) is reported, not fatal
                    print(f"{label:<50} failed: {res['error'][:70]}")
                    continue
                y = np.load(folder / f"{name}-{kind}.npy")
                if baseline is None:
                    baseline, reference = res["median_s"], y
                res.update(speedup=baseline / res["median_s"], gflops=gflop / res["median_s"],
                           argmax_agreement=float((y.argmax(axis=1) == reference.argmax(axis=1)).mean()),
                           max_abs_diff=float(np.abs(y - reference).max()))  # fmt: skip
                model_rows[kind] = res
                print(f"{label:<50} {res['median_s']:>8.3f}s {res['speedup']:>8.2f}x {res['gflops']:>8.0f} "
                      f"{res['peak_rss_mb']:>7.0f}MB {res['loaded_rss_mb']:>5.0f}MB {res['argmax_agreement']:>9.5f} "
                      f"{res['max_abs_diff']:>10.2e}")  # fmt: skip
            if "engine" in model_rows:
                print(f"  engine: {model_rows['engine']['path']}")
            if "compiled" in model_rows:
                print(f"  compiled: first call (compilation) {model_rows['compiled']['first_call_s']:.0f} s")
            if args.caffe_python:
                res = caffe_row(args.caffe_python, "forward", name, folder, args.repeats)
                y = np.load(folder / f"{name}-caffe.npy")
                res.update(speedup=baseline / res["median_s"], gflops=gflop / res["median_s"],
                           argmax_agreement=float((y.argmax(axis=1) == reference.argmax(axis=1)).mean()))  # fmt: skip
                model_rows["caffe-segnet"] = res
                print(f"{'caffe-segnet CPU, fp32 (measured now)':<50} {res['median_s']:>8.3f}s {res['speedup']:>8.2f}x "
                      f"{res['gflops']:>8.0f} {res['peak_rss_mb']:>7.0f}MB {res['loaded_rss_mb']:>5.0f}MB "
                      f"{res['argmax_agreement']:>9.5f}")  # fmt: skip
            if "onnxruntime" in model_rows:
                for res in model_rows.values():
                    res["ratio_vs_onnxruntime"] = model_rows["onnxruntime"]["median_s"] / res["median_s"]
                print("  speed against onnxruntime (same run): " + ", ".join(
                    f"{kind} {res['ratio_vs_onnxruntime']:.2f}x" for kind, res in model_rows.items()))  # fmt: skip
            if not args.no_train:
                for kind, label in train_rows:
                    model_rows[kind] = in_fresh_process(kind, name, str(folder), max(2, args.repeats // 2), "")
                if args.caffe_python:
                    model_rows["caffe-segnet-train"] = caffe_row(args.caffe_python, "train", name, folder,
                                                                 max(2, args.repeats // 2))  # fmt: skip
                for kind, label in train_rows + [("caffe-segnet-train", "caffe-segnet forward+backward, fp32")]:
                    if kind in model_rows:
                        res = model_rows[kind]
                        print(f"{label:<50} {res['median_s']:>8.3f}s {'':>9} {'':>8} {res['peak_rss_mb']:>7.0f}MB")
            print_caffe_comparison(name, model_rows, recorded)
            results["models"][name] = {"gflop": gflop, "weights": source, "rows": model_rows}
    camvid = SHARED / "CamVid"
    if camvid.exists() and bf16:
        for name in args.models.split(","):
            agreement = bf16_agreement(name, camvid)
            print(f"\nbf16 vs fp32 argmax agreement, {name}, first 50 CamVid test images at 360x480: "
                  + ", ".join(f"{k} {v:.5f}" for k, v in agreement.items()))  # fmt: skip
            results["models"][name]["bf16_agreement_camvid"] = agreement
    from segnet.deploy.inference import index_memory
    from segnet.models.family import segnet

    memory = index_memory(segnet())
    print(f"\nSegNet pooling indices per 360x480 image: int64 {memory['int64'] / 2**20:.1f} MiB, "
          f"uint8 {memory['uint8'] / 2**20:.2f} MiB, 2-bit {memory['2-bit'] / 2**20:.2f} MiB")  # fmt: skip
    print(f"paper's Table 6 (SegNet, 2015 NVIDIA Titan): forward {PAPER_TITAN['forward_ms']} ms, backward "
          f"{PAPER_TITAN['backward_ms']} ms, inference memory {PAPER_TITAN['inference_memory_mb']} MB, model "
          f"{PAPER_TITAN['model_mb']} MB")  # fmt: skip
    results["index_memory_bytes"] = memory
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.record_caffe:
        models = {name: {"forward_s": m["rows"]["caffe-segnet"]["median_s"],
                         "peak_rss_mb": m["rows"]["caffe-segnet"]["peak_rss_mb"],
                         "train_s": m["rows"].get("caffe-segnet-train", {}).get("median_s")}
                  for name, m in results["models"].items()}  # fmt: skip
        machine = f"{results['machine']['cores']}-core {results['machine']['cpu']}"
        CAFFE_RECORDED.write_text(json.dumps({"date": results["machine"]["date"], "machine": machine,
                                              "blas_threads": results["machine"]["cores"], "models": models}, indent=1) + "\n")  # fmt: skip


def print_caffe_comparison(name: str, rows: dict, recorded: dict | None) -> None:
    """Ratios against caffe-segnet when it ran in this run; otherwise its recorded figures and no ratio."""
    if "caffe-segnet" in rows:
        caffe = rows["caffe-segnet"]["median_s"]
        for kind in ("caffe-graph", "optimized", "winograd", "engine", "optimized-bf16", "optimized-bf16-decoder", "onnxruntime"):
            if kind in rows:
                print(f"  {kind}: {caffe / rows[kind]['median_s']:.2f}x caffe-segnet's speed (same run)")
        if "caffe-segnet-train" in rows:
            train = rows["caffe-segnet-train"]["median_s"]
            for kind in ("train-fp32", "train-channels-last", "train-bf16"):
                if kind in rows:
                    print(f"  {kind}: {train / rows[kind]['median_s']:.2f}x caffe-segnet's forward+backward (same run)")
        return
    if recorded and name in recorded.get("models", {}):
        figures = recorded["models"][name]
        print(f"caffe-segnet CPU, measured {recorded['date']} on {recorded['machine']} (another run: no ratio): "
              f"forward {figures['forward_s']:.2f} s, peak RSS {figures['peak_rss_mb'] / 1024:.1f} GiB"
              + (f", forward+backward {figures['train_s']:.2f} s" if figures.get("train_s") else ""))  # fmt: skip


if __name__ == "__main__":
    main()
