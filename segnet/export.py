"""``python -m segnet.export``: write a model as a caffe-segnet prototxt + caffemodel (segnet.deploy.caffe_export)."""

from __future__ import annotations

import argparse

from converter.layers.data import DEFAULT_IMAGE_SIZE
from converter import CaffeNet
from converter.atomic import refuse_overwriting_inputs
from converter.errors import UserError, run_command

from segnet.cli import add_input_size_option, add_common_options
from segnet.deploy.caffe_export import export_caffe, export_graph
from segnet.models.caffe_graph import declared_input_size
from segnet.models.checkpoint import load_model
from segnet.models.family import in_segnet_family
from segnet.models.weights import readable_twin


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m segnet.export",
        description="Write a model as a caffe-segnet prototxt + caffemodel.",
        epilog="A SegNet-family model (a segnet checkpoint, or a converted net the readable models recognise) is "
               "written with SegNet-Tutorial's layer names at the chosen BN mode; any other converted net, "
               "fine-tuned or not, is written back as its own network definition.",
    )  # fmt: skip
    p.add_argument("checkpoint", help="a segnet checkpoint (python -m segnet.train) or a converted Caffe net")
    p.add_argument("--prototxt", required=True, help="network definition to write")
    p.add_argument("--caffemodel", required=True, help="weights to write")
    add_input_size_option(p, "input_size",
                   help="H,W the prototxt declares (default: the size the model declares, else 360,480)")
    p.add_argument("--bn-mode", choices=["inference", "learn"], default="inference",
                   help="inference: fold BN statistics in (deployable, default); learn: batch-statistics BN")  # fmt: skip
    add_common_options(p)
    args = p.parse_args(argv)
    return run_command(lambda: _command(args))


def _command(args: argparse.Namespace) -> int:
    refuse_overwriting_inputs([args.prototxt, args.caffemodel], [args.checkpoint])
    refuse_overwriting_inputs([args.prototxt], [args.caffemodel])
    model = load_model(args.checkpoint)
    if isinstance(model, CaffeNet):
        model = readable_twin(model) or model
    if isinstance(model, CaffeNet):
        if args.input_size and args.input_size != declared_input_size(model):
            raise UserError("a converted net is written at the size it was built for; drop --input-size",
                            args.checkpoint)  # fmt: skip
        export_graph(model, args.prototxt, args.caffemodel)
    elif in_segnet_family(model):
        size = args.input_size or declared_input_size(model) or DEFAULT_IMAGE_SIZE
        export_caffe(model, args.prototxt, args.caffemodel, size, args.bn_mode)
    else:
        raise UserError(f"{type(model).__name__} does not export to caffe-segnet files (the SegNet family and "
                        "converted nets do)", args.checkpoint)  # fmt: skip
    print(f"wrote {args.prototxt} and {args.caffemodel}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
