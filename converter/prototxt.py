"""Reading network definitions (.prototxt) into one normalised form.

Users' files come in several dialects: net-level inputs as ``input_shape``,
as the legacy ``input_dim`` list, or as an ``Input`` layer; layers as the
current ``layer { type: "Convolution" }`` or the legacy
``layers { type: CONVOLUTION blobs_lr: 1 }``. ``read_net`` returns a
``NetParameter`` in the current form: ``layer`` entries only, with every
net-level input carrying an ``input_shape``. ``layers_for_phase`` then applies
the include/exclude rules for a phase, as Caffe's ``Net::FilterNet`` does.
"""

from __future__ import annotations

import os
from pathlib import Path

from google.protobuf import text_format

from caffe_proto import caffe_pb2

from . import budget
from .dialect import detect_net
from .errors import CaffeFormatError

# Legacy V1 layer type enum names -> current type strings.
V1_TYPE_NAMES = {
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DATA": "Data",
    "DECONVOLUTION": "Deconvolution",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}

# Parameter messages that V1 and current layers share under the same name.
_V1_SHARED_PARAMS = [
    "accuracy_param", "argmax_param", "concat_param", "contrastive_loss_param",
    "convolution_param", "data_param", "dropout_param", "dummy_data_param",
    "eltwise_param", "exp_param", "hdf5_data_param", "hdf5_output_param",
    "hinge_loss_param", "image_data_param", "infogain_loss_param",
    "inner_product_param", "lrn_param", "memory_data_param", "mvn_param",
    "pooling_param", "power_param", "relu_param", "sigmoid_param",
    "softmax_param", "slice_param", "tanh_param", "threshold_param",
    "window_data_param", "transform_param", "loss_param",
]  # fmt: skip


#: Memory parsing and building a net takes per byte of prototxt text (measured: about 11 to parse, 55 to build).
TEXT_MEMORY_FACTOR = 80


def parse_net_text(text: str, source: str | Path = "<text>") -> caffe_pb2.NetParameter:
    """Parse prototxt text and normalise it (see module docstring); a net without layers is an error."""
    if not text.strip():
        raise CaffeFormatError("empty net definition (no text)", source)
    budget.check(len(text) * TEXT_MEMORY_FACTOR, f"parsing and building a net from {len(text)} bytes of prototxt",
                 source)  # fmt: skip
    net = caffe_pb2.NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as exc:
        solver = caffe_pb2.SolverParameter()
        try:  # a solver given where a net belongs: say so, and name the net it points to
            text_format.Parse(text, solver)
        except text_format.ParseError:
            raise CaffeFormatError(f"not a valid net prototxt: {exc}", source) from None
        points = f"its net is '{solver.net}': give that file" if solver.net else "it names no net file"
        raise CaffeFormatError(f"a solver prototxt, not a net definition ({points})", source) from None
    net = normalise_net(net, source)
    if not net.layer:
        raise CaffeFormatError("a net definition without layers (no 'layer' or 'layers' entries)", source)
    detect_net(net, source)  # refuses what no Caffe can hold, and what is converted for caffe-segnet only
    return net


def read_net(path: str | Path) -> caffe_pb2.NetParameter:
    """Read a .prototxt network definition (any of the dialects above)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            budget.check(size * TEXT_MEMORY_FACTOR, f"parsing and building a net from {size} bytes of prototxt", path)
            raw = f.read()
    except OSError as exc:
        raise CaffeFormatError(f"cannot read prototxt: {exc.strerror or exc}", path) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CaffeFormatError(
            "not a text prototxt (binary data; was a caffemodel given in its place?)", path
        ) from None
    return parse_net_text(text, path)


def read_solver(path: str | Path) -> caffe_pb2.SolverParameter:
    """Read a solver .prototxt (learning rate, momentum, net path, ...)."""
    path = Path(path)
    solver = caffe_pb2.SolverParameter()
    try:
        text_format.Parse(path.read_text(encoding="utf-8"), solver)
    except OSError as exc:
        raise CaffeFormatError(f"cannot read solver: {exc.strerror or exc}", path) from None
    except text_format.ParseError as exc:
        raise CaffeFormatError(f"not a valid solver prototxt: {exc}", path) from None
    return solver


def normalise_net(net: caffe_pb2.NetParameter, source: str | Path = "<net>") -> caffe_pb2.NetParameter:
    """Upgrade legacy fields in place: V1 layers and input_dim. Returns ``net``."""
    if net.layers:
        if net.layer:
            raise CaffeFormatError("net mixes 'layer' and legacy 'layers' entries", source)
        for old in net.layers:
            _upgrade_v1_layer(old, net.layer.add(), source)
        del net.layers[:]
    _upgrade_inputs(net, source)
    return net


def _upgrade_v1_layer(old: caffe_pb2.V1LayerParameter, new: caffe_pb2.LayerParameter, source) -> None:
    if old.HasField("layer"):
        raise CaffeFormatError("V0 layer definitions (before 2014) are not supported", source, old.name)
    new.name = old.name
    new.bottom.extend(old.bottom)
    new.top.extend(old.top)
    if old.HasField("type"):
        enum_name = caffe_pb2.V1LayerParameter.LayerType.Name(old.type)
        new.type = V1_TYPE_NAMES.get(enum_name, enum_name)
    new.include.extend(old.include)
    new.exclude.extend(old.exclude)
    new.loss_weight.extend(old.loss_weight)
    new.blobs.extend(old.blobs)
    # Per-blob training settings move into ParamSpec entries.
    n_specs = max(len(old.param), len(old.blobs_lr), len(old.weight_decay), len(old.blob_share_mode))
    for i in range(n_specs):
        spec = new.param.add()
        if i < len(old.param):
            spec.name = old.param[i]
        if i < len(old.blobs_lr):
            spec.lr_mult = old.blobs_lr[i]
        if i < len(old.weight_decay):
            spec.decay_mult = old.weight_decay[i]
        if i < len(old.blob_share_mode):
            spec.share_mode = old.blob_share_mode[i]
    for field in _V1_SHARED_PARAMS:
        if old.HasField(field):
            getattr(new, field).CopyFrom(getattr(old, field))


def _upgrade_inputs(net: caffe_pb2.NetParameter, source) -> None:
    if net.input_dim:
        if net.input_shape:
            raise CaffeFormatError("net gives both input_dim and input_shape", source)
        if len(net.input_dim) != 4 * len(net.input):
            raise CaffeFormatError(
                f"input_dim needs 4 numbers per input: {len(net.input)} input(s), "
                f"{len(net.input_dim)} numbers",
                source,
            )
        for i in range(len(net.input)):
            net.input_shape.add().dim.extend(net.input_dim[4 * i : 4 * i + 4])
        del net.input_dim[:]
    if net.input_shape and len(net.input_shape) != len(net.input):
        raise CaffeFormatError(
            f"{len(net.input)} input(s) but {len(net.input_shape)} input_shape entries", source
        )


def phase_value(phase: str | int) -> int:
    """Caffe's number of a phase given by name (TRAIN, TEST) or number (0, 1); anything else is a CaffeFormatError."""
    if isinstance(phase, str) and phase.upper() in caffe_pb2.Phase.keys():
        return caffe_pb2.Phase.Value(phase.upper())
    if type(phase) is int and phase in caffe_pb2.Phase.values():
        return phase
    shown = repr(phase) if isinstance(phase, (str, int)) else f"a {type(phase).__name__}"
    raise CaffeFormatError(f"unknown phase {shown[:40]}: use TRAIN or TEST")


def layers_for_phase(
    net: caffe_pb2.NetParameter, phase: str | int = "TEST", level: int | None = None, stages: list[str] | None = None
) -> list[caffe_pb2.LayerParameter]:
    """The layers a Caffe net built in ``phase`` contains, in order.

    The net's own ``state`` gives the level and stages unless overridden.
    """
    state = caffe_pb2.NetState()
    state.CopyFrom(net.state)
    state.phase = phase_value(phase)
    if level is not None:
        state.level = level
    if stages is not None:
        del state.stage[:]
        state.stage.extend(stages)
    kept = []
    for layer in net.layer:
        if layer.include and layer.exclude:
            raise CaffeFormatError("a layer may give include or exclude rules, not both", layer=layer.name)
        if layer.include:
            keep = any(_meets(state, rule) for rule in layer.include)
        else:
            keep = not any(_meets(state, rule) for rule in layer.exclude)
        if keep:
            kept.append(layer)
    return kept


def _meets(state: caffe_pb2.NetState, rule: caffe_pb2.NetStateRule) -> bool:
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    if any(stage not in state.stage for stage in rule.stage):
        return False
    if any(stage in state.stage for stage in rule.not_stage):
        return False
    return True


def net_to_text(net: caffe_pb2.NetParameter) -> str:
    """The net as prototxt text, without blobs."""
    copy = caffe_pb2.NetParameter()
    copy.CopyFrom(net)
    for layer in copy.layer:
        del layer.blobs[:]
    return text_format.MessageToString(copy)
