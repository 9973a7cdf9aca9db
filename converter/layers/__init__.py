"""Caffe layer types, one module per family; importing this package registers them all."""

from . import accuracy, activation, batchnorm, conv, dropout, lrn, pooling, softmax, structure, upsample  # noqa: F401
from .base import LAYER_TYPES, CaffeLayer, Shape, register
from .data import DATA_LAYER_TYPES, DEFAULT_IMAGE_SIZE, implied_input_shapes

__all__ = [
    "LAYER_TYPES", "CaffeLayer", "Shape", "register", "DATA_LAYER_TYPES", "DEFAULT_IMAGE_SIZE",
    "implied_input_shapes",
]  # fmt: skip
