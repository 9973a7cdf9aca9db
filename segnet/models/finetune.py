"""The model a training run starts from: new, a checkpoint's, or a converted Caffe net's.

:func:`starting_model` decides, once, what trains:

* no checkpoint: a new He-initialised model of the registry;
* a segnet checkpoint: its model, BN layers in the kind they were saved in;
* a converted Caffe net the readable models recognise (SegNet, SegNet-Basic
  and their Bayesian versions, checked to compute the same scores): that
  readable model, BN layers in the file's mode;
* any other converted Caffe net: the converted graph itself
  (:class:`~segnet.models.caffe_graph.CaffeSegmenter`), whose gradients are Caffe's.

BN is handled so that the model's outputs at step 0 are the checkpoint's.
INFERENCE-mode BN (statistics folded into a scale and shift) is unfolded
(:func:`unfold_inference_bn`): the statistics of its input are measured on the
training images and it becomes a PyTorch BatchNorm that computes the same in
evaluation mode and normalises with batch statistics while training, as it
was trained (a bare scale and shift trained at SegNet's learning rate
diverges). LEARN-mode BN keeps normalising with batch statistics as
caffe-segnet trains; PyTorch BatchNorm keeps its running statistics. A
converted graph trained as it is keeps its layers as they are.

When the label space has another number of outputs than the checkpoint,
the classifier is replaced by a new one with He (Caffe's msra) weights and
zero biases, and the run says so.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from converter import CaffeNet
from converter.errors import UserError
from converter.layers.batchnorm import BN as CaffeGraphBN
from converter.layers.batchnorm import BatchNorm as CaffeGraphBatchNorm

from segnet.models.caffe_graph import CaffeSegmenter, num_outputs
from segnet.models.checkpoint import load_model
from segnet.data.labels import LabelSpace, get_label_space, label_space_for
from segnet.models.family import in_segnet_family
from segnet.models.layers import CaffeBN
from segnet.models.registry import build_model
from segnet.models.weights import WeightMismatchError, load_caffe_weights, readable_twin


@dataclass
class Start:
    """What a run trains, in which label space, and what the user should be told about it."""

    model: nn.Module
    label_space: LabelSpace
    notes: list[str] = field(default_factory=list)


def starting_model(init: str | None, model_name: str | None, labels: str | None) -> Start:
    """The model and label space a run starts with (see the module docstring)."""
    if init is None:
        space = get_label_space(labels or "camvid")
        return Start(build_model(model_name or "segnet-basic", num_classes=space.num_outputs), space)
    source = load_model(init)
    notes: list[str] = []
    if model_name is not None:
        model = _named_model(model_name, source, init)
    elif isinstance(source, CaffeNet):
        twin = readable_twin(source)
        if twin is not None:
            model = twin
            notes.append(f"training the readable {twin.arch.name} (it computes what the converted net computes)")
        else:
            model = CaffeSegmenter(source)
            notes.append("training the converted Caffe graph itself (no readable model computes what it computes); "
                         "gradients are Caffe's")  # fmt: skip
    else:
        model = source
    outputs = num_outputs(model)
    if labels:
        space = get_label_space(labels)
    else:
        space, note = label_space_for(None, outputs, getattr(source, "label_space", None))
        notes += [note] if note else []
    if outputs is not None and outputs != space.num_outputs:
        model = with_new_classifier(model, space.num_outputs)
        notes.append(f"the classifier was re-initialised for {space.num_outputs} outputs (label space {space.name}; "
                     f"the checkpoint has {outputs}): He (msra) weights, zero biases")  # fmt: skip
    return Start(model, space, notes)


def _named_model(name: str, source: nn.Module, path: str) -> nn.Module:
    """The registry model ``name`` with the weights of ``source`` (every layer must fit)."""
    model = build_model(name, num_classes=num_outputs(source) or 11)
    if isinstance(source, CaffeNet):
        return load_caffe_weights(model, source)
    theirs, ours = source.state_dict(), model.state_dict()
    problems = [f"{k}: in the checkpoint, not in the model" for k in theirs if k not in ours]
    problems += [f"{k}: shape {list(v.shape)} in the checkpoint, {list(ours[k].shape)} in the model"
                 for k, v in theirs.items() if k in ours and v.shape != ours[k].shape]  # fmt: skip
    problems += [f"{k}: in the model, not in the checkpoint" for k in ours if k not in theirs]
    if problems:
        raise WeightMismatchError(problems, path)
    return copy.deepcopy(source)


def classifier_layer(net: CaffeNet, scores: str) -> str:
    """The name of the Convolution layer that writes the class scores (in-place layers after it skipped)."""
    for step in reversed(net.steps):
        if scores in step.tops:
            if step.type in ("Convolution", "Deconvolution"):
                return step.name
            if step.bottoms[:1] != (scores,):  # not an in-place layer on the scores: no convolution to replace
                break
    raise UserError(f"the class scores '{scores}' do not come from a Convolution layer: cannot change the class count")


def with_new_classifier(model: nn.Module, outputs: int) -> nn.Module:
    """``model`` with a new He-initialised classifier of ``outputs`` channels (SegNet family or converted graph)."""
    if in_segnet_family(model):
        old = getattr(model, model.classifier_name)
        new = nn.Conv2d(old.in_channels, outputs, old.kernel_size, padding=old.padding).to(old.weight.device)
        _he(new.weight, new.bias)
        setattr(model, model.classifier_name, new)
        model.num_classes = outputs
        return model
    if isinstance(model, CaffeSegmenter):
        return _graph_with_classes(model, outputs)
    raise UserError(f"changing the class count needs a SegNet-family model or a converted net, not "
                    f"{type(model).__name__}")  # fmt: skip


def _graph_with_classes(graph: CaffeSegmenter, outputs: int) -> CaffeSegmenter:
    net = graph.net
    name = classifier_layer(net, graph.scores)
    param = copy.deepcopy(net.net_param)
    for layer in param.layer:
        if layer.name == name:
            layer.convolution_param.num_output = outputs
        if layer.type == "SoftmaxWithLoss":  # its class weights were for the old classes; the run brings its own
            layer.loss_param.weight_by_label_freqs = False
            del layer.loss_param.class_weighting[:]
    rebuilt = CaffeNet(param, phase=net.phase, input_shapes=net.input_shapes)
    key = next(step.key for step in rebuilt.steps if step.name == name)
    state = {k: v for k, v in net.state_dict().items() if not k.startswith(f"layers.{key}.")}
    missing, unexpected = rebuilt.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(f"layers.{key}.") for k in missing):
        raise UserError(f"could not carry the weights over to the net with {outputs} classes "
                        f"({(unexpected or missing)[0]})")  # fmt: skip
    layer = rebuilt.layer(name)
    _he(layer.weight, getattr(layer, "bias", None))
    for attr in ("label_space", "input_size"):
        if hasattr(net, attr):
            setattr(rebuilt, attr, getattr(net, attr))
    return CaffeSegmenter(rebuilt)


@torch.no_grad()
def _he(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """He initialisation as Caffe's msra filler: normal, std sqrt(2 / fan_in); zero bias."""
    nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu")
    if bias is not None:
        bias.zero_()


def bn_notes(model: nn.Module) -> list[str]:
    """One line per kind of BN that does not simply train as PyTorch BatchNorm (call after unfolding)."""
    modes = {}
    for module in model.modules():
        if isinstance(module, (CaffeBN, CaffeGraphBN)):
            modes[module.mode.lower()] = modes.get(module.mode.lower(), 0) + 1
        elif isinstance(module, CaffeGraphBatchNorm):
            modes["batchnorm"] = modes.get("batchnorm", 0) + 1
    notes = []
    if "inference" in modes:
        notes.append(f"{modes['inference']} BN layer(s) keep their folded statistics (INFERENCE mode) and train as "
                     "a per-channel scale and shift; a smaller --lr may be needed")  # fmt: skip
    if "learn" in modes:
        notes.append(f"{modes['learn']} BN layer(s) train in caffe-segnet's LEARN mode (batch statistics, also when "
                     "evaluating): fold statistics with python -m segnet.bn_stats before using the model on single "
                     "images")  # fmt: skip
    if "batchnorm" in modes:
        notes.append(f"{modes['batchnorm']} BatchNorm layer(s) train as Caffe's: batch statistics while training, "
                     "their moving averages when evaluating")  # fmt: skip
    return notes
