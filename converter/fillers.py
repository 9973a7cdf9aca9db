"""Caffe's weight fillers, for nets built from a prototxt without weights.

Each follows Caffe's definition (filler.hpp), with fan-in = count / shape[0]
and fan-out = count / shape[1] (count for a 1-axis blob) as Caffe computes
them for any blob shape. ``sparse`` (the mean number of non-zero values per
output, -1 for dense) is the gaussian filler's alone, on a blob of at least
one axis; Caffe refuses it on the others. ``bilinear`` is mainline Caffe's
(caffe-segnet has none): the kernel of a k x k upsampling, f = ceil(k / 2),
c = (k - 1) / (2f), value (1 - |x/f - c|) * (1 - |y/f - c|).
"""

from __future__ import annotations

import math

import torch

from caffe_proto import caffe_pb2

from .errors import CaffeFormatError


def fill(tensor: torch.Tensor, filler: caffe_pb2.FillerParameter, generator: torch.Generator | None = None) -> None:
    """Fill ``tensor`` in place as Caffe's filler ``filler`` would."""
    kind = filler.type
    shape = tuple(tensor.shape)
    count = tensor.numel()
    if filler.sparse < -1 or (filler.sparse >= 0 and kind != "gaussian"):
        raise CaffeFormatError(f"filler sparse {filler.sparse}: only the gaussian filler takes it (>= 0, or -1 for "
                               "none)")  # fmt: skip
    if tensor.dim() == 0 and kind in ("positive_unitball", "xavier", "msra", "bilinear"):
        raise CaffeFormatError(f"the {kind} filler needs a blob of 1 or more axes; this one is a single value")
    with torch.no_grad():
        if kind == "constant":
            tensor.fill_(filler.value)
        elif kind == "uniform":
            tensor.uniform_(filler.min, filler.max, generator=generator)
        elif kind == "gaussian":
            tensor.normal_(filler.mean, filler.std, generator=generator)
            if filler.sparse >= 0:
                if tensor.dim() < 1:
                    raise CaffeFormatError("sparse gaussian filler needs a blob of 1 or more axes")
                keep = filler.sparse / shape[0]
                mask = torch.rand(shape, generator=generator) < keep
                tensor.mul_(mask.to(tensor.dtype))
        elif kind == "positive_unitball":
            tensor.uniform_(0, 1, generator=generator)
            flat = tensor.view(shape[0], -1)
            flat.div_(flat.sum(dim=1, keepdim=True))
        elif kind in ("xavier", "msra"):
            fan_in = count / shape[0]
            fan_out = count / shape[1] if len(shape) > 1 else count
            norm = caffe_pb2.FillerParameter.VarianceNorm.Name(filler.variance_norm)
            n = {"FAN_IN": fan_in, "FAN_OUT": fan_out, "AVERAGE": (fan_in + fan_out) / 2}[norm]
            if kind == "xavier":
                bound = math.sqrt(3.0 / n)
                tensor.uniform_(-bound, bound, generator=generator)
            else:
                tensor.normal_(0.0, math.sqrt(2.0 / n), generator=generator)
        elif kind == "bilinear":
            _bilinear(tensor)
        else:
            raise CaffeFormatError(f"unknown filler type '{kind}'")


def _bilinear(tensor: torch.Tensor) -> None:
    """The bilinear-interpolation kernel Caffe uses to initialise upsampling deconvolutions."""
    if tensor.dim() != 4 or tensor.shape[2] != tensor.shape[3]:
        raise CaffeFormatError("bilinear filler needs a 4-D blob with square kernels")
    k = tensor.shape[3]
    f = math.ceil(k / 2)
    c = (k - 1) / (2.0 * f)
    pos = torch.arange(k, dtype=torch.float64)
    profile = 1 - (pos / f - c).abs()
    kernel = (profile[:, None] * profile[None, :]).to(tensor.dtype)
    tensor.copy_(kernel.expand_as(tensor))
