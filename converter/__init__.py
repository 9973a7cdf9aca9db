"""Read Caffe (caffe-segnet) models and run them in PyTorch with Caffe's numbers.

    import converter
    net = converter.convert("segnet.prototxt", "segnet.caffemodel")  # a CaffeNet
    prob = net(data=image)["prob"]
    converter.save(net, "segnet.pt"); net = converter.load("segnet.pt")

The command line does the same: ``python -m converter --help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from .checkpoint import load, save
from .errors import CaffeFormatError, UserError, run_command
from .graph import CaffeNet
from .prototxt import parse_net_text, read_net, read_solver
from .weights import CaffeWeights, read_weights


def convert(
    prototxt: str | Path,
    weights: str | Path | CaffeWeights | None = None,
    phase: str = "TEST",
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    allow_missing: bool = False,
    allow_unused: bool = False,
    seed: int | None = 0,
) -> CaffeNet:
    """Build the net of a prototxt and load its weights (or fill it as Caffe would)."""
    net = CaffeNet(read_net(prototxt), phase=phase, input_shapes=input_shapes)
    net.init_weights(seed)
    if weights is not None:
        if not isinstance(weights, CaffeWeights):
            weights = read_weights(weights)
        net.load_caffe_weights(weights, allow_missing=allow_missing, allow_unused=allow_unused)
    return net


__all__ = [
    "CaffeFormatError", "CaffeNet", "CaffeWeights", "UserError", "convert", "load", "parse_net_text", "read_net",
    "run_command",
    "read_solver", "read_weights", "save",
]  # fmt: skip
