"""3x3 convolutions by Winograd's minimal filtering F(2x2, 3x3), in float32.

A 3x3, stride-1 convolution computes each 2x2 block of outputs from a 4x4
tile of input. Winograd's F(2x2, 3x3) (Lavin & Gray, 2016) transforms the
tile (V = Bt d B) and the kernel (U = G g Gt), multiplies them elementwise
and transforms back (Y = At (U * V) A): 16 products per block instead of 36.
Summed over input channels, the 16 elementwise products become 16 matrix
products, so the arithmetic of the convolution drops 2.25x.

Why this form and no larger tile: the transforms of F(2x2, 3x3) have only
0, +-1 and 1/2 as coefficients, so the input and output transforms are
exact additions and subtractions, and the kernel transform is done once in
float64. Its float32 error against a float64 convolution stays within 2x
that of a direct float32 convolution, max and RMS (the accuracy gate that
tests/segnet/deploy/test_winograd.py checks on SegNet's layer shapes). Larger tiles
(F(4x4, 3x3), F(6x6, 3x3)) save more arithmetic but multiply by 4, 5, 8
and 1/24 in the transforms, and their float32 error is several times that
of a direct convolution.

The transforms run as strided additions on channels-last maps, a band of
tile rows at a time, so that a band's transformed tiles are still in cache
when the matrix products read them; the buffers are kept between calls
(segnet/deploy/workspace.py).
"""

from __future__ import annotations

import torch
from torch import nn

from segnet.deploy.workspace import WORKSPACE, refuse_training

#: G, the kernel transform of F(2x2, 3x3): U = G g Gt.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """[K, C, 3, 3] kernels -> [16, C, K] transformed kernels (computed in float64, rounded once)."""
    g = torch.tensor(_G, dtype=torch.float64)
    u = torch.einsum("ai,kcij,bj->abck", g, weight.detach().double(), g)
    return u.reshape(16, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


def _rows(x: torch.Tensor, dim: int, count: int) -> list[torch.Tensor]:
    """The four strided views d0..d3 of the tiles along ``dim``: d_k[i] = x[2i + k], i < count."""
    return [x.narrow(dim, k, 2 * count - 1)[(slice(None),) * dim + (slice(None, None, 2),)] for k in range(4)]


def _input_transform(d: list[torch.Tensor], out: list[torch.Tensor]) -> None:
    """Bt applied along one axis: (d0 - d2, d1 + d2, d2 - d1, d1 - d3), written to ``out``."""
    torch.sub(d[0], d[2], out=out[0])
    torch.add(d[1], d[2], out=out[1])
    torch.sub(d[2], d[1], out=out[2])
    torch.sub(d[1], d[3], out=out[3])




#: Input channels per matrix product. A float32 dot product's rounding error grows with the length of its
#: sequential accumulation chains, and a BLAS may run one chain over all C channels; the transformed
#: products are also larger than the direct convolution's (each output sums 9 of them, with cancellation).
#: Products of 32 channels, added one after the other, bound the chains at 32 + C/32 terms whatever the
#: BLAS's blocking: the error drops to about that of a direct convolution (max 0.8-1.14x on SegNet's
#: shapes, where one chain over C gave up to 2x), for about 8% more time.
ACCUMULATION_CHUNK = 32

#: Floats of transformed input per band of tile rows: small enough to stay in cache between the transform
#: and the matrix products, large enough for the products to run at full speed.
BAND_FLOATS = 1 << 22


def winograd_conv3x3(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """3x3 convolution, stride 1, padding 1, of NCHW ``x`` with kernels transformed by ``transform_weight``.

    Returns NCHW in channels-last memory format. The tiles are processed in
    bands of tile rows, each band's buffers reused (see BAND_FLOATS).
    """
    n, c, h, w = x.shape
    k = weight_t.shape[2]
    th, tw = (h + 1) // 2, (w + 1) // 2  # tiles: 2x2 outputs each
    band = max(1, min(th, BAND_FLOATS // (16 * n * tw * max(c, k))))
    # Zero-padded input, channels last; only the border is cleared (the rest is overwritten).
    xp = WORKSPACE.get("padded", (n, 2 * th + 2, 2 * tw + 2, c), x)
    xp[:, 0].zero_()
    xp[:, h + 1 :].zero_()
    xp[:, :, 0].zero_()
    xp[:, :, w + 1 :].zero_()
    xp[:, 1 : h + 1, 1 : w + 1].copy_(x.permute(0, 2, 3, 1))
    y = x.new_empty(n, th, 2, tw, 2, k)
    for top in range(0, th, band):
        rows = min(band, th - top)
        _tile_band(xp.narrow(1, 2 * top, 2 * rows + 2), weight_t, bias, y.narrow(1, top, rows))
    y = y.view(n, 2 * th, 2 * tw, k)[:, :h, :w].permute(0, 3, 1, 2)
    return y.contiguous(memory_format=torch.channels_last)  # a copy only where an odd width was cropped


def _tile_band(xp: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor) -> None:
    """One band: padded input rows [n, 2 * th + 2, 2 * tw + 2, c] -> output blocks y [n, th, 2, tw, 2, k]."""
    n, th, _, tw, _, k = y.shape
    c = xp.shape[-1]
    ws = WORKSPACE
    # V = Bt d B, separably: along rows, then along columns.
    rows = ws.get("rows", (4, n, th, 2 * tw + 2, c), xp)
    _input_transform(_rows(xp, 1, th), list(rows))
    v = ws.get("v", (16, n, th, tw, c), xp)
    for i in range(4):
        _input_transform(_rows(rows[i], 2, tw), list(v[4 * i : 4 * i + 4]))
    # The 16 matrix products over input channels, accumulated a chunk of channels at a time (see ACCUMULATION_CHUNK).
    m = ws.get("m", (16, n * th * tw, k), xp)
    v = v.view(16, -1, c)
    torch.bmm(v[..., :ACCUMULATION_CHUNK], weight_t[:, :ACCUMULATION_CHUNK], out=m)
    for start in range(ACCUMULATION_CHUNK, c, ACCUMULATION_CHUNK):
        end = start + ACCUMULATION_CHUNK
        torch.baddbmm(m, v[..., start:end], weight_t[:, start:end], out=m)
    if bias is not None:
        m[5].add_(bias)  # element (1, 1) reaches all four outputs of a block with weight +1
    # Y = At M A: along rows into s, then along columns into the output.
    m = m.view(4, 4, n, th, tw, k)
    s = ws.get("rows", (2, 4, n, th, tw, k), xp)  # the row buffer is free again
    torch.add(m[0], m[1], out=s[0]).add_(m[2])
    torch.sub(m[1], m[2], out=s[1]).sub_(m[3])
    for a in range(2):
        torch.add(s[a, 0], s[a, 1], out=y[:, :, a, :, 0]).add_(s[a, 2])
        torch.sub(s[a, 1], s[a, 2], out=y[:, :, a, :, 1]).sub_(s[a, 3])


class WinogradConv2d(nn.Module):
    """A 3x3, stride-1, padding-1 ``nn.Conv2d`` run by F(2x2, 3x3) (inference only)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not is_winograd_eligible(conv):
            raise ValueError("Winograd F(2x2, 3x3) needs a 3x3 convolution with stride 1, padding 1, no groups")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.register_buffer("weight_t", transform_weight(conv.weight))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        refuse_training(self, x)
        return winograd_conv3x3(x, self.weight_t, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, F(2x2, 3x3)"


def is_winograd_eligible(conv: nn.Module) -> bool:
    """A plain 3x3 convolution, stride 1, padding 1, dilation 1, one group, zero padding."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )
