"""The SegNet family as readable PyTorch models.

SegNet (VGG-16 encoder of 13 convolutions, mirrored 13-layer decoder) and
SegNet-Basic (4 encoders and 4 decoders of 64 7x7 filters, LRN on the input,
BN without ReLU in the decoder, 1x1 classifier), each optionally Bayesian
(dropout where SegNet-Tutorial's Bayesian prototxts put it). Every decoder
stage unpools with the indices of its encoder's max pooling, to the size that
pooling started from, as caffe-segnet's Upsample layer does.

Modules carry the Caffe layer names of SegNet-Tutorial's prototxt files
(``conv1_1``, ``conv1_1_bn``, ..., ``conv1_1_D``; ``conv1``, ...,
``conv_decode1``, ``conv_classifier``), so converted Caffe weights load by
name (``segnet.models.weights.load_caffe_weights``) and models export back to
caffe-segnet files (``segnet.export``).

    model = segnet_basic(num_classes=11)          # new, He-initialised, torch BatchNorm
    logits = model(images)                        # N x 11 x H x W
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from segnet.data.labels import default_num_classes
from segnet.models.caffe_graph import check_channels
from segnet.models.layers import LRN, BNKind, MaxPoolIndices, Unpool, make_bn


@dataclass(frozen=True)
class Architecture:
    """What distinguishes the members of the family."""

    name: str
    #: output channels of each convolution, per encoder stage
    encoder: tuple[tuple[int, ...], ...]
    #: output channels of each decoder convolution, per stage, deepest stage first;
    #: the classifier (num_classes outputs) is added after the last one
    decoder: tuple[tuple[int, ...], ...]
    kernel: int
    classifier_kernel: int
    decoder_relu: bool
    input_lrn: bool
    #: encoder stages (1-based) with dropout after their pooling, decoder stages with dropout after them
    encoder_dropout: tuple[int, ...] = ()
    decoder_dropout: tuple[int, ...] = ()
    #: "vgg" (conv1_1 ... conv1_1_D) or "basic" (conv1 ... conv_decode1, conv_classifier)
    naming: str = "vgg"
    #: Table 1's variants: add each stage's encoder maps (before pooling) to its decoder's output
    encoder_addition: bool = False
    #: Table 1's variants: decoder filters see only their own upsampled map (depthwise convolutions)
    single_channel_decoder: bool = False


SEGNET = Architecture(
    "SegNet",
    encoder=((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    decoder=((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64,)),
    kernel=3, classifier_kernel=3, decoder_relu=True, input_lrn=False,
)  # fmt: skip
SEGNET_BASIC = Architecture(
    "SegNet-Basic",
    encoder=((64,), (64,), (64,), (64,)),
    decoder=((64,), (64,), (64,), (64,)),
    kernel=7, classifier_kernel=1, decoder_relu=False, input_lrn=True, naming="basic",
)  # fmt: skip
BAYESIAN_SEGNET = Architecture(
    **{**SEGNET.__dict__, "name": "Bayesian SegNet", "encoder_dropout": (3, 4, 5), "decoder_dropout": (5, 4, 3)}
)
BAYESIAN_SEGNET_BASIC = Architecture(
    **{**SEGNET_BASIC.__dict__, "name": "Bayesian SegNet-Basic", "encoder_dropout": (3, 4), "decoder_dropout": (4, 3)}
)

DROPOUT_RATIO = 0.5


@dataclass
class Encoded:
    """What the encoder hands the decoder: the last pooled maps and, per stage, what the decoder reads."""

    x: torch.Tensor
    sizes: list[torch.Size]  # each stage's map size before pooling (what unpooling restores)
    indices: list[torch.Tensor]  # pooling indices
    features: list[torch.Tensor]  # maps before pooling, kept only for encoder addition
    pooled: list[torch.Tensor]  # pooled maps, kept only for decoders that read them


def encoder_name(arch: Architecture, stage: int, j: int) -> str:
    """SegNet-Tutorial's name of the j-th convolution (1-based) of encoder ``stage``."""
    return f"conv{stage}" if arch.naming == "basic" else f"conv{stage}_{j}"


def decoder_name(arch: Architecture, stage: int, j: int) -> str:
    """SegNet-Tutorial's name of the j-th convolution (0-based) of decoder ``stage``."""
    if arch.naming == "basic":
        return f"conv_decode{stage}"
    n = len(arch.encoder[stage - 1])  # decoder convs count down: conv5_3_D, conv5_2_D, ...
    return f"conv{stage}_{n - j}_D"


class SegNet(nn.Module):
    """An encoder-decoder of the SegNet family (see ``Architecture``); returns class scores."""

    def __init__(
        self,
        arch: Architecture = SEGNET,
        num_classes: int | None = None,
        in_channels: int = 3,
        bn: BNKind = "pytorch",
    ):
        super().__init__()
        num_classes = default_num_classes() if num_classes is None else num_classes
        self.arch, self.num_classes, self.in_channels = arch, num_classes, in_channels
        channels = self._build_encoder(in_channels, bn)
        self._build_decoder(channels, num_classes, bn)
        self.reset_parameters()

    def _build_encoder(self, in_channels: int, bn: BNKind) -> int:
        """LRN (SegNet-Basic), the encoder stages and their pooling; returns the output channels."""
        arch = self.arch
        self.norm = LRN(5, 1e-4, 0.75) if arch.input_lrn else None
        self.pool = MaxPoolIndices(2, 2)
        channels = in_channels
        for stage, widths in enumerate(arch.encoder, start=1):
            for j, width in enumerate(widths, start=1):
                self._conv_unit(self.encoder_name(stage, j), channels, width, bn, relu=True)
                channels = width
            if stage in arch.encoder_dropout:
                self.add_module(f"encdrop{stage}", nn.Dropout(DROPOUT_RATIO))
        return channels

    def _build_decoder(self, channels: int, num_classes: int, bn: BNKind) -> None:
        """Unpooling decoder stages (deepest first) and the classifier."""
        arch = self.arch
        self.unpool = Unpool()
        for depth, widths in enumerate(arch.decoder):
            stage = len(arch.decoder) - depth
            for j, width in enumerate(widths):
                groups = width if arch.single_channel_decoder and width == channels else 1
                self._conv_unit(self.decoder_name(stage, j), channels, width, bn, relu=arch.decoder_relu,
                                groups=groups)  # fmt: skip
                channels = width
            if stage in arch.decoder_dropout:
                self.add_module(f"decdrop{stage}", nn.Dropout(DROPOUT_RATIO))
        k = arch.classifier_kernel
        self.add_module(self.classifier_name, nn.Conv2d(channels, num_classes, k, padding=k // 2))

    # -- names ------------------------------------------------------------------

    def encoder_name(self, stage: int, j: int) -> str:
        return encoder_name(self.arch, stage, j)

    def decoder_name(self, stage: int, j: int) -> str:
        return decoder_name(self.arch, stage, j)

    @property
    def classifier_name(self) -> str:
        return "conv_classifier" if self.arch.naming == "basic" else "conv1_1_D"

    def _conv_unit(self, name: str, cin: int, cout: int, bn: BNKind, relu: bool, groups: int = 1) -> None:
        self.add_module(name, nn.Conv2d(cin, cout, self.arch.kernel, padding=self.arch.kernel // 2, groups=groups))
        self.add_module(f"{name}_bn", make_bn(cout, bn))
        if relu:
            self.add_module(f"{name}_relu", nn.ReLU(inplace=True))

    def conv_units(self) -> Iterator[tuple[str, bool]]:
        """(convolution name, followed by ReLU) in forward order, classifier excluded."""
        for stage, widths in enumerate(self.arch.encoder, start=1):
            for j in range(1, len(widths) + 1):
                yield self.encoder_name(stage, j), True
        for depth, widths in enumerate(self.arch.decoder):
            for j in range(len(widths)):
                yield self.decoder_name(len(self.arch.decoder) - depth, j), self.arch.decoder_relu

    def decoder_layers(self) -> list[str]:
        """The convolutions after the last pooling (decoder and classifier): their outputs decide no pooling."""
        encoder = sum(len(widths) for widths in self.arch.encoder)
        return [name for name, _ in self.conv_units()][encoder:] + [self.classifier_name]

    # -- running ----------------------------------------------------------------

    def _unit(self, name: str, x: torch.Tensor) -> torch.Tensor:
        x = getattr(self, f"{name}_bn")(getattr(self, name)(x))
        relu = getattr(self, f"{name}_relu", None)
        return relu(x) if relu is not None else x

    #: whether the decoder reads the pooled maps of every stage (the FCN variants do)
    keeps_pooled = False

    def encode(self, x: torch.Tensor) -> Encoded:
        """The encoder. Maps the decoder does not read are not kept, so they are freed as soon as pooled."""
        if self.norm is not None:
            x = self.norm(x)
        out = Encoded(x, [], [], [], [])
        for stage, widths in enumerate(self.arch.encoder, start=1):
            for j in range(1, len(widths) + 1):
                x = self._unit(self.encoder_name(stage, j), x)
            out.sizes.append(x.shape[-2:])
            if self.arch.encoder_addition:
                out.features.append(x)
            x, idx = self.pool(x)
            out.indices.append(idx)
            if stage in self.arch.encoder_dropout:
                x = getattr(self, f"encdrop{stage}")(x)
            if self.keeps_pooled:
                out.pooled.append(x)
        out.x = x
        return out

    def decode(self, encoded: Encoded) -> torch.Tensor:
        """The decoder: unpool each stage to the size its pooling started from, convolve; then classify."""
        x = encoded.x
        for depth, widths in enumerate(self.arch.decoder):
            stage = len(self.arch.decoder) - depth
            x = self.unpool(x, encoded.indices[stage - 1], encoded.sizes[stage - 1])
            for j in range(len(widths)):
                x = self._unit(self.decoder_name(stage, j), x)
            if self.arch.encoder_addition:
                x = x + encoded.features[stage - 1]
            if stage in self.arch.decoder_dropout:
                x = getattr(self, f"decdrop{stage}")(x)
        return getattr(self, self.classifier_name)(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels(x, self.in_channels)
        return self.decode(self.encode(x))

    def reset_parameters(self) -> None:
        """He (msra) initialisation of the convolutions, zero biases, unit BN: the paper's recipe."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)


def in_segnet_family(model: nn.Module) -> bool:
    """A SegNet-family model (any configuration of the builder), not a variant that only borrows its encoder."""
    return type(model) is SegNet


def segnet(num_classes: int | None = None, bn: BNKind = "pytorch", in_channels: int = 3) -> SegNet:
    """SegNet: VGG-16 encoder, mirrored decoder, 3x3 classifier."""
    return SegNet(SEGNET, num_classes, in_channels, bn)


def segnet_basic(num_classes: int | None = None, bn: BNKind = "pytorch", in_channels: int = 3) -> SegNet:
    """SegNet-Basic: 4 x (7x7, 64) encoders and decoders, LRN input, 1x1 classifier."""
    return SegNet(SEGNET_BASIC, num_classes, in_channels, bn)


def bayesian_segnet(num_classes: int | None = None, bn: BNKind = "pytorch", in_channels: int = 3) -> SegNet:
    """SegNet with dropout after encoders 3-5 and decoders 5-3 (Bayesian SegNet)."""
    return SegNet(BAYESIAN_SEGNET, num_classes, in_channels, bn)


def bayesian_segnet_basic(num_classes: int | None = None, bn: BNKind = "pytorch", in_channels: int = 3) -> SegNet:
    """SegNet-Basic with dropout after encoders 3-4 and decoders 4-3 (Bayesian SegNet-Basic)."""
    return SegNet(BAYESIAN_SEGNET_BASIC, num_classes, in_channels, bn)


MODELS = {
    "segnet": segnet,
    "segnet-basic": segnet_basic,
    "bayesian-segnet": bayesian_segnet,
    "bayesian-segnet-basic": bayesian_segnet_basic,
}


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BN running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
