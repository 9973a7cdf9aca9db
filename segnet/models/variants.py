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

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from segnet.models.family import SEGNET_BASIC, Encoded, SegNet, count_parameters
from segnet.models.layers import BNKind, make_bn
from segnet.evaluation.paper import PAPER_PARAMS_M

#: SegNet-Basic's two index-decoder variants: the same builder, configured.
SEGNET_BASIC_ENCODER_ADDITION = replace(SEGNET_BASIC, name="SegNet-Basic-EncoderAddition", encoder_addition=True)
SEGNET_BASIC_SINGLE_CHANNEL = replace(SEGNET_BASIC, name="SegNet-Basic-SingleChannelDecoder",
                                      single_channel_decoder=True)  # fmt: skip
#: The FCN variants keep SegNet-Basic's encoder and replace its decoder.
BASIC_ENCODER = replace(SEGNET_BASIC, name="SegNet-Basic encoder", decoder=())


def bilinear_deconv_(weight: torch.Tensor) -> None:
    """Initialise an 8x8 stride-2 deconvolution (pad 3) to exact bilinear 2x upsampling."""
    profile = torch.tensor([0.25, 0.75, 0.75, 0.25])
    kernel = torch.zeros(8, 8)
    kernel[2:6, 2:6] = profile[:, None] * profile[None, :]
    with torch.no_grad():
        weight.zero_()
        for c in range(min(weight.shape[0], weight.shape[1])):
            weight[c, c] = kernel


class UpsampleDecoderNet(SegNet):
    """FCN-Basic and its variants, and Bilinear-Interpolation: SegNet-Basic's encoder, an upsampling decoder."""

    keeps_pooled = True

    def __init__(self, num_classes: int | None = None, in_channels: int = 3, bn: BNKind = "pytorch",
                 addition: bool = True, dim_reduction: bool = True, learned: bool = True):  # fmt: skip
        self.addition, self.dim_reduction, self.learned = addition, dim_reduction, learned
        super().__init__(BASIC_ENCODER, num_classes, in_channels, bn)

    def _build_decoder(self, channels: int, num_classes: int, bn: BNKind) -> None:
        stages = len(self.arch.encoder)
        width = num_classes if self.dim_reduction else channels
        # BN follows every convolution and deconvolution but the one producing the class scores,
        # as the paper puts BN after each layer of encoder and decoder (and as lr 0.1 needs).
        if self.dim_reduction:
            self.score = nn.Sequential(nn.Conv2d(channels, num_classes, 1), make_bn(num_classes, bn))
            if self.addition:
                for stage in range(1, stages):  # maps of pool1..pool3, reduced to K
                    self.add_module(f"score_pool{stage}",
                                    nn.Sequential(nn.Conv2d(channels, num_classes, 1), make_bn(num_classes, bn)))  # fmt: skip
        if self.learned:
            for stage in range(stages, 0, -1):
                self.add_module(f"upscore{stage}", nn.ConvTranspose2d(width, width, 8, stride=2, padding=3, bias=False))
                scores = self.dim_reduction and stage == 1
                self.add_module(f"upscore{stage}_bn", nn.Identity() if scores else make_bn(width, bn))
        if not self.dim_reduction:
            self.conv_classifier = nn.Conv2d(channels, num_classes, 1)

    def reset_parameters(self) -> None:
        super().reset_parameters()  # He for the convolutions
        for module in self.modules():
            if isinstance(module, nn.ConvTranspose2d):
                bilinear_deconv_(module.weight)

    def _upsample(self, x: torch.Tensor, stage: int, size) -> torch.Tensor:
        if not self.learned:
            return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        x = getattr(self, f"upscore{stage}")(x)[..., : size[0], : size[1]]
        return getattr(self, f"upscore{stage}_bn")(x)

    def decode(self, encoded: Encoded) -> torch.Tensor:
        x = self.score(encoded.x) if self.dim_reduction else encoded.x
        for stage in range(len(self.arch.encoder), 0, -1):
            x = self._upsample(x, stage, encoded.sizes[stage - 1])  # the resolution this stage's encoder started from
            if self.addition and stage > 1:
                skip = encoded.pooled[stage - 2]
                x = x + (getattr(self, f"score_pool{stage - 1}")(skip) if self.dim_reduction else skip)
        return x if self.dim_reduction else self.conv_classifier(x)


BUILDERS = {  # in the order of the paper's Table 1
    "Bilinear-Interpolation": lambda k, c, bn: UpsampleDecoderNet(k, c, bn, addition=False, learned=False),
    "SegNet-Basic": lambda k, c, bn: SegNet(SEGNET_BASIC, k, c, bn),
    "SegNet-Basic-EncoderAddition": lambda k, c, bn: SegNet(SEGNET_BASIC_ENCODER_ADDITION, k, c, bn),
    "SegNet-Basic-SingleChannelDecoder": lambda k, c, bn: SegNet(SEGNET_BASIC_SINGLE_CHANNEL, k, c, bn),
    "FCN-Basic": lambda k, c, bn: UpsampleDecoderNet(k, c, bn),
    "FCN-Basic-NoAddition": lambda k, c, bn: UpsampleDecoderNet(k, c, bn, addition=False),
    "FCN-Basic-NoDimReduction": lambda k, c, bn: UpsampleDecoderNet(k, c, bn, dim_reduction=False),
    "FCN-Basic-NoAddition-NoDimReduction": lambda k, c, bn: UpsampleDecoderNet(k, c, bn, addition=False,
                                                                              dim_reduction=False),  # fmt: skip
}
VARIANTS = list(BUILDERS)


def build_variant(name: str, num_classes: int | None = None, bn: BNKind = "pytorch", in_channels: int = 3) -> nn.Module:
    """One of the Table 1 networks, by the paper's name, He-initialised (deconvolutions bilinear)."""
    if name not in BUILDERS:
        raise KeyError(f"unknown variant {name!r}; choose from {', '.join(BUILDERS)}")
    return BUILDERS[name](num_classes, in_channels, bn)


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
        paper = PAPER_PARAMS_M.get(name)
        if paper is None:
            lines.append(f"{name:<38} {ours:>9.3f} {'-':>10} {'-':>6}")
        else:
            lines.append(f"{name:<38} {ours:>9.3f} {paper:>10.3f} {ours / paper:>6.2f}")
    return "\n".join(lines) + "\n\n" + NOTES
