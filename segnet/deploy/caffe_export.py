"""Export SegNet models back to caffe-segnet files (prototxt + binary caffemodel); ``python -m segnet.export`` is its command.

The prototxt uses the layer names, types and blob shapes of SegNet-Tutorial's
inference files: Convolution -> BN -> ReLU writing one blob in place, MAX
pooling with a ``<pool>_mask`` top, Upsample with explicit ``upsample_h/w``
(the size the pooling started from), Dropout with ``sample_weights_test``
for Bayesian models, and a final Softmax ``prob``. The converter reads the
pair back to the same outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format
from torch import nn

from caffe_proto import caffe_pb2
from converter.layers.data import DEFAULT_IMAGE_SIZE
from converter.functional import pool_output_size
from converter.atomic import atomic_write
from converter import CaffeNet
from converter.writer import save_caffemodel, write_caffemodel

from segnet.models.family import DROPOUT_RATIO, SegNet
from segnet.models.layers import CaffeBN
from segnet.models.surgery import bn_to_caffe


def _bn_blobs(module: nn.Module, mode: str) -> tuple[str, list[np.ndarray]]:
    if isinstance(module, nn.BatchNorm2d):
        module = bn_to_caffe(module, mode)
    elif isinstance(module, CaffeBN) and module.mode != mode.upper():
        raise ValueError(f"a {module.mode.upper()} BN cannot be exported as {mode.upper()}")
    return module.mode, [module.scale.detach().cpu().numpy(), module.shift.detach().cpu().numpy()]


def to_caffe(
    model: SegNet, input_size: tuple[int, int] = DEFAULT_IMAGE_SIZE, bn_mode: str = "inference", batch: int = 1
) -> tuple[caffe_pb2.NetParameter, list[tuple[caffe_pb2.LayerParameter, list[np.ndarray]]]]:
    """The network definition and its (layer, blobs) entries for a caffemodel."""
    arch = model.arch
    net = caffe_pb2.NetParameter(name=arch.name.replace(" ", "_"))
    net.input.append("data")
    net.input_shape.add().dim.extend([batch, getattr(model, model.encoder_name(1, 1)).in_channels, *input_size])
    entries: list[tuple[caffe_pb2.LayerParameter, list[np.ndarray]]] = []

    def add(name: str, kind: str, bottoms: list[str], tops: list[str]) -> caffe_pb2.LayerParameter:
        layer = net.layer.add(name=name, type=kind)
        layer.bottom.extend(bottoms)
        layer.top.extend(tops)
        return layer

    def conv(name: str, bottom: str, relu: bool, classifier: bool = False) -> str:
        module: nn.Conv2d = getattr(model, name)
        layer = add(name, "Convolution", [bottom], [name])
        layer.param.add(lr_mult=1, decay_mult=1)
        layer.param.add(lr_mult=2, decay_mult=0)
        p = layer.convolution_param
        p.num_output = module.out_channels
        if module.groups > 1:
            p.group = module.groups  # SingleChannelDecoder: each filter sees its own map
        p.kernel_size.append(module.kernel_size[0])
        p.pad.append(module.padding[0])
        p.weight_filler.type = "msra"
        p.bias_filler.type = "constant"
        entries.append((layer, [module.weight.detach().cpu().numpy(), module.bias.detach().cpu().numpy()]))
        if classifier:
            return name
        mode, blobs = _bn_blobs(getattr(model, f"{name}_bn"), bn_mode)
        bn = add(f"{name}_bn", "BN", [name], [name])
        bn.bn_param.bn_mode = caffe_pb2.BNParameter.BNMode.Value(mode)
        entries.append((bn, blobs))
        if relu:
            add(f"relu{name[4:]}", "ReLU", [name], [name])  # conv1_1 -> relu1_1, conv1 -> relu1
        return name

    def dropout(name: str, blob: str) -> None:
        layer = add(name, "Dropout", [blob], [blob])
        layer.dropout_param.dropout_ratio = DROPOUT_RATIO
        layer.dropout_param.sample_weights_test = True

    blob = "data"
    if model.norm is not None:
        layer = add("norm", "LRN", [blob], ["norm"])
        layer.lrn_param.local_size, layer.lrn_param.alpha, layer.lrn_param.beta = 5, 1e-4, 0.75
        blob = "norm"
    sizes = []
    h, w = input_size
    for stage, widths in enumerate(arch.encoder, start=1):
        for j in range(1, len(widths) + 1):
            blob = conv(model.encoder_name(stage, j), blob, relu=True)
        sizes.append((h, w))
        pool = add(f"pool{stage}", "Pooling", [blob], [f"pool{stage}", f"pool{stage}_mask"])
        pool.pooling_param.pool = caffe_pb2.PoolingParameter.MAX
        pool.pooling_param.kernel_size, pool.pooling_param.stride = 2, 2
        blob = f"pool{stage}"
        h, w = pool_output_size(h, 2, 2, 0), pool_output_size(w, 2, 2, 0)
        if stage in arch.encoder_dropout:
            dropout(f"encdrop{stage}", blob)
    for depth, widths in enumerate(arch.decoder):
        stage = len(arch.decoder) - depth
        up = add(f"upsample{stage}", "Upsample", [blob, f"pool{stage}_mask"], [f"upsample{stage}"])
        up.upsample_param.upsample_h, up.upsample_param.upsample_w = sizes[stage - 1]
        blob = f"upsample{stage}"
        for j in range(len(widths)):
            blob = conv(model.decoder_name(stage, j), blob, relu=arch.decoder_relu)
        if arch.encoder_addition:  # EncoderAddition: the encoder's maps before pooling, added
            encoder_blob = model.encoder_name(stage, len(arch.encoder[stage - 1]))
            add(f"{blob}_add", "Eltwise", [blob, encoder_blob], [f"{blob}_add"]).eltwise_param.operation = \
                caffe_pb2.EltwiseParameter.SUM  # fmt: skip
            blob = f"{blob}_add"
        if stage in arch.decoder_dropout:
            dropout(f"decdrop{stage}", blob)
    blob = conv(model.classifier_name, blob, relu=False, classifier=True)
    add("prob", "Softmax", [blob], ["prob"])
    return net, entries


def export_caffe(
    model: SegNet,
    prototxt: str | Path,
    caffemodel: str | Path,
    input_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    bn_mode: str = "inference",
) -> None:
    """Write ``model`` as a caffe-segnet prototxt and caffemodel.

    ``bn_mode`` "inference" folds PyTorch BatchNorm running statistics into
    scale and shift (the deployable form); "learn" exports batch-statistics BN.
    """
    with torch.no_grad():
        net, entries = to_caffe(model, input_size, bn_mode)
    text = text_format.MessageToString(net).encode("utf-8")
    atomic_write(prototxt, lambda f: f.write(text))
    write_caffemodel(caffemodel, entries, name=net.name)


def export_graph(net: CaffeNet, prototxt: str | Path, caffemodel: str | Path) -> None:
    """Write a converted (possibly fine-tuned) Caffe net back as its own prototxt and caffemodel."""
    text = net.prototxt.encode("utf-8")
    atomic_write(prototxt, lambda f: f.write(text))
    save_caffemodel(net, caffemodel)
