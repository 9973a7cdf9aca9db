"""The server's work, apart from HTTP: an upload in, ``segnet.predict``'s outputs for it out.

:class:`SegmentService` holds the model's inference engine
(segnet.deploy.engine), its label space and one :class:`~segnet.deploy.batcher.Batcher`:
an upload is checked and decoded on a small pool of threads
(:func:`~segnet.deploy.uploads.check_upload`, then the image read exactly as
``segnet.predict`` reads a file), segmented on the one inference thread in a
batch with other uploads of its size, and its labels resized to the image's
own size (nearest neighbour) and written as the same palette PNG
(``space.to_image``). A Bayesian model (dropout layers) can also average
Monte-Carlo dropout samples, at most ``mc_samples_max``, with the
uncertainty map ``segnet.predict --mc-samples`` writes.
"""

from __future__ import annotations

import base64
import io
import shutil
import tempfile
from collections.abc import Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

import converter
from converter.errors import UserError

from segnet.data.labels import LabelSpace
from segnet.data.resize import Size, resize_nearest
from segnet.deploy.batcher import BatchInfo, Batcher
from segnet.deploy.engine import Engine
from segnet.deploy.uploads import UploadError, check_upload, network_input, photo_rgb, pixel_limit
from segnet.deploy.writers import uncertainty_map
from segnet.models.caffe_graph import as_segmenter
from segnet.models.mc_dropout import dropout_layers, mc_dropout_predict

#: The shipped example model, served when no model is given (converted in memory).
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "segnet_basic_camvid"
EXAMPLE_NAME = "SegNet-Basic, CamVid (the shipped example)"
#: The page's pictures are at most this many pixels on their longer side (the label PNG keeps the image's size).
PAGE_SIDE = 1280


@dataclass(frozen=True)
class Limits:
    """What one server takes: bytes of a body, pixels of an image, requests at once, seconds, samples."""

    max_upload: int = 32 << 20
    max_pixels: int = 40_000_000
    decoders: int = 2  # threads that check, decode and encode uploads at once
    queue: int = 32  # requests inside the server at once (reading, waiting, running); more are answered 503
    timeout_s: float = 30.0
    mc_samples_max: int = 8


@dataclass
class Segmented:
    """One upload's result: labels (and the uncertainty map) at the image's own size."""

    labels: np.ndarray
    uncertainty: np.ndarray | None
    samples: int
    batch: BatchInfo


def example_model() -> nn.Module:
    """The shipped SegNet-Basic (CamVid), converted from its Caffe files in memory."""
    prototxt, weights = EXAMPLE / "segnet_basic_camvid.prototxt", EXAMPLE / "segnet_basic_camvid.caffemodel"
    if not weights.is_file():
        raise UserError(f"no MODEL given and the shipped example is not at {EXAMPLE} (an installed copy has no "
                        "examples/): give a converted net or a segnet checkpoint")  # fmt: skip
    return converter.convert(prototxt, weights).eval()


class SegmentService:
    """Uploads to labels: checked and decoded on ``limits.decoders`` threads, segmented in micro-batches."""

    def __init__(self, model: nn.Module, space: LabelSpace, engine: Engine, limits: Limits = Limits(),
                 max_batch: int = 4, wait_s: float = 0.005, name: str = "") -> None:  # fmt: skip
        if engine.input_size is None:
            raise UserError("the model declares no input size: give --input-size H,W (uploads of every size are "
                            "resized to it)")  # fmt: skip
        self.space, self.engine, self.limits, self.name = space, engine, limits, name
        self.bayesian = bool(dropout_layers(model))
        self.sampler = as_segmenter(model, probabilities=True) if self.bayesian else None
        self.max_pixels = pixel_limit(limits.max_pixels, limits.decoders)
        self.pool = ThreadPoolExecutor(limits.decoders, thread_name_prefix="segnet-decode")
        self.batcher = Batcher(self._run, max_batch, wait_s, limits.queue)
        self.palette = space.rgb_palette()
        self.folder = Path(tempfile.mkdtemp(prefix="segnet-serve-"))  # mode 0700: uploads wait here, privately

    def close(self) -> None:
        self.batcher.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(self.folder, ignore_errors=True)

    def warm_up(self) -> None:
        """One batch of zeros through the engine, so the first upload does not pay for the setup (fp32 only:
        a bf16 or fp16 engine measures its agreement with float32 on its first batch, which must be a real one)."""
        if self.engine.precision == "fp32":
            self.engine.labels(torch.zeros(1, 3, *self.engine.input_size))

    # ---------------------------------------------------------------- the steps of one upload

    def check_samples(self, samples: int) -> None:
        if samples and not self.bayesian:
            raise UploadError("samples: the model has no dropout layers (Monte-Carlo samples need a Bayesian model)")
        if not 0 <= samples <= self.limits.mc_samples_max:
            raise UploadError(f"samples must lie in 0..{self.limits.mc_samples_max} (--mc-samples-max)")

    def prepare(self, path: Path) -> tuple[torch.Tensor, Size]:
        """(network input, the image's own size): header checked first, then decoded as segnet.predict does."""
        size = check_upload(path, self.max_pixels)
        return torch.from_numpy(network_input(path, self.engine.input_size)), size

    def submit(self, image: torch.Tensor, samples: int) -> Future:
        """A future of (labels or (labels, uncertainty), BatchInfo); QueueFull when the line is full."""
        return self.batcher.submit((tuple(image.shape), samples), image)

    def finish(self, result: Any, info: BatchInfo, size: Size, samples: int) -> Segmented:
        labels, uncertainty = result if samples else (result, None)
        if labels.shape != size:
            labels = resize_nearest(labels, size)
        if uncertainty is not None and uncertainty.shape != size:
            uncertainty = resize_nearest(uncertainty, size)
        return Segmented(labels, uncertainty, samples, info)

    def _run(self, key: Hashable, batch: torch.Tensor) -> Sequence[Any]:
        """On the inference thread: labels of a batch, or Monte-Carlo labels and uncertainty maps."""
        _, samples = key
        if not samples:
            return list(self.engine.labels(batch).numpy())
        mean, spread = mc_dropout_predict(self.sampler, batch.to(self.engine.device), samples)
        labels = mean.argmax(dim=1).to(torch.uint8).cpu().numpy()
        return list(zip(labels, spread.float().cpu().numpy()))

    # ---------------------------------------------------------------- what is answered

    def label_png(self, labels: np.ndarray) -> bytes:
        """The palette PNG segnet.predict writes as ``<name>_segmentation.png``."""
        out = io.BytesIO()
        self.space.to_image(labels).save(out, format="PNG")
        return out.getvalue()

    def shares(self, labels: np.ndarray) -> tuple[list[dict[str, Any]], float]:
        """The classes present (most pixels first) with their share of the image, and void's share."""
        counts = np.bincount(labels.ravel(), minlength=256)
        total = max(labels.size, 1)
        present = [i for i in self.space.class_ids if counts[i]]
        present.sort(key=lambda i: -counts[i])
        classes = [{"id": i, "name": self.space.names[i], "colour": self._colour(i), "share": float(counts[i] / total)}
                   for i in present]  # fmt: skip
        return classes, float(1 - sum(int(counts[i]) for i in present) / total)

    def summary(self, done: Segmented) -> dict[str, Any]:
        """The JSON answer: size, classes present, timing, device."""
        classes, void = self.shares(done.labels)
        height, width = done.labels.shape
        return {"width": width, "height": height, "input_size": list(self.engine.input_size), "classes": classes,
                "void_share": void, "label_space": self.space.name, "device": str(self.engine.device),
                "precision": self.engine.precision, "mc_samples": done.samples, "batch_size": done.batch.size,
                "inference_ms": round(1000 * done.batch.seconds, 2)}  # fmt: skip

    def pictures(self, path: Path, done: Segmented) -> dict[str, str | None]:
        """The page's pictures as data URLs: the photo (JPEG), the class colours (PNG, void transparent), the
        label PNG and, with Monte-Carlo samples, the uncertainty map with its legend (PNG)."""
        photo = Image.fromarray(photo_rgb(path))
        mask = Image.fromarray(self._mask(done.labels), mode="RGBA")
        uncertainty = None
        if done.uncertainty is not None:
            uncertainty = uncertainty_map(done.uncertainty, done.samples)
        photo.thumbnail((PAGE_SIDE, PAGE_SIDE), Image.Resampling.BILINEAR)
        mask.thumbnail((PAGE_SIDE, PAGE_SIDE), Image.Resampling.NEAREST)  # class colours stay class colours
        labels = f"data:image/png;base64,{base64.b64encode(self.label_png(done.labels)).decode()}"
        return {"photo": _data_url(photo, "JPEG"), "mask": _data_url(mask, "PNG"), "labels": labels,
                "uncertainty": _data_url(uncertainty, "PNG") if uncertainty is not None else None}  # fmt: skip

    def _mask(self, labels: np.ndarray) -> np.ndarray:
        rgba = np.zeros((*labels.shape, 4), dtype=np.uint8)
        rgba[..., :3] = self.palette[labels]
        rgba[..., 3] = np.where(self.space.valid(labels) & (labels != self.space.void), 255, 0)
        return rgba

    def _colour(self, class_id: int) -> list[int]:
        return [int(v) for v in self.palette[class_id]]

    def model_info(self) -> dict[str, Any]:
        """What GET /v1/model answers."""
        return {"name": self.name, "label_space": self.space.name, "void": self.space.void,
                "classes": [{"id": i, "name": self.space.names[i], "colour": self._colour(i)}
                            for i in self.space.class_ids],
                "input_size": list(self.engine.input_size), "device": str(self.engine.device),
                "precision": self.engine.precision, "engine": self.engine.describe(), "bayesian": self.bayesian,
                "mc_samples_max": self.limits.mc_samples_max if self.bayesian else 0,
                "max_batch": self.batcher.max_batch,
                "limits": {"max_upload_bytes": self.limits.max_upload, "max_pixels": self.max_pixels,
                           "queue": self.limits.queue, "timeout_s": self.limits.timeout_s}}  # fmt: skip


def _data_url(picture: Image.Image, kind: str) -> str:
    out = io.BytesIO()
    picture.save(out, format=kind, **({"quality": 85} if kind == "JPEG" else {"compress_level": 3}))
    media = "image/jpeg" if kind == "JPEG" else "image/png"
    return f"data:{media};base64,{base64.b64encode(out.getvalue()).decode()}"
