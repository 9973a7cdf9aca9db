"""The training loss: caffe-segnet's SoftmaxWithLoss, from ``converter.functional``."""

from __future__ import annotations

import torch

from converter.functional import softmax_with_loss


def segnet_loss(
    logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None, *, ignore_index: int
) -> torch.Tensor:
    """Class-weighted cross-entropy as caffe-segnet's SoftmaxWithLoss computes it, with its gradient.

    loss = sum over non-void pixels (label != ``ignore_index``, the label
    space's void) of w[label] * -log p_label, divided by the number of
    non-void pixels (not by the sum of their weights, which is what
    ``F.cross_entropy(weight=..., reduction="mean")`` would do). A batch with
    no labelled pixel gives 0 rather than Caffe's 0/0.
    """
    if class_weights is not None:
        class_weights = class_weights.to(device=logits.device, dtype=torch.float32)
    # unchecked: no wait for the device (the labels were checked when read)
    loss, _ = softmax_with_loss(logits.float(), labels, class_weights, ignore_label=ignore_index, checked=False)
    return loss
