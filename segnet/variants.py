"""The decoder variants of the paper's Table 1, on SegNet-Basic's encoder.

All share SegNet-Basic's encoder (LRN input; 4 x [7x7 conv, 64 maps, BN,
ReLU, 2x2 max pooling with indices]) and end in K = 11 class scores at the
input resolution. They differ in how the decoder upsamples:

- SegNet-Basic: unpool with the pooling indices, 7x7 conv (64 -> 64), BN.
- SegNet-Basic-EncoderAddition: as SegNet-Basic, then add the encoder's 64
  feature maps of the same resolution (the encoder output before pooling).
- SegNet-Basic-SingleChannelDecoder: the decoder filters see only their own
  upsampled map (depthwise 7x7 convolution).
- FCN-Basic: reduce the last encoder output to K maps with a 1x1 conv, then
  four learned 2x deconvolutions (8x8 kernels, K -> K); after each of the
  first three, add the 1x1-reduced (64 -> K) encoder map of that resolution.
- FCN-Basic-NoAddition: FCN-Basic without the additions.
- FCN-Basic-NoDimReduction: no reduction: 64-channel deconvolutions, the
  encoder maps added as they are, and a 1x1 classifier at the end.
- FCN-Basic-NoAddition-NoDimReduction: that, without the additions.
- Bilinear-Interpolation: reduce to K maps, then fixed bilinear 2x
  upsampling (nothing learnt in the decoder).

Deconvolutions are initialised to exact bilinear 2x upsampling (the 4x4
bilinear kernel centred in the 8x8 one, each class channel onto itself) and
their output is cropped to the encoder size it mirrors (46 -> 45, as Caffe's
ceil-mode pooling made 23 of 45). The paper does not spell out every detail;
``python -m segnet.variants`` prints the trainable parameter counts beside
the paper's and the reasons for the differences.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from .models import SEGNET_BASIC, SegNet, count_parameters
from .nn import LRN, BNKind, MaxPoolIndices, Unpool, make_bn

#: Table 1 of the paper (arXiv 1511.00561v3): trainable parameters in millions.
PAPER_PARAMS_M = {
    "Bilinear-Interpolation": 0.625,
    "SegNet-Basic": 1.425,
    "SegNet-Basic-EncoderAddition": 1.425,
    "SegNet-Basic-SingleChannelDecoder": 0.625,
    "FCN-Basic": 0.65,
    "FCN-Basic-NoAddition": 0.65,
    "FCN-Basic-NoDimReduction": 1.625,
    "FCN-Basic-NoAddition-NoDimReduction": 1.625,
}

#: Table 1: storage multiplier (encoder maps kept for the decoder, relative to
#: pooling indices) and the inference time (ms, 360x480, 2015 NVIDIA Titan).
PAPER_STORAGE = {
    "Bilinear-Interpolation": "0", "SegNet-Basic": "1", "SegNet-Basic-EncoderAddition": "64",
    "SegNet-Basic-SingleChannelDecoder": "1", "FCN-Basic": "11", "FCN-Basic-NoAddition": "n/a",
    "FCN-Basic-NoDimReduction": "64", "FCN-Basic-NoAddition-NoDimReduction": "0",
}  # fmt: skip
PAPER_TIME_MS = {
    "Bilinear-Interpolation": 24.2, "SegNet-Basic": 52.6, "SegNet-Basic-EncoderAddition": 53.0,
    "SegNet-Basic-SingleChannelDecoder": 33.1, "FCN-Basic": 24.2, "FCN-Basic-NoAddition": 23.8,
    "FCN-Basic-NoDimReduction": 44.8, "FCN-Basic-NoAddition-NoDimReduction": 43.9,
}  # fmt: skip

WIDTH, KERNEL, STAGES = 64, 7, 4


class BasicEncoder(nn.Module):
    """SegNet-Basic's encoder; returns the final pooled maps plus, per stage, the
    pre-pooling maps, the pooled maps and the pooling indices."""

    def __init__(self, in_channels: int = 3, bn: BNKind = "pytorch"):
        super().__init__()
        self.norm = LRN(5, 1e-4, 0.75)
        self.pool = MaxPoolIndices(2, 2)
        channels = in_channels
        for stage in range(1, STAGES + 1):
            self.add_module(f"conv{stage}", nn.Conv2d(channels, WIDTH, KERNEL, padding=KERNEL // 2))
            self.add_module(f"conv{stage}_bn", make_bn(WIDTH, bn))
            channels = WIDTH

    def forward(self, x: torch.Tensor):
        x = self.norm(x)
        features, pooled, indices = [], [], []
        for stage in range(1, STAGES + 1):
            x = F.relu(getattr(self, f"conv{stage}_bn")(getattr(self, f"conv{stage}")(x)))
            features.append(x)
            x, idx = self.pool(x)
            pooled.append(x)
            indices.append(idx)
        return features, pooled, indices


class IndexDecoderNet(nn.Module):
    """SegNet-Basic and its two index-based variants."""

    def __init__(self, num_classes: int = 11, in_channels: int = 3, bn: BNKind = "pytorch",
                 encoder_addition: bool = False, single_channel: bool = False):  # fmt: skip
        super().__init__()
        self.encoder = BasicEncoder(in_channels, bn)
        self.unpool = Unpool()
        self.encoder_addition = encoder_addition
        groups = WIDTH if single_channel else 1
        for stage in range(STAGES, 0, -1):
            self.add_module(f"conv_decode{stage}", nn.Conv2d(WIDTH, WIDTH, KERNEL, padding=KERNEL // 2, groups=groups))
            self.add_module(f"conv_decode{stage}_bn", make_bn(WIDTH, bn))
        self.conv_classifier = nn.Conv2d(WIDTH, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, pooled, indices = self.encoder(x)
        x = pooled[-1]
        for stage in range(STAGES, 0, -1):
            skip = features[stage - 1]
            x = self.unpool(x, indices[stage - 1], skip.shape[-2:])
            x = getattr(self, f"conv_decode{stage}_bn")(getattr(self, f"conv_decode{stage}")(x))
            if self.encoder_addition:
                x = x + skip
        return self.conv_classifier(x)


def bilinear_deconv_(weight: torch.Tensor) -> None:
    """Initialise an 8x8 stride-2 deconvolution (pad 3) to exact bilinear 2x upsampling."""
    profile = torch.tensor([0.25, 0.75, 0.75, 0.25])
    kernel = torch.zeros(8, 8)
    kernel[2:6, 2:6] = profile[:, None] * profile[None, :]
    with torch.no_grad():
        weight.zero_()
        for c in range(min(weight.shape[0], weight.shape[1])):
            weight[c, c] = kernel


class UpsampleDecoderNet(nn.Module):
    """FCN-Basic and its variants, and Bilinear-Interpolation."""

    def __init__(self, num_classes: int = 11, in_channels: int = 3, bn: BNKind = "pytorch",
                 addition: bool = True, dim_reduction: bool = True, learned: bool = True):  # fmt: skip
        super().__init__()
        self.encoder = BasicEncoder(in_channels, bn)
        self.addition, self.dim_reduction, self.learned = addition, dim_reduction, learned
        channels = num_classes if dim_reduction else WIDTH
        # BN follows every convolution and deconvolution but the one producing the class scores,
        # as the paper puts BN after each layer of encoder and decoder (and as lr 0.1 needs).
        if dim_reduction:
            self.score = nn.Sequential(nn.Conv2d(WIDTH, num_classes, 1), make_bn(num_classes, bn))
            if addition:
                for stage in range(1, STAGES):  # maps of pool1..pool3, reduced to K
                    self.add_module(f"score_pool{stage}",
                                    nn.Sequential(nn.Conv2d(WIDTH, num_classes, 1), make_bn(num_classes, bn)))  # fmt: skip
        if learned:
            for stage in range(STAGES, 0, -1):
                deconv = nn.ConvTranspose2d(channels, channels, 8, stride=2, padding=3, bias=False)
                bilinear_deconv_(deconv.weight)
                self.add_module(f"upscore{stage}", deconv)
                scores = dim_reduction and stage == 1
                self.add_module(f"upscore{stage}_bn", nn.Identity() if scores else make_bn(channels, bn))
        if not dim_reduction:
            self.conv_classifier = nn.Conv2d(WIDTH, num_classes, 1)

    def _upsample(self, x: torch.Tensor, stage: int, size) -> torch.Tensor:
        if not self.learned:
            return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        x = getattr(self, f"upscore{stage}")(x)[..., : size[0], : size[1]]
        return getattr(self, f"upscore{stage}_bn")(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features, pooled, _ = self.encoder(images)
        x = self.score(pooled[-1]) if self.dim_reduction else pooled[-1]
        for stage in range(STAGES, 0, -1):
            size = features[stage - 1].shape[-2:]  # the resolution this stage's encoder started from
            x = self._upsample(x, stage, size)
            if self.addition and stage > 1:
                skip = pooled[stage - 2]
                x = x + (getattr(self, f"score_pool{stage - 1}")(skip) if self.dim_reduction else skip)
        return x if self.dim_reduction else self.conv_classifier(x)


def build_variant(name: str, num_classes: int = 11, bn: BNKind = "pytorch", in_channels: int = 3) -> nn.Module:
    """One of the Table 1 networks, by the paper's name."""
    builders = {
        "SegNet-Basic": lambda: SegNet(SEGNET_BASIC, num_classes, in_channels, bn),
        "SegNet-Basic-EncoderAddition": lambda: IndexDecoderNet(num_classes, in_channels, bn, encoder_addition=True),
        "SegNet-Basic-SingleChannelDecoder": lambda: IndexDecoderNet(num_classes, in_channels, bn, single_channel=True),
        "FCN-Basic": lambda: UpsampleDecoderNet(num_classes, in_channels, bn),
        "FCN-Basic-NoAddition": lambda: UpsampleDecoderNet(num_classes, in_channels, bn, addition=False),
        "FCN-Basic-NoDimReduction": lambda: UpsampleDecoderNet(num_classes, in_channels, bn, dim_reduction=False),
        "FCN-Basic-NoAddition-NoDimReduction": lambda: UpsampleDecoderNet(
            num_classes, in_channels, bn, addition=False, dim_reduction=False
        ),
        "Bilinear-Interpolation": lambda: UpsampleDecoderNet(num_classes, in_channels, bn, addition=False,
                                                             learned=False),  # fmt: skip
    }
    if name not in builders:
        raise KeyError(f"unknown variant {name!r}; choose from {', '.join(builders)}")
    model = builders[name]()
    for module in model.modules():  # He initialisation for every learned convolution
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return model


VARIANTS = list(PAPER_PARAMS_M)

NOTES = """\
Why the counts differ from the paper (which does not list its layers):
- Ours count convolution biases and BN scale/shift (about 1.5k, a little more in the FCN
  variants, whose decoders have BN too); the paper's text says
  SegNet-Basic uses no biases, while SegNet-Tutorial's prototxt has them.
- SegNet-Basic: 4 x 7x7x64x64 decoder filters + encoder + classifier = 1.415M weights; no
  reading of the text reaches 1.425M while SingleChannelDecoder stays at 0.625M.
- FCN NoDimReduction: four 8x8x64x64 deconvolutions are 1.049M; 1.625M in the paper is
  0.625M + 1.0M, which suggests rounded figures.
- Bilinear-Interpolation learns nothing in its decoder, so only the encoder and the 1x1
  classifier train (0.613M); the paper lists 0.625M."""


def parameter_table() -> str:
    lines = [f"{'variant':<38} {'ours (M)':>9} {'paper (M)':>10} {'ratio':>6}"]
    for name in VARIANTS:
        ours = count_parameters(build_variant(name)) / 1e6
        paper = PAPER_PARAMS_M[name]
        lines.append(f"{name:<38} {ours:>9.3f} {paper:>10.3f} {ours / paper:>6.2f}")
    return "\n".join(lines) + "\n\n" + NOTES


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m segnet.variants",
        description="Print the trainable parameter counts of the paper's Table 1 decoder variants beside the paper's.",
    ).parse_args(argv)
    print(parameter_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
