"""SGD parameter groups with Caffe's learning-rate and decay multipliers."""

from __future__ import annotations

from torch import nn

from segnet.models.caffe_graph import CaffeSegmenter
from segnet.models.layers import CaffeBN


def caffe_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Learning-rate and decay multipliers as Caffe applies them.

    Readable models: SegNet-Tutorial's (weights lr x1 decay x1, biases lr x2
    decay x0, BN lr x1 decay x1). A converted graph: each layer's own
    ``param { lr_mult decay_mult }`` (Caffe's defaults 1 and 1); blobs with
    lr_mult 0 stay fixed.
    """
    if isinstance(model, CaffeSegmenter):
        return _graph_param_groups(model, weight_decay)
    weights, biases, norms = [], [], []
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            weights.append(module.weight)
            if module.bias is not None:
                biases.append(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, CaffeBN)):
            norms.extend(p for p in module.parameters(recurse=False))
    groups = [
        {"params": weights, "lr_mult": 1.0, "weight_decay": weight_decay},
        {"params": biases, "lr_mult": 2.0, "weight_decay": 0.0},
        {"params": norms, "lr_mult": 1.0, "weight_decay": weight_decay},
    ]
    covered = {id(p) for g in groups for p in g["params"]}
    rest = [p for p in model.parameters() if id(p) not in covered]
    if rest:
        groups.append({"params": rest, "lr_mult": 1.0, "weight_decay": weight_decay})
    return [g for g in groups if g["params"]]


def _graph_param_groups(model: CaffeSegmenter, weight_decay: float) -> list[dict]:
    specs = {layer.name: layer.param for layer in model.net.net_param.layer}
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for step, module in model.net.named_layers():
        for i, attr in enumerate(module.blob_attrs):
            tensor = getattr(module, attr)
            if not isinstance(tensor, nn.Parameter):  # BatchNorm's statistics are buffers, not trained
                continue
            spec = specs[step.name][i] if i < len(specs[step.name]) else None
            lr, decay = (spec.lr_mult, spec.decay_mult) if spec is not None else (1.0, 1.0)
            if lr == 0:
                tensor.requires_grad_(False)
                continue
            groups.setdefault((lr, decay), []).append(tensor)
    return [{"params": ps, "lr_mult": lr, "weight_decay": weight_decay * decay} for (lr, decay), ps in groups.items()]
