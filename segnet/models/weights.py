"""Loading converted Caffe weights into the readable models, by layer name.

Sources: a ``converter.CaffeNet`` (already loaded), a checkpoint written by
``python -m converter`` (``.pt``), or a prototxt + caffemodel pair. Each Caffe
layer with parameters must have a module of the same name in the model:
convolutions and deconvolutions take weight and bias as they are; a BN layer
replaces the model's BN module by a ``CaffeBN`` in the file's mode (LEARN or
INFERENCE), so that the model computes what Caffe computes. Call
``segnet.models.layers.convert_bn(model, "pytorch")`` afterwards to fine-tune with
PyTorch's BatchNorm instead.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

import converter
from converter import CaffeNet
from converter.errors import UserError

from segnet.models.caffe_graph import CaffeSegmenter
from segnet.models.family import DROPOUT_RATIO, SEGNET, SEGNET_BASIC, Architecture, SegNet, decoder_name
from segnet.models.layers import CaffeBN
from segnet.models.surgery import replace_module


class WeightMismatchError(UserError):
    """The weights do not fit the model: one line naming the first problem and how many more.

    ``problems`` lists every problem found, one string per layer.
    """

    def __init__(self, problems: list[str], source: str | Path | None = None):
        self.problems = list(problems)
        more = f"; and {len(problems) - 1} more" if len(problems) > 1 else ""
        super().__init__(f"weights do not fit the model: {problems[0]}{more}", source)


#: Caffe layer names that SegNet-Tutorial's files use for a module the readable models name otherwise.
NAME_ALIASES = {"dense_softmax_inner_prod": "conv_classifier"}  # Bayesian SegNet-Basic's classifier


def architecture_of(net: CaffeNet) -> Architecture | None:
    """The SegNet-family architecture a converted net's layer names and dropout layers describe, if any.

    The layer names say SegNet (``conv1_1`` ... ``conv1_1_D``) or SegNet-Basic
    (``conv1`` ... ``conv_decode1``); each Dropout layer reading a ``pool<N>``
    blob is encoder dropout of stage N, one after ``upsample<N>`` decoder
    dropout of stage N (Bayesian SegNet). Whether the weights really fit is
    for :func:`readable_twin` to check.
    """
    names = {step.name for step in net.steps}
    if "conv_decode1" in names:
        base = SEGNET_BASIC
    elif "conv1_1_D" in names:
        base = SEGNET
    else:
        return None
    encoder, decoder, stage = [], [], None
    for step in net.steps:
        upsample = re.fullmatch(r"upsample(\d+)", step.name)
        if step.type == "Upsample" and upsample:
            stage = int(upsample[1])
        elif step.type == "Dropout":
            pool = re.fullmatch(r"pool(\d+)", step.bottoms[0])
            if pool and stage is None:
                encoder.append(int(pool[1]))
            elif stage is not None:
                decoder.append(stage)
            else:
                return None
            if abs(net.layer(step.name).ratio - DROPOUT_RATIO) > 1e-6:
                return None
    arch = base
    if encoder or decoder:
        arch = replace(arch, name=f"Bayesian {base.name}", encoder_dropout=tuple(encoder), decoder_dropout=tuple(decoder))
    decoders = [step for step in net.steps if step.type == "Convolution" and step.name in _decoder_names(base)]
    if decoders and all(net.layer(step.name).group > 1 for step in decoders):
        arch = replace(arch, name=f"{arch.name}-SingleChannelDecoder", single_channel_decoder=True)
    if any(step.type == "Eltwise" and step.bottoms[0] in _decoder_names(base) for step in net.steps):
        arch = replace(arch, name=f"{arch.name}-EncoderAddition", encoder_addition=True)
    return arch


def _decoder_names(arch: Architecture) -> set[str]:
    """Layer names of the decoder convolutions (classifier excluded) of an architecture."""
    stages = len(arch.decoder)
    return {decoder_name(arch, stages - depth, j) for depth, widths in enumerate(arch.decoder) for j in range(len(widths))}


def readable_twin(net: CaffeNet) -> SegNet | None:
    """The readable SegNet-family model that computes what ``net`` computes, or None.

    Built from :func:`architecture_of`, loaded with the net's weights, and
    accepted only when both give the same scores on a random image at the
    net's input size (dropout off), as a conversion script checks its output.
    """
    arch = architecture_of(net)
    if arch is None:
        return None
    try:
        graph = CaffeSegmenter(net)
    except UserError:
        return None
    model = SegNet(arch, num_classes=graph.num_classes, in_channels=graph.in_channels)
    try:
        load_caffe_weights(model, net)
    except WeightMismatchError:
        return None
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, graph.in_channels, *graph.input_size, generator=generator) * 255
    dropouts = [m for _, m in net.named_layers() if hasattr(m, "mc_dropout")]
    was_training, sampling = net.training, [m.mc_dropout for m in dropouts]
    net.eval()
    net.set_mc_dropout(False)
    try:
        with torch.no_grad():
            ours, theirs = model.eval()(x), graph(x)
    finally:
        net.train(was_training)
        for m, flag in zip(dropouts, sampling):
            m.mc_dropout = flag
    if ours.shape != theirs.shape or not torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4 * float(theirs.abs().max())):
        return None
    model.input_size = graph.input_size
    return model


def open_caffe_net(source: CaffeNet | str | Path | tuple[str | Path, str | Path]) -> CaffeNet:
    if isinstance(source, CaffeNet):
        return source
    if isinstance(source, tuple):
        prototxt, caffemodel = source
        return converter.convert(prototxt, caffemodel)
    return converter.load(source)


def load_caffe_weights(
    model: nn.Module, source: CaffeNet | str | Path | tuple[str | Path, str | Path], strict: bool = True
) -> nn.Module:
    """Copy Caffe parameters into ``model`` by layer name; returns ``model``.

    With ``strict`` (the default), a model layer without weights, a Caffe
    layer without a module, or any shape mismatch raises one
    ``WeightMismatchError`` naming every such layer.
    """
    net = open_caffe_net(source)
    modules = dict(model.named_modules())
    problems: list[str] = []
    loaded: set[str] = set()
    for step, layer in net.named_layers():
        if not layer.blob_attrs:
            continue
        target = modules.get(NAME_ALIASES.get(step.name, step.name))
        if target is None:
            problems.append(f"{step.name}: in the weights, not in the model")
            continue
        blobs = [t.detach() for t in layer.blob_tensors()]
        if step.type in ("Convolution", "Deconvolution", "InnerProduct"):
            problems += _copy_conv(step.name, target, blobs)
        elif step.type == "BN":
            problems += _copy_bn(model, NAME_ALIASES.get(step.name, step.name), target, blobs, layer.mode)
        else:
            problems.append(f"{step.name}: {step.type} layers are not part of the SegNet models")
        loaded.add(NAME_ALIASES.get(step.name, step.name))
    expected = {name for name, m in modules.items() if _has_own_parameters(m)}
    missing = sorted(expected - loaded)
    problems += [f"{name}: in the model, not in the weights" for name in missing]
    if problems and strict:
        raise WeightMismatchError(problems, source if isinstance(source, (str, Path)) else None)
    return model


def _has_own_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _copy_conv(name: str, module: nn.Module, blobs: list[torch.Tensor]) -> list[str]:
    if not isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        return [f"{name}: the model's {type(module).__name__} cannot take convolution weights"]
    targets = [module.weight] + ([module.bias] if module.bias is not None else [])
    if len(targets) != len(blobs):
        return [f"{name}: {len(blobs)} blob(s) in the weights, {len(targets)} in the model"]
    problems = [
        f"{name}: {label} shape {list(b.shape)} in the weights, {list(t.shape)} in the model"
        for label, t, b in zip(("weight", "bias"), targets, blobs) if t.shape != b.shape
    ]  # fmt: skip
    if not problems:
        with torch.no_grad():
            for t, b in zip(targets, blobs):
                t.copy_(b)
    return problems


def _copy_bn(model: nn.Module, name: str, module: nn.Module, blobs: list[torch.Tensor], mode: str) -> list[str]:
    if not isinstance(module, (CaffeBN, nn.BatchNorm2d)):
        return [f"{name}: the model's {type(module).__name__} cannot take BN weights"]
    channels = module.num_features
    if blobs[0].numel() != channels:
        return [f"{name}: {blobs[0].numel()} channels in the weights, {channels} in the model"]
    bn = CaffeBN(channels, mode).to(blobs[0].device)
    with torch.no_grad():
        bn.scale.copy_(blobs[0].view(1, -1, 1, 1))
        bn.shift.copy_(blobs[1].view(1, -1, 1, 1))
    replace_module(model, name, bn)
    return []
