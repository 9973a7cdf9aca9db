"""What a model's output means: class ids from scores, probabilities or a converted net's named blobs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from converter.errors import UserError


class ModelOutputError(UserError):
    """A model output that holds no NxCxHxW scores (or ids) to read class ids from."""


def labels_from_output(output: Any, num_classes: int) -> torch.Tensor:
    """NxHxW int64 class ids from a model's output.

    A tensor is taken as NxCxHxW scores. A dict of named outputs (as a
    converted Caffe net returns its blobs) gives, in order of preference:
    ``argmax`` (channel indices as floats, Nx1xHxW), ``prob``, or the only
    4-D output with ``num_classes`` channels. Scores are reduced with an
    argmax over channels that picks the first (lowest) index on ties.
    """
    if isinstance(output, Mapping):
        if "argmax" in output:
            ids = torch.as_tensor(output["argmax"])
            if ids.dim() == 4 and ids.shape[1] == 1:
                ids = ids[:, 0]
            if ids.dim() != 3:
                raise ModelOutputError(f"output 'argmax' should be Nx1xHxW, got {tuple(ids.shape)}")
            return ids.round().long()
        if "prob" in output:
            scores = output["prob"]
        else:
            found = [
                name
                for name, value in output.items()
                if torch.is_tensor(value) and value.dim() == 4 and value.shape[1] == num_classes
            ]
            if len(found) != 1:
                raise ModelOutputError(
                    f"cannot tell which model output holds the scores: no 'argmax' or 'prob', and "
                    f"{len(found)} 4-D outputs with {num_classes} channels ({', '.join(found) or 'none'})"
                )
            scores = output[found[0]]
    else:
        scores = output
    if not torch.is_tensor(scores) or scores.dim() != 4:
        shape = tuple(scores.shape) if torch.is_tensor(scores) else type(scores).__name__
        raise ModelOutputError(f"model scores should be an NxCxHxW tensor, got {shape}")
    return scores.argmax(dim=1)  # torch returns the first maximal index
