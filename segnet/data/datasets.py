"""A data-set split for torch: a Dataset of network inputs and labels.

Items are what caffe-segnet's DenseImageData layer fed SegNet (see
:mod:`segnet.data.imageio`): BGR float images with values 0..255 and int64
label ids of a :class:`~segnet.data.labels.LabelSpace`. The split's files are
found by :mod:`segnet.data.splits` (list files or folders). Optional local
contrast normalisation is here too, for experiments that want the paper's
wording of the preprocessing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from segnet.data.imageio import DataError, load_pair_u8
from segnet.data.labels import DEFAULT_LABEL_SPACE, LabelSpace, get_label_space
from segnet.data.resize import Size
from segnet.data.splits import Sample, list_samples


# --------------------------------------------------------------------------
# Local contrast normalisation (optional; not what the released nets used)


def local_contrast_normalize(
    image: np.ndarray, sigma: float = 2.0, truncate: float = 2.0, eps: float = 1e-4
) -> np.ndarray:
    """Local contrast normalisation of a CxHxW float image, returned as float32.

    The paper describes SegNet-Basic's input as locally contrast normalised;
    the released prototxts instead put an LRN layer on the raw 0..255 input
    inside the network, which is what a converted model expects. Use this
    only for experiments that want the paper's wording; it is off everywhere
    by default.

    Subtractive then divisive normalisation with a Gaussian window (``sigma``
    pixels, cut at ``truncate * sigma``; 9x9 by default) shared by all
    channels:

        v = x - mean_c(G * x_c)
        s = sqrt(mean_c(G * v_c^2))
        y = v / max(s, mean(s), eps)

    Near the border the window is renormalised over the pixels inside the
    image, so edges are not darkened by zero padding.
    """
    x = np.asarray(image, dtype=np.float64)

    def blur(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma, mode="constant", truncate=truncate)

    weight = blur(np.ones(x.shape[1:]))
    mean = np.mean([blur(c) for c in x], axis=0) / weight
    v = x - mean
    s = np.sqrt(np.maximum(np.mean([blur(c * c) for c in v], axis=0) / weight, 0.0))
    return (v / np.maximum(np.maximum(s, s.mean()), eps)).astype(np.float32)


# --------------------------------------------------------------------------
# torch Dataset


class SegmentationDataset(Dataset):
    """A split as (image, label) pairs for torch.

    Items are ``(image, label)``: image a 3xHxW float32 tensor in BGR order
    with values 0..255 (or LCN output with ``lcn=True``), label an HxW int64
    tensor of label ids (``label_space.void`` for void; default CamVid's).

    ``size`` = (new_height, new_width) resizes as DenseImageData did.
    ``in_memory=True`` decodes the whole split once and keeps it as uint8
    tensors (``images``: Nx3xHxW, ``labels``: NxHxW), about 0.65 MB per
    360x480 image, so that training epochs need no file reads.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        size: Size | None = None,
        label_space: LabelSpace | str = DEFAULT_LABEL_SPACE,
        lcn: bool = False,
        in_memory: bool = False,
        limit: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.size = size
        self.lcn = lcn
        self.label_space = get_label_space(label_space)
        self.samples: list[Sample] = list_samples(root, split)[:limit]
        self.images: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        if in_memory:
            pairs = [self._read(s) for s in self.samples]
            shapes = {label.shape for _, label in pairs}
            if len(shapes) > 1:
                raise DataError(
                    f"in_memory needs one image size per split; {root}/{split} has {sorted(shapes)}"
                    " (pass size=(height, width))"
                )
            self.images = torch.from_numpy(np.stack([image for image, _ in pairs]))
            self.labels = torch.from_numpy(np.stack([label for _, label in pairs]))

    def __len__(self) -> int:
        return len(self.samples)

    def load_u8(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(3xHxW uint8 BGR image, HxW uint8 label) of item ``index``."""
        if self.images is not None and self.labels is not None:
            return self.images[index].numpy(), self.labels[index].numpy()
        return self._read(self.samples[index])

    def _read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        return load_pair_u8(sample.image, sample.label, self.label_space, self.size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_u8, label_u8 = self.load_u8(index)
        image = image_u8.astype(np.float32)
        if self.lcn:
            image = local_contrast_normalize(image)
        return torch.from_numpy(image), torch.from_numpy(label_u8.astype(np.int64))
