"""Record the ENet-style reference vectors with a caffe-segnet build (pycaffe, /usr/bin/python3).

    PYTHONPATH=/tmp/caffe-segnet/python OPENBLAS_NUM_THREADS=1 /usr/bin/python3 record_caffe.py

Reads enet_style.prototxt beside this file; writes enet_style.caffemodel,
enet_style.inputs.npz and enet_style.outputs.npz there. Weights: Caffe's
fillers (msra, xavier), then biases N(0, 0.1), BN scale U(0.5, 1.5) and shift
N(0, 0.1), PReLU slopes U(-0.25, 0.75), from numpy's generator with seed 7.
"""

from pathlib import Path

import caffe
import numpy as np

HERE = Path(__file__).resolve().parent
KEEP = ["loss", "aux_loss", "spp", "spp_fc", "b1_0_pool_mask", "b2_0_pool_mask", "b2_3_out", "b4_0_out"]

caffe.set_mode_cpu()
net = caffe.Net(str(HERE / "enet_style.prototxt"), caffe.TRAIN)
rng = np.random.default_rng(7)
types = {name: layer.type for name, layer in zip(net._layer_names, net.layers)}
for name, blobs in net.params.items():
    for i, blob in enumerate(blobs):
        if types[name] == "BN":
            blob.data[...] = rng.uniform(0.5, 1.5, blob.data.shape) if i == 0 else rng.normal(0, 0.1, blob.data.shape)
        elif types[name] == "PReLU":
            blob.data[...] = rng.uniform(-0.25, 0.75, blob.data.shape)
        elif i == 1:
            blob.data[...] = rng.normal(0, 0.1, blob.data.shape)
net.save(str(HERE / "enet_style.caffemodel"))
inputs = {
    "data": rng.normal(0, 1, net.blobs["data"].data.shape).astype(np.float32),
    "label": rng.integers(0, 5, net.blobs["label"].data.shape).astype(np.float32),
    "target": rng.normal(0, 1, net.blobs["target"].data.shape).astype(np.float32),
}
for name, value in inputs.items():
    net.blobs[name].data[...] = value
for blobs in net.params.values():
    for blob in blobs:
        blob.diff[...] = 0
net.forward()
net.backward()
outputs = {name: net.blobs[name].data.reshape(net.blobs[name].data.shape or (1,)).copy() for name in KEEP}
outputs["diff:data"] = net.blobs["data"].diff.copy()
outputs["diff:target"] = net.blobs["target"].diff.copy()
for name, blobs in net.params.items():
    for i, blob in enumerate(blobs):
        outputs[f"param_diff:{name}:{i}"] = blob.diff.copy()
np.savez_compressed(HERE / "enet_style.inputs.npz", **inputs)
np.savez_compressed(HERE / "enet_style.outputs.npz", **outputs)
print("loss", float(net.blobs["loss"].data), "aux_loss", float(net.blobs["aux_loss"].data))
