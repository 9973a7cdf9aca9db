"""Layer semantics on hand-made inputs, with expected values worked out here.

These run without the reference data; the oracle tests check the same
semantics against caffe-segnet itself.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from caffe_proto import caffe_pb2
from converter import CaffeNet, parse_net_text
from converter.fillers import fill
from converter.graph import shape_matches
from converter.layers.accuracy import topk_larger_index_first
from converter.layers.pooling import avg_pool2d, max_pool2d, pool_output_size
from converter.layers.softmax import softmax_with_loss
from converter.layers.upsample import unpool2d


def net_of(text: str, phase: str = "TEST", **shapes) -> CaffeNet:
    return CaffeNet(parse_net_text(text), phase, input_shapes=shapes or None)


# ---------------------------------------------------------------- pooling


def caffe_pool_reference(x: np.ndarray, k, s, p, method: str):
    """Caffe's pooling_layer.cpp loops, transcribed literally (one plane)."""
    h, w = x.shape
    oh, ow = pool_output_size(h, k[0], s[0], p[0]), pool_output_size(w, k[1], s[1], p[1])
    out, mask = np.zeros((oh, ow), np.float64), np.full((oh, ow), -1)
    for i, j in itertools.product(range(oh), range(ow)):
        hs, ws = i * s[0] - p[0], j * s[1] - p[1]
        he, we = min(hs + k[0], h + p[0]), min(ws + k[1], w + p[1])
        size = (he - hs) * (we - ws)
        hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
        if method == "MAX":
            best = -np.inf
            for y, xx in itertools.product(range(hs, he), range(ws, we)):
                if x[y, xx] > best:  # strict: the first maximum wins
                    best, mask[i, j] = x[y, xx], y * w + xx
            out[i, j] = best
        else:
            out[i, j] = x[hs:he, ws:we].sum() / size
    return out, mask


GEOMETRIES = [  # (size, kernel, stride, pad)
    ((45, 61), (2, 2), (2, 2), (0, 0)),
    ((45, 61), (3, 3), (2, 2), (1, 1)),
    ((10, 11), (3, 3), (3, 3), (1, 1)),  # ceil gives 4x5; the last column would start in the padding
    ((9, 7), (3, 2), (2, 3), (2, 1)),  # pad larger than kernel/2: torch's pooling cannot take it
    ((8, 9), (3, 3), (2, 2), (0, 0)),  # partial windows at the far edges
]


@pytest.mark.parametrize("size, k, s, p", GEOMETRIES)
def test_pooling_matches_caffe_loops_including_ties(size, k, s, p):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=size).astype(np.float32)  # small integers: many exact ties
    t = torch.from_numpy(x)[None, None]
    got, idx = max_pool2d(t, k, s, p, return_indices=True)
    want, want_mask = caffe_pool_reference(x, k, s, p, "MAX")
    np.testing.assert_array_equal(got[0, 0].numpy(), want)
    np.testing.assert_array_equal(idx[0, 0].numpy(), want_mask)
    ave = avg_pool2d(t, k, s, p)
    np.testing.assert_allclose(ave[0, 0].numpy(), caffe_pool_reference(x, k, s, p, "AVE")[0], rtol=1e-6)


def test_pool_output_size_rule():
    assert pool_output_size(45, 2, 2, 0) == 23  # ceil mode
    assert pool_output_size(11, 3, 3, 1) == 4  # ceil gives 5, dropped: it would start in the padding
    assert pool_output_size(360, 2, 2, 0) == 180
    assert pool_output_size(23, 2, 2, 0) == 12


# ---------------------------------------------------------------- upsample


def test_unpool_places_values_and_later_writes_win():
    x = torch.tensor([[[[1.0, 2.0, 3.0]]]])
    mask = torch.tensor([[[[5, 0, 5]]]])  # two values aim at position 5
    out = unpool2d(x, mask, 2, 3)
    assert out.tolist() == [[[[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]]]]


def test_upsample_sizes_explicit_and_deprecated():
    text = """
    input: "x" input_shape { dim: 1 dim: 1 dim: 23 dim: 30 }
    input: "m" input_shape { dim: 1 dim: 1 dim: 23 dim: 30 }
    layer { name: "a" type: "Upsample" bottom: "x" bottom: "m" top: "a" upsample_param { upsample_h: 45 upsample_w: 60 } }
    layer { name: "b" type: "Upsample" bottom: "x" bottom: "m" top: "b" upsample_param { scale: 2 pad_out_h: true } }
    layer { name: "c" type: "Upsample" bottom: "x" bottom: "m" top: "c" upsample_param { scale_h: 3 scale_w: 2 } }
    """
    net = net_of(text)
    assert net.blob_shapes["a"] == (1, 1, 45, 60)
    assert net.blob_shapes["b"] == (1, 1, 45, 60)
    assert net.blob_shapes["c"] == (1, 1, 69, 60)


# ---------------------------------------------------------------- argmax, accuracy


def test_ties_go_to_the_larger_index():
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.0]])
    values, idx = topk_larger_index_first(scores, 1, 1)
    assert idx.item() == 2 and values.item() == 3.0
    _, idx2 = topk_larger_index_first(scores, 3, 1)
    assert idx2.tolist() == [[2, 1, 0]]


def test_accuracy_per_class_reports_one_for_absent_classes():
    text = """
    input: "s" input_shape { dim: 1 dim: 3 dim: 1 dim: 4 }
    input: "l" input_shape { dim: 1 dim: 1 dim: 1 dim: 4 }
    layer { name: "acc" type: "Accuracy" bottom: "s" bottom: "l" top: "acc" top: "per_class"
      accuracy_param { ignore_label: 9 } }
    """
    net = net_of(text)
    s = torch.zeros(1, 3, 1, 4)
    s[0, 0, 0, :] = 1  # predicts class 0 everywhere
    labels = torch.tensor([0.0, 0.0, 1.0, 9.0]).view(1, 1, 1, 4)
    out = net(s=s, l=labels)
    assert out["acc"].item() == pytest.approx(2 / 3)  # the ignored position is not counted
    assert out["per_class"].flatten().tolist() == [1.0, 0.0, 1.0]  # class 2 has no positions: 1


# ---------------------------------------------------------------- loss


def test_weighted_loss_divides_by_count_not_by_weights():
    logits = torch.zeros(1, 2, 1, 3, requires_grad=True)  # p = 0.5 everywhere
    labels = torch.tensor([0.0, 1.0, 11.0]).view(1, 1, 1, 3)
    weights = torch.tensor([1.0, 3.0])
    loss, _ = softmax_with_loss(logits, labels, weights, ignore_label=11)
    assert loss.item() == pytest.approx((1 + 3) * math.log(2) / 2, rel=1e-6)
    loss.backward()
    grad = logits.grad[0, :, 0, :]
    # w[l] * (p - onehot(l)) / count, and zero at the ignored position
    assert grad[:, 0].tolist() == pytest.approx([1 * (0.5 - 1) / 2, 1 * 0.5 / 2])
    assert grad[:, 1].tolist() == pytest.approx([3 * 0.5 / 2, 3 * (0.5 - 1) / 2])
    assert grad[:, 2].tolist() == [0.0, 0.0]


def test_loss_without_normalize_divides_by_batch():
    logits = torch.zeros(2, 2, 1, 2)
    labels = torch.zeros(2, 1, 1, 2)
    loss, _ = softmax_with_loss(logits, labels, normalize=False)
    assert loss.item() == pytest.approx(4 * math.log(2) / 2, rel=1e-6)


def test_loss_rejects_labels_outside_the_classes():
    with pytest.raises(ValueError, match="label 5"):
        softmax_with_loss(torch.zeros(1, 2, 1, 1), torch.tensor([5.0]).view(1, 1, 1, 1))


# ---------------------------------------------------------------- normalisation


def test_bn_learn_uses_batch_statistics_with_biased_variance():
    text = """
    input: "x" input_shape { dim: 2 dim: 1 dim: 1 dim: 1 }
    layer { name: "bn" type: "BN" bottom: "x" top: "y" top: "mean" top: "var" bn_param { bn_mode: LEARN } }
    """
    net = net_of(text)
    with torch.no_grad():
        net.layer("bn").scale.fill_(2.0)
        net.layer("bn").shift.fill_(0.5)
    out = net(x=torch.tensor([1.0, 3.0]).view(2, 1, 1, 1), blobs="all")
    assert out["mean"].item() == 2.0 and out["var"].item() == 1.0  # biased: divides by 2, not 1
    assert out["y"].flatten().tolist() == pytest.approx([-1.5, 2.5], rel=1e-6)


def test_lrn_within_channel_ignores_k_and_divides_by_n_squared():
    text = """
    input: "x" input_shape { dim: 1 dim: 1 dim: 5 dim: 5 }
    layer { name: "n" type: "LRN" bottom: "x" top: "y"
      lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 7 norm_region: WITHIN_CHANNEL } }
    layer { name: "a" type: "LRN" bottom: "x" top: "z" lrn_param { local_size: 3 alpha: 0.6 beta: 1 k: 2 } }
    """
    out = net_of(text)(x=torch.ones(1, 1, 5, 5), blobs=["y", "z"])
    # centre: 9 ones in the window -> 1 + 0.5 / 9 * 9; corner: 4 ones -> 1 + 0.5 / 9 * 4
    assert out["y"][0, 0, 2, 2].item() == pytest.approx(1.5**-0.75, rel=1e-6)
    assert out["y"][0, 0, 0, 0].item() == pytest.approx((1 + 0.5 * 4 / 9) ** -0.75, rel=1e-6)
    # across channels with one channel: k + alpha / n * x^2
    assert out["z"][0, 0, 0, 0].item() == pytest.approx(1 / (2 + 0.6 / 3), rel=1e-6)


def test_mainline_batchnorm_and_scale_with_global_statistics():
    text = """
    input: "x" input_shape { dim: 1 dim: 2 dim: 1 dim: 1 }
    layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" }
    layer { name: "sc" type: "Scale" bottom: "x" top: "x" scale_param { bias_term: true } }
    """
    net = net_of(text)
    bn, sc = net.layer("bn"), net.layer("sc")
    bn.mean.copy_(torch.tensor([2.0, 4.0]))  # stored as sums: divided by the scale factor
    bn.variance.copy_(torch.tensor([8.0, 2.0]))
    bn.scale_factor.fill_(2.0)
    with torch.no_grad():
        sc.weight.copy_(torch.tensor([10.0, 1.0]))
        sc.bias.copy_(torch.tensor([0.0, 1.0]))
    y = net(x=torch.tensor([3.0, 2.0]).view(1, 2, 1, 1))["x"].flatten()
    eps = 1e-5
    assert y.tolist() == pytest.approx([10 * (3 - 1) / math.sqrt(4 + eps), (2 - 2) / math.sqrt(1 + eps) + 1])


# ---------------------------------------------------------------- eltwise, dropout


def test_eltwise_max_sends_the_gradient_to_the_first_maximum():
    text = """
    input: "a" input_shape { dim: 1 dim: 1 dim: 1 dim: 2 }
    input: "b" input_shape { dim: 1 dim: 1 dim: 1 dim: 2 }
    layer { name: "m" type: "Eltwise" bottom: "a" bottom: "b" top: "m" eltwise_param { operation: MAX } }
    """
    a = torch.tensor([[[[1.0, 5.0]]]], requires_grad=True)
    b = torch.tensor([[[[1.0, 7.0]]]], requires_grad=True)
    net_of(text)(a=a, b=b)["m"].sum().backward()
    assert a.grad.flatten().tolist() == [1.0, 0.0] and b.grad.flatten().tolist() == [0.0, 1.0]


def test_dropout_identity_in_test_unless_sampling():
    text = """
    input: "x" input_shape { dim: 1 dim: 1 dim: 50 dim: 50 }
    layer { name: "d" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 0.5 } }
    layer { name: "mc" type: "Dropout" bottom: "x" top: "z" dropout_param { dropout_ratio: 0.5 sample_weights_test: true } }
    """
    net = net_of(text)
    x = torch.ones(1, 1, 50, 50)
    out = net(x=x, blobs=["y", "z"])
    assert torch.equal(out["y"], x)
    assert set(out["z"].unique().tolist()) == {0.0, 2.0}  # kept values are scaled by 1 / (1 - ratio)
    net.set_mc_dropout(False)
    assert torch.equal(net(x=x, blobs=["z"])["z"], x)


# ---------------------------------------------------------------- net building


def test_phase_rules_and_stages():
    text = """
    input: "x" input_shape { dim: 1 dim: 1 dim: 2 dim: 2 }
    state { stage: "deploy" }
    layer { name: "t" type: "ReLU" bottom: "x" top: "t" include { phase: TRAIN } }
    layer { name: "e" type: "ReLU" bottom: "x" top: "e" exclude { phase: TRAIN } }
    layer { name: "s" type: "ReLU" bottom: "x" top: "s" include { stage: "deploy" } }
    layer { name: "n" type: "ReLU" bottom: "x" top: "n" exclude { stage: "deploy" } }
    """
    assert [s.name for s in net_of(text, "TEST").steps] == ["e", "s"]
    assert [s.name for s in net_of(text, "TRAIN").steps] == ["t", "s"]


def test_v1_layers_are_upgraded():
    text = """
    input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
    layers { name: "c" type: CONVOLUTION bottom: "data" top: "c" blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
      convolution_param { num_output: 2 kernel_size: 3 } }
    layers { name: "p" type: POOLING bottom: "c" top: "p" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
    layers { name: "l" type: SOFTMAX_LOSS bottom: "p" bottom: "data" top: "loss" }
    """
    net = parse_net_text(text)
    assert [l.type for l in net.layer] == ["Convolution", "Pooling", "SoftmaxWithLoss"]
    assert [(s.lr_mult, s.decay_mult) for s in net.layer[0].param] == [(1, 1), (2, 0)]
    assert list(net.input_shape[0].dim) == [1, 3, 8, 8]


def test_legacy_blob_shapes_pad_to_four_axes():
    assert shape_matches((1, 1, 1, 64), True, (64,))
    assert not shape_matches((1, 1, 1, 64), False, (64,))
    assert shape_matches((64, 3, 7, 7), True, (64, 3, 7, 7))


def test_deconvolution_and_group_convolution_shapes():
    text = """
    input: "x" input_shape { dim: 1 dim: 4 dim: 7 dim: 9 }
    layer { name: "d" type: "Deconvolution" bottom: "x" top: "d" convolution_param { num_output: 6 kernel_size: 4 stride: 2 pad: 1 } }
    layer { name: "g" type: "Convolution" bottom: "x" top: "g"
      convolution_param { num_output: 2 kernel_h: 3 kernel_w: 5 pad_h: 1 pad_w: 2 stride_h: 2 stride_w: 1 group: 2 bias_term: false } }
    """
    net = net_of(text)
    assert net.blob_shapes["d"] == (1, 6, 14, 18) and net.layer("d").weight.shape == (4, 6, 4, 4)
    assert net.blob_shapes["g"] == (1, 2, 4, 9) and net.layer("g").blob_shapes() == [(2, 2, 3, 5)]


# ---------------------------------------------------------------- fillers


def test_fillers():
    g = torch.Generator().manual_seed(0)
    w = torch.empty(4, 4, 4, 4)
    fill(w, caffe_pb2.FillerParameter(type="bilinear"))
    # f = 2, centre c = 0.75: profile 1 - |i/2 - 0.75| = 0.25, 0.75, 0.75, 0.25
    assert w[0, 0, 0].tolist() == pytest.approx([0.0625, 0.1875, 0.1875, 0.0625])
    big = torch.empty(256, 64, 3, 3)
    fill(big, caffe_pb2.FillerParameter(type="msra"), g)
    assert big.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.02)
    fill(big, caffe_pb2.FillerParameter(type="xavier"), g)
    assert big.abs().max().item() <= math.sqrt(3 / (64 * 9))
    fill(big, caffe_pb2.FillerParameter(type="constant", value=0.25))
    assert big.unique().tolist() == [0.25]


def test_upsample_after_overlapping_pooling_keeps_caffe_write_order():
    text = """
    input: "x" input_shape { dim: 1 dim: 2 dim: 9 dim: 9 }
    layer { name: "p" type: "Pooling" bottom: "x" top: "p" top: "m" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
    layer { name: "u" type: "Upsample" bottom: "p" bottom: "m" top: "u" upsample_param { upsample_h: 9 upsample_w: 9 } }
    layer { name: "q" type: "Pooling" bottom: "x" top: "q" top: "n" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
    layer { name: "v" type: "Upsample" bottom: "q" bottom: "n" top: "v" upsample_param { upsample_h: 9 upsample_w: 9 } }
    """
    net = net_of(text)
    assert not net.layer("u").unique_indices and net.layer("v").unique_indices
    x = torch.zeros(1, 2, 9, 9)
    x[..., 2, 2] = 5.0  # the maximum of four overlapping 3x3 windows
    out = net(x=x, blobs=["p", "m", "u"])
    assert int((out["m"] == 2 * 9 + 2).sum()) == 8  # repeated positions: 4 windows x 2 channels
    # Caffe writes in order, so the last window's value stays; all equal 5 here, so check the
    # order with distinct values fed straight to the layer.
    values = torch.arange(1.0, 1 + out["p"].numel()).view_as(out["p"])
    up = net.layer("u")(values, out["m"])[0]
    expected = torch.zeros(1, 2, 81)
    for c in range(2):
        for i, idx in enumerate(out["m"][0, c].flatten().long().tolist()):
            expected[0, c, idx] = values[0, c].flatten()[i]
    assert torch.equal(up.view(1, 2, 81), expected)
