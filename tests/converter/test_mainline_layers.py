"""Mainline Caffe's layers and options, on small nets built from prototxt text.

Each layer's forward pass and gradients are checked in float64 against
reference formulas written here in numpy from mainline Caffe's definitions
(src/caffe/layers/*.cpp), never by calling the layer; plus its shape rule,
defaults, blobs, and each of Caffe's checks as a one-line error naming the
layer.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from caffe_proto import caffe_pb2
from converter import CaffeNet, parse_net_text
from converter.errors import CaffeFormatError
from converter.fillers import fill
from converter.layers import DATA_LAYER_TYPES, LAYER_TYPES, REFUSED_TYPES

RNG = np.random.default_rng(20240531)

#: The layer types mainline BVLC Caffe (master, 2020) registers (REGISTER_LAYER_CLASS / _CREATOR).
MAINLINE_TYPES = [
    "AbsVal", "Accuracy", "ArgMax", "BNLL", "BatchNorm", "BatchReindex", "Bias", "Clip", "Concat", "ContrastiveLoss",
    "Convolution", "Crop", "Data", "Deconvolution", "Dropout", "DummyData", "ELU", "Eltwise", "Embed",
    "EuclideanLoss", "Exp", "Filter", "Flatten", "HDF5Data", "HDF5Output", "HingeLoss", "Im2col", "ImageData",
    "InfogainLoss", "InnerProduct", "Input", "LRN", "LSTM", "LSTMUnit", "Log", "MVN", "MemoryData",
    "MultinomialLogisticLoss", "PReLU", "Parameter", "Pooling", "Power", "Python", "RNN", "ReLU", "Reduction",
    "Reshape", "SPP", "Scale", "Sigmoid", "SigmoidCrossEntropyLoss", "Silence", "Slice", "Softmax",
    "SoftmaxWithLoss", "Split", "Swish", "TanH", "Threshold", "Tile", "WindowData",
]  # fmt: skip


# ---------------------------------------------------------------- helpers


def shape_text(name: str, *dims: int) -> str:
    return f'input: "{name}" input_shape {{ {" ".join(f"dim: {d}" for d in dims)} }} '


def net_of(text: str, phase: str = "TEST") -> CaffeNet:
    return CaffeNet(parse_net_text(text), phase)


def run(net: CaffeNet, top: str, feed: dict[str, np.ndarray], grad_of=(), dy: np.ndarray | None = None, seed=1):
    """Run ``net`` in float64; returns (top value, {input: gradient}, the upstream gradient used)."""
    net = net.double()
    tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k in grad_of) for k, v in feed.items()}
    y = net(**tensors, blobs=[top])[top]
    if dy is None:
        dy = np.random.default_rng(seed).standard_normal(tuple(y.shape))
    grads = {}
    if y.requires_grad:
        y.backward(torch.tensor(dy, dtype=torch.float64))
        grads = {k: (None if tensors[k].grad is None else tensors[k].grad.numpy()) for k in grad_of}
    return y.detach().numpy(), grads, dy


def refused(text: str, phase: str = "TEST") -> str:
    with pytest.raises(CaffeFormatError) as info:
        net_of(text, phase)
    message = str(info.value)
    assert "\n" not in message
    return message


def close(a, b, tol=1e-12):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=tol, atol=tol)


def test_every_mainline_type_is_converted_or_refused():
    handled = set(LAYER_TYPES) | DATA_LAYER_TYPES | set(REFUSED_TYPES)
    assert [t for t in MAINLINE_TYPES if t not in handled] == []


# ---------------------------------------------------------------- Crop


def crop_reference(x: np.ndarray, sizes, offsets) -> np.ndarray:
    out = np.zeros(sizes)
    for index in np.ndindex(*sizes):
        out[index] = x[tuple(i + o for i, o in zip(index, offsets))]
    return out


CROP_CASES = [  # crop_param, top shape, per-axis offsets
    ("", (2, 5, 4, 6), (0, 0, 0, 0)),  # axis 2 by default, offset 0
    ("axis: 2 offset: 3", (2, 5, 4, 6), (0, 0, 3, 3)),
    ("axis: 1 offset: 1 offset: 2 offset: 5", (2, 3, 4, 6), (0, 1, 2, 5)),
    ("axis: -1 offset: 4", (2, 5, 9, 6), (0, 0, 0, 4)),
    ("axis: 0 offset: 0 offset: 2 offset: 0 offset: 1", (2, 3, 4, 6), (0, 2, 0, 1)),
]


@pytest.mark.parametrize("param, top_shape, offsets", CROP_CASES)
def test_crop_values_shape_and_gradient(param, top_shape, offsets):
    text = (shape_text("x", 2, 5, 9, 11) + shape_text("like", 2, 3, 4, 6) +
            f'layer {{ name: "c" type: "Crop" bottom: "x" bottom: "like" top: "y" '
            f"crop_param {{ {param} }} }}")  # fmt: skip
    net = net_of(text)
    assert net.blob_shapes["y"] == top_shape
    x = RNG.standard_normal((2, 5, 9, 11))
    y, grads, dy = run(net, "y", {"x": x, "like": RNG.standard_normal((2, 3, 4, 6))}, grad_of=("x", "like"))
    close(y, crop_reference(x, top_shape, offsets))
    expected = np.zeros_like(x)
    for index in np.ndindex(*top_shape):
        expected[tuple(i + o for i, o in zip(index, offsets))] = dy[index]
    close(grads["x"], expected)
    assert grads["like"] is None  # Caffe's backward writes bottom 0 only


@pytest.mark.parametrize("param, words", [
    ("axis: 1 offset: 1 offset: 2", ["2 offset values", "3 cropped axes"]),
    ("axis: 2 offset: 6", ["axis 2", "out of bounds", "offset 6", "size 9"]),
    ("axis: 3 offset: 0 offset: 6", ["2 offset values", "1 cropped axes"]),
    ("axis: 4", ["axis 4 out of range"]),
])  # fmt: skip
def test_crop_checks(param, words):
    text = (shape_text("x", 2, 5, 9, 11) + shape_text("like", 2, 3, 4, 6) +
            f'layer {{ name: "c" type: "Crop" bottom: "x" bottom: "like" top: "y" '
            f"crop_param {{ {param} }} }}")  # fmt: skip
    message = refused(text)
    assert "layer 'c'" in message
    for word in words:
        assert word in message, message


def test_crop_reference_needs_every_cropped_axis():
    text = (shape_text("x", 2, 5, 9, 11) + shape_text("like", 2, 3) +
            'layer { name: "c" type: "Crop" bottom: "x" bottom: "like" top: "y" crop_param { axis: 1 } }')  # fmt: skip
    assert "fewer than bottom 0's 4" in refused(text)
    text = (shape_text("x", 2, 5, 9, 11) + shape_text("like", 1, 1) +
            'layer { name: "c" type: "Crop" bottom: "x" top: "y" }')  # fmt: skip
    assert "Crop takes 2 bottom(s), got 1" in refused(text)


# ---------------------------------------------------------------- ELU, Swish, Clip


@pytest.mark.parametrize("param, alpha", [("", 1.0), ("elu_param { alpha: 0.3 }", 0.3)])
def test_elu_forward_and_caffes_gradient(param, alpha):
    net = net_of(shape_text("x", 2, 3, 5) + f'layer {{ name: "e" type: "ELU" bottom: "x" top: "y" {param} }}')
    x = RNG.standard_normal((2, 3, 5)) * 2
    x[0, 0, :3] = [0.0, -0.0, 1e-9]
    y, grads, dy = run(net, "y", {"x": x}, grad_of=("x",))
    alpha = float(np.float32(alpha))
    want = np.maximum(x, 0) + alpha * (np.exp(np.minimum(x, 0)) - 1)
    close(y, want)
    close(grads["x"], np.where(x > 0, dy, dy * (alpha + want)))
    assert grads["x"][0, 0, 0] == pytest.approx(alpha * dy[0, 0, 0])  # 0 counts as negative


@pytest.mark.parametrize("param, beta", [("", 1.0), ("swish_param { beta: 2.5 }", 2.5)])
def test_swish_forward_and_caffes_gradient(param, beta):
    net = net_of(shape_text("x", 2, 3, 4) + f'layer {{ name: "s" type: "Swish" bottom: "x" top: "y" {param} }}')
    x = RNG.standard_normal((2, 3, 4)) * 3
    y, grads, dy = run(net, "y", {"x": x}, grad_of=("x",))
    s = 1 / (1 + np.exp(-beta * x))
    want = x * s
    close(y, want)
    close(grads["x"], dy * (beta * want + s * (1 - beta * want)))
    close(grads["x"], dy * (s + beta * x * s * (1 - s)))  # the same as the exact derivative


def test_clip_forward_gradient_includes_both_bounds():
    net = net_of(shape_text("x", 3, 4) +
                 'layer { name: "c" type: "Clip" bottom: "x" top: "y" '
                 "clip_param { min: -0.5 max: 0.75 } }")  # fmt: skip
    x = RNG.standard_normal((3, 4))
    x[0, :3] = [-0.5, 0.75, 0.1]
    y, grads, dy = run(net, "y", {"x": x}, grad_of=("x",))
    close(y, np.clip(x, -0.5, 0.75))
    close(grads["x"], dy * ((x >= -0.5) & (x <= 0.75)))
    assert grads["x"][0, 0] == dy[0, 0] and grads["x"][0, 1] == dy[0, 1]


def test_in_place_clip_and_elu_test_the_top_in_their_gradient():
    """In place, Caffe's backward reads the top where it means the bottom: Clip then passes every gradient."""
    text = (shape_text("x", 2, 6) +
            'layer { name: "id" type: "Power" bottom: "x" top: "a" } '
            'layer { name: "c" type: "Clip" bottom: "a" top: "a" clip_param { min: -0.5 max: 0.75 } } '
            'layer { name: "id2" type: "Power" bottom: "x" top: "b" } '
            'layer { name: "e" type: "ELU" bottom: "b" top: "b" elu_param { alpha: -0.5 } }')  # fmt: skip
    net = net_of(text).double()
    x = np.array([[-2.0, -0.5, 0.0, 0.5, 0.75, 3.0], [-1.0, -0.1, 0.1, 1.0, -3.0, 2.0]])
    y, grads, dy = run(net, "a", {"x": x}, grad_of=("x",))
    close(y, np.clip(x, -0.5, 0.75))
    close(grads["x"], dy)  # min <= clipped value <= max everywhere
    y, grads, dy = run(net, "b", {"x": x}, grad_of=("x",))
    alpha = -0.5
    want = np.maximum(x, 0) + alpha * (np.exp(np.minimum(x, 0)) - 1)
    close(y, want)
    close(grads["x"], np.where(want > 0, dy, dy * (alpha + want)))  # the top, positive where x < 0, is tested


def test_clip_nan_gives_min_as_std_min_max_do():
    net = net_of(shape_text("x", 3) +
                 'layer { name: "c" type: "Clip" bottom: "x" top: "y" clip_param { min: -1 max: 2 } }')  # fmt: skip
    y, _, _ = run(net, "y", {"x": np.array([np.nan, 5.0, -5.0])})
    assert y.tolist() == [-1.0, 2.0, -1.0]


@pytest.mark.parametrize("param, missing", [("min: 1", "max missing"), ("max: 1", "min missing"),
                                            ("", "min and max missing")])  # fmt: skip
def test_clip_needs_both_bounds(param, missing):
    message = refused(shape_text("x", 3) + f'layer {{ name: "c" type: "Clip" bottom: "x" top: "y" '
                      f"clip_param {{ {param} }} }}")  # fmt: skip
    assert "layer 'c'" in message and missing in message


# ---------------------------------------------------------------- Tile


@pytest.mark.parametrize("shape, axis, tiles", [((2, 3, 4, 5), 1, 3), ((3, 4), -1, 2), ((2, 3, 4), 0, 2),
                                                ((2, 3), 1, 1)])  # fmt: skip
def test_tile_values_shape_and_gradient(shape, axis, tiles):
    text = shape_text("x", *shape) + (f'layer {{ name: "t" type: "Tile" bottom: "x" top: "y" '
                                      f"tile_param {{ axis: {axis} tiles: {tiles} }} }}")  # fmt: skip
    net = net_of(text)
    a = axis % len(shape)
    top_shape = tuple(s * tiles if i == a else s for i, s in enumerate(shape))
    assert net.blob_shapes["y"] == top_shape
    x = RNG.standard_normal(shape)
    y, grads, dy = run(net, "y", {"x": x}, grad_of=("x",))
    outer, inner = math.prod(shape[:a]), math.prod(shape[a:])
    want = np.empty((outer, tiles, inner))
    for i in range(outer):
        for t in range(tiles):
            want[i, t] = x.reshape(outer, inner)[i]
    close(y, want.reshape(top_shape))
    close(grads["x"], dy.reshape(outer, tiles, inner).sum(axis=1).reshape(shape))


def test_tile_gradient_adds_in_caffes_order_in_float32():
    net = net_of(shape_text("x", 2, 3) + 'layer { name: "t" type: "Tile" bottom: "x" top: "y" '
                 "tile_param { axis: 0 tiles: 7 } }")  # fmt: skip
    x = torch.zeros(2, 3, requires_grad=True)
    scales = 10.0 ** np.arange(-3, 4)  # very different sizes per copy: the order of the adds shows
    dy = (np.random.default_rng(3).standard_normal((1, 7, 6)) * scales[None, :, None]).astype(np.float32)
    dy = dy.reshape(14, 3)
    net(x=x)["y"].backward(torch.from_numpy(dy))
    copies = dy.reshape(1, 7, 6)
    acc = copies[:, 0].copy()
    for t in range(1, 7):
        acc += copies[:, t]  # float32, one copy after another
    assert np.array_equal(x.grad.numpy(), acc.reshape(2, 3))


@pytest.mark.parametrize("param, words", [("axis: 1", ["tiles", "must be given"]),
                                          ("axis: 1 tiles: 0", ["tiles must be positive", "got 0"]),
                                          ("axis: 2 tiles: 2", ["axis 2 out of range"])])  # fmt: skip
def test_tile_checks(param, words):
    message = refused(shape_text("x", 2, 3) + f'layer {{ name: "t" type: "Tile" bottom: "x" top: "y" '
                      f"tile_param {{ {param} }} }}")  # fmt: skip
    assert "layer 't'" in message
    for word in words:
        assert word in message, message


# ---------------------------------------------------------------- Embed


def test_embed_blobs_values_and_gradients():
    text = shape_text("i", 2, 4) + ('layer { name: "e" type: "Embed" bottom: "i" top: "y" '
                                    'embed_param { num_output: 5 input_dim: 7 } }')  # fmt: skip
    net = net_of(text, "TRAIN").double()
    layer = net.layer("e")
    assert net.blob_shapes["y"] == (2, 4, 5)
    assert layer.blob_shapes() == [(7, 5), (5,)]  # Caffe's layout: one row per index
    weight, bias = RNG.standard_normal((7, 5)), RNG.standard_normal(5)
    layer.load_blobs([weight, bias])
    index = np.array([[0, 3, 3, 6], [1, 3, 0, 5]], np.float64)
    i = torch.tensor(index, requires_grad=True)
    y = net(i=i)["y"]
    with torch.no_grad():
        w64, b64 = layer.weight.double().numpy(), layer.bias.double().numpy()
    close(y.detach().numpy(), w64[index.astype(int)] + b64)
    dy = RNG.standard_normal((2, 4, 5))
    y.backward(torch.tensor(dy))
    want_w = np.zeros((7, 5))
    for n, k in enumerate(index.reshape(-1).astype(int)):
        want_w[k] += dy.reshape(-1, 5)[n]
    close(layer.weight.grad.numpy(), want_w)
    close(layer.bias.grad.numpy(), dy.reshape(-1, 5).sum(axis=0))
    assert i.grad is None  # Caffe does not backpropagate to the indices


def test_embed_without_bias_and_fillers():
    text = shape_text("i", 3) + ('layer { name: "e" type: "Embed" bottom: "i" top: "y" embed_param { num_output: 2 '
                                 'input_dim: 4 bias_term: false weight_filler { type: "constant" value: 0.5 } } } '
                                 'layer { name: "f" type: "Embed" bottom: "i" top: "z" embed_param { num_output: 2 '
                                 "input_dim: 4 } }")  # fmt: skip
    net = net_of(text)
    net.init_weights()
    assert net.layer("e").blob_attrs == ("weight",) and net.layer("e").blob_shapes() == [(4, 2)]
    assert net.layer("f").blob_shapes() == [(4, 2), (2,)]
    out = net(i=torch.tensor([0.0, 3.0, 1.0]), blobs=["y", "z"])
    assert out["y"].tolist() == [[0.5, 0.5]] * 3
    assert out["z"].abs().sum() == 0  # Caffe's default fillers: constant 0


@pytest.mark.parametrize("value, words", [(2.5, ["index 2.5", "whole number"]), (7.0, ["index 7", "0..6"]),
                                          (-1.0, ["index -1"]), (float("nan"), ["index nan"])])  # fmt: skip
def test_embed_refuses_bad_indices_at_run_time(value, words):
    net = net_of(shape_text("i", 3) + 'layer { name: "e" type: "Embed" bottom: "i" top: "y" '
                 "embed_param { num_output: 2 input_dim: 7 } }")  # fmt: skip
    with pytest.raises(CaffeFormatError) as info:
        net(i=torch.tensor([1.0, value, 0.0]))
    message = str(info.value)
    assert "\n" not in message and "layer 'e'" in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("param, words", [("input_dim: 3", ["num_output must be positive"]),
                                          ("num_output: 3", ["input_dim", "must be positive"])])  # fmt: skip
def test_embed_checks(param, words):
    message = refused(shape_text("i", 3) + f'layer {{ name: "e" type: "Embed" bottom: "i" top: "y" '
                      f"embed_param {{ {param} }} }}")  # fmt: skip
    assert "layer 'e'" in message
    for word in words:
        assert word in message


# ---------------------------------------------------------------- Parameter


def test_parameter_is_a_learnable_top():
    text = (shape_text("x", 2, 3, 4) +
            'layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: 2 dim: 3 dim: 4 } } } '
            'layer { name: "sum" type: "Eltwise" bottom: "x" bottom: "p" top: "y" }')  # fmt: skip
    net = net_of(text, "TRAIN").double()
    layer = net.layer("p")
    assert net.blob_shapes["p"] == (2, 3, 4) and layer.blob_shapes() == [(2, 3, 4)]
    assert net.input_names == ["x"]
    net.init_weights()
    assert layer.weight.abs().sum() == 0  # no filler in Caffe: zeros
    blob = RNG.standard_normal((2, 3, 4))
    layer.load_blobs([blob])
    x = RNG.standard_normal((2, 3, 4))
    out = net(x=torch.tensor(x), blobs=["p", "y"])
    close(out["p"].detach().numpy(), blob.astype(np.float32))
    close(out["y"].detach().numpy(), x + blob.astype(np.float32))
    dy = RNG.standard_normal((2, 3, 4))
    out["y"].backward(torch.tensor(dy))
    close(layer.weight.grad.numpy(), dy)


def test_parameter_shapes_and_checks():
    net = net_of('layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { } } }')
    assert net.blob_shapes["p"] == () and net.layer("p").blob_shapes() == [()]
    message = refused(shape_text("x", 2) + 'layer { name: "p" type: "Parameter" bottom: "x" top: "p" '
                      "parameter_param { shape { dim: 2 } } }")  # fmt: skip
    assert "Parameter takes 0 bottom(s), got 1" in message
    message = refused('layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: 2 dim: -3 } } }')
    assert "layer 'p'" in message and "negative" in message


# ---------------------------------------------------------------- Pooling round_mode


def pool_reference(x: np.ndarray, k, s, p, method: str, floor: bool):
    """Caffe's pooling of one plane (mainline's size rule for the mode), with its input gradient for dy."""
    h, w = x.shape

    def size(n, kk, ss, pp):
        span = n + 2 * pp - kk
        out = (span // ss if floor else -(-span // ss)) + 1
        return out - 1 if pp and (out - 1) * ss >= n + pp else out

    oh, ow = size(h, k[0], s[0], p[0]), size(w, k[1], s[1], p[1])
    out, windows = np.zeros((oh, ow)), {}
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * s[0] - p[0], j * s[1] - p[1]
            he, we = min(hs + k[0], h + p[0]), min(ws + k[1], w + p[1])
            area = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            cells = [(a, b) for a in range(hs, he) for b in range(ws, we)]
            if method == "MAX":
                best = cells[0]
                for cell in cells[1:]:
                    if x[cell] > x[best]:
                        best = cell
                out[i, j], windows[i, j] = x[best], [(best, 1.0)]
            else:
                out[i, j] = sum(x[c] for c in cells) / area
                windows[i, j] = [(c, 1.0 / area) for c in cells]
    return out, windows


@pytest.mark.parametrize("method, size, k, s, p", [
    ("MAX", (10, 9), 3, 2, 0), ("AVE", (10, 9), 3, 2, 1), ("MAX", (11, 8), 2, 3, 1), ("AVE", (7, 12), 4, 3, 0),
])  # fmt: skip
def test_pooling_floor_mode(method, size, k, s, p):
    rng = np.random.default_rng(5)
    text = shape_text("x", 1, 2, *size)
    for mode in ("FLOOR", "CEIL"):
        text += (f'layer {{ name: "{mode}" type: "Pooling" bottom: "x" top: "{mode}" pooling_param {{ pool: {method} '
                 f"kernel_size: {k} stride: {s} pad: {p} round_mode: {mode} }} }}")  # fmt: skip
    net = net_of(text)
    x = rng.standard_normal((1, 2, *size))
    for mode in ("FLOOR", "CEIL"):
        y, grads, dy = run(net, mode, {"x": x}, grad_of=("x",))
        want_grad = np.zeros_like(x)
        for c in range(2):
            want, windows = pool_reference(x[0, c], (k, k), (s, s), (p, p), method, mode == "FLOOR")
            assert y.shape[2:] == want.shape and net.blob_shapes[mode] == (1, 2, *want.shape)
            close(y[0, c], want)
            for (i, j), cells in windows.items():
                for cell, weight in cells:
                    want_grad[(0, c, *cell)] += dy[0, c, i, j] * weight
        close(grads["x"], want_grad)


def test_pooling_floor_sizes_and_mask():
    text = shape_text("x", 1, 1, 10, 9) + ('layer { name: "p" type: "Pooling" bottom: "x" top: "y" top: "m" '
                                           "pooling_param { pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR } } "
                                           'layer { name: "q" type: "Pooling" bottom: "x" top: "z" '
                                           "pooling_param { pool: MAX kernel_size: 3 stride: 2 } }")  # fmt: skip
    net = net_of(text)
    assert net.blob_shapes["y"] == (1, 1, 4, 4) and net.blob_shapes["m"] == (1, 1, 4, 4)
    assert net.blob_shapes["z"] == (1, 1, 5, 4)  # CEIL, the default
    x = torch.arange(90.0).reshape(1, 1, 10, 9)
    out = net(x=x, blobs=["y", "m"])
    # the last row and column of each window: its maximum, as a flat index
    assert out["m"][0, 0].tolist() == [[(2 + 2 * i) * 9 + 2 + 2 * j for j in range(4)] for i in range(4)]
    assert out["y"].flatten().tolist() == out["m"].flatten().float().tolist()


# ---------------------------------------------------------------- SoftmaxWithLoss normalization


def softmax_loss_reference(scores: np.ndarray, labels: np.ndarray, ignore, divisor_rule):
    """Loss and gradient (per unit top gradient) of a softmax over axis 1, labels (N, 1, H, W)."""
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    prob = e / e.sum(axis=1, keepdims=True)
    label = labels[:, 0].astype(int)
    valid = np.ones_like(label, bool) if ignore is None else label != ignore
    n, c, h, w = scores.shape
    divisor = divisor_rule(n, h * w, int(valid.sum()))
    total, grad = 0.0, prob.copy()
    for i, y, x in np.ndindex(n, h, w):
        if valid[i, y, x]:
            total -= math.log(max(prob[i, label[i, y, x], y, x], np.finfo(np.float32).tiny))
            grad[i, label[i, y, x], y, x] -= 1
        else:
            grad[i, :, y, x] = 0
    return total / divisor, grad / divisor


DIVISORS = {  # mainline's get_normalizer, at least 1
    "FULL": lambda n, inner, valid: max(1, n * inner),
    "VALID": lambda n, inner, valid: max(1, valid),
    "BATCH_SIZE": lambda n, inner, valid: max(1, n),
    "NONE": lambda n, inner, valid: 1,
}


@pytest.mark.parametrize("ignore", [None, 2])
@pytest.mark.parametrize("mode", sorted(DIVISORS))
def test_softmax_loss_normalization(mode, ignore):
    ignore_text = "" if ignore is None else f"ignore_label: {ignore} "
    text = (shape_text("s", 2, 4, 3, 5) + shape_text("l", 2, 1, 3, 5) +
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "l" top: "loss" '
            f"loss_param {{ {ignore_text}normalization: {mode} }} }}")  # fmt: skip
    net = net_of(text, "TRAIN")
    assert net.layer("loss").sequential_terms() == 30
    scores = RNG.standard_normal((2, 4, 3, 5)) * 2
    labels = RNG.integers(0, 4, size=(2, 1, 3, 5)).astype(np.float64)
    loss, grads, _ = run(net, "loss", {"s": scores, "l": labels}, grad_of=("s",), dy=np.array(1.0))
    want_loss, want_grad = softmax_loss_reference(scores, labels, ignore, DIVISORS[mode])
    assert float(loss) == pytest.approx(want_loss, rel=1e-12)
    close(grads["s"], want_grad)


@pytest.mark.parametrize("field, rule", [
    ("", DIVISORS["VALID"]),  # neither set: caffe-segnet's default, normalize: true
    ("normalize: true", DIVISORS["VALID"]),
    ("normalize: false", DIVISORS["BATCH_SIZE"]),
    ("normalize: false normalization: FULL", DIVISORS["FULL"]),  # normalization wins, as in mainline
])  # fmt: skip
def test_softmax_loss_normalize_field(field, rule):
    text = (shape_text("s", 2, 3, 2, 2) + shape_text("l", 2, 1, 2, 2) +
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "l" top: "loss" '
            f"loss_param {{ ignore_label: 0 {field} }} }}")  # fmt: skip
    scores, labels = RNG.standard_normal((2, 3, 2, 2)), RNG.integers(0, 3, size=(2, 1, 2, 2)).astype(np.float64)
    labels[0, 0, 0, 0] = 0
    loss, grads, _ = run(net_of(text, "TRAIN"), "loss", {"s": scores, "l": labels}, grad_of=("s",), dy=np.array(1.0))
    want_loss, want_grad = softmax_loss_reference(scores, labels, 0, rule)
    assert float(loss) == pytest.approx(want_loss, rel=1e-12)
    close(grads["s"], want_grad)


def test_softmax_loss_valid_with_every_label_ignored_is_zero():
    text = (shape_text("s", 1, 3, 2) + shape_text("l", 1, 2) +
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "l" top: "loss" '
            "loss_param { ignore_label: 1 normalization: VALID } }")  # fmt: skip
    loss, grads, _ = run(net_of(text, "TRAIN"), "loss", {"s": RNG.standard_normal((1, 3, 2)), "l": np.ones((1, 2))},
                         grad_of=("s",), dy=np.array(1.0))  # fmt: skip
    assert float(loss) == 0.0 and not np.any(grads["s"])  # divided by max(1, 0)


def test_softmax_loss_normalization_on_axis_2_of_a_2d_label():
    text = (shape_text("s", 2, 3, 4) + shape_text("l", 2, 3) +
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "l" top: "loss" top: "prob" '
            "softmax_param { axis: 2 } loss_param { normalization: FULL } }")  # fmt: skip
    scores, labels = RNG.standard_normal((2, 3, 4)), RNG.integers(0, 4, size=(2, 3)).astype(np.float64)
    loss, grads, _ = run(net_of(text, "TRAIN"), "loss", {"s": scores, "l": labels}, grad_of=("s",), dy=np.array(1.0))
    # axis 2 of (2, 3, 4): outer 6, classes 4, inner 1
    want_loss, want_grad = softmax_loss_reference(scores.reshape(6, 4, 1, 1), labels.reshape(6, 1, 1, 1), None,
                                                  DIVISORS["FULL"])  # fmt: skip
    assert float(loss) == pytest.approx(want_loss, rel=1e-12)
    close(grads["s"], want_grad.reshape(2, 3, 4))


# ---------------------------------------------------------------- SigmoidCrossEntropyLoss, other losses


def sigmoid_ce_reference(x, t, ignore, divisor_rule):
    valid = np.ones(x.shape, bool) if ignore is None else t.astype(int) != ignore
    terms = np.where(valid, -(t * np.log(1 / (1 + np.exp(-x))) + (1 - t) * np.log(1 - 1 / (1 + np.exp(-x)))), 0)
    n = x.shape[0]
    divisor = divisor_rule(n, x.size // n, int(valid.sum()))
    return terms.sum() / divisor, np.where(valid, 1 / (1 + np.exp(-x)) - t, 0) / divisor


@pytest.mark.parametrize("ignore", [None, -1])
@pytest.mark.parametrize("mode", sorted(DIVISORS))
def test_sigmoid_cross_entropy_normalization_and_ignore_label(mode, ignore):
    ignore_text = "" if ignore is None else f"ignore_label: {ignore} "
    text = (shape_text("x", 3, 2, 4) + shape_text("t", 3, 2, 4) +
            'layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "loss" '
            f"loss_param {{ {ignore_text}normalization: {mode} }} }}")  # fmt: skip
    net = net_of(text, "TRAIN")
    assert net.layer("loss").sequential_terms() == 24
    x = RNG.standard_normal((3, 2, 4)) * 3
    t = RNG.random((3, 2, 4))
    t[0, 0, :3] = -1  # ignored where ignore_label is -1
    loss, grads, _ = run(net, "loss", {"x": x, "t": t}, grad_of=("x", "t"), dy=np.array(1.0))
    want_loss, want_grad = sigmoid_ce_reference(x, t, ignore, DIVISORS[mode])
    assert float(loss) == pytest.approx(want_loss, rel=1e-10)
    close(grads["x"], want_grad)
    assert grads["t"] is None


def test_sigmoid_cross_entropy_without_normalization_divides_by_n():
    text = (shape_text("x", 3, 4) + shape_text("t", 3, 4) +
            'layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "loss" }')
    x, t = RNG.standard_normal((3, 4)), RNG.random((3, 4))
    loss, grads, _ = run(net_of(text, "TRAIN"), "loss", {"x": x, "t": t}, grad_of=("x",), dy=np.array(1.0))
    want_loss, want_grad = sigmoid_ce_reference(x, t, None, DIVISORS["BATCH_SIZE"])
    assert float(loss) == pytest.approx(want_loss, rel=1e-10)
    close(grads["x"], want_grad)


@pytest.mark.parametrize("field", ["ignore_label: 0", "normalize: true", "normalize: false ignore_label: 1"])
def test_sigmoid_cross_entropy_refuses_fields_the_forks_read_differently(field):
    text = (shape_text("x", 3, 4) + shape_text("t", 3, 4) +
            'layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "loss" '
            f"loss_param {{ {field} }} }}")  # fmt: skip
    message = refused(text, "TRAIN")
    assert "layer 'loss'" in message and "caffe-segnet" in message and "normalization" in message


@pytest.mark.parametrize("body", ["loss_param { normalization: VALID }", "infogain_loss_param { axis: 1 }"])
def test_mainline_infogain_loss_is_refused(body):
    text = (shape_text("p", 2, 3) + shape_text("l", 2, 1) + shape_text("h", 1, 1, 3, 3) +
            'layer { name: "ig" type: "InfogainLoss" bottom: "p" bottom: "l" bottom: "h" top: "loss" '
            f"{body} }}")  # fmt: skip
    message = refused(text, "TRAIN")
    assert "layer 'ig'" in message and "softmax" in message


def test_losses_that_ignore_normalization_in_mainline_too():
    text = (shape_text("a", 2, 3) + shape_text("b", 2, 3) +
            'layer { name: "e" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "loss" '
            "loss_param { normalization: FULL } }")  # fmt: skip
    a, b = RNG.standard_normal((2, 3)), RNG.standard_normal((2, 3))
    loss, _, _ = run(net_of(text, "TRAIN"), "loss", {"a": a, "b": b})
    assert float(loss) == pytest.approx(((a - b) ** 2).sum() / 2 / 2, rel=1e-12)


# ---------------------------------------------------------------- BatchNorm


def batchnorm_text(body: str = "", shape=(2, 3, 4, 5), param: str = "") -> str:
    return shape_text("x", *shape) + f'layer {{ name: "bn" type: "BatchNorm" bottom: "x" top: "y" {param} {body} }}'


def test_batchnorm_defaults_and_blobs():
    layer = net_of(batchnorm_text()).layer("bn")
    assert layer.blob_shapes() == [(3,), (3,), (1,)]
    assert layer.eps == pytest.approx(1e-5) and layer.momentum == pytest.approx(0.999)
    assert layer.use_global_stats is None  # by phase: see the two tests below
    assert net_of(batchnorm_text(shape=(4, 3))).layer("bn").blob_shapes() == [(3,), (3,), (1,)]


def test_batchnorm_test_phase_uses_stored_statistics():
    net = net_of(batchnorm_text("batch_norm_param { eps: 0.01 }")).double()
    mean, var, factor = RNG.standard_normal(3) * 2.5, 0.5 + RNG.random(3) * 5, 2.5
    net.layer("bn").load_blobs([mean, var, np.array([factor])])
    m32, v32 = mean.astype(np.float32).astype(np.float64), var.astype(np.float32).astype(np.float64)
    x = 1 + RNG.standard_normal((2, 3, 4, 5)) * 2
    y, grads, dy = run(net, "y", {"x": x}, grad_of=("x",))
    std = np.sqrt(v32 / factor + np.float32(0.01))[None, :, None, None]
    close(y, (x - (m32 / factor)[None, :, None, None]) / std, tol=1e-7)
    close(grads["x"], dy / std, tol=1e-7)
    assert net.layer("bn").scale_factor.item() == factor  # no update with stored statistics


def test_batchnorm_zero_scale_factor_means_zero_statistics():
    net = net_of(batchnorm_text("batch_norm_param { use_global_stats: true }"), "TRAIN")
    net.layer("bn").load_blobs([np.ones(3), np.ones(3), np.zeros(1)])
    x = RNG.standard_normal((2, 3, 4, 5))
    y, _, _ = run(net, "y", {"x": x})
    close(y, x / np.sqrt(np.float32(1e-5)), tol=1e-7)


def batch_stats_reference(x, eps):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=axes)
    var = ((x - mean.reshape(shape)) ** 2).mean(axis=axes)
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    return mean, var, y, shape, axes


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (6, 3), (2, 3, 2, 2, 2)])
def test_batchnorm_train_phase_batch_statistics_gradient_and_running_averages(shape):
    maf, eps = float(np.float32(0.9)), float(np.float32(1e-4))
    net = net_of(batchnorm_text("batch_norm_param { moving_average_fraction: 0.9 eps: 1e-4 }", shape), "TRAIN")
    net = net.double()
    layer = net.layer("bn")
    stored = [RNG.standard_normal(3), 0.5 + RNG.random(3), np.array([1.7])]
    layer.load_blobs(stored)
    stored = [s.astype(np.float32).astype(np.float64) for s in stored]
    x = 3 + RNG.standard_normal(shape) * 2
    y, grads, dy = run(net, "y", {"x": x}, grad_of=("x",))
    mean, var, want, view, axes = batch_stats_reference(x, eps)
    close(y, want, tol=1e-9)
    # Caffe's formula: (dy - mean(dy) - mean(dy * y) * y) / sqrt(var + eps)
    want_grad = (dy - dy.mean(axis=axes).reshape(view) - (dy * want).mean(axis=axes).reshape(view) * want)
    close(grads["x"], want_grad / np.sqrt(var.reshape(view) + eps), tol=1e-9)
    n = x.size // 3
    close(layer.scale_factor.numpy(), stored[2] * maf + 1)
    close(layer.mean.numpy(), stored[0] * maf + mean, tol=1e-9)
    close(layer.variance.numpy(), stored[1] * maf + var * n / (n - 1), tol=1e-9)
    run(net, "y", {"x": x})  # a second pass adds again
    close(layer.scale_factor.numpy(), (stored[2] * maf + 1) * maf + 1)
    close(layer.mean.numpy(), (stored[0] * maf + mean) * maf + mean, tol=1e-9)


def test_batchnorm_one_value_per_channel_keeps_the_variance_uncorrected():
    net = net_of(batchnorm_text(shape=(1, 3)), "TRAIN").double()
    run(net, "y", {"x": RNG.standard_normal((1, 3))})
    layer = net.layer("bn")
    assert layer.variance.abs().sum() == 0 and layer.scale_factor.item() == 1.0  # factor 1 when n is 1


def test_batchnorm_use_global_stats_false_in_test_updates_the_averages():
    net = net_of(batchnorm_text("batch_norm_param { use_global_stats: false }")).double()
    x = RNG.standard_normal((2, 3, 4, 5))
    y, _, _ = run(net, "y", {"x": x})
    close(y, batch_stats_reference(x, float(np.float32(1e-5)))[2], tol=1e-9)
    assert net.layer("bn").scale_factor.item() == 1.0


@pytest.mark.parametrize("shape, param, words", [
    ((6,), "", ["at least 2 axes"]),
    ((2, 3), "param { lr_mult: 0 } param { lr_mult: 1 }", ["param 1 has lr_mult 1", "statistics"]),
    ((2, 3), "param { }", ["param 0 has lr_mult 1"]),  # ParamSpec's default lr_mult is 1
])  # fmt: skip
def test_batchnorm_checks(shape, param, words):
    message = refused(batchnorm_text(shape=shape, param=param))
    assert "layer 'bn'" in message
    for word in words:
        assert word in message, message


def test_batchnorm_accepts_zero_learning_rates():
    net = net_of(batchnorm_text(param="param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 }"))
    assert net.layer("bn").blob_shapes() == [(3,), (3,), (1,)]


# ---------------------------------------------------------------- Scale and Bias


def broadcast_reference(operand: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    return operand.reshape((1,) * axis + operand.shape + (1,) * (ndim - axis - operand.ndim))


def reduce_to(grad: np.ndarray, axis: int, shape) -> np.ndarray:
    """Sum ``grad`` over every axis outside axis..axis+len(shape)."""
    keep = set(range(axis, axis + len(shape)))
    return grad.sum(axis=tuple(i for i in range(grad.ndim) if i not in keep)).reshape(shape)


@pytest.mark.parametrize("param, axis, blob_shape", [
    ("", 1, (3,)),
    ("axis: 1 num_axes: 2", 1, (3, 4)),
    ("axis: -2", 2, (4,)),
    ("axis: -3 num_axes: -1", 1, (3, 4, 5)),
    ("axis: 0 num_axes: 0", 0, ()),
    ("axis: 3 num_axes: 0", 0, ()),  # a scalar: any axis
])  # fmt: skip
def test_scale_with_learned_blobs_and_bias_term(param, axis, blob_shape):
    text = shape_text("x", 2, 3, 4, 5) + (f'layer {{ name: "sc" type: "Scale" bottom: "x" top: "y" scale_param {{ '
                                          f"{param} bias_term: true }} }}")  # fmt: skip
    net = net_of(text, "TRAIN").double()
    layer = net.layer("sc")
    assert layer.blob_shapes() == [blob_shape, blob_shape]
    scale, bias = RNG.standard_normal(blob_shape), RNG.standard_normal(blob_shape)
    layer.load_blobs([scale, bias])
    scale, bias = scale.astype(np.float32).astype(np.float64), bias.astype(np.float32).astype(np.float64)
    x = RNG.standard_normal((2, 3, 4, 5))
    y, grads, dy = run(net, "y", {"x": x}, grad_of=("x",))
    close(y, x * broadcast_reference(scale, axis, 4) + broadcast_reference(bias, axis, 4))
    close(grads["x"], dy * broadcast_reference(scale, axis, 4))
    close(layer.weight.grad.numpy(), reduce_to(dy * x, axis, blob_shape))
    close(layer.bias.grad.numpy(), reduce_to(dy, axis, blob_shape))


def test_scale_and_bias_fillers_and_defaults():
    text = shape_text("x", 2, 3) + ('layer { name: "a" type: "Scale" bottom: "x" top: "a" } '
                                    'layer { name: "b" type: "Scale" bottom: "x" top: "b" scale_param { filler { } '
                                    'bias_term: true bias_filler { type: "constant" value: 2 } } } '
                                    'layer { name: "c" type: "Bias" bottom: "x" top: "c" '
                                    'bias_param { filler { type: "constant" value: 3 } } } '
                                    'layer { name: "d" type: "Bias" bottom: "x" top: "d" }')  # fmt: skip
    net = net_of(text)
    net.init_weights()
    assert net.layer("a").blob_attrs == ("weight",) and net.layer("a").weight.tolist() == [1.0] * 3  # no filler: 1
    assert net.layer("b").weight.tolist() == [0.0] * 3  # an empty filler is Caffe's constant 0
    assert net.layer("b").bias.tolist() == [2.0] * 3
    assert net.layer("c").bias.tolist() == [3.0] * 3 and net.layer("d").bias.tolist() == [0.0] * 3


@pytest.mark.parametrize("param, operand_shape, axis", [
    ("", (3,), 1),
    ("axis: 1 num_axes: 0", (3, 4), 1),  # num_axes is ignored for a bottom
    ("axis: -2", (4, 5), 2),
    ("axis: 0", (2, 3, 4, 5), 0),
    ("axis: 2", (), 0),  # a scalar bottom
])  # fmt: skip
@pytest.mark.parametrize("kind", ["Scale", "Bias"])
def test_scale_and_bias_with_a_second_bottom(kind, param, operand_shape, axis):
    field = "scale_param" if kind == "Scale" else "bias_param"
    text = (shape_text("x", 2, 3, 4, 5) + shape_text("s", *operand_shape) +
            f'layer {{ name: "l" type: "{kind}" bottom: "x" bottom: "s" top: "y" {field} {{ {param} }} }}')  # fmt: skip
    net = net_of(text, "TRAIN")
    assert net.layer("l").blob_shapes() == []
    x, s = RNG.standard_normal((2, 3, 4, 5)), RNG.standard_normal(operand_shape)
    y, grads, dy = run(net, "y", {"x": x, "s": s}, grad_of=("x", "s"))
    b = broadcast_reference(s, axis, 4)
    if kind == "Scale":
        close(y, x * b)
        close(grads["x"], dy * b)
        close(grads["s"], reduce_to(dy * x, axis, operand_shape))
    else:
        close(y, x + b)
        close(grads["x"], dy)
        close(grads["s"], reduce_to(dy, axis, operand_shape))


def test_scale_with_a_second_bottom_and_bias_term():
    text = (shape_text("x", 2, 3, 4) + shape_text("s", 3, 4) +
            'layer { name: "sc" type: "Scale" bottom: "x" bottom: "s" top: "y" scale_param { bias_term: true } }')
    net = net_of(text, "TRAIN").double()
    layer = net.layer("sc")
    assert layer.blob_attrs == ("bias",) and layer.blob_shapes() == [(3, 4)]  # the bias covers the bottom's axes
    bias = RNG.standard_normal((3, 4))
    layer.load_blobs([bias])
    bias = bias.astype(np.float32).astype(np.float64)
    x, s = RNG.standard_normal((2, 3, 4)), RNG.standard_normal((3, 4))
    y, grads, dy = run(net, "y", {"x": x, "s": s}, grad_of=("x", "s"))
    close(y, x * s + bias)
    close(grads["s"], (dy * x).sum(axis=0))
    close(layer.bias.grad.numpy(), dy.sum(axis=0))


@pytest.mark.parametrize("kind", ["Scale", "Bias"])
@pytest.mark.parametrize("bottoms, param, words", [
    ("", "num_axes: -2", ["num_axes must be -1", "got -2"]),
    ("", "axis: 2 num_axes: 3", ["past bottom 0's shape"]),
    ("", "axis: 4", ["axis 4 out of range"]),
    ('bottom: "s"', "axis: 1", ["shape [4, 4]", "does not match", "from axis 1"]),
    ('bottom: "s"', "axis: 3", ["does not match"]),
])  # fmt: skip
def test_scale_and_bias_checks(kind, bottoms, param, words):
    field = "scale_param" if kind == "Scale" else "bias_param"
    text = (shape_text("x", 2, 3, 4, 5) + shape_text("s", 4, 4) +
            f'layer {{ name: "l" type: "{kind}" bottom: "x" {bottoms} top: "y" {field} {{ {param} }} }}')  # fmt: skip
    message = refused(text)
    assert "layer 'l'" in message
    for word in words:
        assert word in message, message


# ---------------------------------------------------------------- BatchReindex


def test_batch_reindex_gathers_and_scatters_back():
    text = (shape_text("x", 4, 2, 3) + shape_text("i", 5) +
            'layer { name: "r" type: "BatchReindex" bottom: "x" bottom: "i" top: "y" }')
    net = net_of(text, "TRAIN")
    assert net.blob_shapes["y"] == (5, 2, 3)
    x = RNG.standard_normal((4, 2, 3))
    index = np.array([3.0, 0.0, 3.0, 2.5, 1.0])  # 2.5 reads item 2, as Caffe's cast does
    y, grads, dy = run(net, "y", {"x": x, "i": index}, grad_of=("x", "i"))
    close(y, x[[3, 0, 3, 2, 1]])
    want = np.zeros_like(x)
    for n, k in enumerate([3, 0, 3, 2, 1]):
        want[k] += dy[n]
    close(grads["x"], want)
    assert grads["i"] is None


@pytest.mark.parametrize("value, words", [(-0.5, ["index -0.5", ">= 0"]), (4.0, ["index 4", "4 items"]),
                                          (float("nan"), ["index nan"])])  # fmt: skip
def test_batch_reindex_checks_indices(value, words):
    net = net_of(shape_text("x", 4, 2) + shape_text("i", 2) +
                 'layer { name: "r" type: "BatchReindex" bottom: "x" bottom: "i" top: "y" }')  # fmt: skip
    with pytest.raises(CaffeFormatError) as info:
        net(x=torch.zeros(4, 2), i=torch.tensor([0.0, value]))
    message = str(info.value)
    assert "layer 'r'" in message and "\n" not in message
    for word in words:
        assert word in message, message


def test_batch_reindex_needs_a_one_axis_index():
    message = refused(shape_text("x", 4, 2) + shape_text("i", 2, 1) +
                      'layer { name: "r" type: "BatchReindex" bottom: "x" bottom: "i" top: "y" }')  # fmt: skip
    assert "layer 'r'" in message and "1 axis" in message


# ---------------------------------------------------------------- refusals, InnerProduct transpose, fillers


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "LSTMUnit"])
def test_recurrent_layers_are_refused(kind):
    message = refused(shape_text("x", 3, 2, 4) + shape_text("c", 3, 2) +
                      f'layer {{ name: "rec" type: "{kind}" bottom: "x" bottom: "c" top: "h" '
                      "recurrent_param { num_output: 5 } }")  # fmt: skip
    assert "layer 'rec'" in message and kind in message and "mainline Caffe" in message


def test_inner_product_transpose_keeps_the_weight_as_k_by_n():
    text = shape_text("x", 2, 3, 2) + ('layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
                                       "inner_product_param { num_output: 4 transpose: true } }")  # fmt: skip
    net = net_of(text, "TRAIN").double()
    layer = net.layer("ip")
    assert layer.blob_shapes() == [(6, 4), (4,)]
    weight, bias = RNG.standard_normal((6, 4)), RNG.standard_normal(4)
    layer.load_blobs([weight, bias])
    weight, bias = weight.astype(np.float32).astype(np.float64), bias.astype(np.float32).astype(np.float64)
    x = RNG.standard_normal((2, 3, 2))
    y, grads, dy = run(net, "y", {"x": x}, grad_of=("x",))
    close(y, x.reshape(2, 6) @ weight + bias)
    close(grads["x"], (dy @ weight.T).reshape(2, 3, 2))
    close(layer.weight.grad.numpy(), x.reshape(2, 6).T @ dy)


def test_bilinear_filler_is_mainlines_for_odd_kernels():
    w = torch.empty(2, 1, 3, 3)
    fill(w, caffe_pb2.FillerParameter(type="bilinear"))
    profile = np.array([0.5, 1.0, 0.5])  # f = 2, c = (3 - 1) / 4
    close(w[1, 0].numpy(), np.outer(profile, profile))
    w = torch.empty(1, 1, 5, 5)
    fill(w, caffe_pb2.FillerParameter(type="bilinear"))
    profile = 1 - np.abs(np.arange(5) / 3 - 4 / 6)
    close(w[0, 0].numpy(), np.outer(profile, profile), tol=1e-6)


def test_filler_sparse_rules():
    g = torch.Generator().manual_seed(0)
    v = torch.empty(4000)
    fill(v, caffe_pb2.FillerParameter(type="gaussian", sparse=1000), g)  # 1 axis: keeps about 1000 / 4000
    assert 0.15 < float((v != 0).float().mean()) < 0.35
    for kind in ("constant", "uniform", "xavier"):
        with pytest.raises(CaffeFormatError, match="only the gaussian filler"):
            fill(torch.empty(2, 2), caffe_pb2.FillerParameter(type=kind, sparse=2), g)
    with pytest.raises(CaffeFormatError, match="only the gaussian filler"):
        fill(torch.empty(2, 2), caffe_pb2.FillerParameter(type="gaussian", sparse=-2), g)


@pytest.mark.parametrize("kind, body", [
    ("Crop", 'bottom: "x" bottom: "x"'), ("ELU", 'bottom: "x"'), ("Tile", 'bottom: "x" tile_param { tiles: 2 }'),
    ("Swish", 'bottom: "x"'), ("Clip", 'bottom: "x" clip_param { min: 0 max: 1 }'),
    ("Embed", 'bottom: "x" embed_param { num_output: 2 input_dim: 3 }'),
])  # fmt: skip
def test_new_layers_sum_nothing_in_a_float32_loop(kind, body):
    net = net_of(shape_text("x", 2, 3, 4) + f'layer {{ name: "l" type: "{kind}" {body} top: "y" }}')
    assert net.layer("l").sequential_terms() == 0
