"""Caffe layer types, one module per family; importing this package registers them all."""

from . import (  # noqa: F401
    accuracy, activation, batchnorm, conv, dropout, dummy_data, filter, im2col, losses, lrn, mvn, pooling, prelu,
    reduction, softmax, spp, structure, upsample,
)  # fmt: skip
from .base import LAYER_TYPES, CaffeLayer, Shape, register
from .data import DATA_LAYER_TYPES, DEFAULT_IMAGE_SIZE, implied_input_shapes
from .refused import REFUSED_TYPES, refusal

__all__ = [
    "LAYER_TYPES", "CaffeLayer", "Shape", "register", "DATA_LAYER_TYPES", "DEFAULT_IMAGE_SIZE",
    "implied_input_shapes", "REFUSED_TYPES", "refusal",
]  # fmt: skip
