"""Rows trained as one grouped network get the outputs, losses and updates they would get alone."""

from __future__ import annotations

import pytest
import torch

from segnet.models.registry import MODEL_NAMES, build_model
from segnet.training.grouped import group, ungroup
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
