"""``python -m converter``: convert a Caffe model, run it, dump and compare blobs."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .atomic import atomic_write
from .errors import CaffeFormatError, run_command
from .graph import CaffeNet, numpy_blobs
from .near_ties import explain_with_near_ties
from .prototxt import read_net
from .summary import format_table, summary_dict
from .weights import read_weights

EPILOG = """\
examples:
  python -m converter segnet.prototxt segnet.caffemodel -o segnet.pt
      convert; print the layer table; write segnet.pt (load it with converter.load)
  python -m converter segnet.prototxt
      no weights: build the net with the prototxt's fillers (to train from scratch)
  python -m converter net.prototxt net.caffemodel --input data=image.npy --dump blobs.npz
      run one forward pass and save every blob
  python -m converter net.prototxt net.caffemodel --input inputs.npz --compare caffe_blobs.npz
      compare with blobs saved from Caffe; exit status 1 beyond tolerance

Blobs compare within --tol x max(1, max|reference|); masks and ArgMax tops
exactly. Differences that come only from max-pooling windows whose two largest
values differ by float rounding (Caffe and PyTorch may pick either) are
identified and reported as such, and do not fail the comparison.

Exit status: 0 success, 1 comparison beyond tolerance, 2 bad input.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m converter",
        description="Convert a Caffe (caffe-segnet) model to PyTorch, faithful to Caffe's numbers.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prototxt", help="network definition (.prototxt; current or legacy V1 syntax)")
    p.add_argument("weights", nargs="?", help="trained weights: .caffemodel, .caffemodel.gz or .caffemodel.h5")
    p.add_argument("-o", "--output", help="checkpoint to write (default: WEIGHTS name with .pt, in the "
                   "current folder; PROTOTXT name without weights)")  # fmt: skip
    p.add_argument("--no-save", action="store_true", help="do not write a checkpoint")
    p.add_argument("--phase", choices=["TEST", "TRAIN"], default="TEST", help="Caffe phase to build (default TEST)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=N,C,H,W",
                   help="shape of a net input or data-layer top (repeatable)")  # fmt: skip
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy | FILE.npz",
                   help="arrays to run a forward pass on (repeatable; an .npz holds one array per input name)")
    p.add_argument("--dump", metavar="OUT.npz", help="save blobs after the forward pass (float32, as Caffe holds them)")
    p.add_argument("--blobs", metavar="A,B,...", help="blobs to dump (default: every blob)")
    p.add_argument("--compare", metavar="REF.npz", help="compare blobs with reference arrays of the same names")
    p.add_argument("--tol", type=float, default=1e-4, help="comparison tolerance, relative to max(1, max|ref|)")
    p.add_argument("--summary-json", metavar="FILE", help="write the per-layer table as JSON")
    p.add_argument("--seed", type=int, default=0, help="seed for fillers (nets without weights)")
    p.add_argument("--allow-missing", action="store_true",
                   help="keep filler values for prototxt layers the weights do not cover")
    p.add_argument("--allow-unused", action="store_true", help="ignore weights of layers the prototxt lacks")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print the layer table")
    return p


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.partition("=")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) <= 0:
        raise CaffeFormatError(f"--input-shape wants NAME=N,C,H,W with positive sizes, got '{text}'")
    return name, shape


def load_inputs(specs: list[str]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = None, spec
        try:
            if name is None:
                with np.load(path) as f:
                    if not hasattr(f, "files"):
                        raise CaffeFormatError("an --input without NAME= must be an .npz archive", path)
                    # Keys with a colon (e.g. the oracle's top_diff:<blob>) are not inputs.
                    arrays.update({k: f[k] for k in f.files if ":" not in k})
            else:
                arrays[name] = np.load(path)
        except (OSError, ValueError) as exc:
            raise CaffeFormatError(f"cannot read input arrays: {exc}", path) from None
    return arrays


def default_output(args) -> Path:
    source = Path(args.weights or args.prototxt)
    name = source.name
    for suffix in (".gz", ".h5", ".caffemodel", ".prototxt"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return Path(name + ".pt")


def run(args) -> int:
    shapes = dict(parse_shape(s) for s in args.input_shape)
    inputs = load_inputs(args.input)
    for name, array in inputs.items():
        shapes.setdefault(name, tuple(array.shape))
    if (args.dump or args.compare) and not inputs:
        raise CaffeFormatError("--dump and --compare need --input arrays to run on")

    net_param = read_net(args.prototxt)
    try:
        net = CaffeNet(net_param, phase=args.phase, input_shapes=shapes)
    except CaffeFormatError as exc:
        raise CaffeFormatError(exc.problem, exc.path or args.prototxt, exc.layer) from None
    net.init_weights(args.seed)
    if args.weights:
        net.load_caffe_weights(read_weights(args.weights), args.allow_missing, args.allow_unused)
    else:
        print(f"no weights given: parameters filled with the prototxt's fillers (seed {args.seed})")
    _warn_learn_bn(net)

    if not args.quiet:
        print(format_table(net))
    if args.summary_json:
        _write_text(Path(args.summary_json), json.dumps(summary_dict(net), indent=1))

    status = 0
    if inputs:
        status = _forward(net, inputs, args)
    if not args.no_save:
        out = Path(args.output) if args.output else default_output(args)
        checkpoint.save(net, out, {"prototxt": str(args.prototxt), "weights": str(args.weights or "")})
        print(f"wrote {out} (load with converter.load('{out}'))")
    return status


def _warn_learn_bn(net: CaffeNet) -> None:
    learn = [step.name for step, m in net.named_layers() if step.type == "BN" and m.mode == "LEARN"]
    if learn and net.phase == "TEST":
        print(
            f"warning: {len(learn)} BN layer(s) ({learn[0]}, ...) are in LEARN mode in a TEST net: they normalise "
            "with the statistics of each input batch, which gives poor results on single images. "
            "Fold BN statistics in first: python -m segnet.bn_stats PROTOTXT --caffemodel WEIGHTS --data CAMVID -o OUT.caffemodel",
            file=sys.stderr,
        )


def _forward(net: CaffeNet, arrays: dict[str, np.ndarray], args) -> int:
    feed = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in arrays.items() if k in net.input_shapes}
    ignored = sorted(set(arrays) - set(feed))
    if ignored:
        print(f"note: arrays {ignored} are not inputs of this net and were not fed")
    reference = {}
    if args.compare:
        try:
            with np.load(args.compare) as f:
                reference = {k: f[k] for k in f.files}
        except (OSError, ValueError) as exc:
            raise CaffeFormatError(f"cannot read reference blobs: {exc}", args.compare) from None
    wanted: set[str] = set(k for k in reference if k in net.blob_shapes)
    if args.dump:
        wanted |= set(args.blobs.split(",")) if args.blobs else set(net.blob_shapes)
    unknown = wanted - set(net.blob_shapes)
    if unknown:
        raise CaffeFormatError(f"--blobs names {sorted(unknown)}, which this net does not have")
    with torch.no_grad():
        try:
            out = net(**feed, blobs=sorted(wanted) if wanted else None)
        except TypeError as exc:
            raise CaffeFormatError(str(exc)) from None
    if args.dump:
        dump = numpy_blobs({k: v for k, v in out.items() if not args.blobs or k in wanted})
        _atomic_savez(Path(args.dump), dump)
        print(f"wrote {len(dump)} blob(s) to {args.dump}")
    if args.compare:
        return _compare(net, feed, out, reference, args.tol)
    return 0


def _compare(net: CaffeNet, feed, out, reference: dict[str, np.ndarray], tol: float) -> int:
    skipped = [k for k in reference if k not in net.blob_shapes]
    rows, failed_floats = [], {}
    exact = net.index_blob_names
    for name in [k for k in reference if k in net.blob_shapes]:
        ref = reference[name]
        ours = out[name].detach().float().numpy()
        if ours.size != ref.size:
            rows.append((name, "shape", f"ours {list(ours.shape)} vs reference {list(ref.shape)}", False))
            continue
        ours = ours.reshape(ref.shape)
        diff = np.abs(ours.astype(np.float64) - ref)
        max_abs = float(diff.max()) if diff.size else 0.0
        rel = max_abs / max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
        if name in exact:
            bad = int((diff > 0).sum())
            rows.append((name, f"{max_abs:.3g}", f"{bad} index values differ" if bad else "exact", bad == 0))
        else:
            ok = rel <= tol
            rows.append((name, f"{max_abs:.3g}", f"scaled {rel:.2e}", ok))
            if not ok:
                failed_floats[name] = ref
    width = max([len(r[0]) for r in rows] + [4])
    print(f"{'blob':<{width}}  {'max |diff|':>10}  detail")
    for name, max_abs, detail, ok in rows:
        print(f"{name:<{width}}  {max_abs:>10}  {detail}{'' if ok else '  <-- beyond tolerance'}")
    if skipped:
        print(f"not blobs of this net (skipped): {', '.join(skipped)}")
    failures = [r for r in rows if not r[3]]
    if failures and len(failed_floats) == len(failures):
        floats = {k: v for k, v in reference.items() if k in net.blob_shapes and k not in exact}
        explanation = explain_with_near_ties(net, feed, floats, tol=tol)
        if explanation.explained:
            worst = max(explanation.errors_after.values())
            print(
                f"all differences come from {explanation.flips.count} max-pooling window(s) whose two largest "
                f"values differ by float rounding ({explanation.flips.candidate_count} such windows in the net); "
                f"deciding those as the reference did, every blob is within tolerance (worst scaled error "
                f"{worst:.2e})"
            )
            return 0
        print("differences remain after accounting for max-pooling near-ties: "
              + ", ".join(f"{k}: {v}" for k, v in explanation.bad_after.items() if v))  # fmt: skip
    if failures:
        print(f"FAILED: {len(failures)} blob(s) beyond tolerance {tol}")
        return 1
    print(f"all {len(rows)} compared blob(s) within tolerance")
    return 0


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", message=".*NumPy array is not writable.*")
    return run_command(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
