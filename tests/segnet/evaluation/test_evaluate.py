"""The evaluation core and the ``python -m segnet.evaluate`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segnet import evaluate
from segnet.evaluation import core as ev
from segnet.models import outputs
from segnet.data.datasets import SegmentationDataset
from segnet.data.labels import get_label_space
from segnet.evaluation.paper import TABLE1, paper_row

# ---------------------------------------------------------------- model outputs


PALETTE = get_label_space("camvid").rgb_palette()


def test_argmax_takes_first_index_on_ties() -> None:
    scores = torch.zeros(1, 11, 1, 3)
    scores[0, 4, 0, 1] = 1.0
    scores[0, 7, 0, 1] = 1.0  # tie between 4 and 7
    scores[0, 9, 0, 2] = 2.0
    assert outputs.labels_from_output(scores, 11).tolist() == [[[0, 4, 9]]]


def test_dict_outputs_are_read_in_order_of_preference() -> None:
    prob = torch.zeros(2, 11, 2, 2)
    prob[:, 3] = 1
    other = torch.zeros(2, 11, 2, 2)
    other[:, 5] = 1
    argmax = torch.full((2, 1, 2, 2), 8.0)
    assert outputs.labels_from_output({"argmax": argmax, "prob": prob}, 11).unique().tolist() == [8]
    assert outputs.labels_from_output({"prob": prob, "conv_classifier": other}, 11).unique().tolist() == [3]
    assert outputs.labels_from_output({"scores": other, "mask": torch.zeros(2, 1, 2, 2)}, 11).unique().tolist() == [5]
    with pytest.raises(outputs.ModelOutputError, match="cannot tell which model output"):
        outputs.labels_from_output({"a": prob, "b": other}, 11)
    with pytest.raises(outputs.ModelOutputError, match="NxCxHxW"):
        outputs.labels_from_output(torch.zeros(11, 2, 2), 11)


# ---------------------------------------------------------------- a tiny data set

STRIPES = np.repeat(np.arange(11), 3)[None, :].repeat(12, axis=0)  # 12x33, every class


def _label(k: int) -> np.ndarray:
    return np.roll(STRIPES, k, axis=1).astype(np.uint8)


@pytest.fixture
def tiny_camvid(tmp_path: Path) -> Path:
    """3 test images whose blue channel spells out the label (blue = 20 * class)."""
    root = tmp_path / "camvid"
    (root / "test").mkdir(parents=True)
    (root / "testannot").mkdir()
    for k, name in enumerate(["a.png", "b.png", "c.png"]):
        label = _label(4 * k)
        rgb = np.zeros((*label.shape, 3), dtype=np.uint8)
        rgb[..., 2] = label * 20
        rgb[..., 0] = 7 * k
        Image.fromarray(rgb).save(root / "test" / name)
        Image.fromarray(label).save(root / "testannot" / name)
    return root


class BlueDecoder(torch.nn.Module):
    """Scores peak at class = blue / 20, so the prediction equals the label."""

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        ids = images[:, 0:1] / 20  # BGR input: channel 0 is blue
        classes = torch.arange(11, dtype=images.dtype).view(1, 11, 1, 1)
        return {"prob": -((ids - classes) ** 2)}


def test_evaluate_model_with_a_hand_made_module(tiny_camvid: Path, tmp_path: Path) -> None:
    dataset = SegmentationDataset(tiny_camvid, "test")
    summary = ev.evaluate_model(BlueDecoder(), dataset, batch_size=2, out=tmp_path / "out")
    assert summary["images"] == 3
    assert (summary["G"], summary["C"], summary["mIoU"], summary["BF"]) == (1.0, 1.0, 1.0, 1.0)
    saved = Image.open(tmp_path / "out" / "labels" / "b.png")
    assert saved.mode == "P" and np.array_equal(np.array(saved), _label(4))  # pixel values: the label ids
    assert np.array_equal(np.array(saved.convert("RGB")), PALETTE[_label(4)])  # shown in CamVid's colours


def test_model_at_another_size_is_resized_before_scoring(tiny_camvid: Path) -> None:
    def coarse(images: torch.Tensor) -> torch.Tensor:
        scores = torch.zeros(images.shape[0], 11, 6, 11)  # half height, a third of the width
        scores[:, 2] = 1
        return scores

    summary = ev.evaluate_model(coarse, SegmentationDataset(tiny_camvid, "test"))
    assert summary["G"] == pytest.approx(1 / 11)  # every pixel predicted as class 2


def test_failing_or_inconsistent_models_give_one_line_errors(tiny_camvid: Path) -> None:
    dataset = SegmentationDataset(tiny_camvid, "test")

    def broken(images):
        raise RuntimeError("shapes do not fit\nsecond line")

    with pytest.raises(ev.EvaluationError, match=r"^model failed on the batch starting at a\.png: RuntimeError: shapes do not fit$"):
        ev.evaluate_model(broken, dataset)
    with pytest.raises(ev.EvaluationError, match="returned 1 predictions for a batch of 2"):
        ev.evaluate_model(lambda x: torch.zeros(1, 11, 12, 33), dataset, batch_size=2)
    with pytest.raises(ev.EvaluationError, match=r"class ids 0\.\.13; label space camvid has ids 0\.\.10"):
        ev.evaluate_model(lambda x: {"argmax": torch.arange(14.0).view(1, 1, 1, 14)}, dataset)
    with pytest.raises(ev.EvaluationError, match=r"class ids 0\.\.11; label space camvid has ids 0\.\.10"):
        ev.evaluate_model(lambda x: {"argmax": torch.arange(12.0).view(1, 1, 1, 12)}, dataset)


# ---------------------------------------------------------------- the command


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = evaluate.main(["--no-progress", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_command_with_predictions(tiny_camvid: Path, tmp_path: Path, capsys) -> None:
    preds = tmp_path / "preds"
    preds.mkdir()
    for k, name in enumerate(["a.png", "b.png", "c.png"]):
        label = _label(4 * k)
        if name == "c.png":
            label = label.copy()
            label[label == 0] = 10  # class 0's stripe predicted as Bicyclist
        Image.fromarray(label).save(preds / name)
    out_dir = tmp_path / "out"
    code, out, err = _run(
        capsys, "--data", str(tiny_camvid), "--predictions", str(preds), "--out", str(out_dir),
        "--compare-paper", "SegNet-Basic",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((out_dir / "report.json").read_text())
    # 3 x 12 x 33 pixels, 36 of them wrong (class 0's stripe in c.png)
    assert report["G"] == pytest.approx(1 - 36 / (3 * 12 * 33))
    assert report["classes"][0]["accuracy"] == pytest.approx(2 / 3)
    assert report["paper"] == {"row": "SegNet-Basic", "source": "arXiv 1511.00561v3, Table 1",
                               "G": 82.7, "C": 62.0, "mIoU": 47.7, "BF": 35.78}  # fmt: skip
    assert report["confusion_matrix"][0][10] == 36
    assert sorted(report["per_image_bf"]) == ["a.png", "b.png", "c.png"]
    assert (out_dir / "labels" / "a.png").is_file() and report["label_space"] == "camvid"
    lines = out.splitlines()
    g_line = next(line for line in lines if line.startswith("G "))
    assert g_line.split() == ["G", f"{100 * report['G']:.2f}", "82.7"]
    assert any(line.startswith("Sky") for line in lines)


def test_command_with_model(tiny_camvid: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("segnet.models.checkpoint.load_model", lambda path: BlueDecoder())
    code, out, err = _run(capsys, "--data", str(tiny_camvid), "--model", "net.pt", "--batch-size", "3", "--limit", "2")
    assert code == 0, err
    assert "2 images, net.pt" in out
    assert next(line for line in out.splitlines() if line.startswith("BF")).split()[1] == "100.00"


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda root, tmp: ["--data", str(tmp / "none"), "--predictions", str(tmp)], "data folder not found"),
        (lambda root, tmp: ["--data", str(root), "--predictions", str(tmp / "none")], "predictions folder not found"),
        (lambda root, tmp: ["--data", str(root), "--predictions", str(root / "testannot"), "--compare-paper", "SegNet"],
         "unknown paper row 'SegNet'"),
        (lambda root, tmp: ["--data", str(root), "--split", "train", "--predictions", str(tmp)], "split 'train' not found"),
        (lambda root, tmp: ["--data", str(root), "--predictions", str(tmp), "--limit", "0"], "--limit must be"),
        (lambda root, tmp: ["--data", str(root), "--predictions", str(root / "testannot"),
                            "--out", str(root / "test" / "a.png")], "a.png: is a file"),
    ],
)  # fmt: skip
def test_command_bad_input_is_one_line(tiny_camvid: Path, tmp_path: Path, capsys, make_args, message) -> None:
    code, out, err = _run(capsys, *make_args(tiny_camvid, tmp_path))
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_command_missing_or_bad_prediction_png(tiny_camvid: Path, tmp_path: Path, capsys) -> None:
    preds = tmp_path / "preds"
    preds.mkdir()
    Image.fromarray(_label(0)).save(preds / "a.png")
    code, _, err = _run(capsys, "--data", str(tiny_camvid), "--predictions", str(preds))
    assert code == 2 and f"missing prediction {preds / 'b.png'} (2 of 3 images have none)" in err
    Image.fromarray(np.full((12, 33), 200, dtype=np.uint8)).save(preds / "b.png")
    Image.fromarray(_label(0)).save(preds / "c.png")
    code, _, err = _run(capsys, "--data", str(tiny_camvid), "--predictions", str(preds))
    assert code == 2 and "prediction file" in err and "b.png has value 200" in err
    assert err.count("\n") == 1


def test_command_model_errors(tiny_camvid: Path, tmp_path: Path, capsys) -> None:
    code, _, err = _run(capsys, "--data", str(tiny_camvid), "--model", str(tmp_path / "net.pt"))
    assert code == 2 and "net.pt: no such file" in err and err.count("\n") == 1
    not_a_model = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, not_a_model)
    code, _, err = _run(capsys, "--data", str(tiny_camvid), "--model", str(not_a_model))
    assert code == 2 and "neither a segnet model checkpoint nor a converted Caffe net" in err
    assert err.count("\n") == 1


def test_command_on_camvid_ground_truth(camvid_dir: Path, capsys) -> None:
    code, out, err = _run(
        capsys, "--data", str(camvid_dir), "--predictions", str(camvid_dir / "testannot"), "--limit", "3",
        "--compare-paper", "segnet-basic/natural",
    )  # fmt: skip
    assert code == 0, err
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line[:2] in ("G ", "C ", "mI", "BF")}
    assert rows["G"] == ["100.00", "84"] and rows["BF"] == ["100.00", "36.67"]


# ---------------------------------------------------------------- the paper's table


def test_paper_table() -> None:
    assert len(TABLE1) == 16
    row = paper_row("FCN-Basic-NoDimReduction")
    assert (row.G, row.C, row.mIoU, row.BF, row.balancing) == (84.1, 63.4, 50.1, 37.37, "median")
    natural = paper_row("bilinear-interpolation/NATURAL")
    assert natural.values() == {"G": 82.7, "C": 52.5, "mIoU": 43.8, "BF": 23.08}
    with pytest.raises(KeyError, match="known rows: Bilinear-Interpolation, "):
        paper_row("SegNet-Full")
