"""``python -m segnet.onnx_export``: export a SegNet model to ONNX (segnet.deploy.onnx).

    python -m segnet.onnx_export MODEL.pt segnet.onnx [--input-size H,W]

MODEL is a segnet checkpoint, or a converted Caffe net of the SegNet family
(its weights are loaded into the readable model that computes the same).
The input size is the one the model declares (a converted net's input
shape, the size a checkpoint was trained at), else 360x480. The file is
checked with onnxruntime when it is installed: the argmax of both on the
example CamVid image (or ``--check-image``). Needs the optional packages
onnx, onnxscript and onnxruntime (``pip install -e ".[onnx]"``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from converter.layers.data import DEFAULT_IMAGE_SIZE
from converter import CaffeNet
from converter.atomic import refuse_overwriting_inputs, staged_outputs
from converter.errors import UserError, run_command

from segnet.cli import add_input_size_option, add_common_options
from segnet.deploy.onnx import INSTALL_HINT, require_exporter, check_image, check_with_onnxruntime, export_onnx
from segnet.models.caffe_graph import declared_input_size
from segnet.models.checkpoint import load_model
from segnet.models.weights import readable_twin


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m segnet.onnx_export", description=__doc__.splitlines()[0])
    p.add_argument("model", help="segnet checkpoint or converted Caffe net (.pt)")
    p.add_argument("output", help="ONNX file to write")
    add_input_size_option(p, "input_size",
                   help="input size (default: the size the model declares, else 360,480)")  # fmt: skip
    p.add_argument("--check-image", help="image to compare onnxruntime with PyTorch on (default: the example "
                   "CamVid image)")  # fmt: skip
    add_common_options(p)
    args = p.parse_args(argv)
    return run_command(lambda: _command(args))


def _command(args: argparse.Namespace) -> int:
    require_exporter()
    refuse_overwriting_inputs([args.output], [args.model, args.check_image])
    model = load_model(args.model)
    if isinstance(model, CaffeNet):  # export the readable model that computes the same
        twin = readable_twin(model)
        if twin is None:
            raise UserError("ONNX export takes SegNet-family nets (no readable model computes this converted net)",
                            args.model)  # fmt: skip
        model = twin
    size = args.input_size or declared_input_size(model) or DEFAULT_IMAGE_SIZE
    output = Path(args.output)
    with staged_outputs(output.parent) as staging:  # the file (and a weights sidecar) whole, or nothing
        export_onnx(model, staging / output.name, size)
    sidecar = Path(f"{args.output}.data")
    print(f"wrote {args.output} ({size[0]}x{size[1]} input)" + (f" and its weights {sidecar}" if sidecar.exists()
                                                                  else ""))  # fmt: skip
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print(f"not checked: onnxruntime is not installed ({INSTALL_HINT})")
        return 0
    image, name = check_image(size, args.check_image)
    agreement = check_with_onnxruntime(model, args.output, image)
    print(f"onnxruntime check: argmax equal to PyTorch's on {100 * agreement:.3f}% of the pixels of {name} "
          f"at {size[0]}x{size[1]}")  # fmt: skip
    if agreement < 0.999:
        print("error: onnxruntime disagrees with PyTorch on more than 0.1% of the pixels", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
