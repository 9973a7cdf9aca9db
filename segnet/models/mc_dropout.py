"""Monte-Carlo dropout (Bayesian SegNet) on readable models and converted Caffe nets alike.

Bayesian SegNet keeps dropout active at test time and averages the softmax
of several forward passes; the spread of those samples is its uncertainty.
Readable models hold ``torch.nn.Dropout`` modules; converted nets hold the
converter's Dropout layers, which sample at test time when the prototxt sets
``sample_weights_test`` (caffe-segnet's behaviour: every test forward pass
is then one random sample). :func:`dropout_sampling` switches both kinds on
or off, and :func:`mc_dropout_predict` draws the samples.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from converter.errors import UserError
from converter.layers.dropout import Dropout as CaffeDropout


def dropout_layers(model: nn.Module) -> list[nn.Module]:
    """The dropout modules of a readable model or a converted net."""
    return [m for m in model.modules() if isinstance(m, (nn.Dropout, CaffeDropout))]


def samples_by_default(model: nn.Module) -> bool:
    """Whether evaluation-mode forward passes draw dropout samples (a converted net with ``sample_weights_test``)."""
    return any(isinstance(m, CaffeDropout) and m.mc_dropout for m in model.modules())


@contextmanager
def dropout_sampling(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Within the block, every dropout layer of ``model`` samples (``enabled``) or is the identity."""
    layers = dropout_layers(model)
    saved = [(m.training, getattr(m, "mc_dropout", None)) for m in layers]
    for m in layers:
        if isinstance(m, CaffeDropout):
            m.mc_dropout = enabled
            m.train(False)
        else:
            m.train(enabled)
    try:
        yield
    finally:
        for m, (training, mc) in zip(layers, saved):
            m.train(training)
            if mc is not None:
                m.mc_dropout = mc


def class_probabilities(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Softmax of the model's scores (or the probabilities a converted net's Softmax gives)."""
    out = model(images)
    return out if getattr(model, "outputs_probabilities", False) else torch.softmax(out, dim=1)


@torch.no_grad()
def mc_dropout_predict(model: nn.Module, images: torch.Tensor, samples: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte-Carlo dropout inference (Bayesian SegNet).

    Runs ``samples`` forward passes with dropout sampling and everything else
    in evaluation mode. Returns the mean class probabilities (N x C x H x W)
    and the uncertainty map (N x H x W): the variance of the class
    probabilities over the samples, averaged over classes, as Bayesian
    SegNet reports it.
    """
    if samples < 1:
        raise UserError("--mc-samples must be at least 1")
    if not dropout_layers(model):
        raise UserError("the model has no dropout layers: Monte-Carlo sampling needs a Bayesian model")
    was_training = model.training
    model.eval()
    try:
        with dropout_sampling(model, True):
            total = total_sq = None
            for _ in range(samples):
                prob = class_probabilities(model, images)
                total = prob if total is None else total + prob
                total_sq = prob.square() if total_sq is None else total_sq + prob.square()
        mean = total / samples
        variance = (total_sq / samples - mean.square()).clamp(min=0)
        return mean, variance.mean(dim=1)
    finally:
        model.train(was_training)
