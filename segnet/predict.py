"""``python -m segnet.predict``: segment images with a converted or trained model.

Each image is read as caffe-segnet's DenseImageData read it (BGR, 0..255),
resized to the input size the model declares (a converted net's input
shape, or the size a segnet checkpoint was trained at) or ``--size``,
segmented, and the labels are written at the image's own size (nearest
neighbour) as ``<name>_segmentation.png``: a palette-mode PNG whose pixel
values are the label ids and whose palette is the label space's colours
(one file, viewable and machine-readable, as Pascal VOC stores labels).

Bayesian models (dropout layers): ``--mc-samples N`` averages N Monte-Carlo
dropout samples and also writes ``<name>_uncertainty.png``, the variance of
the class probabilities over the samples (mean over classes), colour-mapped
with a legend. Without it, dropout is off (its usual test-time behaviour),
and the command says so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from segnet.models.caffe_graph import as_segmenter, declared_input_size, num_outputs
from segnet.models.checkpoint import load_model
from segnet.cli import add_input_size_option, add_common_options
from segnet.evaluation.core import labels_from_output
from segnet.evaluation.figures import map_with_legend
from segnet.data.imageio import load_image
from segnet.data.labels import label_space_for
from segnet.models.mc_dropout import dropout_layers, dropout_sampling, mc_dropout_predict, samples_by_default
from segnet.data.resize import Size, resize_nearest
from converter.atomic import refuse_overwriting_inputs, staged_outputs
from converter.errors import UserError, run_command


@torch.no_grad()
def predict(model: torch.nn.Module, image_path: str | Path, num_outputs: int, size: Size | None = None,
            mc_samples: int = 0) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
    """HxW uint8 label ids for one image, at the image's own size, and the uncertainty map with ``mc_samples``."""
    original = load_image(image_path)
    image = load_image(image_path, size) if size and tuple(size) != original.shape[1:] else original
    x = torch.from_numpy(image)[None]
    uncertainty = None
    if mc_samples:
        prob, spread = mc_dropout_predict(model, x, mc_samples)
        labels = prob.argmax(dim=1)
        uncertainty = spread[0].cpu().numpy()
    else:
        labels = labels_from_output(model(x), num_outputs)
    labels = labels[0].cpu().numpy().astype(np.uint8)
    if labels.shape != original.shape[1:]:
        labels = resize_nearest(labels, original.shape[1:])
        if uncertainty is not None:
            uncertainty = resize_nearest(uncertainty, original.shape[1:])
    return labels, uncertainty


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m segnet.predict", description=__doc__.splitlines()[0].split(": ", 1)[1],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("model", help="a converted Caffe net (python -m converter) or a trained segnet checkpoint")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("-o", "--out", default=".", help="folder for <name>_segmentation.png (default: current folder)")
    add_input_size_option(p, "size",
                   help="resize images to this before the network (default: the model's input size)")  # fmt: skip
    p.add_argument("--labels", help="label space for the palette: a name, a class count or a JSON file "
                   "(default: the model's)")  # fmt: skip
    p.add_argument("--mc-samples", type=int, default=0, help="Monte-Carlo dropout samples (Bayesian models)")
    add_common_options(p)
    args = p.parse_args(argv)
    return run_command(lambda: _command(args))


def _command(args: argparse.Namespace) -> int:
    if args.mc_samples < 0:
        raise UserError("--mc-samples must be 0 or more")
    model = as_segmenter(load_model(args.model), probabilities=True)
    space, note = label_space_for(args.labels, num_outputs(model), getattr(model, "label_space", None))
    if note:
        print(f"note: {note}", file=sys.stderr)
    if args.mc_samples and not dropout_layers(model):
        raise UserError("the model has no dropout layers: --mc-samples needs a Bayesian model", args.model)
    if dropout_layers(model) and not args.mc_samples:
        caffe = " (caffe-segnet would draw one random sample per run)" if samples_by_default(model) else ""
        print(f"note: {args.model} has dropout layers (a Bayesian model); this run uses dropout's test mode, no "
              f"sampling{caffe}: --mc-samples N averages N samples and writes an uncertainty map", file=sys.stderr)  # fmt: skip
    size = args.size or declared_input_size(model)
    out = Path(args.out)
    outputs = _output_names(args.images, bool(args.mc_samples))
    refuse_overwriting_inputs([out / name for names in outputs for name in names], [args.model, *args.images])
    # All images segmented, or no file written: a failure on image k leaves nothing behind.
    done = []
    with dropout_sampling(model, False), staged_outputs(out) as staging:
        for path, names in zip(tqdm(args.images, disable=not args.progress or len(args.images) < 2, unit="image"),
                               outputs):  # fmt: skip
            labels, uncertainty = predict(model, path, space.num_outputs, size, args.mc_samples)
            space.to_image(labels).save(staging / names[0], format="PNG")
            if uncertainty is not None:
                figure = map_with_legend(uncertainty, f"uncertainty: variance of class probabilities over "
                                                      f"{args.mc_samples} samples (mean over classes)")  # fmt: skip
                figure.save(staging / names[1], format="PNG")
            present = [space.names[i] for i in np.unique(labels) if i < space.num_outputs]
            done.append(f"{path}: wrote {' and '.join(str(out / name) for name in names)} ({labels.shape[0]}x"
                        f"{labels.shape[1]}, {len(present)} classes present)")  # fmt: skip
    print("\n".join(done))
    return 0


def _output_names(images: list[str], uncertainty: bool) -> list[tuple[str, ...]]:
    """The file names each image's outputs get; two images of one name would overwrite each other's."""
    names, seen = [], {}
    for path in images:
        stem = Path(path).stem
        if stem in seen:
            raise UserError(f"{seen[stem]} and {path} would both be written as {stem}_segmentation.png: segment "
                            "them into different --out folders")  # fmt: skip
        seen[stem] = path
        names.append((f"{stem}_segmentation.png", f"{stem}_uncertainty.png") if uncertainty else
                     (f"{stem}_segmentation.png",))  # fmt: skip
    return names


if __name__ == "__main__":
    sys.exit(main())
