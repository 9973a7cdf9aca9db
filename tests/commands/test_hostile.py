"""Hostile and broken files: bounded memory, one clean line, nothing silently wrong, nothing left behind.

The corruption suite (:func:`test_corruption_suite`) builds small files of
every kind that goes wrong (truncations, bit flips, absurd declared sizes,
compression bombs, files of the wrong kind, duplicate names) and drives every
command with them in worker processes whose address space is capped
(``hostile_runner.py``): each case must end in one ``error:`` line and exit
status 2, or in a correct result, with no traceback. The other tests check
each rule on its own.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from support import make_tiny_camvid
from PIL import Image

import converter
from caffe_proto import caffe_pb2
from converter import budget
from converter.atomic import atomic_write, remove_stale_temporaries, staged_outputs
from converter.checkpoint import checksum, read_payload, write_payload
from converter.errors import CaffeFormatError, UserError
from converter.graph import DuplicateLayerNameWarning
from converter.writer import write_caffemodel

ROOT = Path(__file__).resolve().parents[2]
CAP = 3 << 30  # address space of a worker: torch alone maps about 1 GiB of it
WORKERS = 2

NET = """name: "tiny"
input: "data"
input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
"""
CONV = 'convolution_param { num_output: 2 kernel_size: 1 }'


@pytest.fixture(autouse=True)
def _fresh_limit():
    budget.set_limit(None)
    yield
    budget.set_limit(None)


# ---------------------------------------------------------------- building hostile files


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height greyscale pixels but holds almost no data (a bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))  # fmt: skip
    return path


def _flip_in_first_tensor(source: Path, target: Path, bit: int = 3) -> Path:
    """A copy of a torch checkpoint with one bit flipped in its first tensor's data."""
    raw = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        entry = next(e for e in archive.infolist() if "/data/" in e.filename and e.file_size >= 4)
    name_len, extra_len = struct.unpack("<HH", raw[entry.header_offset + 26 : entry.header_offset + 30])
    raw[entry.header_offset + 30 + name_len + extra_len] ^= 1 << bit
    target.write_bytes(raw)
    return target


def _deflated_copy(source: Path, target: Path) -> Path:
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for entry in src.infolist():
            dst.writestr(entry.filename, src.read(entry))
    return target


class _Payload:
    """Unpickling this runs code (it creates ``marker``): weights_only loading must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _h5(path: Path, build) -> Path:
    h5py = pytest.importorskip("h5py", reason="HDF5 caffemodels need h5py (a dependency: pip install -e .)")
    with h5py.File(path, "w") as f:
        build(f)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    from segnet.models.checkpoint import save_model
    from segnet.models.family import segnet_basic

    root = tmp_path_factory.mktemp("hostile")
    f: dict[str, Path] = {"root": root}

    # valid inputs the bad ones are made from
    f["net"] = root / "net.prototxt"
    f["net"].write_text(NET)
    f["weights"] = root / "net.caffemodel"
    layer = caffe_pb2.LayerParameter(name="conv1", type="Convolution")
    write_caffemodel(f["weights"], [(layer, [np.ones((2, 3, 1, 1)), np.zeros(2)])], name="tiny")
    f["data"] = make_tiny_camvid(root / "camvid", count=2, size=(16, 16))
    f["image"] = f["data"] / "test" / "0.png"
    f["model"] = root / "model.pt"
    torch.manual_seed(0)
    save_model(f["model"], segnet_basic().eval(), input_size=(16, 16))
    f["converted"] = root / "converted.pt"
    converter.save(converter.convert(f["net"], f["weights"]), f["converted"])

    # prototxts
    def proto(name: str, text: str) -> None:
        f[name] = root / f"{name}.prototxt"
        f[name].write_text(text)

    proto("empty", "")
    proto("no_layers", 'name: "nothing"\ninput: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n')
    proto("two_producers", NET + f'layer {{ name: "conv2" type: "Convolution" bottom: "data" top: "conv1" {CONV} }}\n')
    proto("stride0", NET.replace("kernel_size: 1", "kernel_size: 1 stride: 0"))
    proto("group0", NET.replace("kernel_size: 1", "kernel_size: 1 group: 0"))
    proto("huge_output", NET.replace("num_output: 2", "num_output: 2000000000"))
    proto("negative_shape", NET.replace("kernel_size: 1", "kernel_size: 50"))
    proto("zero_input", NET.replace("dim: 8 dim: 8", "dim: 0 dim: 8"))
    proto("blob_too_big", NET.replace("dim: 8 dim: 8", "dim: 100000 dim: 100000"))
    relus = "".join(f'layer {{ name: "r{i}" type: "ReLU" bottom: "conv1" top: "conv1" }}\n' for i in range(20000))
    proto("many_layers", NET + relus)  # about 1 MB
    (root / "infogain.binaryproto").write_bytes(b"\xff\xff\xff\xff not a blob")
    proto("corrupt_infogain", 'input: "p" input_shape { dim: 2 dim: 3 } input: "l" input_shape { dim: 2 }\n'
          'layer { name: "loss" type: "InfogainLoss" bottom: "p" bottom: "l" top: "loss" '
          f'infogain_loss_param {{ source: "{root / "infogain.binaryproto"}" }} }}\n')  # fmt: skip
    proto("duplicate_names", NET + f'layer {{ name: "conv1" type: "Convolution" bottom: "conv1" top: "c2" {CONV} }}\n')

    # caffemodels
    raw = f["weights"].read_bytes()
    f["truncated_weights"] = root / "truncated.caffemodel"
    f["truncated_weights"].write_bytes(raw[: len(raw) // 2])
    member = gzip.compress(bytes(64 << 20), 9)  # 64 MiB of zeros in about 64 KB
    f["gzip_bomb"] = root / "bomb.caffemodel.gz"
    f["gzip_bomb"].write_bytes(member * 100)  # 6.25 GiB when inflated
    f["truncated_gzip"] = root / "truncated.caffemodel.gz"
    f["truncated_gzip"].write_bytes(gzip.compress(raw)[:-12])
    f["h5_fill"] = _h5(root / "fill.caffemodel.h5", lambda h: h.create_dataset("data/conv1/0", (30000, 30000), "f4"))
    f["h5_strings"] = _h5(root / "strings.caffemodel.h5", lambda h: h.create_dataset("data/conv1/0", data=[b"ab"]))
    f["h5_flat"] = _h5(root / "flat.caffemodel.h5", lambda h: h.create_dataset("data", data=np.zeros(3)))
    f["sparse_weights"] = root / "sparse.caffemodel"
    with open(f["sparse_weights"], "wb") as out:
        out.truncate(4 << 30)  # 4 GiB that take no disk

    # arrays
    f["npy"] = root / "x.npy"
    np.save(f["npy"], np.zeros((1, 3, 8, 8), np.float32))
    f["npz"] = root / "x.npz"
    np.savez(f["npz"], data=np.zeros((1, 3, 8, 8), np.float32))
    f["truncated_npz"] = root / "truncated.npz"
    f["truncated_npz"].write_bytes(f["npz"].read_bytes()[:300])
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32))
    header["shape"] = (1, 3, 1000000, 1000000)
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    f["npy_bomb"] = root / "bomb.npy"
    f["npy_bomb"].write_bytes(buffer.getvalue() + b"\0" * 64)
    f["npz_pickle"] = root / "pickle.npz"
    np.savez(f["npz_pickle"], data=np.array([{"a": 1}], dtype=object))

    # cut and flipped copies: at fixed fractions of the file, and at seeded random bits
    rng = np.random.default_rng(15)
    for name, source in (("weights", f["weights"]), ("model", f["model"])):
        data = source.read_bytes()
        for i, keep in enumerate((1, len(data) // 10, len(data) // 2, len(data) - 1)):
            f[f"cut_{name}_{i}"] = root / f"cut{i}_{source.name}"
            f[f"cut_{name}_{i}"].write_bytes(data[:keep])
        for i, position in enumerate(rng.integers(0, len(data), 6)):
            flipped = bytearray(data)
            flipped[position] ^= 1 << int(rng.integers(0, 8))
            f[f"flip_{name}_{i}"] = root / f"flip{i}_{source.name}"
            f[f"flip_{name}_{i}"].write_bytes(flipped)

    # checkpoints
    ckpt = root / "ckpt"
    ckpt.mkdir()
    f["ckpt_truncated"] = ckpt / "truncated.pt"
    f["ckpt_truncated"].write_bytes(f["model"].read_bytes()[: f["model"].stat().st_size // 2])
    f["ckpt_bitflip"] = _flip_in_first_tensor(f["model"], ckpt / "bitflip.pt")
    f["ckpt_converted_bitflip"] = _flip_in_first_tensor(f["converted"], ckpt / "converted_bitflip.pt")
    payload = read_payload(f["model"])
    write_payload({**payload, "num_classes": 20_000_000}, ckpt / "many_classes.pt")
    f["ckpt_many_classes"] = ckpt / "many_classes.pt"
    arch = dict(payload["architecture"])
    arch["encoder"] = [[10_000_000]] + [list(stage) for stage in arch["encoder"][1:]]  # absurd widths
    write_payload({**payload, "architecture": arch}, ckpt / "wide.pt")
    f["ckpt_wide"] = ckpt / "wide.pt"
    f["ckpt_deflated"] = _deflated_copy(f["model"], ckpt / "deflated.pt")
    f["ckpt_legacy"] = ckpt / "legacy.pt"
    torch.save({"format": "segnet-model"}, f["ckpt_legacy"], _use_new_zipfile_serialization=False)
    converted = read_payload(f["converted"])
    for name, text in (("impossible", (root / "negative_shape.prototxt").read_text()),
                       ("huge", (root / "huge_output.prototxt").read_text())):  # fmt: skip
        write_payload({**converted, "prototxt": text}, ckpt / f"converted_{name}.pt")
        f[f"ckpt_converted_{name}"] = ckpt / f"converted_{name}.pt"
    write_payload({**converted, "state_dict": {"conv1.weight": torch.zeros(5, 5)}}, ckpt / "converted_mismatch.pt")
    f["ckpt_converted_mismatch"] = ckpt / "converted_mismatch.pt"
    f["marker"] = root / "code_ran"
    f["ckpt_code"] = ckpt / "code.pt"
    torch.save({"format": "segnet-model", "model": _Payload(f["marker"])}, f["ckpt_code"])
    f["ckpt_sparse"] = ckpt / "sparse.pt"
    with open(f["ckpt_sparse"], "wb") as out:
        out.truncate(4 << 30)
    f["ckpt_foreign"] = ckpt / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, f["ckpt_foreign"])

    # images and data sets
    f["png_bomb"] = _png_header_only(root / "bomb.png", 20000, 20000)
    f["eps_as_png"] = root / "drawing.png"
    f["eps_as_png"].write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n%%EOF\n")
    f["truncated_png"] = root / "truncated.png"
    f["truncated_png"].write_bytes(f["image"].read_bytes()[:120])
    big = make_tiny_camvid(root / "big_camvid", count=1, size=(16, 16))
    for split in ("train", "val", "test"):
        _png_header_only(big / split / "0.png", 12000, 12000)
        _png_header_only(big / f"{split}annot" / "0.png", 12000, 12000)
    f["big_data"] = big
    f["wide_data"] = make_tiny_camvid(root / "wide_camvid", ("test",), count=2, size=(4, 8))
    for name, shape in (("tiny_predictions", (1, 1)), ("transposed_predictions", (8, 4))):
        f[name] = root / name
        f[name].mkdir()
        for i in range(2):
            Image.fromarray(np.zeros(shape, np.uint8)).save(f[name] / f"{i}.png")
    f["pair"] = root / "pair"  # an image, and another named like the first one's output
    f["pair"].mkdir()
    for name in ("0.png", "0_segmentation.png"):
        shutil.copy(f["image"], f["pair"] / name)

    # training runs to resume
    runs = root / "runs"
    for name in ("truncated", "converted", "other_batch"):
        (runs / name).mkdir(parents=True)
    shutil.copy(f["ckpt_truncated"], runs / "truncated" / "last.pt")
    shutil.copy(f["converted"], runs / "converted" / "last.pt")
    config = {"model": None, "init": None, "labels": None, "num_classes": None, "batch_size": 2,
              "image_size": None, "seed": 0, "limit": None}  # fmt: skip
    write_payload({**payload, "meta": {"iteration": 1, "best": None, "optimizer": {}, "batches": {},
                                       "config": config}}, runs / "other_batch" / "last.pt")  # fmt: skip
    f["runs"] = runs
    return f


# ---------------------------------------------------------------- the cases


MODEL_COMMANDS = {
    "segnet.predict": lambda m, f, out: [m, str(f["image"]), "-o", out],
    "segnet.evaluate": lambda m, f, out: ["--data", str(f["data"]), "--model", m, "--out", out, "--no-progress"],
    "segnet.train": lambda m, f, out: ["--data", str(f["data"]), "--init", m, "--out", out, "--iterations", "1",
                                       "--no-progress"],
    "segnet.bn_stats": lambda m, f, out: [m, "--data", str(f["data"]), "-o", f"{out}/x.pt", "--no-progress"],
    "segnet.export": lambda m, f, out: [m, "--prototxt", f"{out}/x.prototxt", "--caffemodel", f"{out}/x.caffemodel"],
    "segnet.onnx_export": lambda m, f, out: [m, f"{out}/x.onnx"],
}

#: bad checkpoint -> words its error line must hold
BAD_CHECKPOINTS = {
    "ckpt_truncated": "damaged or truncated",
    "ckpt_bitflip": "do not match the checksum",
    "ckpt_converted_bitflip": "do not match the checksum",
    "ckpt_many_classes": "declares 20000000 classes",
    "ckpt_wide": "memory limit",
    "ckpt_deflated": "compressed entries",
    "ckpt_legacy": "old-style torch file",
    "ckpt_converted_impossible": "every size must be positive",
    "ckpt_converted_huge": "memory limit",
    "ckpt_converted_mismatch": "damaged converted net",
    "ckpt_code": "damaged or unreadable",
    "ckpt_sparse": "not a model checkpoint",
    "ckpt_foreign": "neither a segnet model checkpoint nor a converted Caffe net",
}


def _cases(f: dict[str, Path], out: Path) -> list[dict]:
    """Each case: id, command, argv, and the words its error line must hold (None: the command must succeed)."""
    cases = []

    def case(id_: str, command: str, argv: list, expect: str | None) -> None:
        cases.append({"id": id_, "command": command, "argv": [str(a) for a in argv], "expect": expect})

    o = out / "converted.pt"
    for name, words in {
        "empty": "empty net definition", "no_layers": "without layers", "two_producers": "already produced by",
        "stride0": "stride must be at least 1", "group0": "group must be at least 1",
        "huge_output": "memory limit", "negative_shape": "every size must be positive",
        "zero_input": "every size must be positive", "blob_too_big": "2^31-1",
        "corrupt_infogain": "not a binary BlobProto",
    }.items():  # fmt: skip
        case(f"converter/prototxt/{name}", "converter", [f[name], "-q", "-o", o], words)
    case("converter/prototxt/many_layers", "converter", [f["many_layers"], "-q", "-o", o, "--memory-limit", "32M"],
         "memory limit of 32.0 MiB")
    case("converter/prototxt/weights_given_as_net", "converter", [f["weights"], "-q", "-o", o], "not a text prototxt")
    case("converter/prototxt/duplicate_names", "converter", [f["duplicate_names"], f["weights"], "-q", "-o",
                                                              out / "dup.pt"], None)  # fmt: skip
    for name, words in {
        "truncated_weights": "truncated caffemodel", "truncated_gzip": "gzip data",
        "h5_fill": "memory limit", "h5_strings": "should be an array of numbers", "h5_flat": "top-level 'data' group",
        "sparse_weights": "memory limit", "npy": "a NumPy array (.npy), not a caffemodel",
        "converted": "a zip archive (a PyTorch checkpoint or an .npz?), not a caffemodel",
    }.items():  # fmt: skip
        case(f"converter/weights/{name}", "converter", [f["net"], f[name], "-q", "-o", o], words)
    case("converter/weights/gzip_bomb", "converter", [f["net"], f["gzip_bomb"], "-q", "-o", o, "--memory-limit",
                                                       "256M"], "inflating this gzip-compressed weight file")  # fmt: skip
    dump = ["--dump", out / "blobs.npz"]
    for name, spec, words in (("npy_without_name", f["npy"], "must be an .npz archive"),
                              ("npz_with_name", f"data={f['npz']}", "takes one .npy array"),
                              ("truncated_npz", f["truncated_npz"], "damaged or truncated .npz"),
                              ("npy_bomb", f"data={f['npy_bomb']}", "memory limit"),
                              ("npz_pickle", f["npz_pickle"], "holds Python objects")):  # fmt: skip
        case(f"converter/input/{name}", "converter", [f["net"], f["weights"], "-q", "--input", spec, *dump], words)
    case("converter/output/is_the_weights", "converter", [f["net"], f["weights"], "-q", "-o", f["weights"]],
         "is also an input")
    case("converter/output/is_a_folder", "converter", [f["net"], "-q", "-o", out], "is a folder")
    case("converter/output/under_a_file", "converter", [f["net"], "-q", "-o", f["npy"] / "x.pt"],
         "is a file, not a folder")

    for command, argv in MODEL_COMMANDS.items():
        for kind, words in BAD_CHECKPOINTS.items():
            case(f"{command}/{kind}", command, argv(str(f[kind]), f, str(out / "o")), words)
    for i in range(4):  # a cut file is always an error; a flipped bit may fall where it changes nothing
        case(f"converter/cut_weights_{i}", "converter", [f["net"], f[f"cut_weights_{i}"], "-q", "-o", o], "")
        case(f"segnet.predict/cut_model_{i}", "segnet.predict", [f[f"cut_model_{i}"], f["image"], "-o", out / "p"],
             "truncated")  # fmt: skip
    either = out.parent / "either"  # where flipped files that are still correct write their outputs
    for i in range(6):
        case(f"converter/flip_weights_{i}", "converter", [f["net"], f[f"flip_weights_{i}"], "-q", "-o",
                                                          either / f"w{i}.pt"], EITHER)  # fmt: skip
        case(f"segnet.predict/flip_model_{i}", "segnet.predict", [f[f"flip_model_{i}"], f["image"], "-o",
                                                                  either / f"m{i}"], EITHER)  # fmt: skip
    model = str(f["model"])
    for image, words in (("png_bomb", "exceeds limit"), ("eps_as_png", "not a PNG, JPEG, BMP or TIFF image"),
                         ("truncated_png", "cannot read image file")):  # fmt: skip
        case(f"segnet.predict/{image}", "segnet.predict", [model, f[image], "-o", out / "p"], words)
    big = str(f["big_data"])
    case("segnet.evaluate/big_images", "segnet.evaluate", ["--data", big, "--model", model, "--no-progress"],
         "12000x12000 image")
    case("segnet.train/big_images", "segnet.train", ["--data", big, "--out", out / "t", "--iterations", "1",
                                                     "--no-progress"], "12000x12000")  # fmt: skip
    case("segnet.class_weights/big_images", "segnet.class_weights", ["--data", big], "12000x12000 label")
    for name, data, words in (("tiny_predictions", f["data"], "is 1x1 but its label"),
                              ("transposed_predictions", f["wide_data"], "is 8x4 but its label")):  # fmt: skip
        case(f"segnet.evaluate/{name}", "segnet.evaluate", ["--data", data, "--predictions", f[name],
                                                            "--no-progress"], words)  # fmt: skip
    train = ["--data", str(f["data"]), "--iterations", "1", "--no-progress", "--batch-size", "3"]
    case("segnet.train/resume_nothing", "segnet.train", [*train, "--out", out / "fresh", "--resume"],
         "nothing to resume from")
    for name, words in (("truncated", "damaged or truncated"), ("converted", "not the last.pt of a training run"),
                        ("other_batch", "batch_size 2 -> 3")):  # fmt: skip
        case(f"segnet.train/resume_{name}", "segnet.train", [*train, "--out", f["runs"] / name, "--resume"], words)
    case("segnet.predict/output_is_an_input", "segnet.predict", [model, f["pair"] / "0.png",
                                                                  f["pair"] / "0_segmentation.png", "-o", f["pair"]],
         "is also an input")  # fmt: skip
    case("segnet.bn_stats/output_is_the_model", "segnet.bn_stats", [model, "--data", f["data"], "-o", model],
         "is also an input")
    case("segnet.export/output_is_the_model", "segnet.export", [model, "--prototxt", out / "x.prototxt",
                                                                "--caffemodel", model], "is also an input")  # fmt: skip
    case("segnet.onnx_export/output_is_the_model", "segnet.onnx_export", [model, model], "is also an input")
    return cases


EITHER = "<success or any clean error>"


def _run_workers(cases: list[dict], tmp: Path) -> list[dict]:
    groups = [cases[i::WORKERS] for i in range(WORKERS)]
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}
    env.pop(budget.ENV, None)

    def run(index: int) -> list[dict]:
        cases_file, results_file = tmp / f"cases{index}.json", tmp / f"results{index}.json"
        cases_file.write_text(json.dumps(groups[index]))
        done = subprocess.run([sys.executable, str(Path(__file__).resolve().parent / "hostile_runner.py"), str(cases_file),
                               str(results_file), str(CAP)], capture_output=True, text=True, cwd=tmp, env=env,
                              timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(results_file.read_text())

    with ThreadPoolExecutor(WORKERS) as pool:
        return [result for results in pool.map(run, range(WORKERS)) for result in results]


def _clean_failure(result: dict, words: str) -> str | None:
    """What is wrong with a case that must fail: None when it ended in one error line holding ``words``."""
    lines = result["stderr"].strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    if result["traceback"] or "Traceback" in result["stderr"]:
        return f"traceback:\n{result['traceback'] or result['stderr']}"
    if result["status"] != 2 or len(errors) != 1 or lines[-1] != errors[0]:
        return f"status {result['status']}, stderr:\n{result['stderr']}"
    if any(not line.startswith(("note: ", "warning: ")) for line in lines[:-1]):
        return f"other lines before the error:\n{result['stderr']}"
    if words not in errors[0]:
        return f"expected {words!r} in: {errors[0]}"
    return None


LINUX_ONLY = pytest.mark.skipif(sys.platform != "linux", reason="the address-space cap (RLIMIT_AS) is Linux's")


@LINUX_ONLY
def test_corruption_suite(files, tmp_path):
    out = tmp_path / "out"
    cases = _cases(files, out)
    results = {r["id"]: r for r in _run_workers(cases, tmp_path)}
    failures = []
    for case in cases:
        result = results[case["id"]]
        succeeded = result["status"] == 0 and not result["traceback"]
        if case["expect"] is None or (case["expect"] == EITHER and succeeded):
            problem = None if succeeded else f"failed:\n{result['stderr']}"
        else:
            problem = _clean_failure(result, "" if case["expect"] == EITHER else case["expect"])
        if problem:
            failures.append(f"{case['id']}: {problem}")
    assert not failures, "\n\n".join(failures)
    assert not files["marker"].exists(), "unpickling a checkpoint ran code"
    # A flipped checkpoint that was used holds exactly what the original holds (the flip hit no content).
    original = checksum(read_payload(files["model"]))
    for i in range(6):
        if results[f"segnet.predict/flip_model_{i}"]["status"] == 0:
            assert checksum(read_payload(files[f"flip_model_{i}"])) == original
    # Nothing of a failed command is left behind (the one success wrote dup.pt).
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []
    assert left == ["dup.pt"], left
    limits = {r["limit"] for r in results.values()}
    assert max(limits) < CAP, "the default memory limit does not follow RLIMIT_AS"
    peaks = sorted((r["peak_rss"] or 0, r["id"]) for r in results.values())
    print(f"\n{len(cases)} cases; peak memory above the loaded process, largest: "
          + ", ".join(f"{cid} {peak / 2**20:.0f} MiB" for peak, cid in peaks[-3:]))  # fmt: skip
    assert peaks[-1][0] < 1 << 30, peaks[-3:]


def test_duplicate_layer_names_load_weights_into_the_first(files, tmp_path):
    """As Caffe's CopyTrainedLayersFrom: the first layer of a name gets the weights, the second keeps its fillers."""
    with pytest.warns(DuplicateLayerNameWarning, match="2 layers of the prototxt are named 'conv1'"):
        net = converter.convert(files["duplicate_names"], files["weights"], seed=0)
    first, second = [module for step, module in net.named_layers() if step.name == "conv1"]
    assert torch.equal(first.weight, torch.ones(2, 3, 1, 1))
    filled = converter.convert(files["duplicate_names"], seed=0)
    assert torch.equal(second.weight, [m for s, m in filled.named_layers() if s.name == "conv1"][1].weight)
    assert net.layer("conv1") is first


def test_in_place_tops_are_one_producer_and_other_reuse_is_not(tmp_path):
    ok = NET + 'layer { name: "drop" type: "Dropout" bottom: "conv1" top: "conv1" }\n'
    converter.CaffeNet(converter.parse_net_text(ok))  # in place, as SegNet writes conv -> BN -> ReLU
    swapped = NET + ('layer { name: "c2" type: "Convolution" bottom: "data" top: "c2" ' + CONV + ' }\n'
                     'layer { name: "cat" type: "Concat" bottom: "c2" bottom: "conv1" top: "conv1" }\n')  # fmt: skip
    with pytest.raises(CaffeFormatError, match=r"layer 'cat': top 'conv1' is already produced by layer 'conv1'"):
        converter.CaffeNet(converter.parse_net_text(swapped))  # top 0 is not bottom 0: not in place
    with pytest.raises(CaffeFormatError, match="already produced by a net input"):
        converter.CaffeNet(converter.parse_net_text(NET + f'layer {{ name: "c3" type: "Convolution" bottom: "conv1" '
                                                          f'top: "data" {CONV} }}\n'))  # fmt: skip


@pytest.mark.parametrize(("edit", "words"), [
    ("kernel_size: 0", "kernel size must be at least 1"),
    ("kernel_size: 1 stride_h: 0 stride_w: 1", "stride must be at least 1"),
    ("kernel_size: 1 dilation: 0", "dilation must be at least 1"),
    ("kernel_size: 1 group: 4", "group 4 must divide"),
    ("kernel_size: 9", "every size must be positive"),
])  # fmt: skip
def test_impossible_convolutions_are_one_line_errors(edit, words):
    with pytest.raises(CaffeFormatError, match=words) as caught:
        converter.CaffeNet(converter.parse_net_text(NET.replace("kernel_size: 1", edit)))
    assert "\n" not in str(caught.value) and "conv1" in str(caught.value)


def test_pooling_stride_zero_is_refused():
    text = NET + 'layer { name: "p" type: "Pooling" bottom: "conv1" top: "p" pooling_param { kernel_size: 2 stride: 0 } }'
    with pytest.raises(CaffeFormatError, match="layer 'p': stride must be at least 1"):
        converter.CaffeNet(converter.parse_net_text(text))


def test_blob_and_parameter_sizes_are_checked_before_allocation(monkeypatch):
    budget.set_limit("1M")
    with pytest.raises(budget.MemoryLimitError, match=r"layer 'conv1': the net's parameters would need at least"):
        converter.CaffeNet(converter.parse_net_text(NET.replace("num_output: 2", "num_output: 2000000000")))
    with pytest.raises(budget.MemoryLimitError, match="the net's blobs"):
        converter.CaffeNet(converter.parse_net_text(NET.replace("dim: 8 dim: 8", "dim: 400 dim: 400")))
    budget.set_limit(None)
    converter.CaffeNet(converter.parse_net_text(NET.replace("dim: 8 dim: 8", "dim: 400 dim: 400")))


def test_memory_limit_from_option_environment_and_default(monkeypatch):
    assert budget.parse_bytes("1.5G") == 3 << 29 and budget.parse_bytes("512m") == 512 << 20
    assert budget.parse_bytes("4096") == 4096
    with pytest.raises(ValueError):
        budget.parse_bytes("lots")
    monkeypatch.setenv(budget.ENV, "64M")
    budget.set_limit(None)
    assert budget.limit() == 64 << 20
    monkeypatch.delenv(budget.ENV)
    budget.set_limit(None)
    assert 0 < budget.limit() <= budget.available_memory()
    from converter.cli import build_parser

    build_parser().parse_args(["net.prototxt", "--memory-limit", "2G"])
    assert budget.limit() == 2 << 30


@LINUX_ONLY
def test_default_limit_follows_the_address_space_cap(tmp_path):
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
            "from converter import budget; print(budget.limit())")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != budget.ENV}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert 0 < int(done.stdout) < 1 << 30  # half of what the cap leaves


def test_multi_member_gzip_reads_and_bombs_stop_early(files, tmp_path):
    raw = files["weights"].read_bytes()
    split = tmp_path / "two_members.caffemodel.gz"
    split.write_bytes(gzip.compress(raw[:10]) + gzip.compress(raw[10:]))
    assert converter.read_weights(split)["conv1"].blobs[0].data.tolist() == [1.0] * 6
    budget.set_limit("128M")
    with pytest.raises(budget.MemoryLimitError, match=r"at least 1\d\d\.\d MiB, over the memory limit of 128.0 MiB"):
        converter.read_weights(files["gzip_bomb"])


def test_hdf5_datasets_are_checked_before_reading(files):
    budget.set_limit("1G")
    with pytest.raises(budget.MemoryLimitError, match=r"data/conv1/0' \[30000, 30000\].*3\.4 GiB"):
        converter.read_weights(files["h5_fill"])


def test_checkpoints_carry_a_checksum_that_is_verified(files, tmp_path):
    from segnet.models.checkpoint import CheckpointError, load_model, read_checkpoint

    assert read_payload(files["model"])["checksum"].startswith("sha256:")
    assert read_payload(files["converted"])["checksum"].startswith("sha256:")
    for flipped, load in ((files["ckpt_bitflip"], load_model), (files["ckpt_converted_bitflip"], converter.load)):
        with pytest.raises(UserError, match="do not match the checksum"):
            load(flipped)
    # a checkpoint written before checksums (plain torch.save of the same dict) still loads
    payload = read_checkpoint(files["model"])
    del payload["checksum"]
    torch.save(payload, tmp_path / "old.pt")
    load_model(tmp_path / "old.pt")
    torch.save({**read_checkpoint(files["model"]), "num_classes": 12}, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="checksum"):  # every value counts, not only tensors
        load_model(tmp_path / "edited.pt")


def test_images_open_only_in_four_formats_and_within_the_limit(files, tmp_path):
    from segnet.data.imageio import DataError, read_image_bgr

    with pytest.raises(DataError, match="not a PNG, JPEG, BMP or TIFF image"):
        read_image_bgr(files["eps_as_png"])
    for fmt in ("PNG", "JPEG", "BMP", "TIFF"):
        path = tmp_path / f"x.{fmt.lower()}"
        Image.fromarray(np.full((4, 6, 3), 7, np.uint8)).save(path, format=fmt)
        assert read_image_bgr(path).shape == (4, 6, 3)
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "x.gif")
    with pytest.raises(DataError, match="not a PNG"):
        read_image_bgr(tmp_path / "x.gif")
    big = _png_header_only(tmp_path / "big.png", 3000, 3000)
    budget.set_limit("64M")
    with pytest.raises(budget.MemoryLimitError, match="a 3000x3000 image"):
        read_image_bgr(big)


def test_resize_touches_only_the_rows_it_needs():
    from segnet.data.resize import resize_bilinear

    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    # the formula of the full-image pass, for comparison
    from segnet.data.resize import linear_taps

    x0, x1, a0, a1 = linear_taps(53, 20, clamp_weight=True)
    y0, y1, b0, b1 = linear_taps(37, 11, clamp_weight=False)
    src = image.astype(np.int64)
    rows = src[:, x0] * a0[None, :, None] + src[:, x1] * a1[None, :, None]
    full = (((rows[y0] >> 4) * b0[:, None, None]) >> 16) + (((rows[y1] >> 4) * b1[:, None, None]) >> 16)
    assert np.array_equal(resize_bilinear(image, (11, 20)), np.clip((full + 2) >> 2, 0, 255).astype(np.uint8))


def test_converter_refuses_empty_and_layerless_prototxts_and_writes_nothing(files, tmp_path):
    from converter.cli import main

    for name in ("empty", "no_layers"):
        assert main([str(files[name]), "-q", "-o", str(tmp_path / "x.pt")]) == 2
    assert not list(tmp_path.iterdir())


def test_stale_temporaries_are_removed_on_the_next_write(tmp_path):
    target = tmp_path / "model.pt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".model.pt.{int(dead.stdout)}.abc123.tmp"
    old_style = tmp_path / ".model.pt.k3j_x9q2.tmp"
    live = tmp_path / f".model.pt.{os.getpid()}.zzz.tmp"
    recent_old_style = tmp_path / ".model.pt.fresh000.tmp"
    other = tmp_path / ".other.pt.1.abc.tmp"
    for path in (stale, old_style, live, recent_old_style, other):
        path.write_bytes(b"partial")
    os.utime(old_style, (0, 0))
    stale_folder = tmp_path / f".outputs.{int(dead.stdout)}.q1w2e3.tmp"
    stale_folder.mkdir()
    (stale_folder / "half.png").write_bytes(b"x")
    atomic_write(target, lambda f: f.write(b"whole"))
    assert target.read_bytes() == b"whole"
    assert not stale.exists() and not old_style.exists()
    assert live.exists() and recent_old_style.exists() and other.exists()
    assert remove_stale_temporaries(tmp_path, "outputs") == [stale_folder]


def test_staged_outputs_appear_whole_or_not_at_all(tmp_path):
    folder = tmp_path / "results"
    with pytest.raises(RuntimeError):
        with staged_outputs(folder) as staging:
            (staging / "a.png").write_bytes(b"a")
            raise RuntimeError("failed on the second image")
    assert not folder.exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "old.txt").write_text("old")
    with staged_outputs(tmp_path / "kept") as staging:
        (staging / "labels").mkdir()
        (staging / "labels" / "a.png").write_bytes(b"a")
        (staging / "report.json").write_text("{}")
        assert not (tmp_path / "kept" / "report.json").exists()
    assert sorted(str(p.relative_to(tmp_path / "kept")) for p in (tmp_path / "kept").rglob("*")) == [
        "labels", "labels/a.png", "old.txt", "report.json"]  # fmt: skip


class _FailsOnSecond(torch.nn.Module):
    num_classes = 11

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("model broke")
        return torch.zeros(x.shape[0], 11, *x.shape[2:])


def test_predict_and_evaluate_leave_nothing_after_a_failure_on_image_k(files, tmp_path, monkeypatch, capsys):
    from segnet import evaluate, predict

    model = str(files["model"])
    images = [str(files["data"] / "test" / f"{i}.png") for i in range(2)]
    assert predict.main([model, images[0], str(files["truncated_png"]), "-o", str(tmp_path / "pred")]) == 2
    monkeypatch.setattr("segnet.models.checkpoint.load_model", lambda path: _FailsOnSecond())
    assert evaluate.main(["--data", str(files["data"]), "--model", "m.pt", "--out", str(tmp_path / "eval"),
                          "--no-progress"]) == 2  # fmt: skip
    assert "model broke" in capsys.readouterr().err
    # nothing but the engine's timing cache, which the test fixture keeps in tmp_path / "cache"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == []
    assert predict.main([model, *images, "-o", str(tmp_path / "pred")]) == 0
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["0_segmentation.png", "1_segmentation.png"]
    same_name = [images[0], str(tmp_path / "0.png")]
    shutil.copy(images[0], same_name[1])
    assert predict.main([model, *same_name, "-o", str(tmp_path / "pred2")]) == 2
    assert "would both be written as 0_segmentation.png" in capsys.readouterr().err


def _train(files, out: Path, iterations: int, resume: str | None = None):
    from segnet.training.config import TrainConfig
    from segnet.training.loop import train

    cfg = TrainConfig(data=str(files["data"]), out=str(out), iterations=iterations, batch_size=2, val_every=2,
                      log_every=1, progress=False, class_weights="median", image_size=(16, 16), resume=resume)  # fmt: skip
    return train(cfg)


def test_resume_needs_its_last_checkpoint_and_the_same_settings(files, tmp_path, capsys):
    from segnet.training.config import TrainConfig
    from segnet.training.loop import train

    with pytest.raises(UserError, match="nothing to resume from"):
        _train(files, tmp_path / "run", 2, resume="last")
    _train(files, tmp_path / "auto", 2, resume="auto")  # nothing there: starts afresh
    assert "starting at iteration 0" in capsys.readouterr().out
    cfg = TrainConfig(data=str(files["data"]), out=str(tmp_path / "auto"), iterations=4, batch_size=4, val_every=2,
                      progress=False, class_weights="median", image_size=(16, 16), resume="last")  # fmt: skip
    with pytest.raises(UserError, match="batch_size 2 -> 4"):
        train(cfg)
    # a flipped bit in the optimizer state of last.pt is refused, not resumed from
    last = tmp_path / "auto" / "last.pt"
    _flip_in_first_tensor(last, last, bit=6)
    with pytest.raises(UserError, match="checksum"):
        _train(files, tmp_path / "auto", 4, resume="last")


def test_resumed_log_is_cut_at_the_resumed_iteration(files, tmp_path):
    run = tmp_path / "run"
    _train(files, run, 4)
    shutil.copy(run / "last.pt", tmp_path / "at4.pt")
    _train(files, run, 6, resume="last")  # goes on to 6, then is "killed" back to the checkpoint at 4
    shutil.copy(tmp_path / "at4.pt", run / "last.pt")
    with open(run / "log.jsonl", "a") as log:
        log.write('{"event": "train", "iter')  # a line cut short by the kill
    _train(files, run, 6, resume="last")
    events = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in events if e["event"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [e["start_iteration"] for e in events if e["event"] == "start"] == [0, 4]
    assert [e["event"] for e in events].count("end") == 1 and events[-1]["event"] == "end"
    _train(files, run, 2)  # a new run in the same folder starts a new log
    assert [json.loads(line)["event"] for line in (run / "log.jsonl").read_text().splitlines()][0] == "start"
    assert sum(json.loads(line)["event"] == "start" for line in (run / "log.jsonl").read_text().splitlines()) == 1


# ---------------------------------------------------------------- what fuzzing found


@LINUX_ONLY
def test_fuzzing_findings_end_in_one_error_line(tmp_path):
    """Each input that once broke a reader (tests/fuzz/findings.py) ends in exit status 2 and one ``error:`` line
    naming the problem, without a traceback or an output, under the 3 GiB cap."""
    from fuzz.findings import build_cases

    cases = build_cases(tmp_path / "findings")
    results = {r["id"]: r for r in _run_workers(cases, tmp_path)}
    failures = [f"{case['id']}: {problem}" for case in cases
                if (problem := _clean_failure(results[case["id"]], case["expect"]))]  # fmt: skip
    assert not failures, "\n\n".join(failures)
    assert not (tmp_path / "findings" / "out").exists()
    peak, case = max((r["peak_rss"] or 0, r["id"]) for r in results.values())
    assert peak < 1 << 30, (case, peak)


def test_unexpected_exceptions_are_one_line_bugs_with_status_3(monkeypatch, capsys):
    """The last line of defence: an exception no reader turned into a UserError is a bug, said in one line."""
    from converter import cli
    from converter.errors import BUG_STATUS, DEBUG_ENV, command_name, run_command, set_debug
    from segnet import predict

    assert command_name(cli.main) == "python -m converter"
    assert command_name(predict.main) == "python -m segnet.predict"

    def broken() -> None:
        raise KeyError("no such thing")

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert run_command(broken) == BUG_STATUS == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "failed with an unexpected KeyError: 'no such thing'" in err
    assert "a bug in this project: please report it" in err and "--debug" in err
    monkeypatch.setenv(DEBUG_ENV, "1")
    assert run_command(broken) == 3
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    monkeypatch.delenv(DEBUG_ENV)
    set_debug(True)
    try:
        assert run_command(broken) == 3
        assert "Traceback" in capsys.readouterr().err
    finally:
        set_debug(False)


@pytest.mark.parametrize("command", ["converter", "segnet.predict", "segnet.train"])
def test_debug_option_shows_tracebacks(command, files, tmp_path, capsys):
    """``--debug`` on every command: an error keeps its one line and shows its traceback before it."""
    import importlib

    from converter.errors import set_debug

    main = importlib.import_module("converter.cli" if command == "converter" else command).main
    argv = {"converter": [str(files["empty"]), "-q", "--debug"],
            "segnet.predict": [str(files["ckpt_truncated"]), str(files["image"]), "-o", str(tmp_path), "--debug"],
            "segnet.train": ["--data", str(tmp_path / "none"), "--iterations", "1", "--debug"]}[command]  # fmt: skip
    try:
        assert main(argv) == 2
    finally:
        set_debug(False)
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("error: ")
