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
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from converter.atomic import refuse_overwriting_inputs, staged_outputs
from converter.errors import UserError, run_command

from segnet.cli import add_common_options, add_input_size_option, positive_int
from segnet.data.imageio import load_image
from segnet.data.labels import LabelSpace, label_space_for
from segnet.data.resize import resize_nearest
from segnet.deploy.engine import PRECISIONS, Engine, build_engine
from segnet.deploy.sources import ImageFiles, Item, collate_images, VideoWriter, collect, frame_input, share, video_frames
from segnet.deploy.writers import BackgroundWriter, output_names, overlay, write_outputs
from segnet.models.caffe_graph import as_segmenter, declared_input_size, num_outputs
from segnet.models.checkpoint import load_model
from segnet.models.mc_dropout import dropout_layers, dropout_sampling, mc_dropout_predict, samples_by_default


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
    p.add_argument("--batch-size", type=positive_int, default=4, help="images per forward pass (default 4)")
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
    # All inputs segmented, or no file written: a failure on input k leaves nothing behind.
    with staged_outputs(out) as staging:
        if args.mc_samples:
            lines = _sample_images(as_segmenter(model, probabilities=True), images, space, size, staging, args)
            engine = None
        else:
            engine = build_engine(model, args.device, args.precision, size, args.batch_size)
            lines = _segment_images(engine, images, space, staging, args)
            lines += [_segment_video(engine, video, space, staging, args.batch_size) for video in videos]
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


def _segment_images(engine: Engine, items: list[Item], space: LabelSpace, staging: Path,
                    args: argparse.Namespace) -> list[str]:  # fmt: skip
    """Images in batches (decoded in workers), outputs written by a background thread."""
    if not items:
        return []
    batch = args.batch_size if engine.input_size is not None else 1  # images of their own sizes go one by one
    workers = min(args.workers, len(items))
    loader = DataLoader(ImageFiles(items, engine.input_size), batch_size=batch, num_workers=workers,
                        collate_fn=collate_images, pin_memory=engine.device.type == "cuda")
    writer = BackgroundWriter()
    try:
        with tqdm(total=len(items), disable=not args.progress or len(items) < 2, unit="image") as bar:
            for images, indices in loader:
                if isinstance(images, Exception):
                    raise images
                for index, labels in zip(indices.tolist(), engine.labels(images).numpy()):
                    writer.submit(staging, items[index], labels, space, args.overlay)
                bar.update(len(indices))
    finally:
        lines = writer.finish()
    return lines


@torch.no_grad()
def _sample_images(model: torch.nn.Module, items: list[Item], space: LabelSpace, size: tuple[int, int] | None,
                   staging: Path, args: argparse.Namespace) -> list[str]:  # fmt: skip
    """Monte-Carlo dropout, one image at a time: mean class probabilities and their variance."""
    lines = []
    with dropout_sampling(model, False):
        for item in tqdm(items, disable=not args.progress or len(items) < 2, unit="image"):
            x = torch.from_numpy(load_image(item.path, size))[None]
            prob, spread = mc_dropout_predict(model, x, args.mc_samples)
            labels = prob.argmax(dim=1)[0].to(torch.uint8).numpy()
            uncertainty = spread[0].numpy()
            lines.append(write_outputs(staging, item, labels, space, args.overlay, uncertainty, args.mc_samples))
    return lines


def _segment_video(engine: Engine, item: Item, space: LabelSpace, staging: Path, batch_size: int) -> str:
    """Every frame segmented and overlaid into ``<name>_segmentation.mp4`` at the input's frame rate."""
    frames, rate = video_frames(item.path)
    target = staging / f"{item.name}_segmentation.mp4"
    target.parent.mkdir(parents=True, exist_ok=True)
    writer, count, start = None, 0, time.perf_counter()
    try:
        for batch in _batched(frames, batch_size):
            ids = engine.labels(torch.stack([frame_input(rgb, engine.input_size) for rgb in batch])).numpy()
            for rgb, labels in zip(batch, ids):
                if labels.shape != rgb.shape[:2]:
                    labels = resize_nearest(labels, rgb.shape[:2])
                picture = np.asarray(overlay(rgb, labels, space))
                if writer is None:
                    writer = VideoWriter(target, rate, picture.shape[1], picture.shape[0])
                writer.write(picture)
                count += 1
    finally:
        if writer is not None:
            writer.close()
    if not count:
        raise UserError("no frames in this video", item.path)
    seconds = time.perf_counter() - start
    return f"{item.path}: wrote {item.name}_segmentation.mp4 ({count} frames, {count / seconds:.1f} frames/s)"


def _batched(frames: Iterator[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    batch = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


if __name__ == "__main__":
    sys.exit(main())
