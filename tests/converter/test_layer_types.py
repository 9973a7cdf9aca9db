"""Every layer type caffe-segnet registers: converted against its vectors, or refused with a reason.

- Every oracle case (both index files) through ``python -m converter ...
  --compare``: see test_oracle.py.
- TRAIN cases of the layer-type vectors: the loss and every recorded
  gradient against Caffe's, in float32 and with the net in float64.
- Each layer-type case also runs with the net converted to float64.
- The registry covers caffe-segnet's types, and docs/layers.md's table lists them.
- A generated ENet-style net builds with the shapes Caffe's rules give, and
  a small one (undilated: caffe-segnet's schema lacks dilation) computes
  caffe-segnet's losses, blobs and gradients (tests/data/enet_style_caffe).
- Gradients that Caffe writes by hand (not the exact derivatives) and the
  refusals, on small hand-made inputs.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support import ORACLE, oracle_cases, relative_l2, scaled_error

import converter
from caffe_proto import caffe_pb2
from converter import CaffeNet, parse_net_text
from converter.errors import CaffeFormatError
from converter.layers import DATA_LAYER_TYPES, LAYER_TYPES, REFUSED_TYPES
from converter.layers.losses import contrastive_loss, infogain_loss, multinomial_logistic_loss
from converter.layers.mvn import mvn

ROOT = Path(__file__).resolve().parents[2]

FORWARD_TOL = 1e-4  # scaled max error, as the oracle's README recommends
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-4  # relative L2

#: The layer types caffe-segnet (commit 344c113b) registers: REGISTER_LAYER_CLASS and
#: REGISTER_LAYER_CREATOR in its sources (Python only in builds WITH_PYTHON_LAYER).
CAFFE_SEGNET_TYPES = [
    "AbsVal", "Accuracy", "ArgMax", "BN", "BNLL", "Concat", "ContrastiveLoss", "Convolution", "Data",
    "Deconvolution", "DenseImageData", "Dropout", "DummyData", "Eltwise", "EuclideanLoss", "Exp", "Filter",
    "Flatten", "HDF5Data", "HDF5Output", "HingeLoss", "Im2col", "ImageData", "InfogainLoss", "InnerProduct", "LRN",
    "Log", "MVN", "MemoryData", "MultinomialLogisticLoss", "PReLU", "Pooling", "Power", "Python", "ReLU",
    "Reduction", "Reshape", "SPP", "Sigmoid", "SigmoidCrossEntropyLoss", "Silence", "Slice", "Softmax",
    "SoftmaxWithLoss", "Split", "TanH", "Threshold", "Upsample", "WindowData",
]  # fmt: skip

#: Field numbers of the parameters these layers read, from caffe-segnet's caffe.proto.
SEGNET_PARAM_FIELDS = {
    ("LayerParameter", "prelu_param"): 131, ("LayerParameter", "mvn_param"): 120,
    ("LayerParameter", "spp_param"): 132, ("LayerParameter", "reduction_param"): 136,
    ("LayerParameter", "contrastive_loss_param"): 105, ("LayerParameter", "hinge_loss_param"): 114,
    ("LayerParameter", "infogain_loss_param"): 116, ("LayerParameter", "python_param"): 130,
    ("LayerParameter", "hdf5_output_param"): 113, ("LayerParameter", "dummy_data_param"): 109,
    ("PReLUParameter", "filler"): 1, ("PReLUParameter", "channel_shared"): 2,
    ("MVNParameter", "normalize_variance"): 1, ("MVNParameter", "across_channels"): 2, ("MVNParameter", "eps"): 3,
    ("SPPParameter", "pyramid_height"): 1, ("SPPParameter", "pool"): 2,
    ("ReductionParameter", "operation"): 1, ("ReductionParameter", "axis"): 2, ("ReductionParameter", "coeff"): 3,
    ("ContrastiveLossParameter", "margin"): 1, ("ContrastiveLossParameter", "legacy_version"): 2,
    ("HingeLossParameter", "norm"): 1, ("InfogainLossParameter", "source"): 1,
    ("DummyDataParameter", "data_filler"): 1, ("DummyDataParameter", "shape"): 6,
}  # fmt: skip


#: Loss type -> position of its first bottom that gets no gradient (labels, flags, the infogain matrix).
LABEL_BOTTOMS = {"SigmoidCrossEntropyLoss": 1, "HingeLoss": 1, "InfogainLoss": 1, "MultinomialLogisticLoss": 1,
                 "ContrastiveLoss": 2, "SoftmaxWithLoss": 1}  # fmt: skip


def net_of(text: str, phase: str = "TEST", **shapes) -> CaffeNet:
    return CaffeNet(parse_net_text(text), phase, input_shapes=shapes or None)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


# ---------------------------------------------------------------- gradients and float64


def _train_cases() -> list:
    return [p for p in oracle_cases("cases_layers.json") if p.values[0] is None or p.values[0]["phase"] == "TRAIN"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", _train_cases())
def test_train_case_gradients(case, dtype):
    net = converter.convert(ORACLE / case["prototxt"], ORACLE / case["caffemodel"], phase="TRAIN").to(dtype)
    arrays, ref = _arrays(ORACLE / case["inputs"]), _arrays(ORACLE / case["outputs"])
    feed = {k: torch.from_numpy(v).to(dtype).requires_grad_() for k, v in arrays.items() if ":" not in k}
    out = net(**feed, blobs=sorted(set(net.loss_weights) | {k for k in ref if k in net.blob_shapes}))
    for name in net.loss_weights:
        assert out[name].dtype == dtype
        got, want = float(out[name].detach()), float(ref[name].reshape(()))
        assert abs(got - want) <= LOSS_RTOL * abs(want), f"loss {name}: {got!r} vs caffe {want!r}"
    net.zero_grad()
    net.total_loss(out).backward()
    grad_keys = [k for k in ref if k.startswith(("diff:", "param_diff:"))]
    assert grad_keys, "the case recorded no gradient"
    for key in grad_keys:
        if key.startswith("diff:"):
            grad = feed[key[5:]].grad
        else:
            _, layer, i = key.split(":")
            grad = net.layer(layer).blob_tensors()[int(i)].grad
        assert grad is not None, f"{key}: no gradient reached it"
        err = relative_l2(grad.detach().double().numpy().reshape(ref[key].shape), ref[key])
        assert err <= GRAD_RTOL, f"{key}: relative L2 error {err:.2e}"
    # Labels, similarity flags and the infogain matrix never get a gradient.
    not_differentiated = {step.bottoms[i] for step in net.steps for i in range(len(step.bottoms))
                          if step.type in LABEL_BOTTOMS and i >= LABEL_BOTTOMS[step.type]}  # fmt: skip
    for name in not_differentiated & set(feed):
        assert feed[name].grad is None, f"{name} got a gradient"


@pytest.mark.parametrize("case", oracle_cases("cases_layers.json"))
def test_layer_case_in_float64(case):
    net = converter.convert(ORACLE / case["prototxt"], ORACLE / case["caffemodel"], phase=case["phase"]).double()
    feed = {k: torch.from_numpy(v).double() for k, v in _arrays(ORACLE / case["inputs"]).items() if ":" not in k}
    ref = _arrays(ORACLE / case["outputs"])
    names = [k for k in ref if k in net.blob_shapes]
    with torch.no_grad():
        out = net(**feed, blobs=names)
    for name in names:
        if name not in net.index_blob_names:  # masks and ArgMax indices keep their own type
            assert out[name].dtype == torch.float64, name
        err = scaled_error(out[name].numpy().reshape(ref[name].shape), ref[name])
        assert err <= FORWARD_TOL, f"{name}: scaled max error {err:.2e}"


# ---------------------------------------------------------------- registry, schema, docs/layers.md


def test_every_caffe_segnet_type_is_converted_or_refused():
    handled = set(LAYER_TYPES) | DATA_LAYER_TYPES | set(REFUSED_TYPES)
    assert [t for t in CAFFE_SEGNET_TYPES if t not in handled] == []


@pytest.mark.parametrize("message, field", sorted(SEGNET_PARAM_FIELDS))
def test_parameter_fields_have_caffe_segnet_numbers(message, field):
    descriptor = getattr(caffe_pb2, message).DESCRIPTOR
    assert descriptor.fields_by_name[field].number == SEGNET_PARAM_FIELDS[(message, field)]


def test_parameter_defaults_are_caffe_segnets():
    layer = caffe_pb2.LayerParameter()
    assert (layer.mvn_param.normalize_variance, layer.mvn_param.across_channels) == (True, False)
    assert layer.mvn_param.eps == pytest.approx(1e-9)
    assert layer.prelu_param.channel_shared is False
    assert layer.spp_param.pool == caffe_pb2.SPPParameter.MAX
    assert (layer.reduction_param.operation, layer.reduction_param.axis) == (caffe_pb2.ReductionParameter.SUM, 0)
    assert layer.reduction_param.coeff == 1.0
    assert (layer.contrastive_loss_param.margin, layer.contrastive_loss_param.legacy_version) == (1.0, False)
    assert layer.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L1


def _layers_doc_table_types() -> set[str]:
    text = (ROOT / "docs" / "layers.md").read_text(encoding="utf-8")
    start = text.index("| type |")
    table = text[start : text.index("\n\n", start)]
    first_cells = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    return {name for cell in first_cells for name in re.findall(r"`(\w+)`", cell)}


def test_layers_doc_table_lists_exactly_the_handled_types():
    listed = _layers_doc_table_types()
    handled = set(LAYER_TYPES) | DATA_LAYER_TYPES | set(REFUSED_TYPES)
    assert sorted(handled - listed) == [], "types missing from docs/layers.md's table"
    assert sorted(listed - handled) == [], "docs/layers.md's table names types nothing handles"


# ---------------------------------------------------------------- an ENet-style net, shapes by Caffe's rules


def _conv_size(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def _pool_size(size: int, k: int, s: int, p: int = 0) -> int:
    out = math.ceil((size + 2 * p - k) / s) + 1
    return out - 1 if p and (out - 1) * s >= size + p else out


class ENetWriter:
    """Writes an ENet-style prototxt and the shape Caffe's rules give each top."""

    def __init__(self, shape: tuple[int, int, int, int], bn_mode: str, dropout: bool = True):
        self.lines = [f'name: "enet_style" input: "data" input_shape {{ {" ".join(f"dim: {d}" for d in shape)} }}']
        self.shapes: dict[str, tuple[int, ...]] = {"data": shape}
        self.bn_mode = bn_mode
        self.dropout = dropout

    def layer(self, name, kind, bottoms, tops, shapes, body=""):
        b = " ".join(f'bottom: "{x}"' for x in bottoms)
        t = " ".join(f'top: "{x}"' for x in tops)
        self.lines.append(f'layer {{ name: "{name}" type: "{kind}" {b} {t} {body} }}')
        self.shapes.update(zip(tops, shapes))
        return tops[0]

    def conv(self, name, x, out, k=(1, 1), s=(1, 1), p=(0, 0), d=1, deconv=False):
        n, _, h, w = self.shapes[x]
        fields = (f"num_output: {out} kernel_h: {k[0]} kernel_w: {k[1]} stride_h: {s[0]} stride_w: {s[1]} "
                  f"pad_h: {p[0]} pad_w: {p[1]} weight_filler {{ type: 'msra' }}")  # fmt: skip
        if d > 1:
            fields += f" dilation: {d}"
        if deconv:
            size = [st * (i - 1) + d * (kk - 1) + 1 - 2 * pp for i, kk, st, pp in zip((h, w), k, s, p)]
        else:
            size = [_conv_size(i, kk, st, pp, d) for i, kk, st, pp in zip((h, w), k, s, p)]
        kind = "Deconvolution" if deconv else "Convolution"
        return self.layer(name, kind, [x], [name], [(n, out, *size)], f"convolution_param {{ {fields} }}")

    def bn(self, name, x):
        body = (f"bn_param {{ bn_mode: {self.bn_mode} scale_filler {{ type: 'constant' value: 1 }} "
                "shift_filler { type: 'constant' value: 0.001 } }")  # fmt: skip
        return self.layer(name, "BN", [x], [name], [self.shapes[x]], body)

    def prelu(self, name, x, relu=False):
        return self.layer(name, "ReLU" if relu else "PReLU", [x], [name], [self.shapes[x]])

    def pool(self, name, x):
        n, c, h, w = self.shapes[x]
        shape = (n, c, _pool_size(h, 2, 2), _pool_size(w, 2, 2))
        return self.layer(name, "Pooling", [x], [name, f"{name}_mask"], [shape, shape],
                          "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")  # fmt: skip

    def add(self, name, a, b):
        assert self.shapes[a] == self.shapes[b], (a, b)
        return self.layer(name, "Eltwise", [a, b], [name], [self.shapes[a]])

    def bottleneck(self, name, x, out, kind="regular", d=1, mask=None):
        n, c, h, w = self.shapes[x]
        inner = max(out // 4, 2)
        decoder = kind == "upsampling"
        if kind == "downsampling":
            branch = self.conv(f"{name}_reduce", x, inner, k=(2, 2), s=(2, 2))
        else:
            branch = self.conv(f"{name}_reduce", x, inner)
        branch = self.prelu(f"{name}_act1", self.bn(f"{name}_bn1", branch), relu=decoder)
        if kind == "asymmetric":
            branch = self.conv(f"{name}_conv_a", branch, inner, k=(5, 1), p=(2, 0))
            branch = self.conv(f"{name}_conv", branch, inner, k=(1, 5), p=(0, 2))
        elif kind == "upsampling":
            branch = self.conv(f"{name}_conv", branch, inner, k=(2, 2), s=(2, 2), deconv=True)
        else:
            branch = self.conv(f"{name}_conv", branch, inner, k=(3, 3), p=(d, d), d=d)
        branch = self.prelu(f"{name}_act2", self.bn(f"{name}_bn2", branch), relu=decoder)
        branch = self.bn(f"{name}_bn3", self.conv(f"{name}_expand", branch, out))
        if self.dropout:
            branch = self.layer(f"{name}_drop", "Dropout", [branch], [f"{name}_drop"], [self.shapes[branch]],
                                "dropout_param { dropout_ratio: 0.1 }")  # fmt: skip
        main = x
        if kind == "downsampling":
            main = self.conv(f"{name}_main", self.pool(f"{name}_pool", x), out)
        elif kind == "upsampling":
            main = self.bn(f"{name}_main_bn", self.conv(f"{name}_main", x, out))
            n2, c2, _, _ = self.shapes[main]
            size = self.shapes[mask][2:]
            main = self.layer(f"{name}_unpool", "Upsample", [main, mask], [f"{name}_unpool"],
                              [(n2, c2, 2 * h, 2 * w)], "upsample_param { scale: 2 }")  # fmt: skip
            assert self.shapes[main][2:] == tuple(2 * s for s in size)
        return self.prelu(f"{name}_out", self.add(f"{name}_sum", main, branch), relu=decoder)

    def text(self) -> str:
        return "\n".join(self.lines)


def enet_style(shape=(2, 3, 48, 80), classes: int = 5, phase: str = "TEST", widths=(32, 64), dilation: bool = True,
               dropout: bool = True) -> ENetWriter:  # fmt: skip
    """An ENet-style net: initial block, down/regular/dilated/asymmetric/up bottlenecks, a full conv, an SPP head.

    ``widths``: the channels of stages 1 and 2. ``dilation=False`` writes the dilated blocks undilated
    (caffe-segnet's schema has no dilation field). TRAIN adds a SoftmaxWithLoss on the segmentation and
    a EuclideanLoss (weight 0.5) on the SPP head, against inputs ``label`` and ``target``.
    """
    wide1, wide2 = widths
    net = ENetWriter(shape, "LEARN" if phase == "TRAIN" else "INFERENCE", dropout)
    conv = net.conv("init_conv", "data", 13, k=(3, 3), s=(2, 2), p=(1, 1))
    pool = net.layer("init_pool", "Pooling", ["data"], ["init_pool"],
                     [(shape[0], 3, _pool_size(shape[2], 2, 2), _pool_size(shape[3], 2, 2))],
                     "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")  # fmt: skip
    n, _, h, w = net.shapes[conv]
    x = net.layer("init_concat", "Concat", [conv, pool], ["init_concat"], [(n, 16, h, w)])
    x = net.layer("init_act", "PReLU", [net.bn("init_bn", x)], ["init_act"], [(n, 16, h, w)],
                  "prelu_param { channel_shared: true }")  # fmt: skip
    x = net.bottleneck("b1_0", x, wide1, "downsampling")
    x = net.bottleneck("b1_1", x, wide1)
    x = net.bottleneck("b2_0", x, wide2, "downsampling")
    x = net.bottleneck("b2_1", x, wide2, "dilated", d=2 if dilation else 1)
    x = net.bottleneck("b2_2", x, wide2, "asymmetric")
    x = net.bottleneck("b2_3", x, wide2, "dilated", d=4 if dilation else 1)
    encoded = x
    x = net.bottleneck("b4_0", x, wide1, "upsampling", mask="b2_0_pool_mask")
    x = net.bottleneck("b5_0", x, 16, "upsampling", mask="b1_0_pool_mask")
    x = net.conv("fullconv", x, classes, k=(2, 2), s=(2, 2), deconv=True)
    n, c, h, w = net.shapes[encoded]
    values = 0
    for bins in (1, 2, 4):  # each level: a pooling with kernel = stride = ceil(size / bins)
        sizes = []
        for size in (h, w):
            k = -(-size // bins)
            sizes.append(_pool_size(size, k, k, (k * bins - size + 1) // 2))
        values += c * sizes[0] * sizes[1]
    spp = net.layer("spp", "SPP", [encoded], ["spp"], [(n, values)], "spp_param { pyramid_height: 3 pool: AVE }")
    head = net.layer("spp_fc", "InnerProduct", [spp], ["spp_fc"], [(n, classes)],
                     f"inner_product_param {{ num_output: {classes} weight_filler {{ type: 'xavier' }} }}")  # fmt: skip
    if phase == "TRAIN":
        net.lines[0] += (f' input: "label" input_shape {{ dim: {n} dim: 1 dim: {shape[2]} dim: {shape[3]} }}'
                         f' input: "target" input_shape {{ dim: {n} dim: {classes} }}')  # fmt: skip
        net.shapes.update(label=(n, 1, *shape[2:]), target=(n, classes))
        net.layer("loss", "SoftmaxWithLoss", [x, "label"], ["loss"], [()])
        net.layer("aux_loss", "EuclideanLoss", [head, "target"], ["aux_loss"], [()], "loss_weight: 0.5")
    return net


def test_enet_style_net_has_caffe_shapes():
    writer = enet_style()
    net = net_of(writer.text())
    assert {k: tuple(v) for k, v in net.blob_shapes.items()} == writer.shapes
    net.init_weights(0)
    with torch.no_grad():
        out = net(data=torch.randn(2, 3, 48, 80), blobs="all")
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: tuple(v) for k, v in net.blob_shapes.items()}
    assert out["fullconv"].shape == (2, 5, 48, 80)
    assert sum("PReLU" == s.type for s in net.steps) >= 10


def test_enet_style_net_trains():
    writer = enet_style(phase="TRAIN")
    net = net_of(writer.text(), phase="TRAIN")
    net.init_weights(0)
    label = torch.randint(0, 5, (2, 1, 48, 80)).float()
    out = net(data=torch.randn(2, 3, 48, 80), label=label, target=torch.randn(2, 5))
    net.total_loss(out).backward()
    slopes = [m.weight.grad for _, m in net.named_layers() if m.caffe_type == "PReLU"]
    assert slopes and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in slopes)


ENET_CAFFE = ROOT / "tests" / "data" / "enet_style_caffe"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_enet_style_net_matches_caffe_segnet(dtype):
    """Forward and backward of an ENet-style net against caffe-segnet's (see the data folder's README)."""
    writer = enet_style(shape=(2, 3, 32, 32), phase="TRAIN", widths=(8, 16), dilation=False, dropout=False)
    prototxt = ENET_CAFFE / "enet_style.prototxt"
    assert prototxt.read_text() == "force_backward: true\n" + writer.text() + "\n", "the recorded net is not this one"
    net = converter.convert(prototxt, ENET_CAFFE / "enet_style.caffemodel", phase="TRAIN").to(dtype)
    assert {k: tuple(v) for k, v in net.blob_shapes.items()} == writer.shapes
    ref = _arrays(ENET_CAFFE / "enet_style.outputs.npz")
    feed = {k: torch.from_numpy(v).to(dtype).requires_grad_(f"diff:{k}" in ref)
            for k, v in _arrays(ENET_CAFFE / "enet_style.inputs.npz").items()}  # fmt: skip
    out = net(**feed, blobs=[k for k in ref if k in net.blob_shapes])
    for name in [k for k in ref if k in net.blob_shapes]:
        ours = out[name].detach().double().numpy().reshape(ref[name].shape)
        if name in net.index_blob_names:
            assert np.array_equal(ours, ref[name]), name
        elif name in net.loss_weights:
            assert abs(ours.item() - ref[name].item()) <= LOSS_RTOL * abs(ref[name].item()), name
        else:
            assert scaled_error(ours, ref[name]) <= FORWARD_TOL, name
    net.zero_grad()
    net.total_loss(out).backward()
    for key in [k for k in ref if k.startswith(("diff:", "param_diff:"))]:
        if key.startswith("diff:"):
            grad = feed[key[5:]].grad
        else:
            _, layer, i = key.split(":")
            grad = net.layer(layer).blob_tensors()[int(i)].grad
        ours = grad.detach().double().numpy().reshape(ref[key].shape)
        if np.linalg.norm(ref[key]) < 1e-4:  # a conv bias before BN: exactly 0, Caffe's is rounding noise
            assert np.linalg.norm(ours - ref[key]) <= 1e-5, key
        else:
            assert relative_l2(ours, ref[key]) <= GRAD_RTOL, key


# ---------------------------------------------------------------- Caffe's own gradients


def test_prelu_treats_zero_as_negative():
    net = net_of('input: "x" input_shape { dim: 1 dim: 2 dim: 1 dim: 3 } '
                 'layer { name: "p" type: "PReLU" bottom: "x" top: "y" }')  # fmt: skip
    layer = net.layer("p")
    assert torch.equal(layer.weight.detach(), torch.full((2,), 0.25))  # Caffe's default slope
    x = torch.tensor([[[[-2.0, 0.0, 3.0]], [[0.0, 1.0, -1.0]]]], requires_grad=True)
    y = net(x=x)["y"]
    y.backward(torch.ones_like(y))
    assert torch.equal(y.detach(), torch.tensor([[[[-0.5, 0.0, 3.0]], [[0.0, 1.0, -0.25]]]]))
    assert torch.equal(x.grad, torch.tensor([[[[0.25, 0.25, 1.0]], [[0.25, 1.0, 0.25]]]]))
    assert torch.equal(layer.weight.grad, torch.tensor([-2.0, -1.0]))


def test_mvn_gradients_are_caffes_formulas():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    dy = torch.randn_like(x)
    y = mvn(x, eps=0.5)
    y.backward(dy)
    scale = x.detach().var(dim=(2, 3), keepdim=True, unbiased=False).sqrt() + 0.5
    expected = (dy - dy.mean(dim=(2, 3), keepdim=True) - y * (y * dy).mean(dim=(2, 3), keepdim=True)) / scale
    torch.testing.assert_close(x.grad, expected.detach())
    x.grad = None
    mvn(x, normalize_variance=False).backward(dy)
    assert torch.equal(x.grad, dy)  # caffe-segnet passes the gradient through unchanged


def test_contrastive_gradient_divides_by_distance_plus_1e4():
    a = torch.tensor([[0.3, 0.0], [1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)
    loss = contrastive_loss(a, b, torch.tensor([False, True]), margin=1.0)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(((1 - 0.3) ** 2 + 2.0) / 4)
    expected_a = torch.tensor([[-(1 - 0.3) / (0.3 + 1e-4) * 0.3 / 2, 0.0], [0.5, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(a.grad, expected_a)
    torch.testing.assert_close(b.grad, -expected_a)


def test_probability_losses_keep_their_gradient_below_the_log_floor():
    prob = torch.tensor([[1e-30, 1.0], [0.5, 0.5]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1])
    multinomial_logistic_loss(prob, labels).backward()
    assert prob.grad[0, 0] == pytest.approx(-1 / (2 * 1e-20))
    assert prob.grad[1, 1] == pytest.approx(-1 / (2 * 0.5)) and prob.grad[0, 1] == 0
    prob.grad = None
    infogain_loss(prob, labels, torch.eye(2, dtype=torch.float64)).backward()
    assert prob.grad[0, 0] == pytest.approx(-1 / (2 * 1e-20))


def test_filter_keeps_selected_items_and_routes_gradients_back():
    net = net_of('input: "x" input_shape { dim: 4 dim: 2 } input: "s" input_shape { dim: 4 dim: 1 } '
                 'layer { name: "f" type: "Filter" bottom: "x" bottom: "s" top: "y" }')  # fmt: skip
    assert net.blob_shapes["y"] == (4, 2)  # the setup shape, as Caffe's
    x = torch.arange(8.0).reshape(4, 2).requires_grad_()
    y = net(x=x, s=torch.tensor([[0.0], [2.0], [0.0], [-1.0]]))["y"]
    assert torch.equal(y.detach(), torch.tensor([[2.0, 3.0], [6.0, 7.0]]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]))


def test_dummy_data_is_a_constant_blob_not_an_input():
    net = net_of('layer { name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param { '
                 'data_filler { type: "constant" value: 0.5 } shape { dim: 2 dim: 3 } } }')  # fmt: skip
    assert net.input_names == [] and net.blob_shapes == {"a": (2, 3), "b": (2, 3)}
    out = net.double()(blobs=["a", "b"])
    assert torch.equal(out["a"], torch.full((2, 3), 0.5, dtype=torch.float64)) and out["b"].dtype == torch.float64


# ---------------------------------------------------------------- refusals: one line, the layer, the reason


@pytest.mark.parametrize("layer, words", [
    ('layer { name: "save" type: "HDF5Output" bottom: "x" bottom: "x" hdf5_output_param { file_name: "o.h5" } }',
     ["layer 'save'", "HDF5 file", "--dump"]),
    ('layer { name: "py" type: "Python" bottom: "x" top: "y" python_param { module: "m" layer: "L" } }',
     ["layer 'py'", "user code", "module 'm'"]),
    ('layer { name: "m" type: "MVN" bottom: "x" top: "y" mvn_param { across_channels: true } }',
     ["layer 'm'", "3 channels", "Reshape"]),
    ('layer { name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 1 } }',
     ["layer 's'", "at least 2 levels"]),
    ('layer { name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 4 } }',
     ["layer 's'", "too small", "pad < kernel"]),
    ('layer { name: "e" type: "Exp" bottom: "x" top: "y" exp_param { shift: 0.5 } }',
     ["layer 'e'", "NaN"]),
    ('layer { name: "i" type: "Im2col" bottom: "x" top: "y" convolution_param { kernel_size: 3 kernel_h: 3 } }',
     ["layer 'i'", "kernel_h and kernel_w"]),
    ('layer { name: "f" type: "Filter" bottom: "x" bottom: "x" top: "y" top: "z" }',
     ["layer 'f'", "need 1 tops"]),
])  # fmt: skip
def test_refusals_name_the_layer_and_the_reason(layer, words):
    text = 'input: "x" input_shape { dim: 2 dim: 3 dim: 5 dim: 5 } ' + layer
    with pytest.raises(CaffeFormatError) as info:
        net_of(text)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_python_data_layer_becomes_an_input():
    net = net_of('layer { name: "src" type: "Python" top: "x" python_param { module: "m" layer: "L" } } '
                 'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }', x=(1, 2))  # fmt: skip
    assert net.input_names == ["x"]


def test_refused_layer_on_the_command_line(tmp_path):
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text('input: "x" input_shape { dim: 1 dim: 1 } '
                        'layer { name: "save" type: "HDF5Output" bottom: "x" bottom: "x" }')  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "converter", str(prototxt), "--no-save"],
                            capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(prototxt) in lines[0] and "layer 'save'" in lines[0], result.stderr
