"""Caffe's arithmetic as plain functions: what caffe-segnet computes, bit for bit where it can be.

One home for the numbers that both the converted layers (``converter.layers``)
and the readable SegNet models (``segnet.models.layers``) compute, so the two cannot
drift apart:

Pooling (Caffe's ceil-mode sizes): MAX scans each window row by row and only
a strictly larger value replaces the current one, so the first maximum wins;
padding is never selected; the mask holds the flat index ``h*W + w`` of the
chosen input in its (unpadded) plane. AVE divides by the window's area after
clipping its end to ``in + pad``; the sum runs over the real input only.

Unpooling (caffe-segnet's Upsample): values written at their mask positions
in a zero map, a later write winning where positions repeat.

BN (caffe-segnet): LEARN normalises with the batch's mean and biased
variance (E[x^2] - E[x]^2, eps 1e-9) in every phase; INFERENCE is
``scale * x + shift``. Folding dataset statistics (mean, var) into an affine
BN gives ``scale' = scale / sqrt(var + eps)``, ``shift' = shift - scale' *
mean``; folding an affine BN into the convolution before it gives ``W * s``,
``b * s + t``.

LRN: ACROSS_CHANNELS ``x * (k + alpha/n * sum of x^2 over n channels)^-beta``
(channels beyond the blob count as zero); WITHIN_CHANNEL ``x * (1 + alpha/n^2
* sum of x^2 over an n x n window)^-beta`` (caffe-segnet ignores k there).

SoftmaxWithLoss (caffe-segnet): per position with label l (ignore label
skipped) ``-log(max(p_l, FLT_MIN)) * w[l]``, summed and divided by the
number of non-ignored positions (``normalize``) or by the outer size; the
gradient is Caffe's ``w[l] * (p - onehot(l)) / divisor``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# ------------------------------------------------------------------ pooling

def pool_output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Caffe's pooled size along one axis."""
    out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _torch_ceil_size(size: int, kernel: int, stride: int, pad: int) -> int:
    out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    if (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _torch_agrees(size: tuple[int, int], kernel, stride, pad) -> bool:
    """Whether torch's ceil-mode pooling gives Caffe's windows for this geometry."""
    return all(
        p <= k // 2 and _torch_ceil_size(s, k, st, p) == pool_output_size(s, k, st, p)
        for s, k, st, p in zip(size, kernel, stride, pad)
    )


def pool_overhang(size: int, kernel: int, stride: int, pad: int) -> int:
    """Padding needed past the input's end so that every Caffe window fits."""
    out = pool_output_size(size, kernel, stride, pad)
    return max(0, (out - 1) * stride + kernel - (size + 2 * pad)) + pad


def max_pool2d(
    x: torch.Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pad: tuple[int, int] = (0, 0),
    return_indices: bool = False,
):
    """Caffe's MAX pooling; with ``return_indices``, also the mask (int64)."""
    size = tuple(x.shape[-2:])
    if _torch_agrees(size, kernel, stride, pad):
        return F.max_pool2d(x, kernel, stride, pad, ceil_mode=True, return_indices=return_indices)
    # General case: pad with -inf so every Caffe window is a whole window,
    # then translate indices from the padded plane back to the input plane.
    (ph, pw), (h, w) = pad, size
    bottom, right = pool_overhang(h, kernel[0], stride[0], ph), pool_overhang(w, kernel[1], stride[1], pw)
    padded = F.pad(x, (pw, right, ph, bottom), value=float("-inf"))
    if not return_indices:
        return F.max_pool2d(padded, kernel, stride)
    out, idx = F.max_pool2d(padded, kernel, stride, return_indices=True)
    padded_w = w + pw + right
    idx = (idx // padded_w - ph) * w + (idx % padded_w - pw)
    return out, idx


def avg_pool2d(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int] = (0, 0)):
    """Caffe's AVE pooling (divisor rule in the module docstring)."""
    size = tuple(x.shape[-2:])
    if _torch_agrees(size, kernel, stride, pad):
        # torch's count_include_pad divisor clips window ends to in + pad, as Caffe does.
        return F.avg_pool2d(x, kernel, stride, pad, ceil_mode=True, count_include_pad=True)
    (ph, pw), (h, w) = pad, size
    bottom, right = pool_overhang(h, kernel[0], stride[0], ph), pool_overhang(w, kernel[1], stride[1], pw)
    sums = F.avg_pool2d(F.pad(x, (pw, right, ph, bottom)), kernel, stride, divisor_override=1)
    div_h = _window_extent(h, kernel[0], stride[0], ph, sums.shape[-2])
    div_w = _window_extent(w, kernel[1], stride[1], pw, sums.shape[-1])
    return sums / (div_h[:, None] * div_w[None, :]).to(x.dtype)


def _window_extent(size: int, kernel: int, stride: int, pad: int, out: int) -> torch.Tensor:
    start = torch.arange(out) * stride - pad
    end = torch.clamp(start + kernel, max=size + pad)
    return (end - start).double()



# ------------------------------------------------------------------ unpooling

def unpool2d(x: torch.Tensor, mask: torch.Tensor, out_h: int, out_w: int, unique: bool = False) -> torch.Tensor:
    """Place ``x`` at the flat positions ``mask`` in an ``out_h x out_w`` zero plane.

    Where positions repeat (masks of overlapping pooling windows), a later
    value wins, as in Caffe's loop. ``unique`` says the positions cannot
    repeat (non-overlapping pooling): then ATen's max_unpool2d, about twice as
    fast, is used; it does not promise an order for repeated positions.
    """
    index = mask if mask.dtype == torch.int64 else mask.long()
    if unique:
        return torch.ops.aten.max_unpool2d(x, index, [out_h, out_w])
    n, c = x.shape[:2]
    out = x.new_zeros(n, c, out_h * out_w)
    return out.scatter(2, index.reshape(n, c, -1), x.reshape(n, c, -1)).view(n, c, out_h, out_w)



# ------------------------------------------------------------------ BN

#: caffe-segnet hard-codes this epsilon; it is effectively zero.
SEGNET_BN_EPS = 1e-9


def batch_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel batch mean and biased variance (1, C, 1, 1), as caffe-segnet computes them.

    Spatial means first, then the mean over the batch; variance as
    E[x^2] - E[x]^2.
    """
    mean = x.mean(dim=(2, 3), keepdim=True).mean(dim=0, keepdim=True)
    mean_sq = x.square().mean(dim=(2, 3), keepdim=True).mean(dim=0, keepdim=True)
    return mean, mean_sq - mean.square()


def bn_learn(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float = SEGNET_BN_EPS):
    """caffe-segnet BN in LEARN mode. Returns (y, batch mean, batch variance)."""
    mean, var = batch_moments(x)
    y = (x - mean) / torch.sqrt(var + eps) * scale + shift
    return y, mean, var


def bn_inference(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """caffe-segnet BN in INFERENCE mode.

    Multiply, then add, as Caffe does: a fused multiply-add rounds once
    instead of twice and moves more max-pooling near-ties away from Caffe's
    choices. Adding in place saves one full-size temporary.
    """
    return (x * scale).add_(shift)



def fold_bn_statistics(scale: torch.Tensor, shift: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                    eps: float = SEGNET_BN_EPS) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """An affine BN (``scale``, ``shift``) after normalisation by (``mean``, ``var``) as one ``scale' * x + shift'``."""
    inv_std = torch.rsqrt(var + eps)
    return scale * inv_std, shift - mean * scale * inv_std


def fold_into_conv(weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor,
                   shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Weights and bias of a convolution followed by ``scale * y + shift`` per output channel."""
    bias = bias if bias is not None else torch.zeros_like(shift)
    return weight * scale.view(-1, *([1] * (weight.dim() - 1))), bias * scale + shift


# ------------------------------------------------------------------ LRN

def lrn_across_channels(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    half = (size - 1) // 2
    channels = x.shape[1]
    padded = F.pad(x.square(), (0, 0, 0, 0, half, half))  # zero channels beyond both ends
    window_sum = padded[:, 0:channels]
    for offset in range(1, size):
        window_sum = window_sum + padded[:, offset : offset + channels]
    return x * (k + (alpha / size) * window_sum).pow(-beta)


def lrn_within_channel(x: torch.Tensor, size: int, alpha: float, beta: float) -> torch.Tensor:
    half = (size - 1) // 2
    mean_sq = F.avg_pool2d(x.square(), size, stride=1, padding=half, count_include_pad=True)
    return x * (1 + alpha * mean_sq).pow(-beta)



# ------------------------------------------------------------------ softmax loss

FLT_MIN = torch.finfo(torch.float32).tiny


def normalizer(mode: str, outer: int, inner: int, valid: int) -> float:
    """Mainline Caffe's divisor for a loss normalization mode, at least 1, as a float32 value."""
    count = {"FULL": outer * inner, "VALID": valid, "BATCH_SIZE": outer, "NONE": 1}[mode]
    return float(np.float32(max(1, count)))


class _SoftmaxLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, weights, ignore_label, normalize, axis, checked=True):
        # Work on (outer, C, inner) views.
        shape = logits.shape
        outer = math.prod(shape[:axis])
        classes = shape[axis]
        x = logits.reshape(outer, classes, -1)
        prob = torch.softmax(x, dim=1)
        label = labels.reshape(outer, -1).to(torch.int64)  # Caffe truncates float labels
        valid = torch.ones_like(label, dtype=torch.bool) if ignore_label is None else label != ignore_label
        if checked:
            bad = valid & ((label < 0) | (label >= classes))
            if bad.any():
                value = int(label[bad][0])
                raise ValueError(f"label {value} is outside 0..{classes - 1} and is not the ignore_label")
        safe = torch.where(valid, label, torch.zeros_like(label))
        p = prob.gather(1, safe.unsqueeze(1)).squeeze(1)
        term = -torch.log(torch.clamp(p, min=FLT_MIN))
        w = weights[safe].to(prob.dtype) if weights is not None else None
        if w is not None:
            term = term * w
        term = torch.where(valid, term, torch.zeros_like(term))
        if isinstance(normalize, str):  # mainline's normalization mode
            divisor = normalizer(normalize, outer, x.shape[2], int(valid.sum()))
        elif checked:
            divisor = float(int(valid.sum())) if normalize else float(outer)
        else:  # a tensor: reading the count would wait for the device; float32 holds counts < 2^24 exactly
            divisor = valid.sum().clamp(min=1).to(torch.float32) if normalize else float(outer)
        loss = term.double().sum() / divisor
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(prob, safe, valid)
        ctx.weights = w
        ctx.divisor = divisor
        ctx.shape = shape
        return loss.to(logits.dtype).reshape(()), prob.reshape(shape)

    @staticmethod
    def backward(ctx, grad_loss, grad_prob):
        prob, label, valid = ctx.saved_tensors
        grad = torch.zeros_like(prob)
        if grad_loss is not None:
            grad = prob.clone()
            grad.scatter_add_(1, label.unsqueeze(1), -torch.ones_like(prob[:, :1]))
            if ctx.weights is not None:
                grad = grad * ctx.weights.unsqueeze(1)
            grad = grad * valid.unsqueeze(1).to(grad.dtype)
            grad = grad * (grad_loss / ctx.divisor)
        if grad_prob is not None:  # the prob top used elsewhere: plain softmax backward
            g = grad_prob.reshape(prob.shape)
            grad = grad + prob * (g - (g * prob).sum(dim=1, keepdim=True))
        return grad.reshape(ctx.shape), None, None, None, None, None, None


def softmax_with_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    ignore_label: int | None = None,
    normalize: bool | str = True,
    axis: int = 1,
    checked: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """caffe-segnet's weighted softmax loss. Returns (loss, prob).

    ``normalize``: caffe-segnet's flag (true: the non-ignored positions;
    false: the outer size), or mainline's mode by name (``normalizer``).

    ``checked=False`` never waits for the device (a training loop's need):
    labels are not checked (the caller has), and a batch without a labelled
    pixel gives 0 instead of Caffe's 0/0.
    """
    return _SoftmaxLossFunction.apply(logits, labels, class_weights, ignore_label, normalize, axis, checked)
