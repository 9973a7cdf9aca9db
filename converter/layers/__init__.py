"""Caffe layer types, one module per family; importing this package registers them all."""

from . import (  # noqa: F401
    accuracy, activation, batch_reindex, batchnorm, clip, conv, crop, dropout, dummy_data, elu, embed, filter, im2col,
    losses, lrn, mvn, parameter, pooling, prelu, reduction, softmax, spp, structure, swish, tile, upsample,
)  # fmt: skip
from .base import LAYER_TYPES, CaffeLayer, Shape, register
from .data import DATA_LAYER_TYPES, DEFAULT_IMAGE_SIZE, implied_input_shapes
from .refused import REFUSED_TYPES, refusal

__all__ = [
    "LAYER_TYPES", "CaffeLayer", "Shape", "register", "DATA_LAYER_TYPES", "DEFAULT_IMAGE_SIZE",
    "implied_input_shapes", "REFUSED_TYPES", "refusal",
]  # fmt: skip
