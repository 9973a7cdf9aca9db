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


Entries = list[tuple[caffe_pb2.LayerParameter, list[np.ndarray]]]


class _NetWriter:
    """Builds a caffe-segnet NetParameter layer by layer, with the blobs each layer's caffemodel entry holds."""

    def __init__(self, model: SegNet, bn_mode: str, name: str):
        self.model, self.bn_mode = model, bn_mode
        self.net = caffe_pb2.NetParameter(name=name)
        self.entries: Entries = []

    def add(self, name: str, kind: str, bottoms: list[str], tops: list[str]) -> caffe_pb2.LayerParameter:
        layer = self.net.layer.add(name=name, type=kind)
        layer.bottom.extend(bottoms)
        layer.top.extend(tops)
        return layer

    def conv(self, name: str, bottom: str, relu: bool, classifier: bool = False) -> str:
        """Convolution, then (not for the classifier) BN and ReLU in place, as SegNet-Tutorial writes them."""
        module: nn.Conv2d = getattr(self.model, name)
        layer = self.add(name, "Convolution", [bottom], [name])
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
        self.entries.append((layer, [module.weight.detach().cpu().numpy(), module.bias.detach().cpu().numpy()]))
        if classifier:
            return name
        mode, blobs = _bn_blobs(getattr(self.model, f"{name}_bn"), self.bn_mode)
        bn = self.add(f"{name}_bn", "BN", [name], [name])
        bn.bn_param.bn_mode = caffe_pb2.BNParameter.BNMode.Value(mode)
        self.entries.append((bn, blobs))
        if relu:
            self.add(f"relu{name[4:]}", "ReLU", [name], [name])  # conv1_1 -> relu1_1, conv1 -> relu1
        return name

    def dropout(self, name: str, blob: str) -> None:
        layer = self.add(name, "Dropout", [blob], [blob])
        layer.dropout_param.dropout_ratio = DROPOUT_RATIO
        layer.dropout_param.sample_weights_test = True

    def encoder(self, blob: str, input_size: tuple[int, int]) -> tuple[str, list[tuple[int, int]]]:
        """Conv units and MAX pooling with masks per stage; returns the last blob and each stage's input size."""
        model, arch = self.model, self.model.arch
        sizes = []
        h, w = input_size
        for stage, widths in enumerate(arch.encoder, start=1):
            for j in range(1, len(widths) + 1):
                blob = self.conv(model.encoder_name(stage, j), blob, relu=True)
            sizes.append((h, w))
            pool = self.add(f"pool{stage}", "Pooling", [blob], [f"pool{stage}", f"pool{stage}_mask"])
            pool.pooling_param.pool = caffe_pb2.PoolingParameter.MAX
            pool.pooling_param.kernel_size, pool.pooling_param.stride = 2, 2
            blob = f"pool{stage}"
            h, w = pool_output_size(h, 2, 2, 0), pool_output_size(w, 2, 2, 0)
            if stage in arch.encoder_dropout:
                self.dropout(f"encdrop{stage}", blob)
        return blob, sizes

    def decoder(self, blob: str, sizes: list[tuple[int, int]]) -> str:
        """Upsample with the pooling masks to each stage's size, then its conv units (and additions, dropout)."""
        model, arch = self.model, self.model.arch
        for depth, widths in enumerate(arch.decoder):
            stage = len(arch.decoder) - depth
            up = self.add(f"upsample{stage}", "Upsample", [blob, f"pool{stage}_mask"], [f"upsample{stage}"])
            up.upsample_param.upsample_h, up.upsample_param.upsample_w = sizes[stage - 1]
            blob = f"upsample{stage}"
            for j in range(len(widths)):
                blob = self.conv(model.decoder_name(stage, j), blob, relu=arch.decoder_relu)
            if arch.encoder_addition:  # EncoderAddition: the encoder's maps before pooling, added
                encoder_blob = model.encoder_name(stage, len(arch.encoder[stage - 1]))
                add = self.add(f"{blob}_add", "Eltwise", [blob, encoder_blob], [f"{blob}_add"])
                add.eltwise_param.operation = caffe_pb2.EltwiseParameter.SUM
                blob = f"{blob}_add"
            if stage in arch.decoder_dropout:
                self.dropout(f"decdrop{stage}", blob)
        return blob


def to_caffe(
    model: SegNet, input_size: tuple[int, int] = DEFAULT_IMAGE_SIZE, bn_mode: str = "inference", batch: int = 1
) -> tuple[caffe_pb2.NetParameter, Entries]:
    """The network definition and its (layer, blobs) entries for a caffemodel."""
    writer = _NetWriter(model, bn_mode, model.arch.name.replace(" ", "_"))
    net = writer.net
    net.input.append("data")
    net.input_shape.add().dim.extend([batch, getattr(model, model.encoder_name(1, 1)).in_channels, *input_size])
    blob = "data"
    if model.norm is not None:
        layer = writer.add("norm", "LRN", [blob], ["norm"])
        layer.lrn_param.local_size, layer.lrn_param.alpha, layer.lrn_param.beta = 5, 1e-4, 0.75
        blob = "norm"
    blob, sizes = writer.encoder(blob, input_size)
    blob = writer.decoder(blob, sizes)
    blob = writer.conv(model.classifier_name, blob, relu=False, classifier=True)
    writer.add("prob", "Softmax", [blob], ["prob"])
    return net, writer.entries


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
