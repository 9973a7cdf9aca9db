"""Record, with caffe-segnet, convolution -> BN (LEARN) on raw 0..255 images with flat regions, in a TRAIN pass.

    PYTHONPATH=/tmp/caffe-segnet/python OPENBLAS_NUM_THREADS=1 GLOG_minloglevel=2 \
        /usr/bin/python3 tools/caffe-segnet/record_bn_raw.py CAMVID_IMAGE.png tests/data/oracle_segnet

caffe-segnet's BN computes each channel's variance as E[x^2] - E[x]^2 in
float32. On unnormalised pixels with flat regions, that formula's rounding is
systematic (every channel's statistics err the same way), which a verdict
that models rounding as independent noise must still accept. The input is
two 60x80 crops of a CamVid photograph, as raw BGR values 0..255, one with a
constant block pasted in; the convolution's weights and the gradient
injected into BN's top come from numpy's seeded generator, except one
channel's: a faint difference filter, whose small variance makes BN's eps
visible. The caffemodel
is saved before the pass; outputs are the blobs, their gradients and the
parameters' gradients, in the layout of the shared caffe-segnet oracle.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import caffe

PROTOTXT = """name: "bn_learn_raw"
input: "data"
input_shape { dim: 2 dim: 3 dim: 60 dim: 80 }
force_backward: true
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "conv1_bn" type: "BN" bottom: "conv1" top: "conv1_bn"
  bn_param { bn_mode: LEARN scale_filler { type: "constant" value: 1 } shift_filler { type: "constant" value: 0 } } }
"""


def main() -> None:
    image, folder = Path(sys.argv[1]), Path(sys.argv[2])
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(4242)
    bgr = np.asarray(Image.open(image).convert("RGB"), dtype=np.float32)[:, :, ::-1].transpose(2, 0, 1)
    data = np.stack([bgr[:, 0:60, 0:80], bgr[:, 150:210, 200:280]]).copy()  # sky and road, raw 0..255
    data[1, :, 10:40, 20:60] = np.array([128.0, 64.0, 192.0], np.float32)[:, None, None]  # a flat block
    (folder / "bn_learn_raw.prototxt").write_text(PROTOTXT)
    caffe.set_mode_cpu()
    net = caffe.Net(str(folder / "bn_learn_raw.prototxt"), caffe.TRAIN)
    w = net.params["conv1"]
    w[0].data[...] = (rng.standard_normal(w[0].data.shape) / np.sqrt(27)).astype(np.float32)
    w[1].data[...] = (rng.standard_normal(w[1].data.shape) * 0.1).astype(np.float32)
    # Channel 7: a faint difference of two taps (weights summing to 0, no bias): mean near 0 and a small
    # variance, where BN's eps shows (1e-5 in place of caffe-segnet's 1e-9 changes it by about 1%).
    w[0].data[7] = 0
    w[0].data[7, :, 0, 0], w[0].data[7, :, 2, 2] = 2e-3, -2e-3
    w[1].data[7] = 0
    bn = net.params["conv1_bn"]
    bn[0].data[...] = (1 + 0.2 * rng.standard_normal(bn[0].data.shape)).astype(np.float32)
    bn[1].data[...] = (0.1 * rng.standard_normal(bn[1].data.shape)).astype(np.float32)
    net.save(str(folder / "bn_learn_raw.caffemodel"))
    net.blobs["data"].data[...] = data
    net.forward()
    top_diff = rng.standard_normal(net.blobs["conv1_bn"].diff.shape).astype(np.float32)
    for blobs in net.params.values():
        for blob in blobs:
            blob.diff[...] = 0
    net.blobs["conv1_bn"].diff[...] = top_diff
    net.backward()
    outputs = {b: net.blobs[b].data.copy() for b in ("conv1", "conv1_bn")}
    outputs.update({f"diff:{b}": net.blobs[b].diff.copy() for b in ("data", "conv1", "conv1_bn")})
    for layer, blobs in net.params.items():
        outputs.update({f"param_diff:{layer}:{i}": b.diff.copy() for i, b in enumerate(blobs)})
    np.savez(folder / "bn_learn_raw.inputs.npz", data=data, **{"top_diff:conv1_bn": top_diff})
    np.savez(folder / "bn_learn_raw.outputs.npz", **outputs)
    case = {"name": "bn_learn_raw", "phase": "TRAIN", "prototxt": "bn_learn_raw.prototxt",
            "caffemodel": "bn_learn_raw.caffemodel", "inputs": "bn_learn_raw.inputs.npz",
            "outputs": "bn_learn_raw.outputs.npz", "image": image.name,
            "producer": "caffe-segnet (github.com/alexgkendall/caffe-segnet, commit 344c113b), CPU_ONLY, float32",
            "generator": "tools/caffe-segnet/record_bn_raw.py"}
    (folder / "cases.json").write_text(json.dumps({"cases": [case]}, indent=1) + "\n")
    print(f"wrote bn_learn_raw to {folder}")


if __name__ == "__main__":
    main()
