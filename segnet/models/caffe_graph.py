"""A converted Caffe net used as a segmentation model: images in, class scores out.

``python -m converter`` turns any Caffe net into a :class:`converter.CaffeNet`,
which takes and returns named blobs. :class:`CaffeSegmenter` wraps one so
that it behaves like the readable models: ``model(images)`` is an NxCxHxW
tensor. It finds the image input and the score blob itself (the input of
the net's last Softmax, SoftmaxWithLoss or ArgMax), runs only the layers that blob
needs (a training prototxt's label input, loss and accuracy layers are
skipped), and keeps the net's own gradients, so the graph can be trained as
it is.
"""

from __future__ import annotations

import torch
from torch import nn

from converter import CaffeNet
from converter.checkpoint import brief
from converter.graph import MAX_BLOB_COUNT
from converter.errors import UserError

from segnet.data.resize import Size

_SOFTMAX_TYPES = ("Softmax", "SoftmaxWithLoss")


def score_blob(net: CaffeNet) -> str:
    """The blob holding the class scores: the input of the last Softmax(WithLoss), else of the last ArgMax,
    else the only 4-D output."""
    for step in reversed(net.steps):
        if step.type in _SOFTMAX_TYPES and len(net.blob_shapes[step.bottoms[0]]) == 4:
            if step.tops[0] == step.bottoms[0]:
                raise UserError(f"Softmax layer '{step.name}' overwrites the scores in place (top = bottom): give "
                                "it a top of its own to train or evaluate this net")  # fmt: skip
            return step.bottoms[0]
    for step in reversed(net.steps):  # a deployed net may end in ArgMax without a Softmax
        if step.type == "ArgMax" and len(net.blob_shapes[step.bottoms[0]]) == 4:
            return step.bottoms[0]
    outputs = [b for b in net.output_names if len(net.blob_shapes.get(b) or ()) == 4]
    if len(outputs) != 1:
        raise UserError(f"cannot tell which blob holds the class scores: no Softmax layer and {len(outputs)} 4-D "
                        f"outputs ({', '.join(outputs) or 'none'})")  # fmt: skip
    return outputs[0]


def probability_blob(net: CaffeNet, scores: str) -> str | None:
    """The top of a Softmax over ``scores`` (the deployed net's ``prob``), if the net has one."""
    for step in net.steps:
        if step.type == "Softmax" and step.bottoms[0] == scores and step.tops[0] != scores:
            return step.tops[0]
    return None


class CaffeSegmenter(nn.Module):
    """``model(images)`` -> class scores (NxCxHxW) of a converted Caffe net.

    ``probabilities=True`` returns the net's own Softmax output instead, when
    it has one (what the deployed net computes; its argmax is Caffe's).
    """

    def __init__(self, net: CaffeNet, probabilities: bool = False):
        super().__init__()
        self.net = net
        self.label_space = getattr(net, "label_space", None)  # set when a segnet checkpoint holds the net
        self.scores = score_blob(net)
        self.blob = (probability_blob(net, self.scores) or self.scores) if probabilities else self.scores
        _, inputs = net.plan([self.blob])
        if len(inputs) != 1:
            raise UserError(f"the scores '{self.scores}' need {len(inputs)} net inputs ({', '.join(inputs)}); "
                            "a segmentation net reads one image input")  # fmt: skip
        self.input_name = inputs[0]
        shape = net.input_shapes[self.input_name]
        if shape is None or len(shape) != 4:
            raise UserError(f"the net's input '{self.input_name}' is not an N x C x H x W image blob")

    @property
    def outputs_probabilities(self) -> bool:
        """Whether ``forward`` returns the net's Softmax output rather than the scores."""
        return self.blob != self.scores

    @property
    def num_classes(self) -> int:
        """Output channels (one per label id)."""
        return int(self.net.blob_shapes[self.scores][1])

    @property
    def input_size(self) -> Size:
        """The (H, W) the net is defined for: its Upsample sizes and shapes were built for it."""
        shape = self.net.input_shapes[self.input_name]
        return int(shape[2]), int(shape[3])

    @property
    def in_channels(self) -> int:
        return int(self.net.input_shapes[self.input_name][1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_channels(images, self.in_channels)
        return self.net(**{self.input_name: images}, blobs=[self.blob])[self.blob]


def check_channels(images: torch.Tensor, channels: int) -> None:
    """Refuse a batch that is not N x ``channels`` x H x W: the model's first layer would fail on it."""
    if images.dim() != 4 or images.shape[1] != channels:
        given = f"{images.shape[1]}-channel images" if images.dim() == 4 else f"a {images.dim()}-D tensor"
        raise UserError(f"the model takes {channels}-channel images (N x {channels} x H x W); it was given {given} "
                        f"(shape {list(images.shape)})")  # fmt: skip


def as_segmenter(model: nn.Module, probabilities: bool = False) -> nn.Module:
    """``model`` itself, or a converted net wrapped as a :class:`CaffeSegmenter`."""
    if isinstance(model, CaffeNet):
        return CaffeSegmenter(model, probabilities)
    return model


def declared_input_size(model: nn.Module) -> Size | None:
    """The (H, W) a model is defined or was trained for, when it says (converted nets always do)."""
    if isinstance(model, CaffeNet):
        model = CaffeSegmenter(model)
    size = getattr(model, "input_size", None)
    return None if size is None else valid_input_size(size)


def valid_input_size(size: object, where: str | None = None) -> Size:
    """``size`` as (H, W): two whole numbers from 1 to 2^31-1 (Caffe's most for one blob), or a UserError."""
    if not isinstance(size, (tuple, list)) or len(size) != 2 or \
            not all(type(d) is int and 1 <= d <= MAX_BLOB_COUNT for d in size):  # fmt: skip
        raise UserError(f"an input size must be [height, width], two whole numbers from 1 to {MAX_BLOB_COUNT}, "
                        f"got {brief(size)}", where)  # fmt: skip
    return size[0], size[1]


def num_outputs(model: nn.Module) -> int | None:
    """Output channels of a model (its label space's size), when it says."""
    if isinstance(model, CaffeNet):
        model = CaffeSegmenter(model)
    count = getattr(model, "num_classes", None)
    return int(count) if count else None
