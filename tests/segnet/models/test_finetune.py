"""Fine-tuning converted SegNets on a user's own data, through the command line alone.

A two-class SegNet-Basic written as caffe-segnet files by the exporter, and a
small net with mainline Caffe's BatchNorm + Scale layers (no readable
model computes it, so the converted graph itself trains), each converted,
fine-tuned on a generated data set in the folder layout, evaluated and used
for prediction.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from support import randomize_bn_statistics
from PIL import Image

import converter
from converter.cli import main as converter_main
from converter.writer import save_caffemodel
from segnet.evaluate import main as evaluate_main
from segnet.deploy.caffe_export import export_caffe
from segnet.export import main as export_main
from segnet.predict import main as predict_main
from segnet.train import main as train_main
from segnet.models.family import segnet_basic
from segnet.models.surgery import convert_bn

SIZE = (24, 32)


COMMANDS = {"converter": converter_main, "segnet.train": train_main, "segnet.evaluate": evaluate_main,
            "segnet.predict": predict_main, "segnet.export": export_main}  # fmt: skip


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``python -m <command> ARGS`` in this process (the same argument parsing and error path), in ``cwd``."""

    def call(command: str, *args, cwd: Path) -> SimpleNamespace:
        monkeypatch.chdir(cwd)
        code = COMMANDS[command]([str(a) for a in args])
        out, err = capsys.readouterr()
        assert code == 0, out + err
        return SimpleNamespace(stdout=out, stderr=err)

    return call


def make_road_data(root: Path, counts=(("train", 6), ("val", 2), ("test", 2))) -> Path:
    """Folder layout; label 1 ("road") where the image is blue, 0 elsewhere, 255 (void) in one corner."""
    rng = np.random.default_rng(0)
    for split, count in counts:
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for i in range(count):
            label = np.zeros(SIZE, dtype=np.uint8)
            top = rng.integers(4, SIZE[0] - 4)
            label[top:] = 1
            rgb = rng.integers(0, 60, (*SIZE, 3), dtype=np.uint8)
            rgb[label == 1, 2] += 150
            label[:2, :2] = 255
            Image.fromarray(rgb).save(root / split / "images" / f"{split}{i}.jpg", quality=95)
            Image.fromarray(label).save(root / split / "labels" / f"{split}{i}.png")
    return root


def events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_two_class_segnet_basic_from_caffe_files(tmp_path, cli):
    torch.manual_seed(0)
    model = randomize_bn_statistics(segnet_basic(num_classes=2).eval())
    convert_bn(model, "inference")
    export_caffe(model, tmp_path / "roads.prototxt", tmp_path / "roads.caffemodel", input_size=SIZE)
    data = make_road_data(tmp_path / "roads")
    cli("converter", "roads.prototxt", "roads.caffemodel", "-o", "roads.pt", "-q", cwd=tmp_path)

    trained = cli("segnet.train", "--data", data, "--init", "roads.pt", "--num-classes", "2", "--iterations", "4",
                  "--batch-size", "2", "--val-every", "2", "--lr", "0.01", "--out", "run", "--no-progress",
                  cwd=tmp_path)  # fmt: skip
    assert "training the readable SegNet-Basic" in trained.stdout
    assert "made the layers PyTorch BatchNorm" in trained.stdout
    vals = [e for e in events(tmp_path / "run") if e["event"] == "val"]
    assert [e["iteration"] for e in vals] == [0, 2, 4]  # the starting point is validated too
    assert "iteration 2: validation G" in trained.stdout  # shown without the progress bar

    scored = cli("segnet.evaluate", "--data", data, "--model", "run/best.pt", "--no-progress", "--out", "eval",
                 cwd=tmp_path)  # fmt: skip
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["label_space"] == "2-class" and report["images"] == 2 and 0 <= report["G"] <= 1
    assert [c["name"] for c in report["classes"]] == ["class 0", "class 1"]
    assert "2-class test, 2 images" in scored.stdout

    image = data / "test" / "images" / "test0.jpg"
    cli("segnet.predict", "run/best.pt", image, "-o", "pred", cwd=tmp_path)
    written = Image.open(tmp_path / "pred" / "test0_segmentation.png")
    assert written.mode == "P" and written.size == (SIZE[1], SIZE[0]) and np.array(written).max() <= 1

    # Another class count re-initialises the classifier, and says so.
    three = cli("segnet.train", "--data", data, "--init", "run/best.pt", "--num-classes", "3", "--iterations", "1",
                "--batch-size", "2", "--val-every", "0", "--out", "run3", "--no-progress", cwd=tmp_path)  # fmt: skip
    assert "classifier was re-initialised for 3 outputs" in three.stdout
    assert "the model after iteration 1" in three.stdout


BVLC_NET = """name: "bvlc_mini"
input: "data"
input_shape { dim: 1 dim: 3 dim: %d dim: %d }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "msra" } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" top: "pool1_mask"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "msra" } } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "conv2" }
layer { name: "scale2" type: "Scale" bottom: "conv2" top: "conv2" scale_param { bias_term: true } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "upsample1" type: "Upsample" bottom: "conv2" bottom: "pool1_mask" top: "up1"
  upsample_param { scale: 2 } }
layer { name: "score" type: "Convolution" bottom: "up1" top: "score"
  convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "msra" } } }
layer { name: "prob" type: "Softmax" bottom: "score" top: "prob" }
""" % SIZE


def test_converted_graph_without_a_readable_model_trains(tmp_path, cli):
    (tmp_path / "mini.prototxt").write_text(BVLC_NET)
    net = converter.convert(tmp_path / "mini.prototxt", seed=1)
    for _, layer in net.named_layers():  # trained-looking BatchNorm statistics (Caffe keeps sums and a factor)
        if layer.caffe_type == "BatchNorm":
            layer.variance.fill_(1.0)
            layer.scale_factor.fill_(1.0)
    save_caffemodel(net, tmp_path / "mini.caffemodel")
    data = make_road_data(tmp_path / "roads")
    cli("converter", "mini.prototxt", "mini.caffemodel", "-o", "mini.pt", "-q", cwd=tmp_path)

    trained = cli("segnet.train", "--data", data, "--init", "mini.pt", "--num-classes", "2", "--iterations", "20",
                  "--batch-size", "2", "--lr", "0.01", "--val-every", "0", "--log-every", "1", "--out", "run",
                  "--no-progress", cwd=tmp_path)  # fmt: skip
    assert "training the converted Caffe graph itself" in trained.stdout
    losses = [e["loss"] for e in events(tmp_path / "run") if e["event"] == "train"]
    assert len(losses) == 20 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses

    cli("segnet.evaluate", "--data", data, "--model", "run/best.pt", "--no-progress", cwd=tmp_path)
    cli("segnet.predict", "run/best.pt", data / "test" / "images" / "test1.jpg", "-o", "pred", cwd=tmp_path)
    assert Image.open(tmp_path / "pred" / "test1_segmentation.png").mode == "P"
    exported = cli("segnet.export", "run/best.pt", "--prototxt", "tuned.prototxt", "--caffemodel", "tuned.caffemodel",
                   cwd=tmp_path)  # fmt: skip
    assert "wrote tuned.prototxt" in exported.stdout
    again = converter.convert(tmp_path / "tuned.prototxt", tmp_path / "tuned.caffemodel")  # the fine-tuned net, as Caffe files
    assert {step.type for step in again.steps} >= {"BatchNorm", "Scale", "Upsample"}
    wider = cli("segnet.train", "--data", data, "--init", "run/best.pt", "--num-classes", "4", "--iterations", "1",
                "--batch-size", "2", "--val-every", "0", "--out", "run4", "--no-progress", cwd=tmp_path)  # fmt: skip
    assert "classifier was re-initialised for 4 outputs" in wider.stdout


EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "segnet_basic_camvid"


def test_lr_zero_keeps_the_converted_example_accuracy(tmp_path, cli, camvid_dir):
    """The example's BN is folded (INFERENCE): fine-tuning with --lr 0 must leave its accuracy where it was."""
    net = converter.convert(EXAMPLE / "segnet_basic_camvid.prototxt", EXAMPLE / "segnet_basic_camvid.caffemodel")
    converter.save(net, tmp_path / "example.pt")
    data = tmp_path / "subset"  # a few CamVid images, listed by absolute path
    data.mkdir()
    for split, count in (("train", 4), ("val", 4)):
        lines = (camvid_dir / f"{split}.txt").read_text().splitlines()[:count]
        (data / f"{split}.txt").write_text("\n".join(
            " ".join(str(camvid_dir / p[len("/SegNet/CamVid/"):]) for p in line.split()) for line in lines) + "\n")
    trained = cli("segnet.train", "--data", data, "--init", "example.pt", "--lr", "0", "--iterations", "1",
                  "--batch-size", "2", "--val-every", "1", "--out", "run", "--no-progress", cwd=tmp_path)  # fmt: skip
    assert "training the readable SegNet-Basic" in trained.stdout
    vals = {e["iteration"]: e["global_accuracy"] for e in events(tmp_path / "run") if e["event"] == "val"}
    scored = cli("segnet.evaluate", "--data", data, "--split", "val", "--model", "example.pt", "--no-progress",
                 "--out", "eval", cwd=tmp_path)  # fmt: skip
    own = json.loads((tmp_path / "eval" / "report.json").read_text())["G"]
    assert abs(vals[0] - own) < 1e-4  # the starting point is the model itself (BN unfolded: rounding only)
    assert abs(vals[1] - own) < 0.001  # one step at lr 0 changes nothing (within 0.1 point)
    assert own > 0.6  # a working model, not one wrecked by re-normalised BN


def test_monte_carlo_dropout_on_a_converted_bayesian_net(tmp_path, cli):
    from segnet.models.caffe_graph import CaffeSegmenter
    from segnet.models.mc_dropout import mc_dropout_predict
    from segnet.models.family import bayesian_segnet_basic

    torch.manual_seed(0)
    model = convert_bn(randomize_bn_statistics(bayesian_segnet_basic().eval()), "inference")
    export_caffe(model, tmp_path / "b.prototxt", tmp_path / "b.caffemodel", input_size=SIZE)
    net = converter.convert(tmp_path / "b.prototxt", tmp_path / "b.caffemodel")
    converter.save(net, tmp_path / "bayes.pt")
    mean, uncertainty = mc_dropout_predict(CaffeSegmenter(net, probabilities=True), torch.rand(1, 3, *SIZE) * 255, 4)
    assert mean.shape == (1, 11, *SIZE) and float(uncertainty.max()) > 0
    torch.testing.assert_close(mean.sum(dim=1), torch.ones(1, *SIZE))

    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8)).save(image)
    plain = cli("segnet.predict", "bayes.pt", image, "-o", "a", cwd=tmp_path)
    assert "has dropout layers" in plain.stderr and "one random sample per run" in plain.stderr
    cli("segnet.predict", "bayes.pt", image, "-o", "b", cwd=tmp_path)
    first, second = (np.array(Image.open(tmp_path / d / "x_segmentation.png")) for d in "ab")
    assert np.array_equal(first, second)  # without sampling the answer does not change between runs
    data = make_road_data(tmp_path / "roads", counts=(("test", 1),))  # ids 0, 1 and void 255: 11 outputs, void 255
    (tmp_path / "eleven.json").write_text(json.dumps({"names": [f"c{i}" for i in range(11)], "void": 255}))
    first_score = cli("segnet.evaluate", "--data", data, "--model", "bayes.pt", "--labels", "eleven.json",
                      "--no-progress", "--out", "e1", cwd=tmp_path)  # fmt: skip
    assert "has dropout layers" in first_score.stderr
    cli("segnet.evaluate", "--data", data, "--model", "bayes.pt", "--labels", "eleven.json", "--no-progress", "--out",
        "e2", cwd=tmp_path)  # fmt: skip
    scores = [json.loads((tmp_path / d / "report.json").read_text())["G"] for d in ("e1", "e2")]
    assert scores[0] == scores[1]  # evaluation does not draw dropout samples
    sampled = cli("segnet.predict", "bayes.pt", image, "-o", "mc", "--mc-samples", "3", cwd=tmp_path)
    assert "x_uncertainty.png" in sampled.stdout and "has dropout layers" not in sampled.stderr
    figure = Image.open(tmp_path / "mc" / "x_uncertainty.png")
    assert figure.mode == "RGB" and figure.size[1] > SIZE[0]  # the map and its legend below it
