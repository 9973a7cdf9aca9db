"""Loading converted Caffe weights into the readable models, by layer name.

Sources: a ``converter.CaffeNet`` (already loaded), a checkpoint written by
``python -m converter`` (``.pt``), or a prototxt + caffemodel pair. Each Caffe
layer with parameters must have a module of the same name in the model:
convolutions and deconvolutions take weight and bias as they are; a BN layer
replaces the model's BN module by a ``CaffeBN`` in the file's mode (LEARN or
INFERENCE), so that the model computes what Caffe computes. Call
``segnet.nn.convert_bn(model, "pytorch")`` afterwards to fine-tune with
PyTorch's BatchNorm instead.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import converter
from converter import CaffeNet
from converter.errors import UserError

from .models import SEGNET, SEGNET_BASIC, Architecture
from .nn import CaffeBN


class WeightMismatchError(UserError):
    """The weights do not fit the model: one line naming the first problem and how many more.

    ``problems`` lists every problem found, one string per layer.
    """

    def __init__(self, problems: list[str], source: str | Path | None = None):
        self.problems = list(problems)
        more = f"; and {len(problems) - 1} more" if len(problems) > 1 else ""
        super().__init__(f"weights do not fit the model: {problems[0]}{more}", source)


def architecture_of(net: CaffeNet) -> Architecture | None:
    """The SegNet-family architecture whose layer names a converted net uses, if any."""
    names = {step.name for step in net.steps}
    if "conv_decode1" in names:
        return SEGNET_BASIC
    if "conv1_1_D" in names:
        return SEGNET
    return None


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
        target = modules.get(step.name)
        if target is None:
            problems.append(f"{step.name}: in the weights, not in the model")
            continue
        blobs = [t.detach() for t in layer.blob_tensors()]
        if step.type in ("Convolution", "Deconvolution", "InnerProduct"):
            problems += _copy_conv(step.name, target, blobs)
        elif step.type == "BN":
            problems += _copy_bn(model, step.name, target, blobs, layer.mode.lower())
        else:
            problems.append(f"{step.name}: {step.type} layers are not part of the SegNet models")
        loaded.add(step.name)
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
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, bn)
    return []
