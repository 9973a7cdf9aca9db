"""Data sets: reading and resizing as DenseImageData did, split layouts, label spaces, class balancing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segnet import class_weights
from segnet.training import class_weights as balancing
from segnet.training.class_weights import class_statistics, median_frequency_weights
from segnet.data.datasets import SegmentationDataset, local_contrast_normalize
from segnet.data.imageio import DataError, load_image, load_label, load_pair_u8
from segnet.data.labels import LabelSpace, get_label_space
from segnet.data.resize import resize_bilinear, resize_nearest
from segnet.data.splits import list_samples, read_list_file

CAMVID = get_label_space("camvid")
PALETTE = CAMVID.rgb_palette()


def load_sample_u8(sample, size=None):
    return load_pair_u8(sample.image, sample.label, CAMVID, size)

# ---------------------------------------------------------------- oracle data


def test_image_equals_what_caffe_fed_the_net(camvid_dir: Path, oracle_dir: Path) -> None:
    expected = np.load(oracle_dir / "segnet_input_360x480.inputs.npz")["data"]
    image = load_image(camvid_dir / "test" / "0001TP_008550.png")
    assert image.dtype == np.float32
    assert np.array_equal(image[None], expected)


def test_resized_train_batch_equals_caffe(camvid_dir: Path, oracle_dir: Path) -> None:
    expected = np.load(oracle_dir / "segnet_basic_train.inputs.npz")
    samples = list_samples(camvid_dir, "train")[:2]
    images = np.stack([load_image(s.image, (120, 160)) for s in samples])
    labels = np.stack([load_label(s.label, CAMVID, (120, 160)) for s in samples])
    assert np.array_equal(images, expected["data"])
    assert np.array_equal(labels[:, None].astype(np.float32), expected["label"])


# ---------------------------------------------------------------- resizing


def _pattern(height: int, width: int) -> np.ndarray:
    i, j, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(3), indexing="ij")
    return ((i * 37 + j * 91 + c * 53 + i * j * 7) % 256).astype(np.uint8)


# cv2.resize(_pattern(5, 7), (11, 8), interpolation=cv2.INTER_LINEAR), OpenCV 4.14
CV_UP_5x7_TO_8x11 = [
    [[0, 53, 106], [41, 94, 147], [99, 152, 182], [157, 210, 77], [122, 175, 65], [17, 70, 123], [75, 128, 181], [133, 186, 169], [191, 244, 64], [109, 162, 98], [34, 87, 140]],
    [[16, 69, 122], [59, 112, 165], [119, 161, 201], [178, 150, 98], [145, 127, 88], [42, 95, 148], [102, 155, 137], [131, 185, 117], [120, 173, 85], [91, 144, 132], [68, 121, 175]],
    [[39, 92, 145], [84, 137, 183], [145, 176, 215], [198, 76, 125], [169, 69, 122], [79, 132, 184], [141, 184, 84], [134, 175, 54], [34, 85, 116], [73, 126, 170], [118, 171, 208]],
    [[62, 115, 168], [109, 162, 135], [158, 204, 97], [112, 107, 112], [100, 102, 155], [115, 168, 221], [180, 121, 123], [176, 101, 96], [78, 115, 161], [120, 173, 131], [167, 220, 97]],
    [[85, 139, 192], [134, 151, 124], [179, 159, 52], [84, 116, 121], [83, 136, 160], [151, 204, 177], [168, 109, 133], [159, 85, 116], [116, 153, 133], [124, 177, 98], [137, 190, 67]],
    [[109, 162, 215], [159, 103, 149], [207, 42, 80], [115, 103, 151], [116, 169, 135], [187, 240, 53], [105, 148, 114], [85, 126, 114], [146, 197, 32], [84, 137, 72], [26, 79, 116]],
    [[132, 185, 238], [119, 121, 174], [104, 55, 108], [107, 129, 182], [150, 150, 163], [224, 133, 73], [134, 135, 147], [115, 129, 151], [189, 111, 62], [123, 111, 113], [59, 112, 165]],
    [[148, 201, 254], [86, 139, 192], [22, 75, 128], [97, 150, 203], [173, 133, 186], [249, 46, 99], [162, 122, 175], [144, 127, 180], [220, 40, 93], [156, 93, 146], [94, 147, 200]],
]  # fmt: skip
# cv2.resize(_pattern(9, 13), (5, 4), interpolation=cv2.INTER_LINEAR), OpenCV 4.14
CV_DOWN_9x13_TO_4x5 = [
    [[99, 152, 205], [91, 144, 133], [83, 136, 189], [114, 128, 85], [144, 120, 141]],
    [[195, 69, 96], [138, 179, 97], [37, 90, 111], [160, 104, 157], [96, 124, 132]],
    [[86, 133, 141], [109, 149, 112], [183, 204, 33], [90, 143, 107], [68, 121, 129]],
    [[131, 184, 160], [143, 139, 96], [105, 158, 115], [162, 119, 133], [59, 112, 165]],
]  # fmt: skip


@pytest.mark.parametrize(
    ("src", "dst", "expected"),
    [((5, 7), (8, 11), CV_UP_5x7_TO_8x11), ((9, 13), (4, 5), CV_DOWN_9x13_TO_4x5)],
)
def test_bilinear_is_bit_exact_with_opencv(src, dst, expected) -> None:
    out = resize_bilinear(_pattern(*src), dst)
    assert out.dtype == np.uint8
    assert np.array_equal(out, np.array(expected, dtype=np.uint8))


def test_bilinear_by_hand() -> None:
    # 1x2 -> 1x4: source x = (d + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25; clamped at
    # the ends, 0.25 and 0.75 mix 10 and 20 as 12.5 and 17.5, rounded half up.
    out = resize_bilinear(np.array([[10, 20]], dtype=np.uint8), (1, 4))
    assert out.tolist() == [[10, 13, 18, 20]]
    # an exact 3x downscale takes the middle pixel of each 3x3 block
    image = np.arange(36, dtype=np.uint8).reshape(6, 6)
    assert np.array_equal(resize_bilinear(image, (2, 2)), image[1::3, 1::3])


def test_nearest_takes_floor_of_scaled_index() -> None:
    label = np.arange(24, dtype=np.uint8).reshape(4, 6)
    # 4x6 -> 2x3: rows floor(0*2), floor(1*2) = 0, 2; columns 0, 2, 4
    assert resize_nearest(label, (2, 3)).tolist() == [[0, 2, 4], [12, 14, 16]]
    # 2x2 -> 3x3: source floor(d * 2/3) = 0, 0, 1
    small = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    assert resize_nearest(small, (3, 3)).tolist() == [[1, 1, 2], [1, 1, 2], [3, 3, 4]]


# ---------------------------------------------------------------- files and errors


def _write_split(root: Path, split: str, names: list[str], size=(4, 6)) -> None:
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(root / split / name)
        Image.fromarray(rng.integers(0, 12, size, dtype=np.uint8)).save(root / f"{split}annot" / name)


def test_list_file_paths_are_remapped_onto_root(tmp_path: Path) -> None:
    _write_split(tmp_path, "test", ["a.png", "b.png"])
    (tmp_path / "test.txt").write_text(
        "/SegNet/CamVid/test/b.png /SegNet/CamVid/testannot/b.png\n"
        "test/a.png testannot/a.png\n"
    )
    samples = list_samples(tmp_path, "test")
    assert [(s.image, s.label) for s in samples] == [
        (tmp_path / "test/b.png", tmp_path / "testannot/b.png"),
        (tmp_path / "test/a.png", tmp_path / "testannot/a.png"),
    ]


def test_folder_layout_without_list_file(tmp_path: Path) -> None:
    _write_split(tmp_path, "val", ["b.png", "a.png"])
    samples = list_samples(tmp_path, "val")
    assert [s.name for s in samples] == ["a.png", "b.png"]
    image, label = load_sample_u8(samples[0])
    rgb = np.array(Image.open(tmp_path / "val/a.png"))
    assert np.array_equal(image, rgb[:, :, ::-1].transpose(2, 0, 1))
    assert np.array_equal(label, np.array(Image.open(tmp_path / "valannot/a.png")))


def test_missing_listed_file_is_named(tmp_path: Path) -> None:
    _write_split(tmp_path, "test", ["a.png"])
    (tmp_path / "test.txt").write_text("/SegNet/CamVid/test/zz.png /SegNet/CamVid/testannot/zz.png\n")
    with pytest.raises(DataError, match=r"missing image file .*zz\.png"):
        list_samples(tmp_path, "test")


def test_missing_split_and_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="split 'train' not found"):
        list_samples(tmp_path, "train")
    with pytest.raises(DataError, match="data folder not found"):
        list_samples(tmp_path / "nope", "train")


def test_image_and_label_counts_must_agree(tmp_path: Path) -> None:
    _write_split(tmp_path, "test", ["a.png", "b.png"])
    (tmp_path / "testannot" / "b.png").unlink()
    with pytest.raises(DataError, match="has 2 images but .* has 1 labels"):
        list_samples(tmp_path, "test")


def test_malformed_list_line(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("only_one_field.png\n")
    with pytest.raises(DataError, match=r"l\.txt:1: expected"):
        read_list_file(tmp_path / "l.txt")


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    _write_split(tmp_path, "test", ["a.png"])
    (tmp_path / "test" / "a.png").write_bytes(b"not a png")
    samples = list_samples(tmp_path, "test")
    with pytest.raises(DataError, match=r"cannot read image file .*a\.png"):
        load_sample_u8(samples[0])


def test_label_out_of_range_is_named(tmp_path: Path) -> None:
    _write_split(tmp_path, "test", ["a.png"])
    Image.fromarray(np.full((4, 6), 12, dtype=np.uint8)).save(tmp_path / "testannot/a.png")
    with pytest.raises(DataError, match=r"testannot/a\.png has value 12, outside label space camvid"):
        load_sample_u8(list_samples(tmp_path, "test")[0])


def test_colour_label_is_rejected(tmp_path: Path) -> None:
    _write_split(tmp_path, "test", ["a.png"])
    Image.fromarray(np.zeros((4, 6, 3), dtype=np.uint8)).save(tmp_path / "testannot/a.png")
    with pytest.raises(DataError, match="expected 8-bit single-channel"):
        load_sample_u8(list_samples(tmp_path, "test")[0])


def test_size_mismatch_names_both_files(tmp_path: Path) -> None:
    _write_split(tmp_path, "test", ["a.png"])
    Image.fromarray(np.zeros((5, 6), dtype=np.uint8)).save(tmp_path / "testannot/a.png")
    with pytest.raises(DataError, match=r"image .*a\.png is 4x6 but label .*a\.png is 5x6"):
        load_sample_u8(list_samples(tmp_path, "test")[0])


# ---------------------------------------------------------------- dataset


def test_dataset_items_and_in_memory_agree(tmp_path: Path) -> None:
    _write_split(tmp_path, "train", ["a.png", "b.png", "c.png"], size=(6, 8))
    lazy = SegmentationDataset(tmp_path, "train")
    held = SegmentationDataset(tmp_path, "train", in_memory=True)
    assert len(lazy) == len(held) == 3
    assert held.images is not None and held.images.dtype == torch.uint8
    assert held.images.shape == (3, 3, 6, 8) and held.labels.shape == (3, 6, 8)
    for k in range(3):
        (image, label), (image2, label2) = lazy[k], held[k]
        assert image.dtype == torch.float32 and image.shape == (3, 6, 8)
        assert label.dtype == torch.int64 and label.shape == (6, 8)
        assert torch.equal(image, image2) and torch.equal(label, label2)
    resized = SegmentationDataset(tmp_path, "train", size=(3, 4), limit=2)
    assert len(resized) == 2 and resized[0][0].shape == (3, 3, 4)


def test_in_memory_needs_one_size(tmp_path: Path) -> None:
    _write_split(tmp_path, "train", ["a.png"], size=(4, 6))
    _write_split(tmp_path, "train", ["b.png"], size=(5, 6))
    with pytest.raises(DataError, match="one image size"):
        SegmentationDataset(tmp_path, "train", in_memory=True)


def test_local_contrast_normalization() -> None:
    flat = np.full((3, 20, 30), 77.0, dtype=np.float32)
    assert np.allclose(local_contrast_normalize(flat), 0.0)
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (3, 40, 50)) * np.linspace(0.1, 1, 50)  # contrast rises left to right
    out = local_contrast_normalize(image)
    assert out.dtype == np.float32 and out.shape == image.shape and np.isfinite(out).all()
    assert abs(out.mean()) < 0.05
    # divisive step: local spread no longer depends on the input contrast
    left, right = out[:, 5:-5, 5:15].std(), out[:, 5:-5, -15:-5].std()
    assert 0.5 < left / right < 2.0


# ---------------------------------------------------------------- class balancing


def test_median_frequency_by_hand() -> None:
    # 3 classes, value 3 is void. Image A has classes 0, 1; image B has 0, 2 and a void pixel.
    a = np.array([[0, 0], [0, 1]])
    b = np.array([[0, 3], [2, 2]])
    stats = class_statistics([a, b], LabelSpace("three", ("a", "b", "c"), void=3))
    # pixels: c0 = 4, c1 = 1, c2 = 2; pixels of images containing c: 8, 4, 4 (void counts)
    assert stats.pixels.tolist() == [4, 1, 2]
    assert stats.present_pixels.tolist() == [8, 4, 4]
    # freq = 0.5, 0.25, 0.5; median 0.5; weight = 0.5 / freq
    assert np.allclose(median_frequency_weights(stats), [1.0, 2.0, 1.0])


def test_class_absent_everywhere_gets_weight_zero() -> None:
    stats = class_statistics([np.array([[0, 1], [1, 1]])], LabelSpace("three", ("a", "b", "c"), void=3))
    # freq: c0 = 1/4, c1 = 3/4; median of the two seen = 0.5
    assert np.allclose(median_frequency_weights(stats), [2.0, 2 / 3, 0.0])


def test_class_weights_command_on_camvid(camvid_dir: Path, capsys) -> None:
    assert class_weights.main(["--data", str(camvid_dir)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line[:1].isupper()}
    assert "367 label images" in out
    prototxt, derived = float(rows["SignSymbol"][0]), float(rows["SignSymbol"][1])
    assert prototxt == 9.6446
    assert derived == pytest.approx(3.85, abs=0.01)
    assert float(rows["Pavement"][1]) == 1.0  # the median class
    assert [float(rows[n][0]) for n in ("Sky", "Bicyclist")] == [0.2595, 7.3614]


def test_class_weights_command_error(tmp_path: Path, capsys) -> None:
    assert class_weights.main(["--data", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data folder not found") and err.count("\n") == 1


def test_class_weight_choices() -> None:
    assert balancing.class_weights("prototxt", CAMVID).tolist() == list(CAMVID.class_weights)
    assert balancing.class_weights("natural", CAMVID).tolist() == [1.0] * 11
    with pytest.raises(ValueError, match="unknown balancing"):
        balancing.class_weights("mean", CAMVID)


def test_colorize_uses_palette() -> None:
    label = np.array([[0, 4], [11, 10]])
    rgb = CAMVID.colorize(label)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[0, 1].tolist() == [60, 40, 222]  # Pavement
    assert rgb[1, 0].tolist() == [0, 0, 0]  # void
    assert rgb[1, 1].tolist() == PALETTE[10].tolist()
    with pytest.raises(ValueError):
        CAMVID.colorize(np.array([[12]]))
