"""Every SegNet-Tutorial prototxt parses, builds (TEST phase) and runs, with Caffe's shapes.

Data layers become inputs of the size the file implies (360x480 when it does
not say; batch 1 here to keep the run short). For each layer, the shape its
shape rule predicts must be the shape the forward pass produces, and SegNet's
defining sizes are checked by hand: the ceil-mode pooling chain
360x480 -> 180x240 -> 90x120 -> 45x60 -> 23x30 -> 12x15 and every Upsample
restoring the size its pooling started from.
"""

from __future__ import annotations

import pytest
import torch

from conftest import SHARED
from converter import CaffeNet, read_net, read_solver

ZOO = SHARED / "prototxt"
FILES = sorted(ZOO.glob("*/*.prototxt")) if ZOO.exists() else []
NETS = [f for f in FILES if "solver" not in f.name]
SOLVERS = [f for f in FILES if "solver" in f.name]


def _params(files):
    if not files:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"SegNet-Tutorial prototxt files not found at {ZOO}"))]
    return [pytest.param(f, id=f"{f.parent.name}/{f.name}") for f in files]


def test_the_zoo_is_complete():
    if not FILES:
        pytest.skip(f"SegNet-Tutorial prototxt files not found at {ZOO}")
    # SegNet-Tutorial ships 18 net definitions and 4 solvers in Models/ and Example_Models/.
    assert len(NETS) == 18 and len(SOLVERS) == 4


@pytest.mark.parametrize("path", _params(NETS))
def test_builds_and_runs_with_caffe_shapes(path):
    probe = CaffeNet(read_net(path), "TEST")
    shapes = {name: (1, *shape[1:]) for name, shape in probe.input_shapes.items() if shape}
    net = CaffeNet(read_net(path), "TEST", input_shapes=shapes)
    net.init_weights(0)
    seen: dict[str, list[tuple[int, ...]]] = {}
    for step, module in net.named_layers():
        module.register_forward_hook(lambda m, i, o, name=step.name: seen.__setitem__(name, [tuple(t.shape) for t in o]))
    feed = {}
    for name, shape in net.input_shapes.items():
        feed[name] = torch.randint(0, 11, shape).float() if name == "label" else torch.rand(shape) * 255
    with torch.no_grad():
        out = net(**feed)
    assert out, "the net produced no output"
    pooled_from = {}
    for step, module in net.named_layers():
        rule = [net.blob_shapes[t] for t in step.tops]
        assert seen[step.name] == rule, f"{step.name}: forward gave {seen[step.name]}, the shape rule {rule}"
        if step.type == "Pooling" and len(step.tops) == 2:
            pooled_from[step.tops[1]] = net.blob_shapes[step.bottoms[0]]
        if step.type == "Upsample":
            assert net.blob_shapes[step.tops[0]] == pooled_from[step.bottoms[1]]


@pytest.mark.parametrize("name", ["Models/segnet_inference.prototxt", "Models/segnet_basic_inference.prototxt"])
def test_segnet_pooling_chain_at_360x480(name):
    if not ZOO.exists():
        pytest.skip(f"SegNet-Tutorial prototxt files not found at {ZOO}")
    net = CaffeNet(read_net(ZOO / name), "TEST")
    sizes = [net.blob_shapes[s.tops[0]][2:] for s in net.steps if s.type == "Pooling"]
    expected = [(180, 240), (90, 120), (45, 60), (23, 30), (12, 15)]
    assert sizes == expected[: len(sizes)]


@pytest.mark.parametrize("path", _params(SOLVERS))
def test_solvers_parse(path):
    solver = read_solver(path)
    assert solver.base_lr > 0 and solver.momentum == pytest.approx(0.9)
    assert solver.net.endswith("_train.prototxt")
