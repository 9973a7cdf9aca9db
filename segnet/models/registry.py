"""Every model of the project by name: the SegNet family and the Table 1 variants."""

from __future__ import annotations

from torch import nn

from segnet.models.family import MODELS
from segnet.models.layers import BNKind
from segnet.models.variants import VARIANTS, build_variant

#: Command-line names: the SegNet family, then the Table 1 variants by the paper's names.
MODEL_NAMES = list(MODELS) + [v for v in VARIANTS if v != "SegNet-Basic"]


def build_model(name: str, num_classes: int | None = None, bn: BNKind = "pytorch", in_channels: int = 3) -> nn.Module:
    """A new model by name ("segnet-basic", "FCN-Basic", ...), He-initialised.

    The model remembers its name (``registry_name``) and class count, so that
    checkpoints can rebuild it.
    """
    if name in MODELS:
        model = MODELS[name](num_classes=num_classes, bn=bn, in_channels=in_channels)
    elif name in VARIANTS:
        model = build_variant(name, num_classes=num_classes, bn=bn, in_channels=in_channels)
    else:
        raise KeyError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    model.registry_name = name  # (its class count is model.num_classes, set by the builder)
    return model
