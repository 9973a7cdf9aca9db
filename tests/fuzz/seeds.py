"""Seed corpora: small valid files of every kind each reader takes, made here rather than stored.

``seeds(reader)`` returns {name: bytes}; the same bytes every time (fixed
seeds, no time stamps), so that a replay is deterministic.
"""

from __future__ import annotations

import gzip
import io
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

import converter
from caffe_proto import caffe_pb2
from converter.writer import blob_bytes, layer_bytes
from converter.wire import length_delimited

from .targets import NET, base_payloads, tiny_net, tiny_segnet


def caffemodel() -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    blobs = {"conv1": [rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)],
             "conv1_bn": [np.ones((1, 4, 1, 1)), np.zeros((1, 4, 1, 1))],
             "score": [rng.standard_normal((3, 4, 1, 1)), np.zeros(3)]}  # fmt: skip
    current = b"".join(length_delimited(100, layer_bytes(caffe_pb2.LayerParameter(name=name), arrays))
                       for name, arrays in blobs.items())  # fmt: skip
    v1 = caffe_pb2.NetParameter(name="v1")
    for name, arrays in blobs.items():
        layer = v1.layers.add(name=name, type=caffe_pb2.V1LayerParameter.CONVOLUTION)
        for array in arrays:  # the legacy num/channels/height/width fields, float data unpacked
            dims = (1,) * (4 - array.ndim) + array.shape
            layer.blobs.add(num=dims[0], channels=dims[1], height=dims[2], width=dims[3], data=array.ravel().tolist())
    double = caffe_pb2.NetParameter()
    layer = double.layer.add(name="score")
    for array in blobs["score"]:
        layer.blobs.add(shape=caffe_pb2.BlobShape(dim=array.shape), double_data=array.ravel().tolist())
    one_blob = caffe_pb2.LayerParameter(name="x").SerializeToString() + length_delimited(
        7, blob_bytes(np.arange(6.0), (2, 3)))
    return {"current.caffemodel": current, "v1.caffemodel": v1.SerializeToString(),
            "double.caffemodel": double.SerializeToString(), "current.caffemodel.gz": gzip.compress(current, mtime=0),
            "one_blob.caffemodel": length_delimited(100, one_blob)}  # fmt: skip


def prototxt() -> dict[str, bytes]:
    v1 = """name: "v1"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 9 input_dim: 7
input: "label"
input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" blobs_lr: 1 blobs_lr: 2
         convolution_param { num_output: 2 kernel_size: 3 stride: 2 } }
layers { name: "relu" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "pool" type: POOLING bottom: "conv1" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "ip" type: INNER_PRODUCT bottom: "pool" top: "ip" inner_product_param { num_output: 3 } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "ip" bottom: "label" top: "loss" include { phase: TRAIN } }
"""
    segnet = """name: "segnet-ish"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 12 dim: 10 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "bn1" type: "BN" bottom: "conv1" top: "conv1" bn_param { bn_mode: INFERENCE } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" top: "pool1_mask" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "drop" type: "Dropout" bottom: "pool1" top: "pool1" dropout_param { dropout_ratio: 0.5 } }
layer { name: "up1" type: "Upsample" bottom: "pool1" bottom: "pool1_mask" top: "up1" upsample_param { scale: 2 } }
layer { name: "lrn" type: "LRN" bottom: "up1" top: "lrn" lrn_param { local_size: 3 } }
layer { name: "cat" type: "Concat" bottom: "lrn" bottom: "conv1" top: "cat" }
layer { name: "score" type: "Convolution" bottom: "cat" top: "score" convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "prob" type: "Softmax" bottom: "score" top: "prob" }
layer { name: "argmax" type: "ArgMax" bottom: "prob" top: "argmax" argmax_param { axis: 1 } }
"""
    return {"net.prototxt": NET.encode(), "v1.prototxt": v1.encode(), "segnet.prototxt": segnet.encode()}


def _checkpoint_files() -> dict[str, bytes]:
    from segnet.models.caffe_graph import CaffeSegmenter
    from segnet.models.checkpoint import save_model

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        torch.manual_seed(0)
        converter.save(tiny_net(), root / "converted.pt")
        save_model(root / "segnet.pt", tiny_segnet(), {"iteration": 1}, input_size=(8, 8))
        save_model(root / "graph.pt", CaffeSegmenter(tiny_net()))
        return {name: (root / name).read_bytes() for name in ("converted.pt", "segnet.pt", "graph.pt")}


def checkpoint() -> dict[str, bytes]:
    return _checkpoint_files()


def _edits(count: int) -> dict[str, bytes]:
    """Inputs for the contents targets: no bytes (one default edit) and random edit series."""
    rng = np.random.default_rng(7)
    found = {"none": b""}
    for i in range(count):
        found[f"edits{i}"] = rng.integers(0, 256, int(rng.integers(4, 48)), dtype=np.uint8).tobytes()
    return found


def checkpoint_contents() -> dict[str, bytes]:
    base_payloads()  # built once, before the edits are replayed
    return _edits(12)


def segnet_checkpoint() -> dict[str, bytes]:
    base_payloads()
    return _edits(16)


def image() -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    label = rng.integers(0, 12, (5, 6), dtype=np.uint8)
    found = {}
    for name, picture, fmt, options in (
        ("rgb.png", Image.fromarray(rgb), "PNG", {}), ("grey.png", Image.fromarray(label), "PNG", {}),
        ("palette.png", Image.fromarray(label).convert("P"), "PNG", {}),
        ("rgba.png", Image.fromarray(np.dstack([rgb, label])), "PNG", {}),
        ("interlaced.png", Image.fromarray(rgb), "PNG", {"optimize": False, "interlace": 1}),
        ("rgb.jpg", Image.fromarray(rgb), "JPEG", {"quality": 90}),
        ("grey.jpg", Image.fromarray(label), "JPEG", {}), ("progressive.jpg", Image.fromarray(rgb), "JPEG",
                                                             {"progressive": True}),
        ("rgb.bmp", Image.fromarray(rgb), "BMP", {}), ("palette.bmp", Image.fromarray(label).convert("P"), "BMP", {}),
        ("rgb.tif", Image.fromarray(rgb), "TIFF", {}), ("lzw.tif", Image.fromarray(rgb), "TIFF",
                                                        {"compression": "tiff_lzw"}),
        ("grey.tif", Image.fromarray(label), "TIFF", {"compression": "packbits"}),
    ):  # fmt: skip
        buffer = io.BytesIO()
        picture.save(buffer, format=fmt, **options)
        found[name] = buffer.getvalue()
    return found


def arrays() -> dict[str, bytes]:
    x = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)

    def npy(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, array, version=version)
        return buffer.getvalue()

    def npz(members: dict[str, bytes], method: int) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", method) as archive:
            for name, data in members.items():
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                archive.writestr(info, data, compress_type=method)
        return buffer.getvalue()

    members = {"data.npy": npy(x), "label.npy": npy(np.array([[1, 2]], dtype=np.int64))}
    return {"v1.npy": npy(x), "v2.npy": npy(x, (2, 0)), "v3.npy": npy(x, (3, 0)),
            "fortran.npy": npy(np.asfortranarray(x[0, 0])), "bool.npy": npy(np.array([True, False])),
            "big_endian.npy": npy(x.astype(">f8")), "scalar.npy": npy(np.array(3.5)),
            "stored.npz": npz(members, zipfile.ZIP_STORED),
            "deflated.npz": npz(members, zipfile.ZIP_DEFLATED)}  # fmt: skip


SEEDS: dict[str, Callable[[], dict[str, bytes]]] = {
    "caffemodel": caffemodel, "prototxt": prototxt, "checkpoint": checkpoint,
    "checkpoint_contents": checkpoint_contents, "segnet_checkpoint": segnet_checkpoint, "image": image,
    "arrays": arrays,
}  # fmt: skip


def seeds(reader: str) -> dict[str, bytes]:
    """The seed corpus of one reader, by file name."""
    return SEEDS[reader]()


def write_seeds(reader: str, folder: Path) -> Path:
    """Write a reader's seeds into ``folder`` (for the fuzzer, which reads a corpus from folders)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in seeds(reader).items():
        (folder / name).write_bytes(data)
    return folder
