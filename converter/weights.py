"""Reading trained weights: binary caffemodels (current and V1 layout, plain or
gzip-compressed) and Caffe's HDF5 weight files.

A caffemodel is a serialized ``NetParameter`` whose layers carry their
parameter blobs. Turning a protobuf ``repeated float`` of tens of millions of
values into numpy through the protobuf runtime costs seconds, so the blobs are
found by walking the protobuf wire format directly (``wire``) and their packed float
payloads are viewed in place with ``numpy.frombuffer``. Everything else in a
layer (name, type) is small and parsed by the regular message classes.

Weights are matched to layers by name only, as Caffe does; the layer type is
kept for messages but never required (caffe-segnet's V1 files store their BN
and Upsample entries without one).
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from caffe_proto import caffe_pb2

from . import budget
from .errors import CaffeFormatError, UserError
from .wire import (WIRE_32BIT, WIRE_64BIT, WIRE_LEN, WIRE_VARINT, FieldValue, Truncated, iter_fields,
                   read_varint, reencode_field)

GZIP_MAGIC = b"\x1f\x8b"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
#: Files often given by mistake, told by their first bytes.
_OTHER_KINDS = (
    (b"\x93NUMPY", "a NumPy array (.npy)"),
    (b"PK\x03\x04", "a zip archive (a PyTorch checkpoint or an .npz?)"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
)

# Field numbers (caffe.proto).
_NET_LAYER, _NET_LAYERS_V1 = 100, 2
_LAYER_BLOBS, _V1_LAYER_BLOBS = 7, 6
_LAYER_NAME_TYPE, _V1_LAYER_NAME_TYPE = (1, 2), (4, 5)
_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH = 1, 2, 3, 4
_BLOB_DATA, _BLOB_DIFF, _BLOB_SHAPE, _BLOB_DOUBLE_DATA, _BLOB_DOUBLE_DIFF = 5, 6, 7, 8, 9

MAX_BLOB_AXES = 32  # Caffe's kMaxBlobAxes
_GZIP_CHUNK = 16 << 20  # inflate this much at a time, so that the limit is checked as the data grows


@dataclass
class Blob:
    """One parameter blob: its values and the shape the file gives.

    ``legacy`` is true when the file gave the old num/channels/height/width
    fields instead of a ``shape``; Caffe then compares shapes padded to 4-D.
    """

    data: np.ndarray
    shape: tuple[int, ...]
    legacy: bool = False


@dataclass
class LayerWeights:
    name: str
    type: str | None
    blobs: list[Blob] = field(default_factory=list)


@dataclass
class CaffeWeights:
    """The blobs of a weight file, by layer name, in file order."""

    path: str
    layers: dict[str, LayerWeights]

    def __contains__(self, name: str) -> bool:
        return name in self.layers

    def __getitem__(self, name: str) -> LayerWeights:
        return self.layers[name]

    def with_blobs(self) -> list[LayerWeights]:
        return [layer for layer in self.layers.values() if layer.blobs]


def read_weights(path: str | Path) -> CaffeWeights:
    """Read a ``.caffemodel``, ``.caffemodel.gz`` or ``.caffemodel.h5`` file.

    The format is told by the file's first bytes, not by its name.
    Raises CaffeFormatError (one line naming the file and the problem).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(HDF5_MAGIC))
            if head == HDF5_MAGIC:
                return _read_hdf5(path)
            budget.check(os.fstat(f.fileno()).st_size, "reading this weight file", path)
            raw = head + f.read()
    except OSError as exc:
        raise CaffeFormatError(f"cannot read weights: {exc.strerror or exc}", path) from None
    for magic, kind in _OTHER_KINDS:
        if raw.startswith(magic):
            raise CaffeFormatError(f"{kind}, not a caffemodel", path)
    if raw.startswith(GZIP_MAGIC):
        raw = _gunzip(raw, path)
    if not raw:
        raise CaffeFormatError("empty weight file", path)
    if _looks_like_text(raw):
        raise CaffeFormatError(
            "this is a text file (a .prototxt?), not a binary caffemodel", path
        )
    return CaffeWeights(str(path), _parse_net_binary(memoryview(raw), path))


def _gunzip(raw: bytes, path: Path) -> bytes:
    """Inflate gzip data (all members), stopping as soon as it grows past the memory limit."""
    chunks, size = [], 0
    data = raw
    try:
        while data:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            while True:  # at most one chunk of output at a time, also for output pending after the last input
                chunks.append(inflater.decompress(data, _GZIP_CHUNK))
                size += len(chunks[-1])
                budget.check(size, "inflating this gzip-compressed weight file", path, at_least=True)
                data = inflater.unconsumed_tail
                if inflater.eof or (not data and len(chunks[-1]) < _GZIP_CHUNK):
                    break
            if not inflater.eof:
                raise CaffeFormatError("truncated gzip data (the stream ends early)", path)
            data = inflater.unused_data  # a next gzip member, or nothing
    except zlib.error as exc:
        raise CaffeFormatError(f"corrupt gzip data ({exc})", path) from None
    return b"".join(chunks)


def _looks_like_text(raw: bytes) -> bool:
    head = raw[:256]
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


# --------------------------------------------------------------------- caffemodel messages


def _parse_net_binary(buf: memoryview, path: Path) -> dict[str, LayerWeights]:
    layers: dict[str, LayerWeights] = {}
    index = 0
    try:
        for number, wire, value in iter_fields(buf, 0, len(buf)):
            if number in (_NET_LAYER, _NET_LAYERS_V1) and wire == WIRE_LEN:
                v1 = number == _NET_LAYERS_V1
                layer = _parse_layer(buf, *value, v1=v1, path=path, index=index)
                index += 1
                if layer.name in layers and layer.blobs and layers[layer.name].blobs:
                    raise CaffeFormatError("layer name appears twice in the weights", path, layer.name)
                if layer.name not in layers or layer.blobs:
                    layers[layer.name] = layer
    except Truncated:
        raise CaffeFormatError(
            "truncated caffemodel (the file ends inside a message)", path
        ) from None
    except DecodeError as exc:
        raise CaffeFormatError(f"corrupt caffemodel ({exc})", path) from None
    if index == 0:
        raise CaffeFormatError("no layers found: not a caffemodel, or an empty net", path)
    return layers


def _parse_layer(buf: memoryview, start: int, end: int, v1: bool, path: Path, index: int) -> LayerWeights:
    blob_field = _V1_LAYER_BLOBS if v1 else _LAYER_BLOBS
    # Only the name and type go to the message parser: the layer's parameters are the prototxt's business,
    # and caffe-segnet and mainline Caffe give some of their field numbers different meanings (converter.dialect).
    keep = _V1_LAYER_NAME_TYPE if v1 else _LAYER_NAME_TYPE
    rest = bytearray()
    blob_spans = []
    for number, wire, value in iter_fields(buf, start, end):
        if number == blob_field and wire == WIRE_LEN:
            blob_spans.append(value)
        elif number in keep:
            rest += reencode_field(buf, number, wire, value)
    message = caffe_pb2.V1LayerParameter() if v1 else caffe_pb2.LayerParameter()
    try:
        message.ParseFromString(bytes(rest))
    except DecodeError as exc:
        raise CaffeFormatError(f"corrupt layer #{index} ({exc})", path) from None
    name = message.name
    if v1:
        type_name = caffe_pb2.V1LayerParameter.LayerType.Name(message.type) if message.HasField("type") else None
    else:
        type_name = message.type or None
    blobs = [_parse_blob(buf, s, e, path, name, i) for i, (s, e) in enumerate(blob_spans)]
    return LayerWeights(name, type_name, blobs)


def _parse_blob(buf: memoryview, start: int, end: int, path: Path, layer: str, index: int) -> Blob:
    legacy = [0, 0, 0, 0]
    has_legacy = False
    shape: list[int] | None = None
    chunks: list[np.ndarray] = []
    double_chunks: list[np.ndarray] = []
    for number, wire, value in iter_fields(buf, start, end):
        if number in (_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH) and wire == WIRE_VARINT:
            legacy[number - 1] = _as_int32(value)
            has_legacy = True
        elif number == _BLOB_SHAPE and wire == WIRE_LEN:
            shape = _parse_shape(buf, *value)
        elif number == _BLOB_DATA:
            chunks.append(_floats(buf, wire, value, "<f4"))
        elif number == _BLOB_DOUBLE_DATA:
            double_chunks.append(_floats(buf, wire, value, "<f8"))
        # diff, double_diff and unknown fields are not needed for inference.
    if chunks and double_chunks:
        raise CaffeFormatError(f"blob {index} has both float and double data", path, layer)
    if double_chunks:
        data = np.concatenate(double_chunks).astype(np.float32)
    elif len(chunks) == 1:
        data = chunks[0]
    else:
        data = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if shape is not None:
        dims, is_legacy = tuple(shape), False
    elif has_legacy:
        dims, is_legacy = tuple(legacy), True
    else:
        dims, is_legacy = (data.size,), False
    if len(dims) > MAX_BLOB_AXES or any(d < 0 for d in dims):  # Caffe's Blob::Reshape checks the same
        raise CaffeFormatError(f"blob {index} declares shape {list(dims)[:MAX_BLOB_AXES + 1]}: at most "
                               f"{MAX_BLOB_AXES} sizes, none negative", path, layer)  # fmt: skip
    count = math.prod(dims)  # exact: a product of int64 sizes may overflow int64
    if count != data.size:
        raise CaffeFormatError(
            f"blob {index} declares shape {list(dims)} ({count} values) but holds {data.size} values",
            path,
            layer,
        )
    return Blob(data, dims, is_legacy)


def _as_int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _parse_shape(buf: memoryview, start: int, end: int) -> list[int]:
    dims: list[int] = []
    for number, wire, value in iter_fields(buf, start, end):
        if number != 1:
            continue
        if wire == WIRE_LEN:  # packed
            pos, stop = value
            while pos < stop:
                dim, pos = read_varint(buf, pos, stop)
                dims.append(dim)
        elif wire == WIRE_VARINT:
            dims.append(value)
    return [d - (1 << 64) if d >= 1 << 63 else d for d in dims]


def _floats(buf: memoryview, wire: int, value: FieldValue, dtype: str) -> np.ndarray:
    width = np.dtype(dtype).itemsize
    if wire not in (WIRE_LEN, WIRE_32BIT if width == 4 else WIRE_64BIT):  # a varint holds no span of bytes
        raise DecodeError(f"blob data of wire type {wire}, where packed or fixed-width values belong")
    start, end = value
    if (end - start) % width:
        raise DecodeError("packed blob data of a length that is not a whole number of values")
    return np.frombuffer(buf[start:end], dtype=dtype)


# --------------------------------------------------------------------- HDF5


def _read_hdf5(path: Path) -> CaffeWeights:
    """Caffe's HDF5 weights: ``data/<layer>/<i>`` datasets, each checked by shape and type before it is read."""
    import h5py

    layers: dict[str, LayerWeights] = {}
    total = 0
    try:
        with h5py.File(path, "r") as f:
            data = f.get("data")
            if not isinstance(data, h5py.Group):
                raise CaffeFormatError("HDF5 weights need a top-level 'data' group (data/<layer>/<i>)", path)
            for name, group in data.items():
                if not isinstance(group, h5py.Group):
                    raise CaffeFormatError(f"'data/{name}' is not a group of blobs", path, name)
                keys = sorted(group.keys(), key=lambda k: int(k) if k.isdigit() else -1)
                if [k for k in keys] != [str(i) for i in range(len(keys))]:
                    raise CaffeFormatError(f"blobs must be named 0..n-1, found {keys}", path, name)
                blobs = []
                for key in keys:
                    dataset = group[key]
                    if not isinstance(dataset, h5py.Dataset) or dataset.dtype.kind not in "fiu":
                        kind = f"numbers of type {dataset.dtype}" if isinstance(dataset, h5py.Dataset) else "a group"
                        raise CaffeFormatError(f"'data/{name}/{key}' should be an array of numbers, found {kind}",
                                               path, name)  # fmt: skip
                    total += math.prod(dataset.shape) * 4
                    budget.check(total, f"the blobs up to 'data/{name}/{key}' {list(dataset.shape)} (float32)",
                                 path, name, at_least=True)  # fmt: skip
                    array = np.asarray(dataset[()], dtype=np.float32)
                    blobs.append(Blob(array.reshape(-1), tuple(array.shape)))
                layers[name] = LayerWeights(name, None, blobs)
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        if isinstance(exc, UserError):
            raise
        raise CaffeFormatError(f"unreadable HDF5 weights ({type(exc).__name__}: {exc})", path) from None
    return CaffeWeights(str(path), layers)
