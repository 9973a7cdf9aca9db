"""The Caffe schema: wire compatibility, generated bindings, protobuf runtime range."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format

from caffe_proto import caffe_pb2

ROOT = Path(__file__).resolve().parents[2]

# Field numbers that caffe-segnet's files depend on (from its caffe.proto).
SEGNET_FIELDS = {
    ("NetParameter", "layer"): 100,
    ("NetParameter", "layers"): 2,
    ("NetParameter", "input_dim"): 4,
    ("NetParameter", "input_shape"): 8,
    ("LayerParameter", "blobs"): 7,
    ("LayerParameter", "bn_param"): 45,
    ("LayerParameter", "upsample_param"): 137,
    ("LayerParameter", "dense_image_data_param"): 138,
    ("LayerParameter", "loss_param"): 101,
    ("V1LayerParameter", "blobs"): 6,
    ("V1LayerParameter", "blobs_lr"): 7,
    ("BlobProto", "data"): 5,
    ("BlobProto", "shape"): 7,
    ("BNParameter", "bn_mode"): 3,
    ("UpsampleParameter", "upsample_h"): 6,
    ("UpsampleParameter", "pad_out_h"): 4,
    ("DropoutParameter", "sample_weights_test"): 2,
    ("LossParameter", "weight_by_label_freqs"): 3,
    ("LossParameter", "class_weighting"): 4,
    ("DenseImageDataParameter", "new_height"): 5,
}


@pytest.mark.parametrize("message, field", sorted(SEGNET_FIELDS))
def test_field_numbers_match_caffe_segnet(message, field):
    descriptor = getattr(caffe_pb2, message).DESCRIPTOR
    assert descriptor.fields_by_name[field].number == SEGNET_FIELDS[(message, field)]


def test_mainline_additions_do_not_collide():
    numbers = [f.number for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields]
    assert len(numbers) == len(set(numbers))
    assert caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name["batch_norm_param"].number == 139


def test_text_and_binary_round_trip():
    text = """
    name: "t" input: "data" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 5
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "a" bottom: "b" top: "loss"
      loss_param: { ignore_label: 11 weight_by_label_freqs: true class_weighting: 0.5 class_weighting: 2 }
      include { phase: TRAIN } }  # a comment
    """
    net = text_format.Parse(text, caffe_pb2.NetParameter())
    again = caffe_pb2.NetParameter.FromString(net.SerializeToString())
    assert again == net
    assert list(again.layer[0].loss_param.class_weighting) == [0.5, 2.0]


def test_bindings_are_current():
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the dev extra) regenerates the bindings")
    result = subprocess.run([sys.executable, str(ROOT / "proto" / "build.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


OLD_PROTOBUF = os.environ.get("SEGNET_OLD_PROTOBUF")


@pytest.mark.skipif(not OLD_PROTOBUF, reason="set SEGNET_OLD_PROTOBUF to a folder holding protobuf 4.21 (CI does)")
def test_bindings_work_on_the_oldest_supported_protobuf():
    code = (
        "import google.protobuf as g, caffe_pb2 as p; from google.protobuf import text_format as t;"
        "n = t.Parse('layers { name: \"c\" type: CONVOLUTION }', p.NetParameter());"
        "assert n.layers[0].type == p.V1LayerParameter.CONVOLUTION; print(g.__version__)"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([OLD_PROTOBUF, str(ROOT / "proto")]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("4.21")
