"""A lean inference path for the SegNet models.

``optimize_for_inference(model)`` returns the same model, computing the same
labels, with:

- BN folded into the convolutions (one pass over each feature map less);
- compact pooling indices: a 2x2 window needs only the position of its
  maximum inside the window (0..3), so it is kept as one uint8 per pooled
  value instead of PyTorch's int64 flat index (8x less index memory; the
  paper's "2 bits per window" would be 32x), and the unpooling writes each
  value straight to its window position;
- optionally (``winograd``) the 3x3 convolutions with 128 or more input and
  output channels run by Winograd's F(2x2, 3x3) (segnet/deploy/winograd.py): 2.25x
  less arithmetic, float32 error within 2x the direct convolution's;
  narrower layers stay direct, where the 64-wide matrix products of the
  transformed form run too slowly to gain;
- optionally channels-last memory format and bfloat16 autocast (``bf16``),
  which runs several times faster on CPUs with AVX-512 BF16 or AMX and on
  recent GPUs. bfloat16's coarser rounding decides many more max-pooling
  near-ties differently, and each such decision moves a decoder patch, so
  ``bf16="decoder"`` keeps the encoder in float32: most of the speed-up,
  far closer labels (measured by benchmarks/bench_inference.py).

Encoder activations are freed as soon as they are pooled, because the model
keeps only the pooled maps and the indices.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from converter.layers.data import DEFAULT_IMAGE_SIZE
from converter.functional import max_pool2d, pool_output_size

from segnet.models.family import SegNet, in_segnet_family
from segnet.models.layers import MaxPoolIndices, Unpool
from segnet.models.surgery import fold_bn
from segnet.deploy import conv_paths
from segnet.deploy.workspace import is_channels_last
from segnet.models.surgery import replace_module


class CompactMaxPool(nn.Module):
    """2x2 stride-2 Caffe max pooling returning (values, uint8 offset of the maximum in its window)."""

    kernel, stride = (2, 2), (2, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, index = max_pool2d(x, self.kernel, self.stride, return_indices=True)
        width = x.shape[-1]
        # Flat index h*W + w -> 2 * (h mod 2) + (w mod 2), the position inside the window,
        # in place on the int64 indices (freed on return); other temporaries are one byte each.
        index.remainder_(2 * width)  # m = (h mod 2) * W + w
        odd_row = (index >= width).to(torch.uint8)
        odd_col = index.bitwise_and_(1).to(torch.uint8)  # parity of m; of w too when W is even
        if width % 2:
            odd_col.bitwise_xor_(odd_row)  # m = W + w with W odd flips the parity
        return values, odd_col.add_(odd_row).add_(odd_row)


class CompactUnpool(nn.Module):
    """Unpool 2x2 windows from uint8 window offsets, into a map of ``size``."""

    def forward(self, x: torch.Tensor, offsets: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        n, c, oh, ow = x.shape
        if torch.compiler.is_compiling():  # one functional expression, which the compiler fuses into one loop
            windows = torch.stack([torch.where(offsets == code, x, 0) for code in range(4)], dim=-1)
            out = windows.view(n, c, oh, ow, 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(n, c, 2 * oh, 2 * ow)
        else:
            # Every window position is written once (no zero fill, no temporary map), in the input's
            # memory format: channels last, each position is a run of c values.
            if is_channels_last(x):
                out = x.new_empty(n, oh, 2, ow, 2, c).permute(0, 5, 1, 2, 3, 4)
            else:
                out = x.new_empty(n, c, oh, 2, ow, 2)
            zero = x.new_zeros(())
            for dy in (0, 1):
                for dx in (0, 1):
                    torch.where(offsets == 2 * dy + dx, x, zero, out=out[:, :, :, dy, :, dx])
            out = out.view(n, c, 2 * oh, 2 * ow)
        h, w = size
        return out if (h, w) == (2 * oh, 2 * ow) else out[:, :, :h, :w]


class Autocast(nn.Module):
    """Run a module under autocast to ``dtype`` (bfloat16 by default); with ``to_float``, return float32."""

    def __init__(self, model: nn.Module, to_float: bool = True, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.model, self.to_float, self.dtype = model, to_float, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            y = self.model(x)
        return y.float() if self.to_float else y


def optimize_for_inference(
    model: nn.Module,
    fold: bool = True,
    compact_indices: bool = True,
    channels_last: bool = False,
    bf16: bool | str = False,
    inplace: bool = False,
    winograd: bool = False,
) -> nn.Module:
    """``model`` set up for fast, lean inference (see the module docstring).

    ``bf16``: True runs the whole model under bfloat16 autocast; "decoder"
    only the decoder (SegNet family): the encoder stays in float32 so that
    its max-pooling decisions, which the decoder's unpooling depends on, are
    the float32 ones. ``winograd``: float32 3x3 convolutions of at least
    ``conv_paths.WINOGRAD_MIN_CHANNELS`` input and output channels by F(2x2, 3x3) (not
    with ``bf16``). Works on a copy unless ``inplace`` (which saves holding
    the weights twice).
    """
    if winograd and bf16:
        raise ValueError("winograd is a float32 path; it does not combine with bf16")
    model = (model if inplace else copy.deepcopy(model)).eval()
    if fold:
        fold_bn(model)
    if compact_indices:
        for name, module in list(model.named_modules()):
            if isinstance(module, MaxPoolIndices) and module.kernel == (2, 2) and module.stride == (2, 2):
                replace_module(model, name, CompactMaxPool())
            elif isinstance(module, Unpool):
                replace_module(model, name, CompactUnpool())
    if winograd:
        for name, module in list(model.named_modules()):
            if "winograd" in conv_paths.candidates(module):
                replace_module(model, name, conv_paths.fast_module(module, "winograd"))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    if bf16 == "decoder":
        if not in_segnet_family(model):
            raise ValueError("bf16='decoder' needs a SegNet-family model")
        *decoder, classifier = model.decoder_layers()
        for name in decoder:
            setattr(model, name, Autocast(getattr(model, name), to_float=False))
        setattr(model, classifier, Autocast(getattr(model, classifier)))
        return model
    return Autocast(model) if bf16 else model


def index_memory(model: SegNet, size: tuple[int, int] = DEFAULT_IMAGE_SIZE, batch: int = 1) -> dict[str, int]:
    """Bytes of pooling indices one forward pass keeps: int64 (PyTorch), uint8 and 2-bit packed."""
    values = 0
    h, w = size
    for widths in model.arch.encoder:
        h, w = pool_output_size(h, 2, 2, 0), pool_output_size(w, 2, 2, 0)
        values += batch * widths[-1] * h * w
    return {"int64": values * 8, "uint8": values, "2-bit": (values + 3) // 4}
