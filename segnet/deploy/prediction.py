"""Segmenting many inputs with the inference engine: batches of images, Monte-Carlo samples, videos.

The outputs go to a staging folder (all or none: converter.atomic.staged_outputs)
by segnet.deploy.writers; ``python -m segnet.predict`` is the command.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from converter.errors import UserError

from segnet.data.imageio import load_image
from segnet.data.labels import LabelSpace
from segnet.data.resize import resize_nearest
from segnet.deploy.engine import Engine
from segnet.deploy.sources import ImageFiles, Item, VideoWriter, collate_images, frame_input, video_frames
from segnet.deploy.writers import BackgroundWriter, overlay, write_outputs
from segnet.models.mc_dropout import dropout_sampling, mc_dropout_predict


def segment_images(engine: Engine, items: list[Item], space: LabelSpace, staging: Path, batch_size: int = 4,
                   workers: int = 0, with_overlay: bool = False, progress: bool = False) -> list[str]:
    """Images in batches (decoded in workers), outputs written by a background thread."""
    if not items:
        return []
    batch = batch_size if engine.input_size is not None else 1  # images of their own sizes go one by one
    workers = min(workers, len(items) - 1)  # one image gains nothing from decoding beside the model
    loader = DataLoader(ImageFiles(items, engine.input_size), batch_size=batch, num_workers=workers,
                        collate_fn=collate_images, pin_memory=engine.device.type == "cuda")
    writer = BackgroundWriter()
    try:
        with tqdm(total=len(items), disable=not progress or len(items) < 2, unit="image") as bar:
            for images, indices in loader:
                if isinstance(images, Exception):
                    raise images
                for index, labels in zip(indices.tolist(), engine.labels(images).numpy()):
                    writer.submit(staging, items[index], labels, space, with_overlay)
                bar.update(len(indices))
    finally:
        lines = writer.finish()
    return lines


@torch.no_grad()
def sample_images(model: torch.nn.Module, items: list[Item], space: LabelSpace, size: tuple[int, int] | None,
                  staging: Path, samples: int, with_overlay: bool = False, progress: bool = False) -> list[str]:
    """Monte-Carlo dropout, one image at a time: mean class probabilities and their variance."""
    lines = []
    with dropout_sampling(model, False):
        for item in tqdm(items, disable=not progress or len(items) < 2, unit="image"):
            x = torch.from_numpy(load_image(item.path, size))[None]
            prob, spread = mc_dropout_predict(model, x, samples)
            labels = prob.argmax(dim=1)[0].to(torch.uint8).numpy()
            uncertainty = spread[0].numpy()
            lines.append(write_outputs(staging, item, labels, space, with_overlay, uncertainty, samples))
    return lines


def segment_video(engine: Engine, item: Item, space: LabelSpace, staging: Path, batch_size: int) -> str:
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
