"""``python -m segnet.predict``: segment images with a converted or trained model.

Each image is read as caffe-segnet's DenseImageData read it (BGR, 0..255),
resized to the input size the model declares (a converted net's input
shape) or ``--size``, segmented, and the labels are written at the image's
own size (nearest neighbour) as a CamVid-coloured PNG, plus a label PNG with
``--labels``. Bayesian models can be sampled with ``--mc-samples``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .cli import run
from .camvid import colorize, load_image, resize_nearest
from .checkpoint import load_model
from .evaluate import labels_from_output


def model_input_size(model: torch.nn.Module) -> tuple[int, int] | None:
    """The (H, W) a converted Caffe net was defined for, if it states one."""
    shapes = getattr(model, "input_shapes", None)
    if shapes:
        first = next(iter(shapes.values()))
        if first and len(first) == 4:
            return int(first[2]), int(first[3])
    return None


@torch.no_grad()
def predict_labels(model: torch.nn.Module, image_path: str | Path, size: tuple[int, int] | None = None,
                   mc_samples: int = 0) -> np.ndarray:  # fmt: skip
    """HxW uint8 class labels for one image file, at the image's own size."""
    original = load_image(image_path)
    size = size or model_input_size(model)
    image = load_image(image_path, size) if size and tuple(size) != original.shape[1:] else original
    x = torch.from_numpy(image.astype(np.float32))[None]
    if mc_samples:
        from .models import mc_dropout_predict

        prob, _ = mc_dropout_predict(model, x, mc_samples)
        labels = prob.argmax(dim=1)
    else:
        labels = labels_from_output(model(x))
    labels = labels[0].cpu().numpy().astype(np.uint8)
    return resize_nearest(labels, original.shape[1:]) if labels.shape != original.shape[1:] else labels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m segnet.predict", description=__doc__.splitlines()[0].split(": ", 1)[1],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("model", help="a converted Caffe net (python -m converter) or a trained segnet checkpoint")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("-o", "--out", default=".", help="folder for <name>_segmentation.png (default: current folder)")
    p.add_argument("--size", help="H,W to resize images to before the network (default: the model's input size)")
    p.add_argument("--labels", action="store_true", help="also write <name>_labels.png with class ids (11 = void)")
    p.add_argument("--mc-samples", type=int, default=0, help="Monte-Carlo dropout samples (Bayesian models)")
    args = p.parse_args(argv)
    return run(lambda: _command(args))


def _command(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    size = tuple(int(v) for v in args.size.split(",")) if args.size else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        labels = predict_labels(model, path, size, args.mc_samples)
        stem = Path(path).stem
        Image.fromarray(colorize(labels)).save(out / f"{stem}_segmentation.png")
        if args.labels:
            Image.fromarray(labels).save(out / f"{stem}_labels.png")
        counts = np.bincount(labels.ravel(), minlength=12)
        print(f"{path}: wrote {out / (stem + '_segmentation.png')} ({labels.shape[0]}x{labels.shape[1]}, "
              f"{int((counts > 0).sum())} classes present)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
