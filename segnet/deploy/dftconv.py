"""Large-kernel convolutions through the discrete Fourier transform, in float32.

A k x k, stride-1, "same" convolution is cut into overlapping T x T input
tiles (overlap-save): each tile gives an S x S block of outputs, S = T - k + 1.
In the frequency domain the convolution of a tile with a kernel is one
complex product per frequency, so the sum over input channels becomes one
complex matrix product per frequency: T (T/2 + 1) of them, against k^2 real
products per output for the direct convolution. For SegNet-Basic's 7x7
layers (T = 16) that is 2.3x less arithmetic in the products, and the
transforms cost less than the products on 64 channels.

The transforms are matrix products too: each tile is transformed along its
rows (real to half-spectrum, a 2(T/2+1) x T real matrix) and then along its
columns (complex, a 2T x 2T real matrix), with the batch of tiles and
channels as the matrices' other side. On T = 16 or 32 points a BLAS matrix
product does that faster than an FFT library on this layout, and the data
stay in the layout the channel products need: frequency-major, real and
imaginary parts side by side over the channels, tiles last. So the whole
layer is six matrix products and two copies (tiling in, cropping out), done
a band of tile rows at a time in buffers kept between calls.

Accuracy: every transform coefficient is a cosine or sine, at most 1 in
magnitude, summed over T terms, and the kernels are transformed once in
float64; the layer's float32 error against a float64 convolution measured
0.3-1.2x the direct float32 convolution's (max and RMS) on SegNet-Basic's
layers with random inputs, 0.7-2.1x on the trained example's own
activations (tests/segnet/deploy/test_dftconv.py checks the accuracy gate
and the labels). Larger tiles save more arithmetic but sum over more terms:
T = 32 is still within the gate, T = 64 gains nothing here. Each output
pixel is rounded by its own sums, so exactly equal direct results (a flat
patch) come out a rounding apart: segnet/deploy/conv_paths.py keeps this
path after the last pooling, where no tie decides a pooling.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from segnet.deploy.workspace import WORKSPACE, is_channels_last, refuse_training

#: Tile sizes the engine may choose from (timed per layer shape on the machine).
TILES = (16, 32)

#: Smallest kernel offered to the DFT path: on 3x3 kernels its transforms cost more than the products save.
DFT_MIN_KERNEL = 5

#: Floats of tiled input per band of tile rows. Larger bands measured faster (2^20 to 2^24 floats on SegNet-Basic's
#: layers, AVX-512 EPYC: the products of few columns run slowly); this one keeps the buffers near 32 MB each.
BAND_FLOATS = 1 << 23


@functools.cache
def _transforms(tile: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four transform matrices for ``tile`` points (computed in float64, rounded once to ``dtype``).

    forward_rows [(u, re|im), i]: real rows -> half spectrum; forward_cols [(v, re|im), (re|im, j)]: complex
    columns -> spectrum; inverse_cols [(re|im, j), (v, re|im)]; inverse_rows [i, (u, re|im)]: half spectrum
    -> real rows, with the 1/T^2 of the inverse transform.
    """
    t = tile
    half = t // 2 + 1
    n = torch.arange(t, dtype=torch.float64)
    rows_angle = 2 * math.pi * torch.outer(torch.arange(half, dtype=torch.float64), n) / t  # u x i
    forward_rows = torch.stack([rows_angle.cos(), -rows_angle.sin()], 1).reshape(2 * half, t)
    cols_angle = 2 * math.pi * torch.outer(n, n) / t  # v x j, symmetric
    cos, sin = cols_angle.cos(), cols_angle.sin()
    forward_cols = torch.stack([torch.stack([cos, sin], 2), torch.stack([-sin, cos], 2)], 1)  # v, out, j, in
    forward_cols = forward_cols.permute(0, 1, 3, 2).reshape(2 * t, 2 * t)  # (v, out), (in, j)
    inverse_cols = torch.stack([torch.stack([cos, -sin], 2), torch.stack([sin, cos], 2)], 0)  # out, j, v, in
    inverse_cols = inverse_cols.reshape(2 * t, 2 * t)  # (out, j), (v, in)
    weight = torch.full((half,), 2.0, dtype=torch.float64)
    weight[0] = weight[-1] = 1.0  # the frequencies without a mirror image in the half spectrum
    inverse_rows = torch.stack([weight * rows_angle.T.cos(), -weight * rows_angle.T.sin()], 2).reshape(t, 2 * half)
    return tuple(m.to(dtype) for m in (forward_rows, forward_cols, inverse_cols, inverse_rows / t**2))


def transform_weight(weight: torch.Tensor, tile: int) -> torch.Tensor:
    """[K, C, k, k] kernels -> [T (T/2+1), 2K, 2C] real blocks of the complex products (float64, rounded once).

    Each frequency's block is [[Re, -Im], [Im, Re]] of the transformed kernels, acting on the stacked real
    and imaginary parts of the transformed input.
    """
    k_out, c_in = weight.shape[:2]
    half = tile // 2 + 1
    # The flipped kernel: the tile's circular convolution with it is the correlation nn.Conv2d computes.
    spectrum = torch.fft.fft2(weight.detach().double().flip(-2, -1), s=(tile, tile))[:, :, :half, :]
    spectrum = spectrum.permute(2, 3, 0, 1)  # u, v, K, C
    re, im = spectrum.real, spectrum.imag
    blocks = torch.cat([torch.cat([re, -im], 3), torch.cat([im, re], 3)], 2)
    return blocks.reshape(half * tile, 2 * k_out, 2 * c_in).to(weight.dtype).contiguous()


def dft_conv2d(x: torch.Tensor, weight_f: torch.Tensor, bias: torch.Tensor | None, kernel: int,
               tile: int) -> torch.Tensor:  # fmt: skip
    """``kernel`` x ``kernel`` convolution, stride 1, padding kernel // 2, of NCHW ``x`` with kernels transformed
    by ``transform_weight`` for ``tile``. The result has ``x``'s memory format (channels last or contiguous)."""
    n, c, h, w = x.shape
    k_out = weight_f.shape[1] // 2
    pad, step = kernel // 2, tile - kernel + 1
    rows, cols = -(-h // step), -(-w // step)  # tiles down and across
    matrices = _transforms(tile, x.dtype)
    # Zero-padded input; only the border is cleared (the rest is overwritten).
    xp = WORKSPACE.get("dft padded", (n, c, rows * step + kernel - 1, cols * step + kernel - 1), x)
    xp[:, :, :pad].zero_()
    xp[:, :, pad + h :].zero_()
    xp[:, :, :, :pad].zero_()
    xp[:, :, :, pad + w :].zero_()
    xp[:, :, pad : pad + h, pad : pad + w].copy_(x)
    channels_last = is_channels_last(x)
    if channels_last:
        y = x.new_empty(n, rows * step, cols * step, k_out).permute(0, 3, 1, 2)
    else:
        y = x.new_empty(n, k_out, rows * step, cols * step)
    band = max(1, min(rows, BAND_FLOATS // (tile * tile * max(c, k_out) * n * cols)))
    for top in range(0, rows, band):
        count = min(band, rows - top)
        _tile_band(xp.narrow(2, top * step, count * step + kernel - 1), weight_f, bias, kernel, tile, matrices,
                   y.narrow(2, top * step, count * step))  # fmt: skip
    if (rows * step, cols * step) == (h, w):
        return y
    return y[:, :, :h, :w].contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _tile_band(xp: torch.Tensor, weight_f: torch.Tensor, bias: torch.Tensor | None, kernel: int, tile: int,
               matrices: tuple[torch.Tensor, ...], y: torch.Tensor) -> None:  # fmt: skip
    """One band: padded input rows [n, c, rows S + k - 1, cols S + k - 1] -> outputs y [n, K, rows S, cols S]."""
    forward_rows, forward_cols, inverse_cols, inverse_rows = matrices
    n, c = xp.shape[:2]
    k_out = weight_f.shape[1] // 2
    t, half, step = tile, tile // 2 + 1, tile - kernel + 1
    rows, cols = y.shape[2] // step, y.shape[3] // step
    p = n * rows * cols  # tiles in the band
    ws = WORKSPACE
    # Overlapping tiles, tile-pixel-major: [i, j, c, n, row, col].
    s = xp.stride()
    view = xp.as_strided((t, t, c, n, rows, cols), (s[2], s[3], s[1], s[0], step * s[2], step * s[3]))
    tiles = ws.get("dft tiles", (t, t, c * p), xp)
    tiles.view(view.shape).copy_(view)
    # Along the tile's rows, then its columns: [u, v, re|im, c, tiles].
    along_rows = ws.get("dft rows", (half, 2 * t, c * p), xp)
    torch.mm(forward_rows, tiles.view(t, -1), out=along_rows.view(2 * half, -1))
    spectrum = ws.get("dft spectrum", (half, 2 * t, c * p), xp)
    for u in range(half):
        torch.mm(forward_cols, along_rows[u], out=spectrum[u])
    # The complex products, one real block product per frequency: [u, v, re|im, K, tiles].
    products = ws.get("dft products", (half * t, 2 * k_out, p), xp)
    torch.bmm(weight_f, spectrum.view(half * t, 2 * c, p), out=products)
    # Back along the columns, then the rows: [i, j, K, n, row, col].
    products = products.view(half, 2 * t, k_out * p)
    back_cols = ws.get("dft rows", (half, 2 * t, k_out * p), xp)  # the first buffer is free again
    for u in range(half):
        torch.mm(inverse_cols, products[u], out=back_cols[u])
    back = ws.get("dft tiles", (t, t * k_out * p), xp)
    torch.mm(inverse_rows, back_cols.view(2 * half, -1), out=back)
    # Each tile's last S x S outputs are the valid ones (the first k - 1 rows and columns wrapped around).
    valid = back.view(t, t, k_out, n, rows, cols)[kernel - 1 :, kernel - 1 :]
    target = y.unflatten(2, (rows, step)).unflatten(4, (cols, step)).permute(3, 5, 1, 0, 2, 4)
    if bias is None:
        target.copy_(valid)
    else:
        torch.add(valid, bias.view(-1, 1, 1, 1), out=target)


class DFTConv2d(nn.Module):
    """A k x k (k odd, at least 3), stride-1, "same" ``nn.Conv2d`` through the DFT on T x T tiles (inference only)."""

    def __init__(self, conv: nn.Conv2d, tile: int = 16):
        super().__init__()
        if not is_dft_eligible(conv):
            raise ValueError("the DFT path needs an odd k x k convolution (k >= 3), stride 1, padding k // 2, no groups")
        kernel = conv.kernel_size[0]
        if tile <= kernel:
            raise ValueError(f"a {tile}x{tile} tile leaves no outputs for a {kernel}x{kernel} kernel")
        self.in_channels, self.out_channels, self.kernel, self.tile = conv.in_channels, conv.out_channels, kernel, tile
        self.register_buffer("weight_f", transform_weight(conv.weight, tile))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        refuse_training(self, x)
        return dft_conv2d(x, self.weight_f, self.bias, self.kernel, self.tile)

    def extra_repr(self) -> str:
        k = self.kernel
        return f"{self.in_channels}, {self.out_channels}, kernel {k}x{k}, DFT on {self.tile}x{self.tile} tiles"


def is_dft_eligible(conv: nn.Module) -> bool:
    """A plain square convolution with an odd kernel of at least 3, stride 1, "same" zero padding, one group."""
    if not isinstance(conv, nn.Conv2d):
        return False
    k = conv.kernel_size[0]
    return (
        conv.kernel_size == (k, k)
        and k % 2 == 1
        and k >= 3
        and conv.stride == (1, 1)
        and conv.padding == (k // 2, k // 2)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )
