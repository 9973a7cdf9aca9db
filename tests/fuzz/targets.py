"""One fuzz target per file reader: bytes in, the reader run on them as a command runs it.

A target returns when the reader read the input or refused it with a
:class:`~converter.errors.UserError` (the project's one error path); any
other exception is a finding. The targets work on files in one scratch
folder per process and under a small memory limit, so that each input
takes milliseconds.

Readers of bytes (caffemodel, prototxt, checkpoint, image, arrays) take the
input as the file. The two checkpoint-contents targets take it as a series
of edits (:class:`Draw`) to a valid payload, which is then written with a
valid checksum: a checksum says a file is whole, not that its contents make
sense, and these targets check the loaders' own validation.
"""

from __future__ import annotations

import functools
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import converter
from converter import budget
from converter.checkpoint import CHECKSUM, read_payload, write_payload
from converter.errors import UserError
from converter.graph import CaffeNet
from converter.prototxt import parse_net_text, read_net
from converter.weights import read_weights

#: The memory limit the targets run under: what a small machine allows, and quick to refuse.
MEMORY_LIMIT = "256M"

#: A small net with the parts the readers care about: a convolution, Caffe's BN, an in-place ReLU and a Softmax.
NET = """name: "fuzz"
input: "data"
input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "conv1_bn" type: "BN" bottom: "conv1" top: "conv1" }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "score" type: "Convolution" bottom: "conv1" top: "score" convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "prob" type: "Softmax" bottom: "score" top: "prob" }
"""


class Workspace:
    """A scratch folder for the files the targets write (one per process, removed at exit)."""

    def __init__(self) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="segnet-fuzz-")
        self.root = Path(self._folder.name)

    def write(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.write_bytes(data)
        return path


# ---------------------------------------------------------------- the readers


def caffemodel(data: bytes, work: Workspace) -> None:
    """``python -m converter NET WEIGHTS``: read the weights and load them into a net."""
    weights = read_weights(work.write("weights.caffemodel", data))
    tiny_net().load_caffe_weights(weights, allow_missing=True, allow_unused=True)


def prototxt(data: bytes, work: Workspace) -> None:
    """``python -m converter NET``: read the definition and build it in both phases."""
    net = read_net(work.write("net.prototxt", data))
    for phase in ("TEST", "TRAIN"):
        CaffeNet(net, phase=phase)


def checkpoint(data: bytes, work: Workspace) -> None:
    """``segnet-predict MODEL.pt IMAGE``: load a checkpoint (either kind) and segment an image with it."""
    use_model(work.write("model.pt", data))


def checkpoint_contents(data: bytes, work: Workspace) -> None:
    """A converted net's checkpoint, its contents edited, written with a valid checksum, then used."""
    draw = Draw(data)
    use_model(write_edited(base_payloads()["converted"], draw, work))


def segnet_checkpoint(data: bytes, work: Workspace) -> None:
    """A segnet model checkpoint (a SegNet-family model or a converted graph), edited, valid checksum, used."""
    draw = Draw(data)
    base = base_payloads()[draw.choice(("segnet", "graph"))]
    use_model(write_edited(base, draw, work))


def image(data: bytes, work: Workspace) -> None:
    """Every way the commands read an image: as a label map, its size, its pixels (resized)."""
    from segnet.data.imageio import load_image, read_label, read_size
    from segnet.data.labels import get_label_space

    path = work.write("image", data)
    try:
        read_label(path, get_label_space("camvid"))
    except UserError:
        pass  # a colour image or ids outside the label space are refused as labels: the image reading decides
    read_size(path)
    load_image(path, (5, 7))


def arrays(data: bytes, work: Workspace) -> None:
    """``python -m converter NET W --input FILE``: read an .npy or .npz file."""
    from converter.arrays import read_arrays

    read_arrays(work.write("arrays.npy", data))


TARGETS: dict[str, Callable[[bytes, Workspace], None]] = {
    "caffemodel": caffemodel,
    "prototxt": prototxt,
    "checkpoint": checkpoint,
    "checkpoint_contents": checkpoint_contents,
    "segnet_checkpoint": segnet_checkpoint,
    "image": image,
    "arrays": arrays,
}
READERS = tuple(TARGETS)


def run(reader: str, data: bytes, work: Workspace) -> str | None:
    """Run one input: None when it was read, the error line when refused; any other exception propagates."""
    budget.set_limit(MEMORY_LIMIT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            TARGETS[reader](data, work)
        except UserError as exc:
            return str(exc)
    return None


# ---------------------------------------------------------------- what the targets share


@functools.lru_cache(maxsize=1)
def tiny_net() -> CaffeNet:
    return CaffeNet(parse_net_text(NET))


IMAGE = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)  # H x W x BGR
FORWARD_PIXELS = 64 * 64  # larger declared sizes are resized to, but not run (the targets must stay fast)


def use_model(path: Path) -> None:
    """What segnet-predict does with a model file: load it, resize an image to its input size, run it."""
    from segnet.data.resize import resize_bilinear
    from segnet.models.caffe_graph import as_segmenter, declared_input_size
    from segnet.models.checkpoint import load_model

    model = as_segmenter(load_model(path), probabilities=True)
    size = declared_input_size(model)
    pixels = resize_bilinear(IMAGE, size) if size else IMAGE
    if pixels.shape[0] * pixels.shape[1] <= FORWARD_PIXELS:
        x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32))[None]
        with torch.no_grad():
            model(x)


@functools.lru_cache(maxsize=1)
def base_payloads() -> dict[str, dict[str, Any]]:
    """Valid payloads to edit: a converted net, a small SegNet-family model, and the net saved as a segnet model."""
    from segnet.models.caffe_graph import CaffeSegmenter
    from segnet.models.checkpoint import save_model

    work = Workspace()
    torch.manual_seed(0)
    converter.save(tiny_net(), work.root / "converted.pt")
    save_model(work.root / "segnet.pt", tiny_segnet(), {"iteration": 1}, input_size=(8, 8))
    save_model(work.root / "graph.pt", CaffeSegmenter(tiny_net()))
    payloads = {}
    for name in ("converted", "segnet", "graph"):
        payload = read_payload(work.root / f"{name}.pt")
        del payload[CHECKSUM]
        payloads[name] = payload
    return payloads


def tiny_segnet() -> torch.nn.Module:
    """A SegNet-family model small enough to save in a few kilobytes: two stages of 4 channels."""
    from segnet.data.labels import default_num_classes
    from segnet.models.family import Architecture, SegNet

    arch = Architecture("tiny", encoder=((4,), (4,)), decoder=((4,), (4,)), kernel=3, classifier_kernel=1,
                        decoder_relu=True, input_lrn=False, naming="basic")  # fmt: skip
    return SegNet(arch, num_classes=default_num_classes()).eval()


def write_edited(base: dict[str, Any], draw: Draw, work: Workspace) -> Path:
    """``base`` with the edits ``draw`` gives, written as a checkpoint (with a valid checksum, mostly)."""
    payload = edit(base, draw)
    path = work.root / "edited.pt"
    if draw.below(8):
        write_payload(payload, path)
    else:  # as a checkpoint written before checksums
        torch.save(payload, path)
    return path


# ---------------------------------------------------------------- edits drawn from bytes


class Draw:
    """Choices taken from a fuzzer's bytes, so that an input always replays the same (zeros once they run out)."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def below(self, count: int) -> int:
        """A number from 0 to count - 1 (two bytes)."""
        chunk = self.data[self.pos : self.pos + 2]
        self.pos += 2
        return int.from_bytes(chunk.ljust(2, b"\0"), "little") % count

    def choice(self, options: tuple | list) -> Any:
        return options[self.below(len(options))]

    def raw(self, most: int) -> bytes:
        count = self.below(most + 1)
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk


NUMBERS = (0, 1, -1, 2, 3, 8, 255, 256, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, -(2**63), 2**64 - 1, 2**64,
           10**30, 0.0, 0.5, -0.5, 1.0, 8.0, float("inf"), float("-inf"), float("nan"), 1e308, True, False,
           1 + 2j)  # fmt: skip
WORDS = ("", "TEST", "TRAIN", "test", "caffe-net", "segnet-model", "segnet-family", "segnet-basic", "pytorch",
         "LEARN", "INFERENCE", "data", "conv1", "conv1_bn", "score", "prob", "name", "void", "0", "8,8", "\0",
         "\u00e9", "x" * 300)  # fmt: skip
TENSORS = (lambda: torch.tensor(1), lambda: torch.tensor(8.0), lambda: torch.tensor([8, 8]), lambda: torch.zeros(0),
           lambda: torch.tensor(1 + 2j), lambda: torch.tensor([True]), lambda: torch.zeros(2, 3, dtype=torch.float64),
           lambda: torch.arange(4, dtype=torch.int8), lambda: torch.tensor(float("inf")),
           lambda: torch.ones(1, 4, 1, 1))  # fmt: skip


def value(draw: Draw, base: dict[str, Any], depth: int = 0) -> Any:
    """A value to put somewhere in a payload: special numbers, words, tensors, containers, or a part of ``base``."""
    kind = draw.below(9 if depth < 3 else 6)
    if kind == 0:
        return draw.choice(NUMBERS)
    if kind == 1:
        return draw.choice(WORDS) if draw.below(2) else draw.raw(64).decode("latin-1")
    if kind == 2:
        return None
    if kind == 3:
        return draw.choice(TENSORS)()
    if kind == 4:
        return int.from_bytes(draw.raw(8), "little", signed=True)
    if kind == 5:
        return _at(base, draw.choice(paths(base)))
    items = [value(draw, base, depth + 1) for _ in range(draw.below(4))]
    if kind == 6:
        return items
    if kind == 7:
        return tuple(items)
    return {draw.choice(WORDS): item for item in items}


def paths(payload: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a payload: keys of dicts, indices of lists (tensors are leaves)."""
    found = [prefix]
    if isinstance(payload, dict):
        for key, item in payload.items():
            found += paths(item, (*prefix, key))
    elif isinstance(payload, (list, tuple)):
        for i, item in enumerate(payload):
            found += paths(item, (*prefix, i))
    return found


def _at(payload: Any, path: tuple) -> Any:
    for step in path:
        payload = payload[step]
    return payload


def edit(base: dict[str, Any], draw: Draw) -> dict[str, Any]:
    """``base`` with up to 4 drawn edits (none for no bytes): replace a value, remove one, or add one.

    Edits build new containers along the path they change, so ``base`` (and
    the parts of it that values share) is never modified.
    """
    payload = base
    for _ in range(draw.below(5)):
        place = draw.choice([p for p in paths(payload) if p])
        action = draw.below(4)
        if action == 0:
            payload = _changed(payload, place[:-1], lambda parent: _without(parent, place[-1]))
        elif action == 1:
            payload = _changed(payload, place[:-1], lambda parent: _with(parent, draw.choice(WORDS), value(draw, base)))
        else:
            payload = _changed(payload, place, lambda _: value(draw, base))
    return payload


def _changed(payload: Any, path: tuple, change: Callable[[Any], Any]) -> Any:
    """A copy of ``payload`` with the value at ``path`` replaced by ``change(value)``."""
    if not path:
        return change(payload)
    key, rest = path[0], path[1:]
    if isinstance(payload, dict):
        return {**payload, key: _changed(payload[key], rest, change)}
    items = list(payload)
    items[key] = _changed(items[key], rest, change)
    return tuple(items) if isinstance(payload, tuple) else items


def _without(parent: Any, key: Any) -> Any:
    if isinstance(parent, dict):
        return {k: v for k, v in parent.items() if k != key}
    items = [v for i, v in enumerate(parent) if i != key] if isinstance(parent, (list, tuple)) else parent
    return tuple(items) if isinstance(parent, tuple) else items


def _with(parent: Any, key: str, item: Any) -> Any:
    if isinstance(parent, dict):
        return {**parent, key: item}
    if isinstance(parent, (list, tuple)):
        return type(parent)([*parent, item])
    return item
