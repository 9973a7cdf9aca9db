"""Time a caffe-segnet build on one net, in this process: run by bench_inference.py under ``--caffe-python``.

Runs under the Python that imports the caffe-segnet build (pycaffe), so it
imports no PyTorch, and of this project only segnet.deploy.measure. Prints one JSON line:
median seconds over ``repeats`` runs after two warm-up runs, the process's
peak resident memory while running (VmHWM, restarted after loading, as the
project's rows measure it) and the resident memory once loaded.

    PY caffe_timing.py forward NET.prototxt NET.caffemodel INPUT.npy BLOB OUT.npy REPEATS
    PY caffe_timing.py train   NET.prototxt NET.caffemodel INPUT.npy BLOB LABEL.npy REPEATS

``train`` times one forward and backward pass of the net with the class
scores (BLOB) fed to SoftmaxWithLoss (ignore label 11, as SegNet's training
nets), BN layers in LEARN mode; Caffe's parameter update (a few element-wise
passes over the weights) is not included.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this project's root: segnet.deploy.measure
from segnet.deploy.measure import current_rss_mb, peak_rss_mb, reset_peak_rss  # noqa: E402


def training_net(prototxt: str, score: str) -> str:
    """The inference net as a training net: Softmax replaced by SoftmaxWithLoss on a label input, BN learning."""
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    net = caffe_pb2.NetParameter()
    with open(prototxt) as f:
        text_format.Merge(f.read(), net)
    keep = [layer for layer in net.layer if layer.type != "Softmax"]
    del net.layer[:]
    net.layer.extend(keep)
    for layer in net.layer:
        if layer.HasField("bn_param"):
            layer.bn_param.ClearField("bn_mode")  # default: LEARN
    net.input.append("label")
    shape = net.input_shape.add()
    shape.dim.extend([net.input_shape[0].dim[0], 1, net.input_shape[0].dim[2], net.input_shape[0].dim[3]])
    loss = net.layer.add()
    loss.name, loss.type = "loss", "SoftmaxWithLoss"
    loss.bottom.extend([score, "label"])
    loss.top.append("loss")
    loss.loss_param.ignore_label = 11
    path = tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False)
    path.write(text_format.MessageToString(net))
    path.close()
    return path.name


def main(argv: list[str]) -> int:
    mode, prototxt, weights, input_path, blob, extra, repeats = argv
    import caffe

    caffe.set_mode_cpu()
    x = np.load(input_path).astype(np.float32)
    if mode == "train":
        net = caffe.Net(training_net(prototxt, blob), weights, caffe.TRAIN)
        net.blobs["label"].data[...] = np.load(extra).reshape(net.blobs["label"].data.shape)

        def step():
            net.forward()
            net.backward()
    else:
        net = caffe.Net(prototxt, weights, caffe.TEST)

        def step():
            net.forward()

    net.blobs["data"].data[...] = x
    loaded = current_rss_mb()
    reset_peak_rss()
    for _ in range(2):
        step()
    times = []
    for _ in range(int(repeats)):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    if mode == "forward":
        np.save(extra, net.blobs[blob].data.astype(np.float32))
    print(json.dumps({"median_s": statistics.median(times), "peak_rss_mb": peak_rss_mb(), "loaded_rss_mb": loaded,
                      "threads": os.environ.get("OPENBLAS_NUM_THREADS", "default")}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
