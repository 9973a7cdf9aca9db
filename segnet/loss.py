"""The training loss, normalised as caffe-segnet normalises it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

def segnet_loss(
    logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None, *, ignore_index: int
) -> torch.Tensor:
    """Class-weighted cross-entropy as caffe-segnet's SoftmaxWithLoss computes it.

    loss = sum over non-void pixels (label != ``ignore_index``, the label
    space's void) of w[label] * -log p_label, divided by the
    number of non-void pixels (not by the sum of their weights, which is
    what ``F.cross_entropy(weight=..., reduction="mean")`` would do). A batch
    with no labelled pixel gives 0 rather than Caffe's 0/0.
    """
    if class_weights is not None:
        class_weights = class_weights.to(device=logits.device, dtype=torch.float32)
    total = F.cross_entropy(logits.float(), labels, weight=class_weights, ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp(min=1)
