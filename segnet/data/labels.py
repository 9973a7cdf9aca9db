"""Label spaces: what the ids in label images and the channels of a model's output mean.

A :class:`LabelSpace` holds, in one object, everything that depends on the
data set's classes: their names (one per network output channel, so the
label id of a pixel is the channel that should win there), the id of void
(unlabelled) pixels, the colour palette of the label ids, and the released
per-class loss weights when there are some. Metrics, boundary F1, the loss,
evaluation, training, prediction, class weights and BN statistics all take
one instead of assuming a data set.

Void may lie outside the outputs (CamVid: 11 outputs, void 11; the generic
spaces: void 255) or be one of them (SUN RGB-D: 38 outputs, channel 0 is
void and never counts). The *classes* are the output ids other than void;
metrics number them 0..K-1 in id order (:meth:`LabelSpace.class_index`).

Where label spaces come from (:func:`get_label_space`):

* a name: every module in ``segnet/data/labelspaces/`` that defines
  ``LABEL_SPACE`` is one (``camvid``, ``sun-rgbd``); adding a data set is
  adding one such file;
* a JSON file: ``{"name": ..., "names": [...], "void": 255, "palette":
  [[r, g, b], ...], "class_weights": [...]}`` (palette and weights optional);
* a class count: :meth:`LabelSpace.generic` (``class 0``..; void 255).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from converter.errors import UserError

#: The label space a model or data set has when nothing says otherwise: SegNet's CamVid.
DEFAULT_LABEL_SPACE = "camvid"

RGB = tuple[int, int, int]


class LabelSpaceError(UserError):
    """A label space that cannot be found or read, or that does not fit a model."""


def voc_palette(count: int) -> tuple[RGB, ...]:
    """Distinct colours for ids 0..count-1 by Pascal VOC's rule (the bits of the id spread over R, G, B)."""
    colours = []
    for i in range(count):
        r = g = b = 0
        c = i
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


@dataclass(frozen=True)
class LabelSpace:
    """Class names per output id, the void id, a palette per id, and optional released class weights."""

    name: str
    names: tuple[str, ...]
    void: int
    palette: tuple[RGB, ...] = ()
    #: loss weight per output id, as a released training prototxt gives them (the "prototxt" balancing)
    class_weights: tuple[float, ...] | None = None
    #: where the names, palette and weights come from
    source: str = ""
    _lookup: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "palette", tuple(tuple(int(v) for v in c) for c in self.palette))
        if self.class_weights is not None:
            object.__setattr__(self, "class_weights", tuple(float(w) for w in self.class_weights))
        if not self.names:
            raise LabelSpaceError(f"label space {self.name!r} has no classes")
        if not 0 <= self.void <= 255:
            raise LabelSpaceError(f"label space {self.name!r}: void id {self.void} is not an 8-bit value")
        if self.num_outputs > 255 and self.void < self.num_outputs:
            raise LabelSpaceError(f"label space {self.name!r}: more than 255 classes do not fit 8-bit labels")
        if any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in self.palette):
            raise LabelSpaceError(f"label space {self.name!r}: palette entries must be [r, g, b] in 0..255")
        if self.class_weights is not None and len(self.class_weights) != self.num_outputs:
            raise LabelSpaceError(f"label space {self.name!r}: {len(self.class_weights)} class weights for "
                                  f"{self.num_outputs} outputs")  # fmt: skip
        lookup = np.full(256, self.num_classes, dtype=np.int64)
        lookup[list(self.class_ids)] = np.arange(self.num_classes)
        object.__setattr__(self, "_lookup", lookup)

    # -- ids -----------------------------------------------------------------

    @property
    def num_outputs(self) -> int:
        """Channels of a model's output for this label space."""
        return len(self.names)

    @property
    def class_ids(self) -> tuple[int, ...]:
        """Output ids that are classes (void excluded), in order."""
        return tuple(i for i in range(self.num_outputs) if i != self.void)

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.names[i] for i in self.class_ids)

    def class_index(self, label: np.ndarray) -> np.ndarray:
        """Label ids as class indices 0..K-1, with K for void and anything that is not a class."""
        label = np.asarray(label)
        return self._lookup[np.clip(label, 0, 255)] if label.size else label.astype(np.int64)

    def valid(self, label: np.ndarray) -> np.ndarray:
        """Which pixels hold an id of this space (a class or void)."""
        label = np.asarray(label)
        return (label == self.void) | ((label >= 0) & (label < self.num_outputs))

    def describe_ids(self) -> str:
        """The valid ids in words, for error messages."""
        return f"classes 0..{self.num_outputs - 1}" + (
            f" (void {self.void})" if self.void < self.num_outputs else f", void {self.void}"
        )

    # -- colours -------------------------------------------------------------

    def rgb_palette(self) -> np.ndarray:
        """256 x 3 uint8 RGB colours indexed by label id (black where the palette gives none)."""
        table = np.zeros((256, 3), dtype=np.uint8)
        colours = self.palette or voc_palette(self.num_outputs)
        table[: len(colours)] = np.array(colours, dtype=np.uint8).reshape(-1, 3)
        if self.void >= len(colours):
            table[self.void] = 0
        return table

    def colorize(self, label: np.ndarray) -> np.ndarray:
        """An HxW map of label ids as an HxWx3 uint8 RGB image."""
        label = np.asarray(label)
        if label.size and not self.valid(label).all():
            bad = int(np.asarray(label)[~self.valid(label)][0])
            raise ValueError(f"label value {bad} is not in label space {self.name} ({self.describe_ids()})")
        return self.rgb_palette()[label.astype(np.intp)]

    def to_image(self, label: np.ndarray) -> Image.Image:
        """A palette-mode PNG image: pixel values are the label ids, shown in this space's colours."""
        image = Image.fromarray(np.asarray(label, dtype=np.uint8), mode="P")
        image.putpalette(self.rgb_palette().tobytes())
        return image

    # -- files ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON and checkpoints."""
        data: dict[str, Any] = {"name": self.name, "names": list(self.names), "void": self.void,
                                "palette": [list(c) for c in self.palette]}  # fmt: skip
        if self.class_weights is not None:
            data["class_weights"] = list(self.class_weights)
        if self.source:
            data["source"] = self.source
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | Path = "<label space>") -> LabelSpace:
        if not isinstance(data, dict) or not isinstance(data.get("names"), list) or "void" not in data:
            raise LabelSpaceError("a label space needs 'names' (a list) and 'void' (an id)", where)
        try:
            return cls(name=str(data.get("name", Path(str(where)).stem)), names=tuple(str(n) for n in data["names"]),
                       void=int(data["void"]), palette=tuple(tuple(c) for c in data.get("palette", ())),
                       class_weights=data.get("class_weights"), source=str(data.get("source", "")))  # fmt: skip
        except LabelSpaceError as exc:
            raise LabelSpaceError(exc.problem, where) from None
        except (TypeError, ValueError) as exc:
            raise LabelSpaceError(f"malformed label space: {exc}", where) from None

    @classmethod
    def generic(cls, num_classes: int) -> LabelSpace:
        """``num_classes`` classes named by number, void 255, Pascal VOC colours."""
        if not 1 <= num_classes <= 255:
            raise LabelSpaceError(f"the class count must lie in 1..255, got {num_classes}")
        return cls(f"{num_classes}-class", tuple(f"class {i}" for i in range(num_classes)), 255,
                   voc_palette(num_classes), source="generic")  # fmt: skip


# ------------------------------------------------------------------ the registry


def registered() -> dict[str, LabelSpace]:
    """Label spaces by name: one per module of ``segnet/labelspaces`` that defines LABEL_SPACE."""
    from segnet.data import labelspaces

    spaces = {}
    for info in pkgutil.iter_modules(labelspaces.__path__):
        module = importlib.import_module(f"{labelspaces.__name__}.{info.name}")
        space = getattr(module, "LABEL_SPACE", None)
        if isinstance(space, LabelSpace):
            spaces[space.name] = space
    return spaces


def default_num_classes() -> int:
    """The class scores a new model has when no count is given: the default label space's outputs."""
    return get_label_space(DEFAULT_LABEL_SPACE).num_outputs


def get_label_space(spec: str | LabelSpace) -> LabelSpace:
    """A label space by name (``camvid``, ``sun-rgbd``), from a JSON file, or a class count (``2``)."""
    if isinstance(spec, LabelSpace):
        return spec
    spaces = registered()
    if spec in spaces:
        return spaces[spec]
    if spec.isdigit():
        return LabelSpace.generic(int(spec))
    path = Path(spec)
    if path.suffix.lower() == ".json" or path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LabelSpaceError("no such label-space file", path) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LabelSpaceError(f"not a JSON label-space file: {exc}", path) from None
        return LabelSpace.from_dict(data, path)
    raise LabelSpaceError(f"unknown label space {spec!r}: give one of {', '.join(sorted(spaces))}, "
                          "a class count, or a JSON file")  # fmt: skip


def matching_output_count(num_outputs: int) -> LabelSpace | None:
    """The one registered label space with this many outputs, if exactly one has."""
    found = [s for s in registered().values() if s.num_outputs == num_outputs]
    return found[0] if len(found) == 1 else None


def label_space_for(spec: str | None, outputs: int | None, saved: LabelSpace | None = None) -> tuple[LabelSpace, str]:
    """The label space a command uses with a model, and a note when it was inferred.

    ``spec`` (the user's ``--labels``) wins, then the one ``saved`` with the
    model, then the registered space with as many outputs as the model has
    (CamVid for 11), then a generic space of that size.
    """
    if spec:
        space = get_label_space(spec)
    elif saved is not None:
        space = saved
    elif outputs:
        space = matching_output_count(outputs) or LabelSpace.generic(outputs)
        return space, (f"label space {space.name}, from the model's {outputs} outputs "
                       "(--labels names, counts or JSON files choose another)")  # fmt: skip
    else:
        space = get_label_space("camvid")
    if outputs is not None and outputs != space.num_outputs:
        raise LabelSpaceError(f"label space {space.name} has {space.num_outputs} outputs but the model has {outputs}")
    return space, ""
