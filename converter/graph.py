"""A Caffe net as a torch module: layers run in Caffe's order over named blobs.

``CaffeNet`` keeps Caffe's vocabulary: blobs are named, layers read bottoms
and write tops, and a layer whose top repeats its bottom (SegNet's conv ->
BN -> ReLU all writing ``conv1``) replaces the blob's value, so after the
pass a blob holds what Caffe's blob of that name holds. Any blob can be asked
for by name; blobs nobody asked for are freed as soon as no later layer reads
them.
"""

from __future__ import annotations

import math
import operator
import re
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from caffe_proto import caffe_pb2

from . import budget
from .dialect import Dialect, detect_net
from .errors import CaffeFormatError, UserError
from .layers import DATA_LAYER_TYPES, DEFAULT_IMAGE_SIZE, LAYER_TYPES, CaffeLayer, Shape, implied_input_shapes, refusal
from .prototxt import layers_for_phase, net_to_text, phase_value
from .weights import MAX_BLOB_AXES, CaffeWeights

#: Caffe's own bound on one blob: Blob::Reshape refuses a count above INT_MAX.
MAX_BLOB_COUNT = 2**31 - 1
BLOB_BYTES = 4  # blobs are float32, as Caffe holds them


class DuplicateLayerNameWarning(UserWarning):
    """Several layers share a name: Caffe gives weights to the first of them only."""


@dataclass(frozen=True)
class Step:
    """One layer of the plan: which module runs on which blobs."""

    name: str
    type: str
    key: str  # attribute name of the module in CaffeNet.layers
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]


class CaffeNet(nn.Module):
    """A Caffe network definition built as a torch module for one phase.

    Args:
        net: the network (``converter.read_net`` output).
        phase: "TEST" or "TRAIN"; selects layers by their include/exclude
            rules and sets the module's initial train/eval mode.
        input_shapes: shapes for net inputs and data-layer tops, overriding
            what the prototxt implies.
        image_size: (H, W) for data layers that do not state a size.

    Call it with the input blobs (by name, or positionally in
    ``input_names`` order); it returns a dict of blobs: the net's outputs, or
    the blobs named in ``blobs=`` ("all" for every blob).
    """

    def __init__(
        self,
        net: caffe_pb2.NetParameter,
        phase: str | int = "TEST",
        input_shapes: Mapping[str, Sequence[int]] | None = None,
        image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    ):
        super().__init__()
        self.net_param = net
        self.phase = caffe_pb2.Phase.Name(phase_value(phase))
        self.layers = nn.ModuleDict()
        self.steps: list[Step] = []
        self.blob_shapes: dict[str, Shape] = {}
        self.input_shapes: dict[str, Shape] = {}
        self.loss_weights: dict[str, float] = {}
        self._plans: dict[frozenset[str], tuple[list[Step], list[str]]] = {}
        self._producers: dict[str, CaffeLayer] = {}  # blob -> the layer that last wrote it, while building
        self._build(dict(input_shapes or {}), image_size)
        self.train(self.phase == "TRAIN")

    # ------------------------------------------------------------------ building

    def _build(self, overrides: dict[str, Sequence[int]], image_size: tuple[int, int]) -> None:
        net = self.net_param
        layers = layers_for_phase(net, self.phase)
        unknown: dict[str, list[str]] = {}
        for layer in layers:
            reason = refusal(layer)
            if reason:
                raise CaffeFormatError(reason, layer=layer.name)
            if layer.type not in LAYER_TYPES and layer.type not in DATA_LAYER_TYPES:
                unknown.setdefault(layer.type or "<no type>", []).append(layer.name)
        if unknown:
            listing = "; ".join(f"{t} (layer {', '.join(names)})" for t, names in unknown.items())
            raise CaffeFormatError(f"unsupported layer type(s): {listing}")

        overrides = {name: _valid_shape(shape, f"input '{name}'") for name, shape in overrides.items()}
        known_inputs: dict[str, Shape | None] = {}
        for i, name in enumerate(net.input):
            known_inputs[name] = tuple(net.input_shape[i].dim) if net.input_shape else None
        for layer in layers:
            if layer.type in DATA_LAYER_TYPES:
                implied = implied_input_shapes(layer, image_size)
                if layer.type == "DenseImageData" and len(layer.top) > 1 and layer.top[0] in overrides:
                    if len(overrides[layer.top[0]]) != 4:
                        raise CaffeFormatError(f"input '{layer.top[0]}' of a DenseImageData layer needs 4 sizes "
                                               "(N, C, H, W)", layer=layer.name)  # fmt: skip
                    n, _, h, w = overrides[layer.top[0]]  # the label follows the image's size
                    implied[layer.top[1]] = (n, 1, h, w)
                known_inputs.update(implied)
        extra = set(overrides) - set(known_inputs)
        if extra:
            raise CaffeFormatError(
                f"input shape given for {sorted(extra)}, but the net's inputs are {sorted(known_inputs)}"
            )
        _check_single_producers(list(net.input), layers)
        self._blob_bytes = 0
        for name, shape in known_inputs.items():
            shape = overrides.get(name, shape)
            if shape is not None:
                shape = _valid_shape(shape, f"input '{name}'")
                self._count_blob(name, shape)
            self.input_shapes[name] = shape
            self.blob_shapes[name] = shape

        used_keys: set[str] = set()
        with budget.allocations("the net's parameters") as params:
            for layer in layers:
                if layer.type in DATA_LAYER_TYPES:
                    continue
                try:
                    self._add_layer(layer, used_keys)
                    budget.check(params.total + self._blob_bytes, "the net's blobs (float32) and parameters",
                                 at_least=True)
                except UserError as exc:
                    if exc.layer is None:
                        raise type(exc)(exc.problem, exc.path, layer.name) from None
                    raise

    def _count_blob(self, name: str, shape: Shape) -> None:
        """Add a new blob to the memory the net's blobs declare (a blob written in place counts once)."""
        if name not in self.blob_shapes:
            self._blob_bytes += math.prod(shape) * BLOB_BYTES

    def _add_layer(self, layer: caffe_pb2.LayerParameter, used_keys: set[str]) -> None:
        cls = LAYER_TYPES[layer.type]
        bottoms, tops = tuple(layer.bottom), tuple(layer.top)
        for label, count, (low, high) in (("bottom", len(bottoms), cls.n_bottoms), ("top", len(tops), cls.n_tops)):
            if count < low or (high is not None and count > high):
                want = f"{low}" if low == high else f"{low}..{high if high is not None else 'n'}"
                raise CaffeFormatError(f"{layer.type} takes {want} {label}(s), got {count}", layer=layer.name)
        shapes = []
        for b in bottoms:
            if b not in self.blob_shapes:
                raise CaffeFormatError(f"bottom '{b}' is not produced by any earlier layer or input", layer=layer.name)
            if self.blob_shapes[b] is None:
                raise CaffeFormatError(
                    f"the size of input '{b}' is unknown: give it, e.g. --input-shape {b}=N,C,H,W",
                    layer=layer.name,
                )
            shapes.append(self.blob_shapes[b])
        try:
            module: CaffeLayer = cls(layer, shapes, phase_value(self.phase))
            top_shapes = module.top_shapes(shapes)
        except (ArithmeticError, IndexError, ValueError) as exc:  # parameters no Caffe layer could be set up with
            if isinstance(exc, UserError):
                raise
            raise CaffeFormatError(f"impossible parameters for bottom shape(s) {[list(s) for s in shapes]} "
                                   f"({type(exc).__name__}: {exc})", layer=layer.name) from None  # fmt: skip
        if getattr(module, "inplace", False) and any(b in self.input_shapes for b in bottoms):
            module.inplace = False  # never overwrite a tensor the caller passed in
        if layer.type == "Upsample":
            pool = self._producers.get(bottoms[1])
            module.unique_indices = (
                getattr(pool, "method", None) == "MAX" and pool.kernel is not None
                and all(k <= s for k, s in zip(pool.kernel, pool.stride))
            )  # fmt: skip
        for top, shape in zip(tops, top_shapes):
            shape = _valid_shape(shape, f"top '{top}'")
            self._count_blob(top, shape)
            self.blob_shapes[top] = shape
            self._producers[top] = module
        weights = list(layer.loss_weight)
        if weights and len(weights) != len(tops):
            raise CaffeFormatError(f"{len(weights)} loss_weight values for {len(tops)} tops", layer=layer.name)
        if not weights and cls.default_loss_weight and tops:
            weights = [cls.default_loss_weight] + [0.0] * (len(tops) - 1)
        for top, weight in zip(tops, weights):
            if weight:
                self.loss_weights[top] = float(weight)
        key = _module_key(layer.name, used_keys)
        self.layers[key] = module
        self.steps.append(Step(layer.name, layer.type, key, bottoms, tops))

    # ------------------------------------------------------------------ introspection

    @cached_property
    def dialect(self) -> Dialect:
        """Which Caffe the net definition was written for (converter.dialect), worked out once."""
        return detect_net(self.net_param)

    @property
    def input_names(self) -> list[str]:
        """Inputs some layer reads, in declaration order (what ``forward`` needs)."""
        read = {b for step in self.steps for b in step.bottoms}
        return [name for name in self.input_shapes if name in read]

    @property
    def output_names(self) -> list[str]:
        """Blobs that no later layer reads: Caffe's net outputs."""
        outputs: list[str] = []
        for i, step in enumerate(self.steps):
            for top in step.tops:
                later_reads = any(top in s.bottoms for s in self.steps[i + 1 :])
                if not later_reads and top not in outputs:
                    outputs.append(top)
                elif later_reads and top in outputs:
                    outputs.remove(top)
        return outputs

    @property
    def index_blob_names(self) -> set[str]:
        """Blobs holding indices (pooling masks, ArgMax), which compare exactly."""
        return {step.tops[i] for step, module in self.named_layers() for i in module.index_tops()}

    def layer(self, name: str) -> CaffeLayer:
        """The module of the Caffe layer called ``name``."""
        for step in self.steps:
            if step.name == name:
                return self.layers[step.key]
        raise KeyError(f"no layer named {name!r}")

    def named_layers(self) -> Iterable[tuple[Step, CaffeLayer]]:
        for step in self.steps:
            yield step, self.layers[step.key]

    @property
    def prototxt(self) -> str:
        """The network definition as prototxt text (no weights)."""
        return net_to_text(self.net_param)

    def set_mc_dropout(self, enabled: bool) -> None:
        """Sample dropout masks at test time in layers marked ``sample_weights_test``."""
        for _, module in self.named_layers():
            if getattr(module, "sample_weights_test", False):
                module.mc_dropout = enabled

    # ------------------------------------------------------------------ running

    def forward(self, *args: torch.Tensor, blobs: Iterable[str] | str | None = None, **inputs: torch.Tensor):
        if blobs == "all":
            keep = frozenset(self.blob_shapes)
        elif blobs is None:
            keep = frozenset(self.output_names)
        else:
            keep = frozenset([blobs] if isinstance(blobs, str) else blobs)
            missing = keep - set(self.blob_shapes)
            if missing:
                raise KeyError(f"no blob(s) {sorted(missing)} in this net")
        steps, needed_inputs = self._plan(keep)
        feed = self._feed(args, inputs, needed_inputs)
        last_read = {}
        for i, step in enumerate(steps):
            for b in step.bottoms:
                last_read[b] = i
        env: dict[str, torch.Tensor] = dict(feed)
        for i, step in enumerate(steps):
            outs = self.layers[step.key](*(env[b] for b in step.bottoms))
            for top, value in zip(step.tops, outs):
                env[top] = value
            for b in step.bottoms:
                if last_read[b] == i and b not in keep:
                    env.pop(b, None)
        order = self.blob_shapes if blobs == "all" else keep
        return {name: env[name] for name in order if name in env}

    def plan(self, blobs: Iterable[str]) -> tuple[list[Step], list[str]]:
        """The layers that compute ``blobs`` (in Caffe's order) and the net inputs they read."""
        return self._plan(frozenset(blobs))

    def _plan(self, keep: frozenset[str]) -> tuple[list[Step], list[str]]:
        """The layers needed to produce ``keep`` (others, e.g. an unused loss, are skipped) and the inputs they read."""
        cached = self._plans.get(keep)
        if cached is None:
            needed, chosen = set(keep), []
            for step in reversed(self.steps):
                if needed & set(step.tops):
                    needed -= set(step.tops)
                    needed |= set(step.bottoms)
                    chosen.append(step)
            inputs = [name for name in self.input_shapes if name in needed]
            cached = self._plans[keep] = (chosen[::-1], inputs)
        return cached

    def _feed(
        self, args: Sequence[torch.Tensor], inputs: Mapping[str, torch.Tensor], needed: list[str]
    ) -> dict[str, torch.Tensor]:
        if args:
            if len(args) > len(needed):
                raise TypeError(f"{len(args)} positional inputs for the net's inputs {needed}")
            inputs = {**dict(zip(needed, args)), **inputs}
        unknown = set(inputs) - set(self.input_shapes)
        if unknown:
            raise TypeError(f"unknown input(s) {sorted(unknown)}; the net's inputs are {list(self.input_shapes)}")
        missing = [name for name in needed if name not in inputs]
        if missing:
            raise TypeError(f"missing input(s) {missing}")
        return dict(inputs)

    def total_loss(self, outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Sum of loss_weight * loss top, as Caffe's objective (TRAIN nets)."""
        if not self.loss_weights:
            raise ValueError("this net has no loss layers")
        return sum(w * outputs[top].sum() for top, w in self.loss_weights.items())

    # ------------------------------------------------------------------ weights

    def init_weights(self, seed: int | None = 0) -> None:
        """Initialise every parameter with its prototxt filler (Caffe's defaults: constant 0)."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        for _, module in self.named_layers():
            module.fill(generator)

    def load_caffe_weights(
        self, weights: CaffeWeights, allow_missing: bool = False, allow_unused: bool = False
    ) -> list[str]:
        """Copy blobs from a weight file, matching layers by name as Caffe does.

        Errors (one line, naming the file and layer): a blob count or shape
        that does not fit the prototxt, a layer with weights that the net
        lacks (unless ``allow_unused``), a net layer with parameters that the
        file lacks (unless ``allow_missing``). Returns the names of the layers
        left with their initial values.
        """
        by_name: dict[str, CaffeLayer] = {}
        shared: dict[str, int] = {}
        for step, module in self.named_layers():
            by_name.setdefault(step.name, module)  # Caffe copies a layer's weights into the first of that name
            if module.blob_attrs:
                shared[step.name] = shared.get(step.name, 0) + 1
        for name, count in shared.items():
            if count > 1 and name in weights and weights[name].blobs:
                warnings.warn(f"{count} layers of the prototxt are named '{name}': the weights go to the first, as "
                              "Caffe does, and the others keep their initial values", DuplicateLayerNameWarning,
                              stacklevel=2)  # fmt: skip
        for entry in weights.with_blobs():
            module = by_name.get(entry.name)
            if module is None:
                if allow_unused:
                    continue
                raise CaffeFormatError("has weights but no layer of that name in the net (phase "
                                       f"{self.phase})", weights.path, entry.name)  # fmt: skip
            expected = module.blob_shapes()
            if len(entry.blobs) != len(expected):
                raise CaffeFormatError(
                    f"{len(entry.blobs)} blob(s) in the weights, the prototxt's {module.caffe_type} "
                    f"layer expects {len(expected)} {[list(s) for s in expected]}",
                    weights.path,
                    entry.name,
                )
            for i, (blob, shape) in enumerate(zip(entry.blobs, expected)):
                if not shape_matches(blob.shape, blob.legacy, shape):
                    raise CaffeFormatError(
                        f"blob {i} has shape {list(blob.shape)} in the weights but the prototxt implies {list(shape)}",
                        weights.path,
                        entry.name,
                    )
            module.load_blobs([b.data for b in entry.blobs])
        missing = [
            step.name
            for step, module in self.named_layers()
            if module.blob_attrs and (step.name not in weights or not weights[step.name].blobs)
        ]
        if missing and not allow_missing:
            raise CaffeFormatError(
                f"no weights for layer(s) {', '.join(missing)} of the prototxt", weights.path
            )
        return missing


def _valid_shape(shape: Sequence[int], what: str) -> Shape:
    """A blob shape of whole numbers, every size positive and at most Caffe's count per blob."""
    try:
        dims = tuple(_whole(d) for d in shape)
    except TypeError:
        raise CaffeFormatError(f"{what} would have shape {_shown(shape)}: sizes must be whole numbers") from None
    if len(dims) > MAX_BLOB_AXES:
        raise CaffeFormatError(f"{what} would have {len(dims)} axes; Caffe allows at most {MAX_BLOB_AXES}")
    if any(d <= 0 for d in dims):
        raise CaffeFormatError(f"{what} would have shape {list(dims)}: every size must be positive")
    count = math.prod(dims)
    if count > MAX_BLOB_COUNT:
        raise CaffeFormatError(f"{what} would have shape {list(dims)}, {count} values: more than the 2^31-1 "
                               "Caffe allows in one blob")  # fmt: skip
    return dims


def _whole(value: object) -> int:
    """A whole number (an int, a numpy integer); never a float, a string or a bool taken for one."""
    if isinstance(value, bool):
        raise TypeError("a bool is not a size")
    return operator.index(value)


def _shown(shape: object) -> str:
    text = repr(list(shape)) if isinstance(shape, (tuple, list)) else repr(shape)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_single_producers(inputs: Sequence[str], layers: Sequence[caffe_pb2.LayerParameter]) -> None:
    """Caffe's rule: a blob has one producer, and later layers may write it only in place (top i = bottom i)."""
    producer = {name: "a net input" for name in inputs}
    for layer in layers:
        for i, top in enumerate(layer.top):
            in_place = i < len(layer.bottom) and layer.bottom[i] == top
            if top in producer and not in_place:
                raise CaffeFormatError(f"top '{top}' is already produced by {producer[top]}; a later layer may only "
                                       f"write it in place (as top {i} with bottom {i} '{top}')", layer=layer.name)  # fmt: skip
            producer.setdefault(top, f"layer '{layer.name}'")


def shape_matches(blob_shape: tuple[int, ...], legacy: bool, expected: tuple[int, ...]) -> bool:
    """Whether a weight file's blob fits the shape the prototxt implies, by Caffe's rule."""
    if not legacy:
        return tuple(blob_shape) == tuple(expected)
    # Legacy 4-D shapes are compared with the expected shape padded to 4-D with leading ones.
    if len(expected) > 4:
        return False
    return tuple(blob_shape) == (1,) * (4 - len(expected)) + tuple(expected)


def _module_key(name: str, used: set[str]) -> str:
    key = re.sub(r"\W", "_", name) or "layer"
    if key[0].isdigit():
        key = "_" + key
    base, n = key, 1
    while key in used or hasattr(nn.Module, key):
        n += 1
        key = f"{base}_{n}"
    used.add(key)
    return key


def numpy_blobs(blobs: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Blobs as Caffe would hold them: float32 arrays (masks and indices as floats too)."""
    return {k: v.detach().cpu().to(torch.float32).numpy() for k, v in blobs.items()}
