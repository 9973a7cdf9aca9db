"""The training fast path: batches gathered on the device in the host order, validation there, stop and resume."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import segnet.training.loop as training
from support import make_tiny_camvid
from segnet.models.checkpoint import read_checkpoint
from segnet.data.labels import get_label_space
from segnet.models.registry import build_model
from segnet.training.resident import Batches, ResidentBatches, ValidationSet, validation_accuracy


def _split(count: int = 7) -> SimpleNamespace:
    g = torch.Generator().manual_seed(1)
    return SimpleNamespace(images=torch.randint(0, 256, (count, 3, 2, 3), dtype=torch.uint8, generator=g),
                           labels=torch.randint(0, 12, (count, 2, 3), dtype=torch.uint8, generator=g))  # fmt: skip


def _reference_order(count: int, batch: int, seed: int, rank: int, world: int, batches: int) -> list[list[int]]:
    """The order training has always used, written out: randperm(seed + epoch), every world-th, in turn."""
    flat, epoch = [], 0
    while len(flat) < batch * batches:
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed + epoch))[rank::world]
        flat += order.tolist()
        epoch += 1
    return [flat[i * batch : (i + 1) * batch] for i in range(batches)]


@pytest.mark.parametrize(("batch", "seed", "rank", "world", "ahead"), [(3, 0, 0, 1, 4), (5, 7, 1, 2, 3), (12, 3, 0, 1, 1)])
def test_resident_batches_are_the_host_batches(batch, seed, rank, world, ahead):
    split = _split()
    host = Batches(split, batch, seed, rank, world)
    resident = ResidentBatches(split, batch, seed, rank, world, device="cpu", ahead=ahead)
    assert resident.images.dtype == torch.uint8 and resident.labels.dtype == torch.uint8  # held as uint8
    expected = _reference_order(len(split.images), batch, seed, rank, world, 15)
    for picked in expected:
        (hi, hl), (ri, rl) = host.next(), resident.next()
        assert torch.equal(hi, split.images[picked].float()) and torch.equal(hl, split.labels[picked].long())
        assert torch.equal(ri, hi) and torch.equal(rl, hl) and ri.dtype == torch.float32 and rl.dtype == torch.int64
        assert resident.state() == host.state()  # the position after the batches handed out, not the planning's


def test_resident_batches_restore_mid_epoch():
    split = _split()
    first = ResidentBatches(split, 3, 5, ahead=4)
    for _ in range(5):
        first.next()
    state = first.state()
    again = ResidentBatches(split, 3, 5, ahead=2)
    again.restore(state)
    host = Batches(split, 3, 5)
    host.restore(state)
    for _ in range(6):
        a, b, c = first.next(), again.next(), host.next()
        assert torch.equal(a[0], b[0]) and torch.equal(b[0], c[0])
    fresh = ResidentBatches(split, 3, 5)
    fresh.restore(ResidentBatches(split, 3, 5).state())  # a position before any batch: start of epoch 0
    assert torch.equal(fresh.next()[0], Batches(split, 3, 5).next()[0])


def test_validation_on_the_device_equals_the_host_path(tmp_path):
    data = make_tiny_camvid(tmp_path / "camvid", ("val",), 3, size=(16, 16))
    space = get_label_space("camvid")
    torch.manual_seed(0)
    model = build_model("segnet-basic")
    host = validation_accuracy(model, ValidationSet(str(data), "val", None, space), torch.device("cpu"))
    held = ValidationSet(str(data), "val", None, space).to(torch.device("cpu"))
    assert held.device_labels is not None  # scored on the device
    assert validation_accuracy(model, held, torch.device("cpu"), batch_size=2) == host
    smaller = ValidationSet(str(data), "val", (8, 8), space).to(torch.device("cpu"))  # predictions resized first
    assert 0 <= validation_accuracy(model, smaller, torch.device("cpu")) <= 1


def _config(data, out, **kw) -> training.TrainConfig:
    base = dict(data=str(data), out=str(out), iterations=5, batch_size=2, val_every=2, log_every=1, progress=False,
                image_size=(16, 16), device="cpu")  # fmt: skip
    return training.TrainConfig(**{**base, **kw})


def _same_checkpoints(a, b) -> None:
    for name in ("last.pt", "best.pt"):
        x, y = read_checkpoint(a / name), read_checkpoint(b / name)
        assert x["state_dict"].keys() == y["state_dict"].keys()
        assert all(torch.equal(x["state_dict"][k], y["state_dict"][k]) for k in x["state_dict"]), name
    mx, my = read_checkpoint(a / "last.pt")["meta"], read_checkpoint(b / "last.pt")["meta"]
    assert mx["iteration"] == my["iteration"] and mx["best"] == my["best"] and mx["batches"] == my["batches"]
    momenta = [(s["momentum_buffer"], t["momentum_buffer"])
               for s, t in zip(mx["optimizer"]["state"].values(), my["optimizer"]["state"].values())]  # fmt: skip
    assert momenta and all(torch.equal(s, t) for s, t in momenta)


@pytest.fixture(scope="module")
def uncut(tmp_path_factory):
    root = tmp_path_factory.mktemp("uncut")
    data = make_tiny_camvid(root / "camvid", ("train", "val"), 3, size=(16, 16))
    training.train(_config(data, root / "run"))
    return data, root / "run"


def test_a_run_killed_after_a_validation_resumes_to_the_same_result(uncut, tmp_path, monkeypatch):
    data, reference = uncut
    real_save = training.save_model

    def save_then_die(path, model, meta=None, **kw):
        real_save(path, model, meta, **kw)
        if path.name == "last.pt" and meta["iteration"] == 2:
            raise KeyboardInterrupt("killed")  # as a kill just after the checkpoint of iteration 2

    monkeypatch.setattr(training, "save_model", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        training.train(_config(data, tmp_path / "run"))
    monkeypatch.undo()
    summary = training.train(_config(data, tmp_path / "run", resume="auto"))
    assert summary["start_iteration"] == 2 and summary["stopped_at"] is None
    _same_checkpoints(reference, tmp_path / "run")  # bit for bit
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in log if e["event"] == "train"] == [1, 2, 3, 4, 5]


def test_the_time_limit_stops_between_validations_and_resume_continues_there(uncut, tmp_path, capsys):
    data, reference = uncut
    summary = training.train(_config(data, tmp_path / "run", time_limit=0.0, log_every=3))  # due at once
    assert summary["stopped_at"] == 3 and not (tmp_path / "run" / "summary.json").exists()
    assert read_checkpoint(tmp_path / "run" / "last.pt")["meta"]["iteration"] == 3  # not a validation point
    assert "time limit reached: stopped after iteration 3" in capsys.readouterr().out
    summary = training.train(_config(data, tmp_path / "run", resume="auto"))
    assert summary["start_iteration"] == 3 and summary["best"]["iteration"] in (0, 2, 4, 5)
    _same_checkpoints(reference, tmp_path / "run")


def test_a_non_finite_loss_is_caught_at_the_next_check_and_named(tmp_path, monkeypatch):
    data = make_tiny_camvid(tmp_path / "camvid", ("train",), 2, size=(16, 16))
    real_loss, calls = training.segnet_loss, []

    def loss_nan_at_two(*args, **kw):
        calls.append(1)
        loss = real_loss(*args, **kw)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(training, "segnet_loss", loss_nan_at_two)
    with pytest.raises(training.TrainingDiverged, match="loss became nan at iteration 2"):
        training.train(_config(data, tmp_path / "run", val_every=0, log_every=3))
    assert len(calls) == 3  # found when the loss was read, after iteration 3


def test_compile_on_the_cpu_says_it_runs_eagerly(tmp_path, capsys):
    data = make_tiny_camvid(tmp_path / "camvid", ("train",), 2, size=(16, 16))
    summary = training.train(_config(data, tmp_path / "run", iterations=1, val_every=0, compile=True))
    assert summary["train_images"] == 2 and summary["images_per_s"] > 0
    assert "--compile is used on CUDA only; on cpu the model runs eagerly" in capsys.readouterr().out
