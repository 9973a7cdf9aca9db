"""What a prediction run writes, off the compute path: label PNGs, overlays and uncertainty maps.

Labels are written at the image's own size (nearest neighbour) as
``<name>_segmentation.png``, a palette-mode PNG whose pixel values are the
label ids and whose palette is the label space's colours; ``--overlay``
adds ``<name>_overlay.png``, the photo blended with the class colours above
a legend of the classes present. A thread of its own writes them while the
model runs on the next batch, into the run's staging folder (all outputs
or none: converter.atomic.staged_outputs).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from segnet.data.imageio import read_image_rgb, read_size
from segnet.data.labels import LabelSpace
from segnet.data.resize import resize_nearest
from segnet.deploy.sources import Item
from segnet.evaluation.figures import map_with_legend, overlay_with_legend


def output_names(name: str, overlay: bool = False, uncertainty: bool = False) -> list[str]:
    """The files one input's outputs are written as, relative to the output folder."""
    names = [f"{name}_segmentation.png"]
    if overlay:
        names.append(f"{name}_overlay.png")
    if uncertainty:
        names.append(f"{name}_uncertainty.png")
    return names


def overlay(rgb: np.ndarray, labels: np.ndarray, space: LabelSpace):
    """The photo blended with the colours of ``labels`` (same size), with a legend."""
    return overlay_with_legend(rgb, labels, space.names, space.rgb_palette())


def uncertainty_map(uncertainty: np.ndarray, samples: int):
    """The Monte-Carlo uncertainty (variance of the class probabilities, mean over classes) with its legend."""
    return map_with_legend(uncertainty, f"uncertainty: variance of class probabilities over {samples} samples "
                                        "(mean over classes)")  # fmt: skip


def write_outputs(staging: Path, item: Item, labels: np.ndarray, space: LabelSpace, with_overlay: bool,
                  uncertainty: np.ndarray | None = None, samples: int = 0) -> str:  # fmt: skip
    """Write one image's outputs (labels at the model's size, resized here); returns the line to print."""
    size = read_size(item.path)
    if labels.shape != size:
        labels = resize_nearest(labels, size)
    names = output_names(item.name, with_overlay, uncertainty is not None)
    target = staging / names[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    space.to_image(labels).save(target, format="PNG")
    if with_overlay:
        rgb = read_image_rgb(item.path)
        overlay(rgb, labels, space).save(staging / names[1], format="PNG")
    if uncertainty is not None:
        if uncertainty.shape != size:
            uncertainty = resize_nearest(uncertainty, size)
        uncertainty_map(uncertainty, samples).save(staging / names[-1], format="PNG")
    present = int(np.count_nonzero(np.bincount(labels.ravel(), minlength=256)[: space.num_outputs]))
    return f"{item.path}: wrote {' and '.join(names)} ({size[0]}x{size[1]}, {present} classes present)"


class BackgroundWriter:
    """Runs :func:`write_outputs` on one thread while the model computes; at most ``pending`` wait."""

    def __init__(self, pending: int = 16):
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segnet-writer")
        self.pending = pending
        self.futures: list[Future] = []
        self.lines: list[str] = []

    def submit(self, *args, **kwargs) -> None:
        self.futures.append(self.pool.submit(write_outputs, *args, **kwargs))
        while len(self.futures) > self.pending:
            self.lines.append(self.futures.pop(0).result())  # an error in the writer surfaces here

    def finish(self) -> list[str]:
        """Wait for every write; returns their lines in input order (the first error is raised)."""
        try:
            while self.futures:
                self.lines.append(self.futures.pop(0).result())
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
        return self.lines
