"""Export SegNet models to ONNX with MaxPool (with indices) and MaxUnpool.

    python -m segnet.onnx_export MODEL.pt segnet.onnx [--input-size 360,480]

MODEL is a segnet checkpoint, or a converted Caffe net of the SegNet family
(its weights are loaded into the matching readable model). Needs the
optional packages onnx, onnxscript and, to check the result, onnxruntime
(``pip install -e ".[onnx]"``).

PyTorch's pooling indices count within each (n, c) plane while ONNX's count
over the whole tensor; the exporter translates MaxPool's indices to planes,
and the MaxUnpool translation below adds the plane offsets back.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from converter.errors import UserError

from .cli import run
from .nn import Unpool

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


def export_onnx(model: nn.Module, path: str | Path, input_size: tuple[int, int] = (360, 480)) -> None:
    """Write ``model`` (fixed input 1 x 3 x H x W, output class scores) as ONNX."""
    model = copy.deepcopy(model).eval()
    for name, module in list(model.named_modules()):
        if isinstance(module, Unpool):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, _TorchUnpool())
    example = torch.rand(1, 3, *input_size) * 255
    torch.onnx.export(
        model, (example,), str(path), opset_version=OPSET, dynamo=True, input_names=["data"],
        output_names=["scores"], custom_translation_table={torch.ops.aten.max_unpool2d.default: _max_unpool2d},
    )  # fmt: skip


def onnx_session(path: str | Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m segnet.onnx_export", description=__doc__.splitlines()[0])
    p.add_argument("model", help="segnet checkpoint or converted Caffe net (.pt)")
    p.add_argument("output", help="ONNX file to write")
    p.add_argument("--input-size", default="360,480", help="H,W (default 360,480)")
    args = p.parse_args(argv)
    return run(lambda: _command(args))


def _command(args) -> int:
    from .checkpoint import load_model
    from .models import SegNet
    from .weights import architecture_of, load_caffe_weights

    model = load_model(args.model)
    if hasattr(model, "steps"):  # a converted Caffe net: use the readable model of its architecture
        arch = architecture_of(model)
        if arch is None:
            raise UserError("not a SegNet or SegNet-Basic net", args.model)
        model = load_caffe_weights(SegNet(arch), model)
    size = tuple(int(v) for v in args.input_size.split(","))
    export_onnx(model, args.output, size)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
