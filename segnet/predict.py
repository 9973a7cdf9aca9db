"""``python -m segnet.predict``: segment images, folders of images and videos with a converted or trained model.

    python -m segnet.predict MODEL INPUT... [-o OUT] [--overlay] [--device auto|cpu|cuda[:N]]
                             [--batch-size N] [--workers N] [--precision fp32|bf16|fp16]

INPUT is an image file, a folder (searched recursively; the outputs keep
its subfolders) or a video (.mp4, .avi, .mov, .mkv; needs PyAV:
``pip install -e ".[video]"``). Each image is read as caffe-segnet's
DenseImageData read it (BGR, 0..255), resized to the input size the model
declares (a converted net's input shape, or the size a segnet checkpoint
was trained at) or ``--input-size``, segmented, and the labels are written
at the image's own size (nearest neighbour) as ``<name>_segmentation.png``:
a palette-mode PNG whose pixel values are the label ids and whose palette
is the label space's colours. ``--overlay`` also writes
``<name>_overlay.png``, the photo blended with the class colours above a
legend of the classes present. A video gives ``<name>_segmentation.mp4``,
its frames overlaid, one output frame per input frame.

The model runs on the inference engine (segnet.deploy.engine): the
fastest path that computes the converted graph's labels on this device
(float32 by default; ``--precision bf16`` or ``fp16`` where the hardware
computes them natively, with the agreement with float32 printed). Several
processes split the inputs: ``torchrun --nproc_per_node N -m segnet.predict
...`` segments each input once.

Bayesian models (dropout layers): ``--mc-samples N`` averages N Monte-Carlo
dropout samples and also writes ``<name>_uncertainty.png``, the variance of
the class probabilities over the samples (mean over classes), colour-mapped
with a legend. Without it, dropout is off (its usual test-time behaviour),
and the command says so.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from converter.atomic import refuse_overwriting_inputs, staged_outputs
from converter.errors import UserError, run_command

from segnet.cli import add_common_options, add_input_size_option, positive_int
from segnet.data.labels import label_space_for
from segnet.deploy.engine import PRECISIONS, build_engine
from segnet.devices import pick_device
from segnet.deploy.prediction import sample_images, segment_images, segment_video
from segnet.deploy.sources import Item, collect, share
from segnet.deploy.writers import output_names
from segnet.models.caffe_graph import as_segmenter, declared_input_size, num_outputs
from segnet.models.checkpoint import load_model
from segnet.models.mc_dropout import dropout_layers, samples_by_default


#: Images per forward pass unless --batch-size says otherwise (benchmarks/bench_predict.py measures others).
CPU_BATCH, CUDA_BATCH = 4, 8


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m segnet.predict", description=__doc__.splitlines()[0].split(": ", 1)[1],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("model", help="a converted Caffe net (python -m converter) or a trained segnet checkpoint")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders of images, videos")
    p.add_argument("-o", "--out", default=".", help="folder for the outputs (default: current folder)")
    p.add_argument("--overlay", action="store_true", help="also write <name>_overlay.png with a legend")
    add_input_size_option(p, "size", help="resize images to this before the network (default: the model's input "
                          "size)")  # fmt: skip
    p.add_argument("--labels", help="label space for the palette: a name, a class count or a JSON file "
                   "(default: the model's)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=positive_int,
                   help=f"images per forward pass (default {CPU_BATCH} on a CPU, {CUDA_BATCH} on CUDA)")
    p.add_argument("--workers", type=int, default=2, help="processes decoding images (default 2; 0: none)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default, Caffe's numbers), bf16 or fp16 where the hardware computes it natively")  # fmt: skip
    p.add_argument("--mc-samples", type=int, default=0, help="Monte-Carlo dropout samples (Bayesian models)")
    add_common_options(p)
    args = p.parse_args(argv)
    return run_command(lambda: _command(args))


def _command(args: argparse.Namespace) -> int:
    if args.mc_samples < 0 or args.workers < 0:
        raise UserError("--mc-samples and --workers must be 0 or more")
    model = load_model(args.model)
    space, note = label_space_for(args.labels, num_outputs(model), getattr(model, "label_space", None))
    if note:
        print(f"note: {note}", file=sys.stderr)
    _dropout_notes(model, args)
    size = args.size or declared_input_size(model)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    items = share(collect(args.inputs), rank, world)
    out = Path(args.out)
    outputs = [out / name for item in items for name in _names(item, args)]
    refuse_overwriting_inputs(outputs, [args.model, *(str(item.path) for item in items)])
    images, videos = [i for i in items if not i.is_video], [i for i in items if i.is_video]
    start = time.perf_counter()
    # The model is made ready before any output folder appears: a model that cannot run leaves nothing.
    engine = sampler = None
    if args.mc_samples:
        sampler = as_segmenter(model, probabilities=True)
    else:
        device = pick_device(args.device)
        args.batch_size = args.batch_size or (CUDA_BATCH if device.type == "cuda" else CPU_BATCH)
        engine = build_engine(model, device, args.precision, size, args.batch_size, num_classes=space.num_outputs)
    # All inputs segmented, or no file written: a failure on input k leaves nothing behind.
    with staged_outputs(out) as staging:
        if sampler is not None:
            lines = sample_images(sampler, images, space, size, staging, args.mc_samples, args.overlay, args.progress)
        else:
            lines = segment_images(engine, images, space, staging, args.batch_size, args.workers, args.overlay,
                                   args.progress)
            lines += [segment_video(engine, video, space, staging, args.batch_size) for video in videos]
    print("\n".join(lines))
    if engine is not None and items:
        seconds = time.perf_counter() - start
        print(f"{len(images)} images, {len(videos)} videos in {seconds:.1f} s on {engine.describe()}")
        if engine.agreement is not None:
            print(f"{args.precision}: argmax agreement with float32 on the first batch: {100 * engine.agreement:.2f}%")
    return 0


def _names(item: Item, args: argparse.Namespace) -> list[str]:
    if item.is_video:
        if args.mc_samples:
            raise UserError("--mc-samples takes images, not videos", item.path)
        return [f"{item.name}_segmentation.mp4"]
    return output_names(item.name, args.overlay, bool(args.mc_samples))


def _dropout_notes(model: torch.nn.Module, args: argparse.Namespace) -> None:
    if args.mc_samples and not dropout_layers(model):
        raise UserError("the model has no dropout layers: --mc-samples needs a Bayesian model", args.model)
    if dropout_layers(model) and not args.mc_samples:
        caffe = " (caffe-segnet would draw one random sample per run)" if samples_by_default(model) else ""
        print(f"note: {args.model} has dropout layers (a Bayesian model); this run uses dropout's test mode, no "
              f"sampling{caffe}: --mc-samples N averages N samples and writes an uncertainty map", file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
