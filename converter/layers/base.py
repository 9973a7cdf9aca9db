"""What every converted Caffe layer provides, and the registry of layer types.

Each layer family lives in its own module beside this one and owns everything
about its layers: the numbers they compute (Caffe's semantics, written as
functions the SegNet models reuse), the shapes of their tops (Caffe's shape
rule, as plain arithmetic), and the mapping between Caffe's parameter blobs
and the module's tensors.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from caffe_proto import caffe_pb2

from ..errors import CaffeFormatError
from ..fillers import fill

Shape = tuple[int, ...]

#: The relative rounding of one float32 operation (half an ulp).
FLOAT32_ROUNDING = 2.0**-24

#: Caffe type name -> layer class. Filled by ``@register``.
LAYER_TYPES: dict[str, type["CaffeLayer"]] = {}


def register(*type_names: str):
    """Class decorator: make a layer class the implementation of these Caffe types."""

    def add(cls: type[CaffeLayer]) -> type[CaffeLayer]:
        for name in type_names:
            if name in LAYER_TYPES:
                raise RuntimeError(f"layer type {name} registered twice")
            LAYER_TYPES[name] = cls
        cls.caffe_types = tuple(type_names)
        return cls

    return add


class CaffeLayer(nn.Module):
    """One Caffe layer as a torch module.

    ``forward(*bottoms)`` returns a tuple with one tensor per top. Layers are
    built knowing their bottom shapes, as Caffe's ``LayerSetUp`` does, because
    parameter shapes depend on them.
    """

    caffe_types: ClassVar[tuple[str, ...]] = ()
    #: Attribute names of the parameter tensors, in Caffe's blob order.
    blob_attrs: tuple[str, ...] = ()
    #: Loss weight of the first top when the prototxt gives none.
    default_loss_weight: ClassVar[float] = 0.0
    #: Number of bottoms (min, max); None = unbounded.
    n_bottoms: ClassVar[tuple[int, int | None]] = (1, 1)
    #: Number of tops (min, max).
    n_tops: ClassVar[tuple[int, int | None]] = (1, 1)

    def __init__(self, param: caffe_pb2.LayerParameter, bottom_shapes: Sequence[Shape], phase: int):
        super().__init__()
        self.caffe_name = param.name
        self.caffe_type = param.type
        self.phase = phase
        self.num_tops = len(param.top)
        self.bottom_shapes: list[Shape] = [tuple(s) for s in bottom_shapes]

    # -- shapes ---------------------------------------------------------------

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        """Caffe's shape rule: the top shapes for these bottom shapes."""
        return [tuple(bottom_shapes[0])] * self.num_tops

    def index_tops(self) -> tuple[int, ...]:
        """Positions of tops that hold indices (masks, argmax): compared exactly, not approximately."""
        return ()

    # -- rounding (the noise model of converter.verdict) -----------------------

    def sequential_terms(self, top: int = 0) -> int:
        """How many terms caffe-segnet adds in a plain float32 loop (no BLAS) into one value of ``top``.

        Such a loop rounds more than a vectorised sum, so the comparison
        verdict allows at least its rounding there (e.g. a loss summed over
        every position). 0: Caffe uses BLAS, or nothing is summed.
        """
        return 0

    def coherent_rounding(self, bottoms: Sequence[torch.Tensor], tops: Sequence[torch.Tensor],
                          uniform) -> Sequence[torch.Tensor]:  # fmt: skip
        """``tops`` as they would be had the statistics this layer takes over many positions rounded in float32.

        converter.verdict calls it in its noisy runs: a statistic (a batch
        mean, a variance) rounds once and moves every value computed from it
        together. ``uniform(count, dtype)`` gives fresh random numbers of rms
        1. The default: the layer takes no such statistics; tops unchanged.
        """
        return tops

    # -- parameters -----------------------------------------------------------

    def blob_tensors(self) -> list[torch.Tensor]:
        return [getattr(self, attr) for attr in self.blob_attrs]

    def blob_shapes(self) -> list[Shape]:
        """The shapes Caffe gives this layer's parameter blobs."""
        return [tuple(t.shape) for t in self.blob_tensors()]

    def load_blobs(self, arrays: Sequence[np.ndarray]) -> None:
        """Copy Caffe blobs (already checked against ``blob_shapes``) in."""
        with torch.no_grad():
            for tensor, array in zip(self.blob_tensors(), arrays):
                # np.array copies: blobs may be read-only views of the weight file.
                tensor.copy_(torch.from_numpy(np.array(array, dtype=np.float32)).reshape(tensor.shape))

    def export_blobs(self) -> list[np.ndarray]:
        """The parameter blobs as Caffe stores them."""
        return [t.detach().cpu().float().numpy().reshape(s) for t, s in zip(self.blob_tensors(), self.blob_shapes())]

    def fill(self, generator: torch.Generator) -> None:
        """Initialise parameters with the prototxt's fillers (new, untrained nets)."""

    def extra_repr(self) -> str:
        return f"{self.caffe_type} '{self.caffe_name}'"

    def fail(self, problem: str) -> CaffeFormatError:
        return CaffeFormatError(problem, layer=self.caffe_name)


class WeightAndBias(CaffeLayer):
    """A layer with a learned weight and, with ``bias_term``, a bias: Convolution, InnerProduct, Embed.

    Their parameter messages share ``bias_term``, ``weight_filler`` and ``bias_filler``.
    """

    def init_weight_and_bias(self, weight_shape: Shape, bias_size: int, p) -> None:
        self.weight = nn.Parameter(torch.zeros(weight_shape))
        self.bias = nn.Parameter(torch.zeros(bias_size)) if p.bias_term else None
        self.blob_attrs = ("weight", "bias") if p.bias_term else ("weight",)
        self._fillers = (p.weight_filler, p.bias_filler)

    def fill(self, generator: torch.Generator) -> None:
        fill(self.weight, self._fillers[0], generator)
        if self.bias is not None:
            fill(self.bias, self._fillers[1], generator)


def pair(param, single: str, h: str, w: str, default: int | None = None, what: str = "",
         minimum: int = 0) -> tuple[int, int]:  # fmt: skip
    """Caffe's "one value, or _h and _w" convention for 2-D sizes, each at least ``minimum``."""
    values = _pair(param, single, h, w, default, what)
    if min(values) < minimum:
        raise CaffeFormatError(f"{what or single} must be at least {minimum}, got {list(values)}")
    return values


def _pair(param, single: str, h: str, w: str, default: int | None, what: str) -> tuple[int, int]:
    if param.HasField(h) or param.HasField(w):
        if not (param.HasField(h) and param.HasField(w)):
            raise CaffeFormatError(f"{what or single}: give both {h} and {w}")
        return getattr(param, h), getattr(param, w)
    value = getattr(param, single)
    if isinstance(value, int):
        if not param.HasField(single) and default is None:
            raise CaffeFormatError(f"{what or single} is required")
        value = value if param.HasField(single) else default
        return value, value
    # repeated field (mainline Caffe's N-D convolution fields)
    values = list(value)
    if not values:
        if default is None:
            raise CaffeFormatError(f"{what or single} is required")
        return default, default
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise CaffeFormatError(f"{what or single}: only 2-D sizes are supported, got {values}")


def canonical_axis(axis: int, num_axes: int, layer: str) -> int:
    if not -num_axes <= axis < num_axes:
        raise CaffeFormatError(f"axis {axis} out of range for a {num_axes}-D blob", layer=layer)
    return axis % num_axes
