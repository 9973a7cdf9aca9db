"""Label spaces and the data-set layouts they are read with."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from converter.prototxt import read_net
from segnet.data.datasets import SegmentationDataset
from segnet.data.imageio import DataError, read_label
from segnet.data.labels import LabelSpace, LabelSpaceError, get_label_space, label_space_for, registered
from segnet.evaluation.metrics import SegmentationMetrics
from segnet.data.splits import list_samples


def test_registered_spaces():
    spaces = registered()
    assert {"camvid", "sun-rgbd"} <= set(spaces)
    camvid, sun = spaces["camvid"], spaces["sun-rgbd"]
    assert (camvid.num_outputs, camvid.num_classes, camvid.void) == (11, 11, 11)
    assert (sun.num_outputs, sun.num_classes, sun.void) == (38, 37, 0)
    assert sun.class_names[0] == "wall" and sun.class_names[-1] == "bag"
    assert camvid.rgb_palette()[11].tolist() == [0, 0, 0]


@pytest.mark.parametrize("name, prototxt", [("camvid", "Models/segnet_basic_train.prototxt"),
                                            ("sun-rgbd", "Example_Models/train_segnet_sun.prototxt")])  # fmt: skip
def test_released_weights_and_void_are_the_training_prototxts(prototxt_dir, name, prototxt):
    loss = next(layer for layer in read_net(prototxt_dir / prototxt).layer if layer.type == "SoftmaxWithLoss")
    space = get_label_space(name)
    assert space.class_weights == pytest.approx(list(loss.loss_param.class_weighting), abs=1e-6)
    assert space.void == loss.loss_param.ignore_label


def test_class_index_puts_void_last():
    sun = get_label_space("sun-rgbd")
    assert sun.class_index(np.array([0, 1, 37, 200])).tolist() == [37, 0, 36, 37]
    camvid = get_label_space("camvid")
    assert camvid.class_index(np.arange(13)).tolist() == list(range(11)) + [11, 11]


def test_json_file_counts_and_unknown_names(tmp_path):
    path = tmp_path / "roads.json"
    path.write_text(json.dumps({"name": "roads", "names": ["other", "road"], "void": 255,
                                "palette": [[0, 0, 0], [128, 64, 128]]}))  # fmt: skip
    roads = get_label_space(str(path))
    assert (roads.name, roads.num_outputs, roads.void) == ("roads", 2, 255)
    assert roads.to_dict()["names"] == ["other", "road"]
    assert LabelSpace.from_dict(roads.to_dict()) == roads
    three = get_label_space("3")
    assert three.names == ("class 0", "class 1", "class 2") and three.void == 255
    with pytest.raises(LabelSpaceError, match="unknown label space 'pascal'"):
        get_label_space("pascal")
    path.write_text("{not json")
    with pytest.raises(LabelSpaceError, match="roads.json: not a JSON label-space file"):
        get_label_space(str(path))
    path.write_text(json.dumps({"names": ["a"], "void": 0, "class_weights": [1, 2]}))
    with pytest.raises(LabelSpaceError, match="2 class weights for 1 outputs"):
        get_label_space(str(path))


def test_label_space_for_a_model():
    assert label_space_for(None, 11)[0].name == "camvid"
    assert label_space_for(None, 38)[0].name == "sun-rgbd"
    generic, note = label_space_for(None, 2)
    assert generic.num_outputs == 2 and "from the model's 2 outputs" in note
    assert label_space_for("camvid", 11) == (get_label_space("camvid"), "")
    with pytest.raises(LabelSpaceError, match="camvid has 11 outputs but the model has 2"):
        label_space_for("camvid", 2)


def test_metrics_with_void_inside_the_outputs():
    """SUN RGB-D: id 0 is void and never scored; a prediction of 0 counts as wrong in G only."""
    sun = get_label_space("sun-rgbd")
    gt = np.array([[0, 1, 1], [2, 2, 37]], dtype=np.uint8)
    pred = np.array([[5, 1, 0], [2, 3, 37]], dtype=np.uint8)
    metrics = SegmentationMetrics(sun, boundary=False)
    metrics.add(gt, pred)
    summary = metrics.summary()
    assert metrics.confusion.shape == (37, 38)
    assert summary["G"] == pytest.approx(3 / 5)  # the void pixel of gt is left out
    # wall: one pixel right, one predicted as void, which leaves the recall's denominator (the protocol's rule)
    assert summary["classes"][0]["name"] == "wall" and summary["classes"][0]["accuracy"] == 1.0


# ---------------------------------------------------------------- layouts


def _folder_split(root: Path, split: str, stems: list[str], values=(0, 1, 255), palette: bool = False) -> None:
    (root / split / "images").mkdir(parents=True)
    (root / split / "labels").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for stem in stems:
        Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(root / split / "images" / f"{stem}.jpg")
        ids = rng.choice(values, (6, 8)).astype(np.uint8)
        label = get_label_space("2").to_image(ids) if palette else Image.fromarray(ids, mode="L")
        label.save(root / split / "labels" / f"{stem}.png")


def test_folder_layout_pairs_by_stem_and_reads_palette_labels(tmp_path):
    _folder_split(tmp_path, "train", ["b", "a"], palette=True)
    samples = list_samples(tmp_path, "train")
    assert [(s.image.name, s.label.name) for s in samples] == [("a.jpg", "a.png"), ("b.jpg", "b.png")]
    assert Image.open(samples[0].label).mode == "P"
    dataset = SegmentationDataset(tmp_path, "train", label_space="2", in_memory=True)
    assert dataset.labels.shape == (2, 6, 8) and set(dataset.labels.unique().tolist()) <= {0, 1, 255}


def test_folder_layout_errors_name_the_file(tmp_path):
    _folder_split(tmp_path, "val", ["a", "b"])
    (tmp_path / "val" / "labels" / "b.png").unlink()
    with pytest.raises(DataError, match=r"image .*val/images/b\.jpg has no label in .*val/labels"):
        list_samples(tmp_path, "val")
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(tmp_path / "val" / "labels" / "b.png")
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(tmp_path / "val" / "labels" / "c.png")
    with pytest.raises(DataError, match=r"label .*c\.png has no image"):
        list_samples(tmp_path, "val")
    (tmp_path / "val" / "labels" / "c.png").unlink()
    Image.fromarray(np.full((6, 8), 7, np.uint8)).save(tmp_path / "val" / "labels" / "b.png")
    with pytest.raises(DataError, match=r"b\.png has value 7, outside label space 2-class \(classes 0\.\.1, void 255\)"):
        SegmentationDataset(tmp_path, "val", label_space="2", in_memory=True)
    (tmp_path / "val" / "images" / "a.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"cannot read image file .*a\.jpg"):
        SegmentationDataset(tmp_path, "val", label_space="2")[0]


def test_list_file_with_another_class_count(tmp_path):
    _folder_split(tmp_path, "x", ["a"], values=(0, 1, 2, 3, 4))
    (tmp_path / "test.txt").write_text("/SegNet/Roads/x/images/a.jpg x/labels/a.png\n")
    dataset = SegmentationDataset(tmp_path, "test", label_space="5")
    image, label = dataset[0]
    assert image.shape == (3, 6, 8) and int(label.max()) <= 4
    with pytest.raises(DataError, match="has value 4, outside label space 3-class"):
        SegmentationDataset(tmp_path, "test", label_space="3")[0]


def test_palette_png_written_and_read_back(tmp_path):
    sun = get_label_space("sun-rgbd")
    label = np.arange(38, dtype=np.uint8).reshape(2, 19)
    sun.to_image(label).save(tmp_path / "p.png")
    back = Image.open(tmp_path / "p.png")
    assert back.mode == "P" and np.array_equal(read_label(tmp_path / "p.png", sun), label)
    assert np.array_equal(np.array(back.convert("RGB")), sun.colorize(label))
