"""``python -m converter``: convert a Caffe model, run it, dump and compare blobs."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from . import budget, checkpoint, verdict
from .arrays import read_arrays
from .atomic import atomic_write, refuse_overwriting_inputs
from .dialect import MAINLINE, SEGNET, detect_types
from .errors import CaffeFormatError, UserError, add_debug_option, run_command
from .graph import CaffeNet, numpy_blobs
from .prototxt import read_net
from .summary import format_table, summary_dict
from .weights import read_weights

EPILOG = """\
examples:
  python -m converter segnet.prototxt segnet.caffemodel -o segnet.pt
      convert; print the layer table; write segnet.pt (load it with converter.load)
  python -m converter segnet.prototxt -o segnet_init.pt
      no weights: build the net with the prototxt's fillers (to train from scratch); write segnet_init.pt
  python -m converter net.prototxt net.caffemodel --input data=image.npy --dump blobs.npz
      run one forward pass and save every blob
  python -m converter net.prototxt net.caffemodel --input inputs.npz --compare caffe_blobs.npz
      is this conversion consistent with Caffe on these blobs? (exit status 0 yes, 1 no)
  python -m converter train.prototxt net.caffemodel --phase TRAIN --input batch.npz --compare caffe_step.npz
      the same for a training step: loss, diff:<blob> and param_diff:<layer>:<i> keys

The comparison judges each reference blob against float32's own noise on this
net and input: the net runs in float64 (the exact result) and in float32 with
and without added rounding noise; Caffe passes when it is no farther from the
exact result than float32 rounding moves it, up to 4x as many values each up
to 4x as far (index blobs: 4x as many differing entries), and is not scaled
against it. Where the reference holds a layer's inputs and outputs, that layer
is also judged alone on Caffe's inputs, which names the first layer that
disagrees. Reference keys: <blob>, diff:<blob>, param_diff:<layer>:<i>,
param:<layer>:<i> (the weights), test:<blob> (a TEST-phase pass); inputs may
hold top_diff:<blob> arrays (the gradient injected into that blob).

A checkpoint is written when -o names one, or in the plain form
NET.prototxt WEIGHTS.caffemodel (without --dump, --compare or --summary-json):
then as the WEIGHTS name with .pt, in the current folder. Without weights, or
with any of those options, no checkpoint is written unless -o names one.

Exit status: 0 success (consistent with Caffe), 1 not consistent, 2 bad input, 3 a bug (--debug shows
its traceback).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m converter",
        description="Convert a Caffe model (caffe-segnet or mainline BVLC Caffe) to PyTorch, faithful to Caffe's numbers.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prototxt", help="network definition (.prototxt; current or legacy V1 syntax)")
    p.add_argument("weights", nargs="?", help="trained weights: .caffemodel, .caffemodel.gz or .caffemodel.h5")
    p.add_argument("-o", "--output", help="checkpoint to write (default: the WEIGHTS name with .pt, in the "
                   "current folder, only in the plain form NET WEIGHTS: no --dump/--compare/--summary-json)")  # fmt: skip
    p.add_argument("--no-save", action="store_true", help="do not write a checkpoint")
    p.add_argument("--phase", choices=["TEST", "TRAIN"], default="TEST", help="Caffe phase to build (default TEST)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=N,C,H,W",
                   help="shape of a net input or data-layer top (repeatable)")  # fmt: skip
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy | FILE.npz",
                   help="arrays to run a forward pass on (repeatable; an .npz holds one array per input name)")
    p.add_argument("--dump", metavar="OUT.npz", help="save blobs after the forward pass (float32, as Caffe holds them)")
    p.add_argument("--blobs", metavar="A,B,...", help="blobs to dump (default: every blob)")
    p.add_argument("--compare", metavar="REF.npz",
                   help="judge reference arrays (Caffe's blobs and gradients, by name) against float32 noise")
    p.add_argument("--compare-json", metavar="FILE", help="write the comparison's checks and verdict as JSON")
    p.add_argument("--argmax", action="append", default=[], metavar="KEY=BLOB",
                   help="reference KEY holds the argmax over channels of BLOB, taken outside Caffe (repeatable)")
    p.add_argument("--no-layer-by-layer", action="store_true",
                   help="judge the whole net only, not also each part on Caffe's own inputs")
    p.add_argument("--summary-json", metavar="FILE", help="write the per-layer table as JSON")
    p.add_argument("--seed", type=int, default=0, help="seed for fillers (nets without weights)")
    p.add_argument("--allow-missing", action="store_true",
                   help="keep filler values for prototxt layers the weights do not cover")
    p.add_argument("--allow-unused", action="store_true", help="ignore weights of layers the prototxt lacks")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print the layer table")
    budget.add_memory_option(p)
    add_debug_option(p)
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


def input_files(specs: list[str]) -> list[str]:
    """The files named by ``--input`` options (NAME=FILE or FILE)."""
    return [spec.partition("=")[2] or spec for spec in specs]


def load_inputs(specs: list[str]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for spec, path in zip(specs, input_files(specs)):
        name = spec.partition("=")[0] if "=" in spec else None
        found = read_arrays(path)
        if name is None:
            if not isinstance(found, dict):
                raise CaffeFormatError("an --input without NAME= must be an .npz archive (this is one .npy array: "
                                       "give NAME=FILE)", path)  # fmt: skip
            # Besides inputs: top_diff:<blob>, the gradient injected into a blob for --compare.
            arrays.update(found)
        elif isinstance(found, dict):
            raise CaffeFormatError(f"--input {name}=FILE takes one .npy array; this is an .npz archive (give it "
                                   "without NAME=)", path)  # fmt: skip
        else:
            arrays[name] = found
    return arrays


#: options that write or judge something besides a checkpoint
OUTPUT_OPTIONS = ("dump", "compare", "compare_json", "summary_json")


def default_output(weights: str) -> Path:
    """The checkpoint of the plain form: the weight file's name with .pt, in the current folder."""
    name = Path(weights).name
    for suffix in (".gz", ".h5", ".caffemodel"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return Path(name + ".pt")


def writes_checkpoint(args: argparse.Namespace) -> bool:
    """Whether this run writes a checkpoint: when -o names one, or in the plain form NET WEIGHTS.

    A run that asks for a dump, a comparison or a summary, or one without
    weights, must not leave a checkpoint (hundreds of MB) in the current folder.
    """
    if args.output:
        return True
    return bool(args.weights) and not args.no_save and not any(getattr(args, o) for o in OUTPUT_OPTIONS)


def _command(args: argparse.Namespace) -> int:
    saving = writes_checkpoint(args)
    out = Path(args.output or default_output(args.weights)) if saving else None
    refuse_overwriting_inputs([out, args.dump, args.summary_json, args.compare_json],
                              [args.prototxt, args.weights, args.compare, *input_files(args.input)])  # fmt: skip
    shapes = dict(parse_shape(s) for s in args.input_shape)
    inputs = load_inputs(args.input)
    for name, array in inputs.items():
        if ":" not in name:
            shapes.setdefault(name, tuple(array.shape))
    if (args.dump or args.compare) and not inputs:
        raise CaffeFormatError("--dump and --compare need --input arrays to run on")
    if args.compare_json and not args.compare:
        raise CaffeFormatError("--compare-json needs --compare")

    net_param = read_net(args.prototxt)
    try:
        net = CaffeNet(net_param, phase=args.phase, input_shapes=shapes)
    except UserError as exc:
        raise type(exc)(exc.problem, exc.path or args.prototxt, exc.layer) from None
    net.init_weights(args.seed)
    if args.weights:
        weights = read_weights(args.weights)
        _note_fork_mismatch(net, weights, args)
        net.load_caffe_weights(weights, args.allow_missing, args.allow_unused)
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
    if saving:
        checkpoint.save(net, out, {"prototxt": str(args.prototxt), "weights": str(args.weights or "")})
        print(f"wrote {out} (load with converter.load('{out}'))")
    elif not (args.no_save or args.dump or args.compare):  # a conversion without -o: say how to keep the net
        print("no checkpoint written (-o OUT.pt writes one)")
    return status


def _note_fork_mismatch(net: CaffeNet, weights, args) -> None:
    """Say so when the prototxt and the caffemodel tell different forks (their layers should match by name)."""
    net_fork = net.dialect.fork
    weights_fork = detect_types([layer.type for layer in weights.layers.values()]).fork
    if {net_fork, weights_fork} == {SEGNET, MAINLINE}:
        print(f"note: {args.prototxt} reads as {net_fork} but {args.weights} holds {weights_fork} layer types",
              file=sys.stderr)


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
    inputs = {k: v for k, v in arrays.items() if ":" not in k}
    ignored = sorted(set(inputs) - set(net.input_shapes))
    if ignored:
        print(f"note: arrays {ignored} are not inputs of this net and were not fed")
    if args.dump or not args.compare:  # a plain forward pass shows the net runs on these inputs
        wanted = set(args.blobs.split(",")) if args.blobs else set(net.blob_shapes) if args.dump else None
        unknown = (wanted or set()) - set(net.blob_shapes)
        if unknown:
            raise CaffeFormatError(f"--blobs names {sorted(unknown)}, which this net does not have")
        feed = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in inputs.items() if k in net.input_shapes}
        with torch.no_grad():
            try:
                out = net(**feed, blobs=sorted(wanted) if wanted else None)
            except TypeError as exc:
                raise CaffeFormatError(str(exc)) from None
        if args.dump:
            dump = numpy_blobs(out)
            _atomic_savez(Path(args.dump), dump)
            print(f"wrote {len(dump)} blob(s) to {args.dump}")
        else:
            print("forward pass: " + ", ".join(f"{k} {list(v.shape)}" for k, v in out.items()))
    if args.compare:
        return _compare(net, arrays, args)
    return 0


def _compare(net: CaffeNet, arrays: dict[str, np.ndarray], args) -> int:
    reference = read_arrays(args.compare)
    if not isinstance(reference, dict):
        raise CaffeFormatError("the reference must be an .npz archive of named blobs, not a single .npy array",
                               args.compare)  # fmt: skip
    sampling = [step.name for step, m in net.named_layers() if step.type == "Dropout" and (m.training or m.mc_dropout)]
    if sampling:
        raise CaffeFormatError(
            f"layer '{sampling[0]}' samples dropout masks at random in this phase (TRAIN or sample_weights_test), as "
            "Caffe does with its own random numbers, so no comparison can match: compare a TEST net whose Dropout "
            "layers do not set sample_weights_test", args.prototxt)  # fmt: skip
    test_net = None
    if any(k.startswith("test:") for k in reference) and net.phase != "TEST":
        test_net = CaffeNet(net.net_param, phase="TEST", input_shapes=net.input_shapes)
        test_net.load_state_dict(net.state_dict(), strict=False)
    derived = {}
    for spec in args.argmax:
        key, sep, blob = spec.partition("=")
        if not sep or not key or blob not in net.blob_shapes or key in net.blob_shapes:
            raise CaffeFormatError(f"--argmax wants KEY=BLOB with BLOB a blob of the net and KEY not one, got '{spec}'")
        derived[key] = verdict.Derived(blob, lambda x: x.argmax(dim=1), "indices")
    try:
        report = verdict.compare(net, arrays, reference, test_net=test_net, derived=derived,
                                 layer_by_layer=not args.no_layer_by_layer)  # fmt: skip
    except CaffeFormatError as exc:  # the net cannot run on these inputs
        raise CaffeFormatError(exc.problem, exc.path or args.prototxt, exc.layer) from None
    except ValueError as exc:  # the reference does not fit the net
        raise CaffeFormatError(str(exc), args.compare) from None
    print(report.format())
    if args.compare_json:
        _write_text(Path(args.compare_json), report.to_json())
    return 0 if report.passed else 1


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", message=".*NumPy array is not writable.*")
    return run_command(lambda: _command(args))


if __name__ == "__main__":
    sys.exit(main())
