"""segnet.predict on folders, videos and several processes: the converted graph's labels, each input once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import converter
from converter.cli import main as convert_main
from segnet import predict
from segnet.data.imageio import load_image
from segnet.data.resize import resize_nearest
from segnet.deploy import engine as engines
from segnet.models.caffe_graph import as_segmenter

from conftest import ROOT

EXAMPLE = ROOT / "examples" / "segnet_basic_camvid"


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The shipped example, converted."""
    out = tmp_path_factory.mktemp("model") / "example.pt"
    assert convert_main([str(EXAMPLE / "segnet_basic_camvid.prototxt"),
                           str(EXAMPLE / "segnet_basic_camvid.caffemodel"), "-o", str(out), "-q"]) == 0  # fmt: skip
    return out


@pytest.fixture(scope="module")
def folder(camvid_dir, tmp_path_factory):
    """24 CamVid test images, half of them in a subfolder."""
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    for i, path in enumerate(sorted((camvid_dir / "test").glob("*.png"))[:24]):
        shutil.copy(path, root / ("sub" if i >= 12 else "") / path.name)
    return root


def _graph_labels(model_path, image_path) -> np.ndarray:
    """What the plain converted graph predicts for one image, at the image's size."""
    graph = as_segmenter(converter.load(model_path), probabilities=True).eval()
    size = graph.input_size
    with torch.no_grad():
        ids = graph(torch.from_numpy(load_image(image_path, size))[None]).argmax(1)[0].numpy().astype(np.uint8)
    original = load_image(image_path).shape[1:]
    return resize_nearest(ids, original)


def _outputs(out, suffix):
    return sorted(p.relative_to(out).as_posix() for p in out.rglob(f"*{suffix}"))


def test_a_folder_gives_the_converted_graphs_labels_keeping_subfolders(example, folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict.main([str(example), str(folder), "-o", str(out), "--no-progress"]) == 0
    written = _outputs(out, "_segmentation.png")
    images = sorted(p.relative_to(folder).with_suffix("").as_posix() + "_segmentation.png" for p in folder.rglob("*.png"))
    assert written == images and len(written) == 24 and any(name.startswith("sub/") for name in written)
    equal = total = 0
    for path in folder.rglob("*.png"):
        ours = np.asarray(Image.open(out / (path.relative_to(folder).with_suffix("").as_posix() + "_segmentation.png")))
        theirs = _graph_labels(example, path)
        equal, total = equal + int((ours == theirs).sum()), total + ours.size
    assert equal / total >= 0.9999
    assert "24 images, 0 videos" in capsys.readouterr().out


def test_overlays_come_with_a_legend(example, folder, tmp_path):
    out = tmp_path / "out"
    assert predict.main([str(example), str(folder), "-o", str(out), "--overlay", "--no-progress"]) == 0
    overlays = _outputs(out, "_overlay.png")
    assert len(overlays) == 24
    picture = Image.open(out / overlays[0])
    assert picture.mode == "RGB" and picture.height > 360 and picture.width == 480  # the legend below the photo


def test_a_video_gives_a_segmentation_video_of_as_many_frames(example, camvid_dir, tmp_path, capsys):
    av = pytest.importorskip("av", reason="videos need PyAV (the video extra)")
    video = tmp_path / "drive.mp4"
    with av.open(str(video), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 480, 360, "yuv420p"
        for path in sorted((camvid_dir / "test").glob("*.png"))[:12]:
            frame = av.VideoFrame.from_ndarray(np.asarray(Image.open(path).convert("RGB")), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out = tmp_path / "out"
    assert predict.main([str(example), str(video), "-o", str(out), "--no-progress"]) == 0
    with av.open(str(out / "drive_segmentation.mp4")) as result:
        assert sum(1 for _ in result.decode(video=0)) == 12
    assert "12 frames" in capsys.readouterr().out


def test_two_processes_split_the_inputs_and_write_what_one_writes(example, folder, tmp_path):
    single, split = tmp_path / "single", tmp_path / "split"
    assert predict.main([str(example), str(folder), "-o", str(single), "--no-progress", "--workers", "0"]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "segnet.predict", str(example), str(folder), "-o", str(split), "--no-progress",
                          "--workers", "0"], capture_output=True, text=True, env=env, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    wrote = [line for line in run.stdout.splitlines() if ": wrote " in line]
    assert len(wrote) == 24 and len(set(wrote)) == 24  # every input once, none twice
    assert _outputs(split, ".png") == _outputs(single, ".png")
    for name in _outputs(single, ".png"):
        assert np.array_equal(np.asarray(Image.open(single / name)), np.asarray(Image.open(split / name))), name


def test_bf16_where_the_cpu_lacks_it_is_one_line(example, folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(engines, "cpu_has_bf16", lambda: False)
    code = predict.main([str(example), str(folder), "-o", str(tmp_path / "out"), "--precision", "bf16"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: --precision bf16: this CPU has no native")
    assert not (tmp_path / "out").exists()


def test_bf16_prints_its_agreement_with_float32(example, folder, tmp_path, capsys):
    if not engines.cpu_has_bf16():
        pytest.skip("this CPU has no native bfloat16 (AVX-512 BF16 or AMX)")
    assert predict.main([str(example), str(folder), "-o", str(tmp_path / "out"), "--precision", "bf16",
                         "--no-progress"]) == 0  # fmt: skip
    line = next(x for x in capsys.readouterr().out.splitlines() if "argmax agreement with float32" in x)
    assert float(line.rsplit(" ", 1)[1].rstrip("%")) >= 99.5
