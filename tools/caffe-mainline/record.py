"""Record reference vectors from a mainline BVLC Caffe build (see build.sh beside this file).

    PYTHONPATH=/tmp/caffe-mainline/python OPENBLAS_NUM_THREADS=1 GLOG_minloglevel=2 \
        /usr/bin/python3 tools/caffe-mainline/record.py tests/data/oracle_mainline

Writes, per case, NAME.prototxt, NAME.caffemodel (saved before any pass, so
it holds the weights the pass started from), NAME.inputs.npz (the Input
layers' tops, and top_diff:<blob> for the gradient injected into an output of
a net without a loss), NAME.outputs.npz (<blob>, diff:<blob>,
param_diff:<layer>:<i>; Caffe's automatic split blobs and the large blobs a
case lists in "skip" are left out), and for nets with BatchNorm in TRAIN
NAME.running.npz (running:<layer>:<i>: the statistics blobs after the pass).
cases.json indexes them in the layout of the caffe-segnet oracle.

Every array comes from numpy generators with fixed seeds: inputs first, then
parameters in layer order. Runs under /usr/bin/python3 (pycaffe's Python).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import caffe  # noqa: E402  (pycaffe of the mainline build)

HERE = Path(__file__).resolve().parent


def shape(*dims: int) -> str:
    return "shape { " + " ".join(f"dim: {d}" for d in dims) + " }"


def inp(name: str, *dims: int) -> str:
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ {shape(*dims)} }} }}\n'


def layer(name: str, kind: str, bottoms, tops, body: str = "") -> str:
    bottoms = [bottoms] if isinstance(bottoms, str) else bottoms
    tops = [tops] if isinstance(tops, str) else tops
    text = f'layer {{ name: "{name}" type: "{kind}" '
    text += " ".join(f'bottom: "{b}"' for b in bottoms) + " " + " ".join(f'top: "{t}"' for t in tops)
    return text + (f" {body}" if body else "") + " }\n"


# ---------------------------------------------------------------- cases
# Each: name, description, prototxt body (force_backward is added), phase, input generators,
# optional params (layer -> list of arrays, else seeded normal draws), backward (True/False).


def normal(rng, *dims, scale=1.0):
    return (rng.standard_normal(dims) * scale).astype(np.float32)


def cases():
    out = []

    def case(name, description, body, inputs, phase="TRAIN", backward=True, params=None, skip=(), no_diff=(),
             force=True, sizes=()):
        out.append(dict(name=name, description=description, body=body, inputs=inputs, phase=phase,
                        backward=backward, params=params or {}, skip=list(skip), no_diff=set(no_diff),
                        force=force and backward, sizes=list(sizes)))

    case("crop", "Crop: axis 2 with one offset (both spatial axes), axis 1 with one offset per axis, and "
         "axis -1 with the default offset 0. Input N(0,1) 2x5x9x11 and a 'target_size' blob giving the target sizes.",
         inp("data", 2, 5, 9, 11) + inp("target_size", 2, 3, 4, 6) +
         layer("crop_hw", "Crop", ["data", "target_size"], "crop_hw", "crop_param { axis: 2 offset: 3 }") +
         layer("crop_chw", "Crop", ["data", "target_size"], "crop_chw", "crop_param { axis: 1 offset: 1 offset: 2 offset: 5 }") +
         layer("crop_w", "Crop", ["data", "target_size"], "crop_w", "crop_param { axis: -1 }"),
         lambda r: {"data": normal(r, 2, 5, 9, 11), "target_size": normal(r, 2, 3, 4, 6)}, no_diff=("target_size",))
    case("elu", "ELU with the default alpha 1 and with alpha 0.3. Input N(0,2) 2x3x5x7, values near 0 included.",
         inp("data", 2, 3, 5, 7) + layer("elu", "ELU", "data", "elu") +
         layer("elu_a", "ELU", "data", "elu_a", "elu_param { alpha: 0.3 }"),
         lambda r: {"data": normal(r, 2, 3, 5, 7, scale=2.0)})
    case("tile", "Tile: axis 1 x3, and axis -1 x2 of a 2-D blob. Input N(0,1).",
         inp("data", 2, 3, 4, 5) + inp("flat", 3, 4) +
         layer("tile_c", "Tile", "data", "tile_c", "tile_param { axis: 1 tiles: 3 }") +
         layer("tile_last", "Tile", "flat", "tile_last", "tile_param { axis: -1 tiles: 2 }"),
         lambda r: {"data": normal(r, 2, 3, 4, 5), "flat": normal(r, 3, 4)})
    case("embed", "Embed: 7 rows of 5 with bias, and 7 rows of 3 without. Indices are integers 0..6 (as float32), "
         "repeats included; 2x4 indices give a 2x4xN top. Each top goes into a EuclideanLoss against an N(0,1) "
         "target, so that Caffe backpropagates (it refuses a gradient towards the indices, so the net cannot "
         "use force_backward).",
         inp("index", 2, 4) + inp("target", 2, 4, 5) + inp("target_nb", 2, 4, 3) +
         layer("embed", "Embed", "index", "embed", "embed_param { num_output: 5 input_dim: 7 }") +
         layer("embed_nb", "Embed", "index", "embed_nb", "embed_param { num_output: 3 input_dim: 7 bias_term: false }") +
         layer("loss", "EuclideanLoss", ["embed", "target"], "loss") +
         layer("loss_nb", "EuclideanLoss", ["embed_nb", "target_nb"], "loss_nb"),
         lambda r: {"index": r.integers(0, 7, size=(2, 4)).astype(np.float32), "target": normal(r, 2, 4, 5),
                    "target_nb": normal(r, 2, 4, 3)},
         no_diff=("index", "target", "target_nb"), force=False)
    case("parameter", "Parameter: a learnable 2x3x4 blob as a top, added to an input by Eltwise SUM.",
         inp("data", 2, 3, 4) + layer("p", "Parameter", [], "p", f"parameter_param {{ {shape(2, 3, 4)} }}") +
         layer("sum", "Eltwise", ["data", "p"], "sum"),
         lambda r: {"data": normal(r, 2, 3, 4)})
    case("swish", "Swish with beta 1 (default) and beta 2.5. Input N(0,3) 2x3x4x5.",
         inp("data", 2, 3, 4, 5) + layer("swish", "Swish", "data", "swish") +
         layer("swish_b", "Swish", "data", "swish_b", "swish_param { beta: 2.5 }"),
         lambda r: {"data": normal(r, 2, 3, 4, 5, scale=3.0)})
    case("clip", "Clip to [-0.5, 0.8]; the input holds the bounds themselves at a few positions.",
         inp("data", 2, 3, 4, 5) + layer("clip", "Clip", "data", "clip", "clip_param { min: -0.5 max: 0.8 }"),
         lambda r: {"data": np.where(r.random((2, 3, 4, 5)) < 0.1, np.float32(-0.5),
                                     np.where(r.random((2, 3, 4, 5)) < 0.1, np.float32(0.8),
                                              normal(r, 2, 3, 4, 5))).astype(np.float32)})
    case("batchnorm_test", "BatchNorm in TEST (global statistics by default): stored mean, variance and scale "
         "factor 2.5 (the statistics are divided by it), eps 1e-5; then Scale with bias_term. Input N(1,2).",
         inp("data", 2, 4, 5, 6) + layer("bn", "BatchNorm", "data", "bn") +
         layer("sc", "Scale", "bn", "sc", "scale_param { bias_term: true }"),
         lambda r: {"data": 1 + normal(r, 2, 4, 5, 6, scale=2.0)}, phase="TEST", backward=False,
         params={"bn": lambda r: [normal(r, 4) * 2.5, (0.5 + r.random(4) * 2 * 2.5).astype(np.float32),
                                  np.array([2.5], np.float32)]})
    case("batchnorm_train", "BatchNorm in TRAIN: batch statistics, moving_average_fraction 0.9, eps 1e-4; "
         "running statistics after the pass in NAME.running.npz. Then Scale (no bias) and Bias. Input N(3,2) "
         "2x4x5x6.",
         inp("data", 2, 4, 5, 6) +
         layer("bn", "BatchNorm", "data", "bn", "batch_norm_param { moving_average_fraction: 0.9 eps: 1e-4 }") +
         layer("sc", "Scale", "bn", "sc") + layer("bias", "Bias", "sc", "bias"),
         lambda r: {"data": 3 + normal(r, 2, 4, 5, 6, scale=2.0)},
         params={"bn": lambda r: [normal(r, 4) * 1.7, (0.5 + r.random(4) * 1.7).astype(np.float32),
                                  np.array([1.7], np.float32)]})
    case("batchnorm_global_train", "BatchNorm with use_global_stats: true in a TRAIN net (stored statistics, "
         "scale factor 0: treated as 0 statistics by Caffe's 1/0 -> 0 rule).",
         inp("data", 2, 3, 4, 4) + layer("bn", "BatchNorm", "data", "bn", "batch_norm_param { use_global_stats: true }"),
         lambda r: {"data": normal(r, 2, 3, 4, 4)},
         params={"bn": lambda r: [normal(r, 3), (0.5 + r.random(3)).astype(np.float32), np.array([0], np.float32)]})
    case("scale_bias_bottoms", "Scale and Bias whose second operand is a bottom: axis 1 num_axes 2 (a CxH "
         "scale), axis 0 num_axes -1 (a whole-blob bias), axis -2 (a blob over H and W by default num_axes 1 -> "
         "H only). Gradients reach both bottoms.",
         inp("data", 2, 3, 4, 5) + inp("s_ch", 3, 4) + inp("b_all", 2, 3, 4, 5) + inp("s_h", 4) +
         layer("scale_ch", "Scale", ["data", "s_ch"], "scale_ch", "scale_param { axis: 1 num_axes: 2 }") +
         layer("bias_all", "Bias", ["scale_ch", "b_all"], "bias_all", "bias_param { axis: 0 num_axes: -1 }") +
         layer("scale_h", "Scale", ["bias_all", "s_h"], "scale_h", "scale_param { axis: -2 }"),
         lambda r: {"data": normal(r, 2, 3, 4, 5), "s_ch": normal(r, 3, 4), "b_all": normal(r, 2, 3, 4, 5),
                    "s_h": normal(r, 4)})
    case("scale_bias_params", "Scale with learned scale and bias_term over axis 1 num_axes 2 (C x H blobs), "
         "Bias with a learned (H, W) blob at axis 2 num_axes 2.",
         inp("data", 2, 3, 4, 5) +
         layer("scale", "Scale", "data", "scale", "scale_param { axis: 1 num_axes: 2 bias_term: true }") +
         layer("bias", "Bias", "scale", "bias", "bias_param { axis: 2 num_axes: 2 }"),
         lambda r: {"data": normal(r, 2, 3, 4, 5)})
    case("dilated_conv", "Convolution with dilation 2 (3x3 kernel, pad 2, group 2), dilation 3x2 rectangular "
         "kernel 3x2 stride 2; Deconvolution with dilation 2 stride 2. Input N(0,1) 2x4x13x11.",
         inp("data", 2, 4, 13, 11) +
         layer("conv_d2", "Convolution", "data", "conv_d2",
               "convolution_param { num_output: 6 kernel_size: 3 pad: 2 dilation: 2 group: 2 }") +
         layer("conv_rect", "Convolution", "data", "conv_rect",
               "convolution_param { num_output: 3 kernel_h: 3 kernel_w: 2 stride: 2 dilation: 3 dilation: 2 }") +
         layer("deconv_d2", "Deconvolution", "conv_rect", "deconv_d2",
               "convolution_param { num_output: 2 kernel_size: 3 stride: 2 pad: 1 dilation: 2 }"),
         lambda r: {"data": normal(r, 2, 4, 13, 11)})
    case("pool_floor", "Pooling with round_mode FLOOR (MAX 3x3 stride 2 and AVE 3x3 stride 2 pad 1) beside the "
         "default CEIL, on a 2x3x10x9 input where the two rules give different sizes.",
         inp("data", 2, 3, 10, 9) +
         layer("max_floor", "Pooling", "data", "max_floor",
               "pooling_param { pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR }") +
         layer("max_ceil", "Pooling", "data", "max_ceil", "pooling_param { pool: MAX kernel_size: 3 stride: 2 }") +
         layer("ave_floor", "Pooling", "data", "ave_floor",
               "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR }"),
         lambda r: {"data": normal(r, 2, 3, 10, 9)})
    for mode in ("FULL", "VALID", "BATCH_SIZE", "NONE"):
        case(f"loss_{mode.lower()}", f"SoftmaxWithLoss with normalization {mode} and ignore_label 2, on 2x4x3x5 "
             "scores; labels 0..3, about a fifth of them the ignored 2.",
             inp("score", 2, 4, 3, 5) + inp("label", 2, 1, 3, 5) +
             layer("loss", "SoftmaxWithLoss", ["score", "label"], "loss",
                   f"loss_param {{ ignore_label: 2 normalization: {mode} }}"),
             lambda r: {"score": normal(r, 2, 4, 3, 5, scale=2.0),
                        "label": r.integers(0, 4, size=(2, 1, 3, 5)).astype(np.float32)}, no_diff=("label",))
    case("fcn8s_mini", "An FCN-8s-shaped net (VGG-like 5-pool encoder with fewer channels, conv1 pad 100, fc6 "
         "as a 7x7 convolution, score_fr, upscore2 / upscore_pool4 / upscore8 as bilinear Deconvolutions "
         "without bias and lr_mult 0, score_pool4 and score_pool3 cropped at offsets 5 and 9 and summed, score "
         "cropped at offset 31 to the input), trained by SoftmaxWithLoss with normalize: false and ignore_label "
         "255. Input N(0,1) 1x3x37x45; labels 0..4 with some 255. The first blocks' large blobs are not recorded. "
         "shapes_by_size: Caffe's blob shapes for other input sizes (score always has the input's size).",
         fcn8s_mini(), lambda r: {"data": normal(r, 1, 3, 37, 45),
                                   "label": np.where(r.random((1, 1, 37, 45)) < 0.1, 255,
                                                     r.integers(0, 5, size=(1, 1, 37, 45))).astype(np.float32)},
         skip=("conv1_1", "conv1_2", "pool1", "conv2_1", "conv2_2", "pool2"), no_diff=("label",),
         sizes=((1, 1), (17, 23), (64, 64), (100, 77), (224, 224), (333, 500), (500, 500)))
    case("resnet_block", "A ResNet-style stem and block in TRAIN: Convolution 7x7 stride 2 without bias on raw "
         "0..255 pixels (integers, with a flat block) -> BatchNorm (batch statistics) -> Scale with bias -> ReLU -> "
         "MAX pool 3x3 stride 2 -> two 3x3 Convolution/BatchNorm/Scale branches summed with the shortcut -> ReLU.",
         resnet_block(),
         lambda r: {"data": np.where(np.arange(40 * 48).reshape(1, 1, 40, 48) % 48 < 20, np.float32(131),
                                     r.integers(0, 256, size=(2, 3, 40, 48))).astype(np.float32)})
    return out


def resnet_block() -> str:
    def conv_bn(name, bottom, out, kernel, stride=1, pad=0, relu=True):
        text = layer(name, "Convolution", bottom, name, f"convolution_param {{ num_output: {out} kernel_size: "
                     f"{kernel} stride: {stride} pad: {pad} bias_term: false }}")
        text += layer(f"bn_{name}", "BatchNorm", name, name)
        text += layer(f"scale_{name}", "Scale", name, name, "scale_param { bias_term: true }")
        return text + (layer(f"relu_{name}", "ReLU", name, name) if relu else "")

    text = inp("data", 2, 3, 40, 48) + conv_bn("conv1", "data", 8, 7, 2, 3)
    text += layer("pool1", "Pooling", "conv1", "pool1", "pooling_param { pool: MAX kernel_size: 3 stride: 2 }")
    text += conv_bn("res2a_1", "pool1", 8, 3, pad=1) + conv_bn("res2a_2", "res2a_1", 8, 3, pad=1, relu=False)
    text += layer("res2a", "Eltwise", ["pool1", "res2a_2"], "res2a")
    return text + layer("res2a_relu", "ReLU", "res2a", "res2a")


def fcn8s_mini() -> str:
    text = inp("data", 1, 3, 37, 45) + inp("label", 1, 1, 37, 45)
    bottom, widths = "data", (4, 6, 6, 8, 8)
    for block, width in enumerate(widths, 1):
        for i in (1, 2):
            name = f"conv{block}_{i}"
            pad = 100 if name == "conv1_1" else 1
            text += layer(name, "Convolution", bottom, name,
                          f"convolution_param {{ num_output: {width} kernel_size: 3 pad: {pad} }}")
            text += layer(f"relu{block}_{i}", "ReLU", name, name)
            bottom = name
        text += layer(f"pool{block}", "Pooling", bottom, f"pool{block}",
                      "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
        bottom = f"pool{block}"
    text += layer("fc6", "Convolution", "pool5", "fc6", "convolution_param { num_output: 12 kernel_size: 7 }")
    text += layer("relu6", "ReLU", "fc6", "fc6")
    text += layer("fc7", "Convolution", "fc6", "fc7", "convolution_param { num_output: 12 kernel_size: 1 }")
    text += layer("relu7", "ReLU", "fc7", "fc7")
    text += layer("score_fr", "Convolution", "fc7", "score_fr", "convolution_param { num_output: 5 kernel_size: 1 }")
    up = ('param { lr_mult: 0 } convolution_param { num_output: 5 bias_term: false kernel_size: %d stride: %d '
          'group: 5 weight_filler { type: "bilinear" } }')
    text += layer("upscore2", "Deconvolution", "score_fr", "upscore2", up % (4, 2))
    text += layer("score_pool4", "Convolution", "pool4", "score_pool4", "convolution_param { num_output: 5 kernel_size: 1 }")
    text += layer("score_pool4c", "Crop", ["score_pool4", "upscore2"], "score_pool4c", "crop_param { axis: 2 offset: 5 }")
    text += layer("fuse_pool4", "Eltwise", ["upscore2", "score_pool4c"], "fuse_pool4", "eltwise_param { operation: SUM }")
    text += layer("upscore_pool4", "Deconvolution", "fuse_pool4", "upscore_pool4", up % (4, 2))
    text += layer("score_pool3", "Convolution", "pool3", "score_pool3", "convolution_param { num_output: 5 kernel_size: 1 }")
    text += layer("score_pool3c", "Crop", ["score_pool3", "upscore_pool4"], "score_pool3c", "crop_param { axis: 2 offset: 9 }")
    text += layer("fuse_pool3", "Eltwise", ["upscore_pool4", "score_pool3c"], "fuse_pool3", "eltwise_param { operation: SUM }")
    text += layer("upscore8", "Deconvolution", "fuse_pool3", "upscore8", up % (16, 8))
    text += layer("score", "Crop", ["upscore8", "data"], "score", "crop_param { axis: 2 offset: 31 }")
    text += layer("loss", "SoftmaxWithLoss", ["score", "label"], "loss", "loss_param { ignore_label: 255 normalize: false }")
    return text


# ---------------------------------------------------------------- recording


def bilinear(kernel: int, channels: int) -> np.ndarray:
    """The bilinear upsampling kernel Caffe's "bilinear" filler writes, one per channel (group = channels)."""
    factor = (kernel + 1) // 2
    center = factor - 1 if kernel % 2 == 1 else factor - 0.5
    og = np.ogrid[:kernel, :kernel]
    k = (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)
    return np.tile(k.astype(np.float32), (channels, 1, 1, 1))


def record(spec: dict, folder: Path, seed: int) -> dict:
    name = spec["name"]
    proto = folder / f"{name}.prototxt"
    proto.write_text(f'name: "{name}"\nforce_backward: {"true" if spec["force"] else "false"}\n' + spec["body"])
    phase = caffe.TRAIN if spec["phase"] == "TRAIN" else caffe.TEST
    net = caffe.Net(str(proto), phase)
    rng = np.random.default_rng(seed)
    inputs = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in spec["inputs"](rng).items()}
    for layer_name, blobs in net.params.items():
        given = spec["params"].get(layer_name)
        arrays = given(rng) if given else None
        for i, blob in enumerate(blobs):
            if arrays is not None:
                blob.data[...] = arrays[i].reshape(blob.data.shape)
            elif net.layer_dict[layer_name].type == "Deconvolution" and "upscore" in layer_name:
                blob.data[...] = bilinear(blob.data.shape[-1], blob.data.shape[0])
            else:  # weights scaled by 1/sqrt(fan-in), so that activations stay of order 1 through deep nets
                fan_in = int(np.prod(blob.data.shape[1:])) if blob.data.ndim > 1 else 4
                blob.data[...] = rng.standard_normal(blob.data.shape).astype(np.float32) / np.sqrt(fan_in)
    net.save(str(folder / f"{name}.caffemodel"))  # the weights the pass starts from
    for key, value in inputs.items():
        net.blobs[key].data[...] = value
    net.forward()
    outputs, skip = {}, set(spec["skip"])
    recorded = [b for b in net.blobs if "_split_" not in b and b not in skip]
    for blob in recorded:
        outputs[blob] = net.blobs[blob].data.copy()
    top_diffs = {}
    if spec["backward"]:
        for blobs in net.params.values():
            for blob in blobs:
                blob.diff[...] = 0
        loss_tops = [t for t in net.outputs if "loss" in t]
        if not loss_tops:
            for top in net.outputs:
                top_diffs[f"top_diff:{top}"] = rng.standard_normal(net.blobs[top].diff.shape).astype(np.float32)
                net.blobs[top].diff[...] = top_diffs[f"top_diff:{top}"]
        net.backward()
        for blob in recorded:
            if blob in spec["no_diff"]:
                continue  # Caffe sends no gradient there (labels, indices, a crop's reference)
            outputs[f"diff:{blob}"] = net.blobs[blob].diff.copy()
        for layer_name, blobs in net.params.items():
            for i, blob in enumerate(blobs):
                if net.layer_dict[layer_name].type == "BatchNorm":
                    continue  # statistics, not learned: Caffe gives them no gradient
                outputs[f"param_diff:{layer_name}:{i}"] = blob.diff.copy()
    running = {}
    for layer_name, blobs in net.params.items():
        if net.layer_dict[layer_name].type == "BatchNorm" and spec["phase"] == "TRAIN":
            running.update({f"running:{layer_name}:{i}": b.data.copy() for i, b in enumerate(blobs)})
    for key, value in list(outputs.items()):
        if value.ndim == 0:
            outputs[key] = value.reshape(1)
    np.savez(folder / f"{name}.inputs.npz", **inputs, **top_diffs)
    np.savez(folder / f"{name}.outputs.npz", **outputs)
    entry = {
        "name": name, "group": "mainline", "description": spec["description"], "phase": spec["phase"],
        "prototxt": proto.name, "caffemodel": f"{name}.caffemodel", "inputs": f"{name}.inputs.npz",
        "outputs": f"{name}.outputs.npz", "backward": spec["backward"], "seed": seed,
        "input_shapes": {k: list(v.shape) for k, v in inputs.items()},
        "layer_types": sorted({net.layer_dict[n].type for n in net._layer_names if "_split_" not in n}),
        "generator": "tools/caffe-mainline/record.py",
    }
    if running:
        np.savez(folder / f"{name}.running.npz", **running)
        entry["running"] = f"{name}.running.npz"
    if spec.get("sizes"):  # Caffe's blob shapes when the net is reshaped to other input sizes
        entry["shapes_by_size"] = {}
        for h, w in spec["sizes"]:
            for blob in net.inputs:
                net.blobs[blob].reshape(*net.blobs[blob].data.shape[:2], h, w)
            net.reshape()
            entry["shapes_by_size"][f"{h}x{w}"] = {b: list(net.blobs[b].data.shape) for b in net.blobs
                                                  if "_split_" not in b}
    return entry


def main() -> None:
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    caffe.set_mode_cpu()
    root = Path(caffe.__file__).resolve().parents[2]
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    entries = [record(spec, folder, 9000 + i) for i, spec in enumerate(cases())]
    index = {
        "producer": f"mainline BVLC Caffe (github.com/BVLC/caffe, commit {commit[:8]}), CPU_ONLY, float32, "
                    f"OpenBLAS, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}",
        "cases": entries,
    }
    (folder / "cases.json").write_text(json.dumps(index, indent=1) + "\n")
    print(f"wrote {len(entries)} cases to {folder}")


if __name__ == "__main__":
    main()
