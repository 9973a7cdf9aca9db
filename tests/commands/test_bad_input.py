"""Bad input gets a one-line error naming the file and layer, exit status 2, and no output file.

Each case runs the real command line in a subprocess, so a traceback would
show up on stderr and fail the check.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converter.weights import read_weights
from converter.writer import write_caffemodel
from caffe_proto import caffe_pb2

MINI_PROTOTXT = """
name: "mini"
input: "data"
input_shape { dim: 1 dim: 3 dim: 12 dim: 14 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "bn1" type: "BN" bottom: "conv1" top: "conv1" bn_param { bn_mode: INFERENCE } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" top: "pool1_mask"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "up1" type: "Upsample" bottom: "pool1" bottom: "pool1_mask" top: "up1"
  upsample_param { upsample_h: 12 upsample_w: 14 } }
"""


def _layer(name: str, kind: str) -> caffe_pb2.LayerParameter:
    return caffe_pb2.LayerParameter(name=name, type=kind)


def _blobs(rng):
    return [
        (_layer("conv1", "Convolution"), [rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)]),
        (_layer("bn1", "BN"), [rng.standard_normal((1, 4, 1, 1)), rng.standard_normal((1, 4, 1, 1))]),
    ]


@pytest.fixture
def mini(tmp_path):
    proto = tmp_path / "mini.prototxt"
    proto.write_text(MINI_PROTOTXT)
    weights = tmp_path / "mini.caffemodel"
    write_caffemodel(weights, _blobs(np.random.default_rng(0)))
    return proto, weights


def convert(tmp_path: Path, *args) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out" / "converted.pt"
    result = subprocess.run([sys.executable, "-m", "converter", *map(str, args), "-o", str(out), "-q"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    return result, out


def assert_clean_failure(result, out: Path, *needles: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()
    leftovers = list(os.listdir(out.parent)) if out.parent.exists() else []
    assert not leftovers, f"files left behind: {leftovers}"  # temporary files start with a dot


def test_good_files_convert(mini, tmp_path):
    result, out = convert(tmp_path, *mini)
    assert result.returncode == 0, result.stderr
    assert out.exists()


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated_caffemodel(mini, tmp_path, keep):
    proto, weights = mini
    raw = weights.read_bytes()
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(raw[: int(len(raw) * keep)])
    result, out = convert(tmp_path, proto, cut)
    assert_clean_failure(result, out, "cut.caffemodel", "truncated")


def test_truncated_gzip(mini, tmp_path):
    proto, weights = mini
    packed = gzip.compress(weights.read_bytes())
    cut = tmp_path / "cut.caffemodel.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    result, out = convert(tmp_path, proto, cut)
    assert_clean_failure(result, out, "cut.caffemodel.gz", "gzip")


# A flip inside float data cannot be told from a real weight by any reader;
# flips in the file's structure must be caught. The file starts with the
# first layer's tag (field 100, two bytes) and then that layer's length.
@pytest.mark.parametrize("position, bit", [(0, 0x04), (2, 0x40)], ids=["tag", "length"])
def test_bit_flip_in_structure(mini, tmp_path, position, bit):
    proto, weights = mini
    raw = bytearray(weights.read_bytes())
    assert raw[:2] == bytes([0xA2, 0x06])  # varint of (100 << 3) | 2
    raw[position] ^= bit
    flipped = tmp_path / "flipped.caffemodel"
    flipped.write_bytes(bytes(raw))
    result, out = convert(tmp_path, proto, flipped)
    assert_clean_failure(result, out, "flipped.caffemodel")


def test_blob_shape_mismatch_names_layer_and_both_shapes(mini, tmp_path):
    proto, _ = mini
    rng = np.random.default_rng(1)
    wrong = tmp_path / "wrong.caffemodel"
    write_caffemodel(wrong, [(_layer("conv1", "Convolution"), [rng.standard_normal((4, 3, 5, 5)),
                                                               rng.standard_normal(4)])])  # fmt: skip
    result, out = convert(tmp_path, proto, wrong)
    assert_clean_failure(result, out, "wrong.caffemodel", "conv1", "[4, 3, 5, 5]", "[4, 3, 3, 3]")


def test_blob_count_mismatch(mini, tmp_path):
    proto, _ = mini
    wrong = tmp_path / "nobias.caffemodel"
    write_caffemodel(wrong, [(_layer("conv1", "Convolution"), [np.zeros((4, 3, 3, 3))])])
    result, out = convert(tmp_path, proto, wrong)
    assert_clean_failure(result, out, "nobias.caffemodel", "conv1", "1 blob(s)")


def test_layer_in_weights_absent_from_prototxt(mini, tmp_path):
    proto, _ = mini
    extra = tmp_path / "extra.caffemodel"
    write_caffemodel(extra, _blobs(np.random.default_rng(0)) + [(_layer("fc9", "InnerProduct"), [np.zeros((2, 2))])])
    result, out = convert(tmp_path, proto, extra)
    assert_clean_failure(result, out, "extra.caffemodel", "fc9", "no layer of that name")
    ok, ok_out = convert(tmp_path, proto, extra, "--allow-unused")
    assert ok.returncode == 0 and ok_out.exists()


def test_prototxt_layer_missing_from_weights(mini, tmp_path):
    proto, _ = mini
    partial = tmp_path / "partial.caffemodel"
    write_caffemodel(partial, _blobs(np.random.default_rng(0))[:1])
    result, out = convert(tmp_path, proto, partial)
    assert_clean_failure(result, out, "partial.caffemodel", "bn1")


def test_unknown_layer_types_are_listed_together(tmp_path):
    proto = tmp_path / "odd.prototxt"
    proto.write_text(MINI_PROTOTXT + """
layer { name: "a" type: "Frobnicate" bottom: "up1" top: "a" }
layer { name: "b" type: "Frobnicate" bottom: "a" top: "b" }
layer { name: "c" type: "Warp" bottom: "b" top: "c" }
""")
    result, out = convert(tmp_path, proto)
    assert_clean_failure(result, out, "odd.prototxt", "Frobnicate (layer a, b)", "Warp (layer c)")


def test_prototxt_syntax_error_names_the_line(tmp_path):
    proto = tmp_path / "broken.prototxt"
    proto.write_text(MINI_PROTOTXT.replace("num_output: 4", "num_output: four"))
    result, out = convert(tmp_path, proto)
    assert_clean_failure(result, out, "broken.prototxt", "6:")


def test_weights_and_prototxt_swapped(mini, tmp_path):
    proto, weights = mini
    result, out = convert(tmp_path, weights, proto)
    assert_clean_failure(result, out, "mini.caffemodel", "binary")


def test_text_file_as_weights(mini, tmp_path):
    proto, _ = mini
    result, out = convert(tmp_path, proto, proto)
    assert_clean_failure(result, out, "mini.prototxt", "text file")


def test_missing_file(mini, tmp_path):
    proto, _ = mini
    result, out = convert(tmp_path, proto, tmp_path / "nowhere.caffemodel")
    assert_clean_failure(result, out, "nowhere.caffemodel", "cannot read")


def test_upsample_size_that_does_not_fit_the_mask(tmp_path):
    proto = tmp_path / "badup.prototxt"
    proto.write_text(MINI_PROTOTXT.replace("upsample_h: 12", "upsample_h: 9"))
    data = tmp_path / "x.npy"
    np.save(data, np.ones((1, 3, 12, 14), np.float32))
    result, out = convert(tmp_path, proto, "--input", f"data={data}")
    assert_clean_failure(result, out, "up1", "outside the 9x14 output")


def test_caffemodel_readers_agree_on_hdf5(mini, tmp_path):
    h5py = pytest.importorskip("h5py", reason="HDF5 caffemodels need h5py (a dependency: pip install -e .)")
    _, weights = mini
    entries = read_weights(weights)
    path = tmp_path / "mini.caffemodel.h5"
    with h5py.File(path, "w") as f:
        for layer in entries.with_blobs():
            for i, blob in enumerate(layer.blobs):
                f.create_dataset(f"data/{layer.name}/{i}", data=blob.data.reshape(blob.shape))
    again = read_weights(path)
    for layer in entries.with_blobs():
        for a, b in zip(layer.blobs, again[layer.name].blobs):
            np.testing.assert_array_equal(a.data, b.data)
            assert a.shape == b.shape
