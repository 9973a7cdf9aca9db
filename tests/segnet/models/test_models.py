"""The readable SegNet models: shapes, Caffe weights, BN handling, export, training."""

from __future__ import annotations

import json
import math
from dataclasses import replace
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support import make_tiny_camvid, randomize_bn_statistics

import converter
from segnet.models.surgery import compute_bn_statistics, fold_statistics
from segnet.models.checkpoint import load_model, save_model
from segnet.training.class_weights import class_weights
from segnet.deploy.caffe_export import export_caffe
from segnet.training.loss import segnet_loss
from segnet.data.labels import get_label_space
from segnet.models.mc_dropout import mc_dropout_predict
from segnet.models.family import bayesian_segnet_basic, segnet, segnet_basic
from segnet.models.layers import CaffeBN
from segnet.models.surgery import bn_to_caffe, bn_to_pytorch, convert_bn, fold_bn
from segnet.models.registry import MODEL_NAMES, build_model
from segnet.models.weights import WeightMismatchError, load_caffe_weights, readable_twin

ROOT = Path(__file__).resolve().parents[3]


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_shapes_at_full_and_odd_sizes(name):
    model = build_model(name).eval()
    sizes = [(45, 61), (360, 480)] if "segnet" not in name or "basic" in name else [(45, 61)]
    with torch.no_grad():
        for size in sizes:
            assert model(torch.rand(1, 3, *size) * 255).shape == (1, 11, *size)


def test_segnet_at_360x480():
    with torch.no_grad():
        assert segnet().eval()(torch.rand(1, 3, 360, 480) * 255).shape == (1, 11, 360, 480)


# ---------------------------------------------------------------- Caffe weights


@pytest.mark.parametrize(
    "build, prototxt, weights",
    [(segnet_basic, "segnet_basic_inference.prototxt", "segnet_basic.caffemodel"),
     (segnet, "segnet_inference.prototxt", "segnet_full.caffemodel.gz")],
    ids=["segnet_basic", "segnet"],
)  # fmt: skip
def test_converted_weights_reproduce_the_caffe_graph(oracle_dir, build, prototxt, weights):
    """The readable model runs the converted graph's operations: identical numbers.

    How the graph compares with caffe-segnet is judged in test_oracle.py.
    """
    net = converter.convert(oracle_dir / prototxt, oracle_dir / weights)
    model = load_caffe_weights(build(), net).eval()
    with np.load(oracle_dir / "segnet_input_360x480.inputs.npz") as f:
        x = torch.from_numpy(f["data"])
    with torch.no_grad():
        ours = torch.softmax(model(x), dim=1)
        graph = net(data=x)["prob"]
    assert torch.equal(ours, graph)


def test_one_training_step_matches_the_caffe_graph(oracle_dir):
    """SegNet-Basic in LEARN mode, weighted loss: the converted graph's loss and parameter gradients.

    The graph's own training step is judged against caffe-segnet's in test_oracle.py.
    """
    net = converter.convert(oracle_dir / "segnet_basic_train.prototxt", oracle_dir / "segnet_basic_train.caffemodel",
                            phase="TRAIN")  # fmt: skip
    model = load_caffe_weights(segnet_basic(), net).train()
    assert isinstance(model.conv1_bn, CaffeBN) and model.conv1_bn.mode == "LEARN"
    with np.load(oracle_dir / "segnet_basic_train.inputs.npz") as f:
        images, labels = torch.from_numpy(f["data"]), torch.from_numpy(f["label"])
    weights = torch.tensor(class_weights("prototxt", get_label_space("camvid")), dtype=torch.float32)
    loss = segnet_loss(model(images), labels[:, 0].long(), weights, ignore_index=11)
    graph_loss = net(data=images, label=labels, blobs=["loss"])["loss"]
    assert abs(loss.item() - graph_loss.item()) <= 1e-6 * abs(graph_loss.item())
    loss.backward()
    graph_loss.backward()
    checked = 0
    for name, module in model.named_children():
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        theirs = net.layer(name).blob_tensors()
        ours = [module.weight, module.bias] if hasattr(module, "weight") else [module.scale, module.shift]
        for mine, graph in zip(ours, theirs):
            scale = graph.grad.norm().item()
            assert (mine.grad.reshape(graph.shape) - graph.grad).norm().item() <= 1e-5 * scale + 1e-9, name
            checked += 1
    assert checked == sum(len(m.blob_attrs) for _, m in net.named_layers())


def test_weight_mismatches_are_all_listed(oracle_dir):
    net = converter.convert(oracle_dir / "segnet_basic_inference.prototxt", oracle_dir / "segnet_basic.caffemodel")
    with pytest.raises(WeightMismatchError) as info:
        load_caffe_weights(segnet_basic(num_classes=5), net)
    # one line: the first problem in full
    assert str(info.value) == ("weights do not fit the model: conv_classifier: weight shape [11, 64, 1, 1] in the "
                               "weights, [5, 64, 1, 1] in the model; and 1 more")  # fmt: skip
    with pytest.raises(WeightMismatchError) as info:
        load_caffe_weights(segnet(), net)
    message = str(info.value)
    assert "\n" not in message and message.startswith("weights do not fit the model: conv1: ")
    assert f"; and {len(info.value.problems) - 1} more" in message
    assert "conv_decode4: in the weights, not in the model" in info.value.problems
    assert "conv5_3_D: in the model, not in the weights" in info.value.problems


# ---------------------------------------------------------------- BN


def test_bn_conversions_keep_outputs():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 6) * 3 + 1
    inference = CaffeBN(4, "inference")
    with torch.no_grad():
        inference.scale.uniform_(0.5, 2)
        inference.shift.uniform_(-1, 1)
    torch.testing.assert_close(bn_to_pytorch(inference)(x), inference(x), rtol=1e-6, atol=1e-6)
    learn = CaffeBN(4, "learn")
    with torch.no_grad():
        learn.scale.uniform_(0.5, 2)
    as_torch = bn_to_pytorch(learn).train()
    torch.testing.assert_close(as_torch(x), learn(x), rtol=1e-5, atol=1e-5)
    trained = torch.nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        trained.running_mean.uniform_(-1, 1)
        trained.running_var.uniform_(0.5, 2)
        trained.weight.uniform_(0.5, 2)
    torch.testing.assert_close(bn_to_caffe(trained, "inference")(x), trained(x), rtol=1e-6, atol=1e-6)


def test_bn_statistics_fold_matches_a_hand_computation():
    """Two batches through one LEARN BN: average their batch moments, then fold."""
    model = torch.nn.Sequential()
    model.add_module("bn", CaffeBN(1, "learn"))
    with torch.no_grad():
        model.bn.scale.fill_(2.0)
        model.bn.shift.fill_(0.5)
    batches = [torch.tensor([1.0, 3.0]).view(2, 1, 1, 1), torch.tensor([5.0, 5.0, 9.0, 5.0]).view(1, 1, 2, 2)]
    stats = compute_bn_statistics(model, batches, progress=False)
    # batch 1: mean 2, var 1; batch 2: mean 6, var 3 -> averages 4 and 2
    assert stats["bn"][0].item() == 4.0 and stats["bn"][1].item() == 2.0
    unbiased = compute_bn_statistics(model, batches, unbiased=True, progress=False)
    assert unbiased["bn"][1].item() == pytest.approx((1 * 2 / 1 + 3 * 4 / 3) / 2)  # m/(m-1) per batch
    fold_statistics(model, stats)
    assert model.bn.mode == "INFERENCE"
    x = torch.tensor([7.0]).view(1, 1, 1, 1)
    assert model(x).item() == pytest.approx(2.0 * (7 - 4) / math.sqrt(2 + 1e-9) + 0.5, rel=1e-6)


def test_folding_bn_into_convolutions():
    torch.manual_seed(0)
    model = segnet_basic().eval()
    randomize_bn_statistics(model)
    x = torch.rand(1, 3, 90, 120) * 255
    with torch.no_grad():
        before = model(x)
        fold_bn(model)
        after = model(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert ((after - before).abs().max() / before.abs().max()).item() <= 1e-5


# ---------------------------------------------------------------- export, checkpoints, dropout


@pytest.mark.parametrize("build, size", [
    (segnet_basic, (360, 480)), (segnet, (45, 61)), (bayesian_segnet_basic, (91, 121)),
    (lambda: build_model("SegNet-Basic-EncoderAddition"), (45, 61)),
    (lambda: build_model("SegNet-Basic-SingleChannelDecoder"), (45, 61)),
], ids=["segnet_basic", "segnet", "bayesian_segnet_basic", "encoder_addition", "single_channel_decoder"])  # fmt: skip
def test_export_reads_back_to_identical_outputs(tmp_path, build, size):
    torch.manual_seed(1)
    model = build().eval()
    randomize_bn_statistics(model)
    convert_bn(model, "inference")  # the form a caffemodel stores
    export_caffe(model, tmp_path / "m.prototxt", tmp_path / "m.caffemodel", input_size=size)
    net = converter.convert(tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    net.set_mc_dropout(False)
    x = torch.rand(1, 3, *size) * 255
    with torch.no_grad():
        assert torch.equal(torch.softmax(model(x), dim=1), net(data=x)["prob"])
    layers = {step.name: step.type for step in net.steps}
    assert layers["pool1"] == "Pooling" and layers[f"{model.encoder_name(1, 1)}_bn"] == "BN"
    twin = readable_twin(net)  # the Caffe files load back into the readable model they came from
    assert twin is not None and twin.arch == replace(model.arch, name=twin.arch.name)


def test_checkpoint_round_trip_keeps_bn_kinds(tmp_path):
    model = segnet_basic()
    convert_bn(model, "learn")
    save_model(tmp_path / "m.pt", model, {"note": 1})
    again = load_model(tmp_path / "m.pt")
    assert isinstance(again.conv_decode1_bn, CaffeBN) and again.conv_decode1_bn.mode == "LEARN"
    x = torch.rand(2, 3, 45, 60) * 255
    with torch.no_grad():
        assert torch.equal(again(x), model.eval()(x))


def test_monte_carlo_dropout():
    torch.manual_seed(0)
    model = bayesian_segnet_basic().eval()
    x = torch.rand(1, 3, 45, 60) * 255
    mean, uncertainty = mc_dropout_predict(model, x, samples=4)
    assert mean.shape == (1, 11, 45, 60) and uncertainty.shape == (1, 45, 60)
    torch.testing.assert_close(mean.sum(dim=1), torch.ones(1, 45, 60))
    assert (uncertainty >= 0).all() and uncertainty.max() > 0
    assert not any(m.training for m in model.modules())  # evaluation mode restored, dropout included
    with pytest.raises(ValueError, match="no dropout"):
        mc_dropout_predict(segnet_basic(), x)


# ---------------------------------------------------------------- training


def test_training_runs_resumes_and_keeps_the_best(tmp_path):
    from segnet.training.config import TrainConfig
    from segnet.training.loop import train

    data = make_tiny_camvid(tmp_path / "camvid", ("train", "val"), 4)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), iterations=4, batch_size=2, val_every=2,
                      log_every=1, progress=False, class_weights="median")  # fmt: skip
    summary = train(cfg)
    assert summary["best"]["iteration"] in (2, 4)
    cfg.iterations, cfg.resume = 6, True
    train(cfg)
    events = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["event"] == "start"]
    assert [s["start_iteration"] for s in starts] == [0, 4]
    assert [e["iteration"] for e in events if e["event"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert load_model(tmp_path / "run" / "best.pt")(torch.rand(1, 3, 24, 32)).shape == (1, 11, 24, 32)


def test_fine_tuning_keeps_the_bn_mode_of_the_checkpoint(tmp_path):
    from segnet.training.config import TrainConfig
    from segnet.training.loop import train

    data = make_tiny_camvid(tmp_path / "camvid", ("train", "val"), 4)
    start = convert_bn(segnet_basic(), "learn")
    save_model(tmp_path / "start.pt", start)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "ft"), iterations=1, batch_size=2, val_every=0,
                      progress=False, init=str(tmp_path / "start.pt"))  # fmt: skip
    train(cfg)
    tuned = load_model(tmp_path / "ft" / "best.pt")
    assert isinstance(tuned.conv1_bn, CaffeBN) and tuned.conv1_bn.mode == "LEARN"  # trained as caffe-segnet trains
    # one SGD step moved the weights away from the starting point
    assert not torch.equal(tuned.conv1.weight, start.conv1.weight)


def test_two_process_cpu_ddp(tmp_path):
    data = make_tiny_camvid(tmp_path / "camvid", ("train", "val"), 4)
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "-m", "segnet.train", "--data", str(data), "--out", str(tmp_path / "ddp"), "--iterations", "2",
         "--batch-size", "4", "--val-every", "0", "--no-progress", "--device", "cpu"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["iterations"] == 2


def test_images_per_second_leave_validation_out(tmp_path, monkeypatch):
    """A clock that only validation advances: the logged training rate must not see that time."""
    import segnet.training.loop as training

    data = make_tiny_camvid(tmp_path / "camvid", ("train", "val"), 2)
    clock = [0.0]

    def slow_validation(*args, **kwargs):
        clock[0] += 1000.0
        return 0.5

    monkeypatch.setattr(training.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(training, "validation_accuracy", slow_validation)
    cfg = training.TrainConfig(data=str(data), out=str(tmp_path / "run"), iterations=2, batch_size=2, val_every=1,
                               log_every=2, progress=False)  # fmt: skip
    training.train(cfg)
    rates = [json.loads(line)["images_per_s"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
             if '"train"' in line]  # fmt: skip
    assert rates and rates[0] > 1e6  # 4 images in no training time; with the validations counted it would be 0.002
