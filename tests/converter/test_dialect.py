"""Which Caffe a file was written for, and files that fit no Caffe (converter/dialect.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from caffe_proto import caffe_pb2
from converter.dialect import BOTH, EITHER, MAINLINE, SEGNET, detect_net, detect_types
from converter.errors import CaffeFormatError
from converter.prototxt import parse_net_text
from converter.weights import read_weights
from converter.wire import length_delimited

INPUT = 'input: "data" input_shape { dim: 1 dim: 2 dim: 4 dim: 4 }\n'
MAINLINE_ORACLE = Path(__file__).resolve().parents[1] / "data" / "oracle_mainline"


def fork_of(body: str) -> str:
    return detect_net(parse_net_text(INPUT + body)).fork


def test_each_fork_is_told_by_what_only_it_has():
    assert fork_of('layer { name: "r" type: "ReLU" bottom: "data" top: "r" }') == EITHER
    assert fork_of('layer { name: "b" type: "BN" bottom: "data" top: "b" bn_param { bn_mode: INFERENCE } }') == SEGNET
    assert fork_of('layer { name: "e" type: "ELU" bottom: "data" top: "e" }') == MAINLINE
    # a mainline-only field on a common layer
    assert fork_of('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MAX '
                   'kernel_size: 2 stride: 2 round_mode: FLOOR } }') == MAINLINE  # fmt: skip
    assert fork_of('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { '
                   'num_output: 2 kernel_size: 3 dilation: 2 } }') == MAINLINE  # fmt: skip
    # caffe-segnet's BN with mainline's dilation: ENet's fork has both; converted and reported
    both = detect_net(parse_net_text(INPUT + 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                                     'convolution_param { num_output: 2 kernel_size: 3 pad: 2 dilation: 2 } }\n'
                                     'layer { name: "b" type: "BN" bottom: "c" top: "b" }'))  # fmt: skip
    assert both.fork == BOTH and "BN" in both.segnet_features and "dilation" in both.mainline_features
    assert "ENet" in both.describe()


@pytest.mark.parametrize("first, second, number", [
    ('layer { name: "u" type: "Upsample" bottom: "data" top: "u" upsample_param { scale: 2 } }',
     'layer { name: "e" type: "Embed" bottom: "data" top: "e" embed_param { num_output: 2 input_dim: 3 } }', "137"),
    ('layer { name: "d" type: "DenseImageData" top: "x" top: "y" dense_image_data_param { source: "a" } }',
     'layer { name: "t" type: "Tile" bottom: "data" top: "t" tile_param { tiles: 2 } }', "138"),
    ('layer { name: "l1" type: "SoftmaxWithLoss" bottom: "data" bottom: "data" top: "l1" '
     'loss_param { weight_by_label_freqs: true } }',
     'layer { name: "l2" type: "SoftmaxWithLoss" bottom: "data" bottom: "data" top: "l2" '
     'loss_param { normalization: FULL } }', "field 3"),
])  # fmt: skip
def test_both_meanings_of_one_field_number_fit_no_caffe(first, second, number):
    with pytest.raises(CaffeFormatError, match=f"{number}.*no Caffe reads both"):
        parse_net_text(INPUT + first + "\n" + second)


def test_mainline_infogain_loss_is_refused_with_the_reason():
    text = (INPUT + 'input: "label" input_shape { dim: 1 dim: 1 dim: 4 dim: 4 }\n'
            'layer { name: "c" type: "Crop" bottom: "data" bottom: "data" top: "c" }\n'
            'layer { name: "loss" type: "InfogainLoss" bottom: "c" bottom: "label" top: "loss" }')  # fmt: skip
    with pytest.raises(CaffeFormatError, match="applies a softmax"):
        parse_net_text(text)


def test_caffemodels_are_read_for_names_types_and_blobs_only(tmp_path):
    """A mainline caffemodel whose layers carry embed_param (mainline's field 137) reads as such."""
    layer = caffe_pb2.LayerParameter(name="e", type="Embed")
    blob = layer.blobs.add()
    blob.shape.dim.extend([3, 2])
    blob.data.extend(np.arange(6, dtype=np.float32).tolist())
    embed = length_delimited(137, bytes([8, 2, 16, 3]))  # num_output 2, input_dim 3, at mainline's number
    payload = layer.SerializeToString() + embed
    path = tmp_path / "m.caffemodel"
    path.write_bytes(length_delimited(100, payload))
    weights = read_weights(path)
    assert weights["e"].type == "Embed" and weights["e"].blobs[0].data.tolist() == [0, 1, 2, 3, 4, 5]
    assert detect_types([w.type for w in weights.layers.values()]).fork == MAINLINE


def test_the_command_line_says_which_caffe(tmp_path):
    case = json.loads((MAINLINE_ORACLE / "cases.json").read_text())["cases"][0]
    summary = tmp_path / "s.json"
    result = subprocess.run([sys.executable, "-m", "converter", str(MAINLINE_ORACLE / case["prototxt"]),
                             str(MAINLINE_ORACLE / case["caffemodel"]), "--summary-json", str(summary)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "written for: mainline Caffe" in result.stdout
    assert json.loads(summary.read_text())["written_for"] == MAINLINE
