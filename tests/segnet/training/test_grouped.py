"""Rows trained as one grouped network get the outputs, losses and updates they would get alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import segnet.training.grouped
import segnet.training.loop
from segnet.models.checkpoint import read_checkpoint
from segnet.models.registry import MODEL_NAMES, build_model
from segnet.training.config import TrainConfig
from segnet.training.grouped import group, train_grouped, ungroup
from segnet.training.loop import train
from support import make_tiny_camvid
from segnet.training.loss import segnet_loss
from segnet.training.optim import caffe_param_groups

SIZE = (24, 32)


def _models(name: str, rows: int = 2) -> list[torch.nn.Module]:
    models = []
    for seed in range(rows):
        torch.manual_seed(seed)  # independent weights, as separate rows start from their own
        models.append(build_model(name))
    return models


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_each_block_of_the_grouped_network_is_its_model(name):
    models = _models(name)
    grouped = group(models)
    x = torch.rand(2, 3, *SIZE, generator=torch.Generator().manual_seed(0)) * 255
    for mode in ("eval",) if name.startswith("bayesian") else ("train", "eval"):  # dropout draws its own masks
        for m in (*models, grouped):
            m.train(mode == "train")
        with torch.no_grad():
            outputs = grouped(x)
            for model, out in zip(models, outputs):
                expected = model(x)
                torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def _sgd(params) -> torch.optim.Optimizer:
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    for g in optimizer.param_groups:
        g["lr"] = 0.01 * g["lr_mult"]
    return optimizer


@pytest.mark.parametrize("name", ["segnet-basic", "FCN-Basic"])
def test_a_few_sgd_steps_give_each_row_its_own_losses_and_weights(name):
    models = _models(name)
    weights = [torch.linspace(0.5, 2.0, 11), None]  # the two balancings: median-like weights, and none
    grouped = group(models)
    alone = [_sgd(caffe_param_groups(m, 5e-4)) for m in models]
    together = _sgd(caffe_param_groups(grouped.net, 5e-4))
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.rand(2, 3, *SIZE, generator=generator) * 255
        labels = torch.randint(0, 12, (2, *SIZE), generator=generator)  # 11 = void
        losses = []
        for model, optimizer, w in zip(models, alone, weights):
            optimizer.zero_grad()
            loss = segnet_loss(model(x), labels, w, ignore_index=11)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        together.zero_grad()
        row_losses = [segnet_loss(out, labels, w, ignore_index=11) for out, w in zip(grouped(x), weights)]
        sum(row_losses).backward()
        together.step()
        assert [loss.item() for loss in row_losses] == pytest.approx(losses, rel=1e-4)
    for model, row in zip(models, ungroup(grouped, models[0])):
        for (key, a), b in zip(model.state_dict().items(), row.state_dict().values()):
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4 * (a.abs().max().item() + 1), msg=key)


def test_models_of_other_architectures_are_refused():
    with pytest.raises(ValueError, match="same architecture"):
        group([build_model("segnet-basic"), build_model("FCN-Basic")])


# ------------------------------------------------------------------ train_grouped: runs of a set against runs alone


def _config(data: Path, out: Path, balancing: str, **extra) -> TrainConfig:
    settings = {"data": str(data), "out": str(out), "model": "segnet-basic", "iterations": 4, "batch_size": 2,
                "image_size": SIZE, "val_every": 2, "class_weights": balancing, "device": "cpu", "resume": "auto",
                "progress": False, "log_every": 1}  # fmt: skip
    return TrainConfig(**{**settings, **extra})


def _losses(folder: Path) -> list[float]:
    lines = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    return [e["loss"] for e in lines if e["event"] == "train"]


def _assert_same_state(grouped_ckpt: Path, alone_ckpt: Path) -> None:
    a, b = read_checkpoint(alone_ckpt), read_checkpoint(grouped_ckpt)
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-3, atol=1e-4 * (value.abs().max().item() + 1),
                                   msg=key)  # fmt: skip
    if "optimizer" in a["meta"]:
        for index, state in a["meta"]["optimizer"]["state"].items():
            m = state["momentum_buffer"]
            torch.testing.assert_close(b["meta"]["optimizer"]["state"][index]["momentum_buffer"], m, rtol=1e-3,
                                       atol=1e-4 * (m.abs().max().item() + 1))  # fmt: skip
        assert b["meta"]["batches"] == a["meta"]["batches"] and b["meta"]["iteration"] == a["meta"]["iteration"]


@pytest.fixture(scope="module")
def camvid(tmp_path_factory) -> Path:
    return make_tiny_camvid(tmp_path_factory.mktemp("data") / "camvid", count=3, size=SIZE)


@pytest.fixture(scope="module")
def alone(camvid, tmp_path_factory) -> Path:
    """The two balancings of SegNet-Basic trained the ordinary way, one after the other."""
    root = tmp_path_factory.mktemp("alone")
    for balancing in ("median", "natural"):
        train(_config(camvid, root / balancing, balancing))
    return root


def test_a_set_gives_each_run_the_losses_selection_and_files_it_gets_alone(camvid, alone, tmp_path):
    results = train_grouped([_config(camvid, tmp_path / b, b) for b in ("median", "natural")])
    assert [r["summary"]["group"] for r in results] == [["median", "natural"]] * 2
    for balancing, result in zip(("median", "natural"), results):
        mine, theirs = tmp_path / balancing, alone / balancing
        assert _losses(mine) == pytest.approx(_losses(theirs), rel=1e-4) and len(_losses(mine)) == 4
        assert result["summary"]["best"]["iteration"] == json.loads((theirs / "summary.json").read_text())["best"][
            "iteration"]  # fmt: skip
        assert result["summary"]["group_images_per_s"] == pytest.approx(2 * result["summary"]["images_per_s"])
        for name in ("last.pt", "best.pt"):
            _assert_same_state(mine / name, theirs / name)
        assert sorted(p.name for p in mine.iterdir()) == sorted(p.name for p in theirs.iterdir())


def test_a_set_cut_short_resumes_as_a_set_or_alone_and_ends_where_the_runs_alone_end(camvid, alone, tmp_path,
                                                                                      monkeypatch):  # fmt: skip
    cfgs = [_config(camvid, tmp_path / b, b, time_limit=1.0) for b in ("median", "natural")]
    checks = iter([False, False, True])
    monkeypatch.setattr(segnet.training.loop, "past", lambda deadline, run: next(checks))
    first = train_grouped(cfgs, keep_best_state=True)
    monkeypatch.undo()
    assert [r["summary"]["stopped_at"] for r in first] == [3, 3]
    for balancing, result in zip(("median", "natural"), first):  # the state at the best validation, if after 0
        assert (tmp_path / balancing / "best_state.pt").is_file() == (result["summary"]["best"]["iteration"] == 2)
    (tmp_path / "natural-alone").mkdir()  # a cut run's last.pt is an ordinary one: it continues alone too
    shutil.copy(tmp_path / "natural" / "last.pt", tmp_path / "natural-alone" / "last.pt")
    assert train(_config(camvid, tmp_path / "natural-alone", "natural"))["start_iteration"] == 3
    _assert_same_state(tmp_path / "natural-alone" / "last.pt", alone / "natural" / "last.pt")

    second = train_grouped(cfgs)
    assert [r["summary"]["start_iteration"] for r in second] == [3, 3]
    for balancing in ("median", "natural"):
        assert _losses(tmp_path / balancing) == pytest.approx(_losses(alone / balancing), rel=1e-4)
        _assert_same_state(tmp_path / balancing / "last.pt", alone / balancing / "last.pt")


def test_runs_that_differ_in_more_than_weights_and_folder_are_refused(camvid, tmp_path):
    with pytest.raises(ValueError, match="lr"):
        train_grouped([_config(camvid, tmp_path / "a", "median"), _config(camvid, tmp_path / "b", "natural", lr=0.01)])


def test_a_run_that_diverges_leaves_the_others_stopped_to_go_on_without_it(camvid, alone, tmp_path, monkeypatch):
    real = segnet.training.grouped.class_weights
    monkeypatch.setattr(segnet.training.grouped, "class_weights",
                        lambda balancing, *args: real(balancing, *args) * float("nan"))  # median's loss: NaN
    first = train_grouped([_config(camvid, tmp_path / b, b) for b in ("median", "natural")])
    assert "loss became nan at iteration 1" in first[0]["diverged"]
    assert first[1]["summary"]["stopped_at"] == 1 and first[1]["summary"]["sibling_diverged"]
    assert train(_config(camvid, tmp_path / "natural", "natural"))["start_iteration"] == 1  # on, alone
    assert _losses(tmp_path / "natural") == pytest.approx(_losses(alone / "natural"), rel=1e-4)
    _assert_same_state(tmp_path / "natural" / "last.pt", alone / "natural" / "last.pt")
