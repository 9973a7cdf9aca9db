"""What a prediction run reads: image files, folders of them (recursive) and videos, as batches.

Each input becomes an :class:`Item` with the name its outputs get: a file
given by itself is named by its stem; a file found in a folder keeps its
path below that folder, so ``photos/a/b.png`` gives ``OUT/a/b_*``. Images
are decoded in DataLoader workers (:class:`ImageFiles`) as caffe-segnet's
DenseImageData read them (BGR, 0..255, resized bilinearly to the model's
size); videos are decoded frame by frame with PyAV (an extra:
``pip install -e ".[video]"``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from converter.errors import UserError

from segnet.data.imageio import as_network_input, load_image
from segnet.data.resize import Size
from segnet.data.splits import IMAGE_SUFFIXES

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
VIDEO_HINT = 'pip install -e ".[video]" (or: pip install av)'


@dataclass(frozen=True)
class Item:
    """One input and the name (a relative path without suffix) its outputs are written under."""

    path: Path
    name: str

    @property
    def is_video(self) -> bool:
        return self.path.suffix.lower() in VIDEO_SUFFIXES


def collect(inputs: list[str]) -> list[Item]:
    """The items of the command line's INPUT arguments, in order; two items of one name are an error."""
    items: list[Item] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in this folder", path)
            items += [Item(p, p.relative_to(path).with_suffix("").as_posix()) for p in found]
        else:
            items.append(Item(path, path.stem))
    seen: dict[str, Path] = {}
    for item in items:
        if item.name in seen:
            raise UserError(f"{seen[item.name]} and {item.path} would both be written as {item.name}_segmentation.png:"
                            " segment them into different --out folders")  # fmt: skip
        seen[item.name] = item.path
    return items


def share(items: list[Item], rank: int, world: int) -> list[Item]:
    """This process's share of the items when ``world`` processes split them (every item exactly once)."""
    return items[rank::world]


class ImageFiles(Dataset):
    """(3xHxW float image at ``size`` or its own, index) for each image item.

    A file that cannot be read gives its error in place of the image: a
    DataLoader worker would otherwise re-raise it wrapped in its own
    traceback text, and :func:`collate_images` raises it as it is.
    """

    def __init__(self, items: list[Item], size: Size | None):
        self.items, self.size = items, size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | Exception, int]:
        try:
            return torch.from_numpy(load_image(self.items[index].path, self.size)), index
        except (UserError, OSError) as exc:
            return exc, index


def collate_images(batch: list[tuple[torch.Tensor | Exception, int]]) -> tuple[torch.Tensor | Exception, torch.Tensor]:
    """Stack a batch of :class:`ImageFiles` samples, or hand on the first unreadable file's error.

    Collation runs in the worker: the error travels back as a value, and
    the caller raises it (see :class:`ImageFiles`).
    """
    indices = torch.tensor([index for _, index in batch])
    for image, _ in batch:
        if isinstance(image, Exception):
            return image, indices
    return torch.stack([image for image, _ in batch]), indices


# ---------------------------------------------------------------- videos


def _av():
    try:
        import av
    except ImportError:
        raise UserError(f"reading and writing videos needs PyAV: {VIDEO_HINT}") from None
    return av


def video_frames(path: Path) -> tuple[Iterator[np.ndarray], float]:
    """The frames of a video as HxWx3 uint8 RGB arrays, and its frames per second."""
    av = _av()
    try:
        container = av.open(str(path))
        stream = container.streams.video[0]
    except (av.error.FFmpegError, IndexError, OSError) as exc:
        raise UserError(f"cannot read this video ({exc})", path) from None
    rate = float(stream.average_rate or 25)

    def frames() -> Iterator[np.ndarray]:
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as exc:
            raise UserError(f"damaged video ({exc})", path) from None
        finally:
            container.close()

    return frames(), rate


def frame_input(rgb: np.ndarray, size: Size | None) -> torch.Tensor:
    """A video frame (RGB) as the network input, exactly as an image file of its pixels is read."""
    return torch.from_numpy(as_network_input(np.ascontiguousarray(rgb[..., ::-1]), size))


class VideoWriter:
    """Frames (HxWx3 uint8 RGB) into an H.264 (else MPEG-4) video at the input's frame rate."""

    def __init__(self, path: Path, rate: float, width: int, height: int):
        av = _av()
        self.container = av.open(str(path), mode="w")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.stream = self.container.add_stream(codec, rate=round(rate) or 25)
        self.stream.width, self.stream.height = width - width % 2, height - height % 2  # 4:2:0 needs even sizes
        self.stream.pix_fmt = "yuv420p"
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        av = _av()
        rgb = rgb[: self.stream.height, : self.stream.width]
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
