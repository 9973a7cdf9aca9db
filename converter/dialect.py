"""Which Caffe a file was written for: caffe-segnet, mainline BVLC Caffe, or either.

The two forks share most of Caffe's schema, and proto/caffe.proto holds the
union of both. A file is told apart by what only one fork has: layer types
(caffe-segnet's BN, Upsample and DenseImageData; mainline's Crop, BatchNorm,
Scale, Input, ...) and fields (caffe-segnet's ``bn_param`` and loss class
weighting; mainline's ``dilation``, ``crop_param``, loss ``normalization``,
pooling ``round_mode``, ...). Files that use only the common part read the
same under both and are reported as such.

Three field numbers mean different things in the two forks (see the top of
proto/caffe.proto). Text files name their fields, so the meaning is never in
doubt; but a file that uses both meanings of one number (say ``upsample_param``
and ``embed_param``) was written for no Caffe at all, since no fork can hold
both, and is refused. Caffemodels are read for layer names, types and blobs
only (converter.weights), so their clashing numbers are never decoded.

Some third-party forks (ENet's, for one) add mainline features such as
dilation to caffe-segnet; such a net uses both forks' features and still
converts, reported as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import Message

from caffe_proto import caffe_pb2

from .errors import CaffeFormatError

SEGNET = "caffe-segnet"
MAINLINE = "mainline Caffe"
EITHER = "either fork"
BOTH = "both forks' features"

#: Layer types one fork registers and the other does not.
SEGNET_ONLY_TYPES = frozenset({"BN", "Upsample", "DenseImageData"})
MAINLINE_ONLY_TYPES = frozenset({
    "BatchNorm", "BatchReindex", "Bias", "Clip", "Crop", "ELU", "Embed", "Input", "LSTM", "LSTMUnit", "Parameter",
    "RNN", "Scale", "Swish", "Tile",
})  # fmt: skip

#: Repeated in mainline (N-D convolution), a single value in caffe-segnet.
ND_SIZES = "ConvolutionParameter.N-D sizes"
_MAINLINE_REPEATED = frozenset({"ConvolutionParameter.kernel_size", "ConvolutionParameter.pad",
                                "ConvolutionParameter.stride"})  # fmt: skip

#: Fields (message.field) one fork's schema has and the other's lacks.
SEGNET_ONLY_FIELDS = frozenset({
    "LayerParameter.bn_param", "LayerParameter.upsample_param", "LayerParameter.dense_image_data_param",
    "LossParameter.weight_by_label_freqs", "LossParameter.class_weighting", "DropoutParameter.sample_weights_test",
})  # fmt: skip
MAINLINE_ONLY_FIELDS = frozenset({
    "BlobProto.double_data", "BlobProto.double_diff",
    "ConvolutionParameter.axis", "ConvolutionParameter.dilation", "ConvolutionParameter.force_nd_im2col",
    "DataParameter.prefetch", "InfogainLossParameter.axis", "InnerProductParameter.transpose",
    "LRNParameter.engine", "LossParameter.normalization", "PoolingParameter.round_mode",
    "PythonParameter.param_str", "PythonParameter.share_in_parallel",
    "LayerParameter.batch_norm_param", "LayerParameter.bias_param", "LayerParameter.clip_param",
    "LayerParameter.crop_param", "LayerParameter.elu_param", "LayerParameter.embed_param",
    "LayerParameter.input_param", "LayerParameter.parameter_param", "LayerParameter.recurrent_param",
    "LayerParameter.scale_param", "LayerParameter.swish_param", "LayerParameter.tile_param", ND_SIZES,
})  # fmt: skip
#: Types both forks register with different arithmetic, and only caffe-segnet's is converted: refused in a
#: mainline file, with the reason.
MAINLINE_MEANS_OTHERWISE = {
    "InfogainLoss": "mainline Caffe's InfogainLoss applies a softmax to its input first, caffe-segnet's takes "
                    "probabilities: only the latter is converted (use Softmax + caffe-segnet's InfogainLoss, or "
                    "compute the loss outside the net)",
}
#: (caffe-segnet's field, mainline's field, what they share): both in one file fits no Caffe.
CLASHES = (
    ("LayerParameter.upsample_param", "LayerParameter.embed_param", "LayerParameter field 137"),
    ("LayerParameter.dense_image_data_param", "LayerParameter.tile_param", "LayerParameter field 138"),
    ("LossParameter.weight_by_label_freqs", "LossParameter.normalization", "LossParameter field 3"),
)


@dataclass(frozen=True)
class Dialect:
    """The fork a file was written for, with the features that told it (a few of each, in file order)."""

    fork: str
    segnet_features: tuple[str, ...] = ()
    mainline_features: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for the converter's output, e.g. ``mainline Caffe (Crop, crop_param, Input)``."""
        if self.fork == EITHER:
            return f"{EITHER} (only features caffe-segnet and mainline Caffe share)"
        if self.fork == BOTH:
            return (f"{BOTH}: caffe-segnet's {_short(self.segnet_features)} with mainline Caffe's "
                    f"{_short(self.mainline_features)} (a fork that has both, such as ENet's)")  # fmt: skip
        return f"{self.fork} ({_short(self.segnet_features or self.mainline_features)})"


def _short(features: tuple[str, ...], limit: int = 4) -> str:
    shown = ", ".join(features[:limit])
    return shown + (f", +{len(features) - limit} more" if len(features) > limit else "")


def _verdict(segnet: list[str], mainline: list[str]) -> Dialect:
    if segnet and mainline:
        fork = BOTH
    else:
        fork = SEGNET if segnet else MAINLINE if mainline else EITHER
    return Dialect(fork, tuple(segnet), tuple(mainline))


def _add(found: list[str], item: str) -> None:
    if item not in found:
        found.append(item)


def _add_type(kind: str | None, segnet: list[str], mainline: list[str]) -> None:
    if kind in SEGNET_ONLY_TYPES:
        _add(segnet, kind)
    elif kind in MAINLINE_ONLY_TYPES:
        _add(mainline, kind)


def detect_net(net: caffe_pb2.NetParameter, source: str | Path = "<net>") -> Dialect:
    """Tell the fork of a parsed net definition.

    Raises CaffeFormatError for a file that no Caffe can hold, and for a mainline file using a type listed in
    ``MAINLINE_MEANS_OTHERWISE``.
    """
    segnet: list[str] = []
    mainline: list[str] = []
    used: dict[str, str] = {}  # clashing field -> first layer using it
    layers = [*net.layer, *net.layers]
    for layer in layers:
        _add_type(layer.type if isinstance(layer.type, str) else None, segnet, mainline)
        for path in _fields(layer, type(layer).DESCRIPTOR.name):
            if path in SEGNET_ONLY_FIELDS:
                _add(segnet, path.split(".")[1])
            elif path in MAINLINE_ONLY_FIELDS:
                _add(mainline, path.split(".")[1])
            used.setdefault(path, layer.name)
    for segnet_field, mainline_field, number in CLASHES:
        if segnet_field in used and mainline_field in used:
            raise CaffeFormatError(
                f"uses caffe-segnet's {segnet_field.split('.')[1]} (layer '{used[segnet_field]}') and mainline "
                f"Caffe's {mainline_field.split('.')[1]} (layer '{used[mainline_field]}'), which are both "
                f"{number}: no Caffe reads both; keep the one the net's Caffe has", source)  # fmt: skip
    dialect = _verdict(segnet, mainline)
    if dialect.fork == MAINLINE:
        for layer in layers:
            if layer.type in MAINLINE_MEANS_OTHERWISE:
                raise CaffeFormatError(MAINLINE_MEANS_OTHERWISE[layer.type], source, layer.name)
    return dialect


def _fields(message: Message, name: str):
    """Every set field below ``message``, as 'Message.field' paths."""
    for field, value in message.ListFields():
        path = f"{name}.{field.name}"
        if path in _MAINLINE_REPEATED and len(value) > 1:
            yield ND_SIZES  # several sizes in one field: mainline's N-D form
        yield path
        if field.type == field.TYPE_MESSAGE:
            children = [value] if isinstance(value, Message) else value  # one message, or a repeated field
            for child in children:
                yield from _fields(child, field.message_type.name)


def detect_types(types: list[str | None]) -> Dialect:
    """Tell the fork of a caffemodel from its layer types (the only part of a layer it is read for)."""
    segnet: list[str] = []
    mainline: list[str] = []
    for kind in types:
        _add_type(kind, segnet, mainline)
    return _verdict(segnet, mainline)
