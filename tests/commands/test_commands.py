"""Every command, given a file of the wrong kind, answers with one line and exit status 2.

A user mistake (a prototxt or caffemodel where a checkpoint belongs, a
damaged file, a folder, a missing file, data that is not a data set) must
never show a traceback: the answer is ``error: <file>: <what it is and what
to do>`` on one line of stderr, and no output file.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support import make_tiny_camvid
from PIL import Image

from caffe_proto import caffe_pb2
from converter.writer import write_caffemodel
from segnet import bn_stats, class_weights, evaluate, export, onnx_export, predict, train

ROOT = Path(__file__).resolve().parents[2]

NET = """name: "tiny"
input: "data"
input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 2 kernel_size: 1 } }
"""
SOLVER = 'net: "train.prototxt"\nbase_lr: 0.1\nmomentum: 0.9\nmax_iter: 100\nlr_policy: "fixed"\n'


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"reproduce_{name}", ROOT / "reproduce" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """One file of each wrong kind, and a tiny valid data set."""
    root = tmp_path_factory.mktemp("kinds")
    made = {
        "prototxt": root / "net.prototxt",
        "solver": root / "solver.prototxt",
        "caffemodel": root / "net.caffemodel",
        "garbage": root / "garbage.pt",
        "empty": root / "empty.pt",
        "image": root / "picture.png",
        "not-a-checkpoint": root / "tensor.pt",
        "missing": root / "nowhere.pt",
        "folder": root / "folder.pt",
    }
    made["prototxt"].write_text(NET)
    made["solver"].write_text(SOLVER)
    layer = caffe_pb2.LayerParameter(name="conv1", type="Convolution")
    write_caffemodel(made["caffemodel"], [(layer, [np.zeros((2, 3, 1, 1)), np.zeros(2)])], name="tiny")
    made["garbage"].write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    made["empty"].write_bytes(b"")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(made["image"])
    torch.save(torch.zeros(3), made["not-a-checkpoint"])
    made["folder"].mkdir()
    made["data"] = make_tiny_camvid(root / "camvid", count=2, size=(16, 16))
    return made


WRONG_MODELS = ["prototxt", "solver", "caffemodel", "garbage", "empty", "image", "not-a-checkpoint", "missing", "folder"]


def _commands(files: dict[str, Path], out: Path):
    """(name, main, argv builder taking the model path) for every command that reads a model."""
    data, image = str(files["data"]), str(files["image"])
    return [
        ("predict", predict.main, lambda m: [m, image, "-o", str(out)]),
        ("evaluate", evaluate.main, lambda m: ["--data", data, "--model", m, "--out", str(out), "--no-progress"]),
        ("train", train.main, lambda m: ["--data", data, "--init", m, "--out", str(out), "--iterations", "1",
                                         "--no-progress"]),
        ("export", export.main, lambda m: [m, "--prototxt", str(out / "x.prototxt"), "--caffemodel",
                                           str(out / "x.caffemodel")]),
        ("onnx_export", onnx_export.main, lambda m: [m, str(out / "x.onnx")]),
        ("bn_stats", bn_stats.main, lambda m: [m, "--data", data, "-o", str(out / "x.pt"), "--no-progress"]),
    ]


def _check_one_line(code: int, err: str, *needles: str) -> None:
    """Status 2 and one error line, the last one (notes may come before it), and no traceback."""
    assert code == 2, err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert all(line.startswith("note: ") for line in lines[:-1]), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.mark.parametrize("kind", WRONG_MODELS)
def test_every_model_reading_command_refuses_wrong_kinds(files, kind, tmp_path, capsys):
    out = tmp_path / "out"
    for name, main, argv in _commands(files, out):
        code = main(argv(str(files[kind])))
        _check_one_line(code, capsys.readouterr().err, files[kind].name)
        assert not out.exists() or not any(out.iterdir()), f"{name} left files behind"


def test_wrong_kind_messages_say_what_the_file_is(files, capsys):
    expected = {
        "prototxt": "a Caffe network definition (prototxt), not a model checkpoint: convert it first",
        "solver": "a Caffe solver prototxt",
        "caffemodel": "Caffe weights (a binary caffemodel)",
        "image": "an image, not a model checkpoint",
        "empty": "an empty file",
        "missing": "no such file",
        "folder": "is a folder",
        "not-a-checkpoint": "neither a segnet model checkpoint nor a converted Caffe net",
    }
    for kind, words in expected.items():
        code = predict.main([str(files[kind]), str(files["image"]), "-o", str(files["folder"])])
        _check_one_line(code, capsys.readouterr().err, words)


def test_data_that_is_not_a_data_set(files, tmp_path, capsys):
    for bad in (files["prototxt"], files["missing"], files["folder"]):
        for main, argv in ((class_weights.main, ["--data", str(bad)]),
                           (train.main, ["--data", str(bad), "--out", str(tmp_path / "t"), "--no-progress"]),
                           (evaluate.main, ["--data", str(bad), "--predictions", str(bad), "--no-progress"])):  # fmt: skip
            _check_one_line(main(argv), capsys.readouterr().err, bad.name)


def test_images_of_the_wrong_kind_for_predict(files, tmp_path, capsys):
    model = tmp_path / "model.pt"
    from segnet.models.checkpoint import save_model
    from segnet.models.family import segnet_basic

    save_model(model, segnet_basic())
    for bad in ("prototxt", "garbage", "missing"):
        code = predict.main([str(model), str(files[bad]), "-o", str(tmp_path / "p")])
        _check_one_line(code, capsys.readouterr().err, files[bad].name)


def test_caffe_evaluation_script_on_wrong_kinds(files, capsys):
    evaluate_caffe = _script("evaluate_caffe")
    for net, weights in ((files["caffemodel"], files["prototxt"]), (files["solver"], files["caffemodel"]),
                         (files["garbage"], files["caffemodel"]), (files["prototxt"], files["garbage"])):  # fmt: skip
        code = evaluate_caffe.main([str(net), str(weights), "--data", str(files["data"]), "--no-progress"])
        _check_one_line(code, capsys.readouterr().err)


def test_a_real_process_prints_no_traceback(files, tmp_path):
    """The same path end to end through ``python -m``: one line, status 2."""
    result = subprocess.run([sys.executable, "-m", "segnet.predict", str(files["caffemodel"]), str(files["image"]),
                             "-o", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    _check_one_line(result.returncode, result.stderr, "net.caffemodel", "python -m converter")


def test_solver_given_as_a_net_is_named(files, tmp_path, capsys):
    from converter.cli import main as convert

    code = convert([str(files["solver"]), "-o", str(tmp_path / "x.pt"), "-q"])
    _check_one_line(code, capsys.readouterr().err, "a solver prototxt, not a net definition",
                    "its net is 'train.prototxt'")  # fmt: skip


def _converted_basic(tmp_path: Path, size=(24, 32)) -> Path:
    """A converted SegNet-Basic (random weights, folded BN) declared at ``size``."""
    import converter
    from support import randomize_bn_statistics
    from segnet.deploy.caffe_export import export_caffe
    from segnet.models.family import segnet_basic
    from segnet.models.surgery import convert_bn

    torch.manual_seed(0)
    model = convert_bn(randomize_bn_statistics(segnet_basic().eval()), "inference")
    export_caffe(model, tmp_path / "b.prototxt", tmp_path / "b.caffemodel", input_size=size)
    converter.save(converter.convert(tmp_path / "b.prototxt", tmp_path / "b.caffemodel"), tmp_path / "b.pt")
    return tmp_path / "b.pt"


def test_export_of_a_converted_segnet_basic(tmp_path, capsys):
    import converter

    path = _converted_basic(tmp_path)
    assert export.main([str(path), "--prototxt", str(tmp_path / "o.prototxt"), "--caffemodel",
                        str(tmp_path / "o.caffemodel")]) == 0  # fmt: skip
    again = converter.convert(tmp_path / "o.prototxt", tmp_path / "o.caffemodel")
    assert again.input_shapes["data"] == (1, 3, 24, 32)  # the size the converted net declares
    x = torch.rand(1, 3, 24, 32) * 255
    with torch.no_grad():
        assert torch.equal(again(data=x)["prob"], converter.load(path)(data=x)["prob"])


def test_onnx_export_at_the_declared_size_in_one_checked_file(tmp_path, capsys):
    pytest.importorskip("onnxscript", reason="ONNX export needs the onnx extra")
    pytest.importorskip("onnxruntime", reason="the check needs onnxruntime")
    path = _converted_basic(tmp_path)
    out = tmp_path / "o.onnx"
    assert onnx_export.main([str(path), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "(24x32 input)" in printed
    assert "onnxruntime check: argmax equal to PyTorch's on" in printed
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("o.onnx")] == ["o.onnx"]  # no sidecar
    import onnx

    dims = [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 24, 32]


def test_onnx_export_without_the_extra_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    code = onnx_export.main([str(tmp_path / "any.pt"), str(tmp_path / "o.onnx")])
    _check_one_line(code, capsys.readouterr().err, "needs the 'onnxscript' package", 'pip install -e ".[onnx]"')
