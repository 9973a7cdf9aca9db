"""Export SegNet models to ONNX with MaxPool (with indices) and MaxUnpool.

The export is checked with onnxruntime (:func:`check_with_onnxruntime`):
the argmax of both on the example CamVid image. Needs the optional packages
onnx, onnxscript and onnxruntime (``pip install -e ".[onnx]"``); the
command is ``python -m segnet.onnx_export``.

PyTorch's pooling indices count within each (n, c) plane while ONNX's count
over the whole tensor; the exporter translates MaxPool's indices to planes,
and the MaxUnpool translation below adds the plane offsets back.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from converter.layers.data import DEFAULT_IMAGE_SIZE
from converter.errors import UserError

from segnet.models.layers import Unpool
from segnet.models.surgery import replace_module

OPSET = 18


class _TorchUnpool(nn.Module):
    """Unpooling through ``F.max_unpool2d`` (same numbers as ``Unpool``), which exports as MaxUnpool."""

    def forward(self, x, indices, size):
        return F.max_unpool2d(x, indices, 2, 2, output_size=tuple(size))


def _max_unpool2d(self, indices, output_size):
    from onnxscript import opset18 as op

    h, w = output_size
    shape = op.Shape(self)
    nc = op.Slice(shape, op.Constant(value_ints=[0]), op.Constant(value_ints=[2]))
    planes = op.ReduceProd(nc, keepdims=0)
    offsets = op.Mul(op.Range(op.Constant(value_int=0), planes, op.Constant(value_int=1)), op.Constant(value_int=h * w))
    flat = op.Add(indices, op.Reshape(offsets, op.Concat(nc, op.Constant(value_ints=[1, 1]), axis=0)))
    out_shape = op.Concat(nc, op.Constant(value_ints=[h, w]), axis=0)
    # Caffe's ceil-mode pooling: the unpooled map may be one row/column short of 2x.
    pads = [0, 0, 2 * math.ceil(h / 2) - h, 2 * math.ceil(w / 2) - w]
    return op.MaxUnpool(self, flat, out_shape, kernel_shape=[2, 2], strides=[2, 2], pads=pads)


#: ONNX keeps one file up to protobuf's 2 GB limit; larger models need their weights beside it.
SINGLE_FILE_LIMIT = 2 * 1024**3
INSTALL_HINT = 'pip install -e ".[onnx]" (or: pip install onnx onnxscript onnxruntime)'


def require_exporter() -> None:
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            raise UserError(f"ONNX export needs the '{module}' package: {INSTALL_HINT}") from None


def export_onnx(model: nn.Module, path: str | Path, input_size: tuple[int, int] = DEFAULT_IMAGE_SIZE) -> None:
    """Write ``model`` (fixed input 1 x C x H x W, output class scores) as ONNX.

    One self-contained file, unless the weights pass 2 GB: then they go to
    ``<path>.data`` beside it, as ONNX requires.
    """
    require_exporter()
    model = copy.deepcopy(model).eval()
    for name, module in list(model.named_modules()):
        if isinstance(module, Unpool):
            replace_module(model, name, _TorchUnpool())
    channels = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    example = torch.rand(1, channels, *input_size, generator=torch.Generator().manual_seed(0)) * 255
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the exporter's progress lines and notes about packages it does not need
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example,), str(path), opset_version=OPSET, dynamo=True, input_names=["data"],
                output_names=["scores"], external_data=size >= SINGLE_FILE_LIMIT, verbose=False,
                custom_translation_table={torch.ops.aten.max_unpool2d.default: _max_unpool2d},
            )  # fmt: skip
    finally:
        quiet.setLevel(level)


def onnx_session(path: str | Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_with_onnxruntime(model: nn.Module, path: str | Path, image: torch.Tensor) -> float:
    """Fraction of pixels whose argmax from onnxruntime equals PyTorch's on ``image`` (1 x C x H x W)."""
    with torch.no_grad():
        reference = model.eval()(image).argmax(1).numpy()
    ours = onnx_session(path).run(None, {"data": image.numpy()})[0].argmax(1)
    return float((ours == reference).mean())


def check_image(size: tuple[int, int], path: str | Path | None = None) -> tuple[torch.Tensor, str]:
    """The image the export is checked on: ``path``, else the example CamVid image when present, else noise."""
    from segnet.data.imageio import load_image

    candidate = Path(path) if path else EXAMPLE_IMAGE
    if path or candidate.is_file():
        return torch.from_numpy(load_image(candidate, size))[None], candidate.name
    return torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0)) * 255, "random image"


EXAMPLE_IMAGE = Path(__file__).resolve().parents[2] / "examples" / "segnet_basic_camvid" / "0001TP_008550.png"
