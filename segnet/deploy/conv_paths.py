"""Which algorithm runs each convolution on this CPU: timed once per layer shape, then cached.

A float32 convolution can run direct (oneDNN), by Winograd F(2x2, 3x3)
(segnet/deploy/winograd.py, for wide 3x3 layers), through the DFT on
16x16 or 32x32 tiles (segnet/deploy/dftconv.py, for kernels of 5 and more)
or, for 1x1 kernels, as a plain matrix product (segnet/deploy/pointwise.py).
Which is fastest depends on the layer's shape and on the CPU (its vector
width, its caches, how well the BLAS blocks the small matrix products), so
it is measured, not assumed: each candidate is timed on random data of the
layer's shape, and replaces the direct convolution only when it is at least
``GAIN`` faster.

Where the fast paths may go: Winograd and the DFT round each output pixel
by a different formula, so where the direct convolution gives exactly equal
values (a flat, saturated patch of sky) they give values a rounding apart.
Before a max pooling that breaks exact ties differently from Caffe, and each
such tie moves a decoder patch: the trained SegNet-Basic with its encoder
through the DFT kept only 99.87% of the converted graph's labels on the
CamVid test set (99.999% with the decoder alone). So with ``free_rounding``
(the layers after the last pooling: SegNet's decoder) those two paths are
offered there only; a 1x1 matrix product rounds every pixel alike.

The answers are kept in one JSON file per user, keyed by
CPU and torch version, so a later run on the same machine starts at once
and takes the same paths.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Collection

import torch
import torch.nn.functional as F
from torch import nn

from converter.atomic import atomic_write

from segnet.deploy.dftconv import DFT_MIN_KERNEL, TILES, DFTConv2d, is_dft_eligible
from segnet.deploy.measure import cpu_name
from segnet.deploy.pointwise import PointwiseConv2d, is_pointwise
from segnet.deploy.winograd import WinogradConv2d, is_winograd_eligible
from segnet.deploy.workspace import WORKSPACE, is_channels_last
from segnet.models.surgery import replace_module

#: Narrowest 3x3 convolution (input and output channels) offered to Winograd: on 64 channels its transformed
#: matrix products run too slowly to gain.
WINOGRAD_MIN_CHANNELS = 128

#: A fast path replaces the direct convolution only when it is at least this much faster (timing noise is a few
#: percent).
GAIN = 1.05

#: Where the timings are kept between runs (one JSON file; ``SEGNET_CACHE`` moves it).
CACHE_ENV = "SEGNET_CACHE"

DIRECT = "direct"


def candidates(conv: nn.Module) -> list[str]:
    """The fast paths that compute what ``conv`` computes: "winograd", "dft16", "dft32", "matmul"."""
    paths = []
    if is_winograd_eligible(conv) and min(conv.in_channels, conv.out_channels) >= WINOGRAD_MIN_CHANNELS:
        paths.append("winograd")
    if is_dft_eligible(conv) and conv.kernel_size[0] >= DFT_MIN_KERNEL:
        paths += [f"dft{tile}" for tile in TILES if tile > conv.kernel_size[0]]
    if is_pointwise(conv):
        paths.append("matmul")
    return paths


def fast_module(conv: nn.Conv2d, path: str) -> nn.Module:
    """``conv`` run by ``path`` (one of :func:`candidates`' answers, or "direct")."""
    if path == DIRECT:
        return conv
    if path == "winograd":
        return WinogradConv2d(conv)
    if path.startswith("dft"):
        return DFTConv2d(conv, tile=int(path[3:]))
    if path == "matmul":
        return PointwiseConv2d(conv)
    raise ValueError(f"unknown convolution path {path!r}")


def offered(conv: nn.Module, name: str, free_rounding: Collection[str] | None = None) -> list[str]:
    """:func:`candidates` for the layer ``name``, less the paths that round pixel by pixel where its outputs may
    decide a max pooling (not in ``free_rounding``; see the module docstring)."""
    paths = candidates(conv)
    if free_rounding is not None and name not in free_rounding:
        paths = [path for path in paths if path == "matmul"]
    return paths


def choose(model: nn.Module, shape: tuple[int, ...], force: bool | None = None,
           free_rounding: Collection[str] | None = None) -> dict[str, str]:  # fmt: skip
    """For each convolution of ``model`` with a fast path, the path to run it by at input ``shape`` (N, C, H, W).

    ``force``: None times each layer shape on this machine (or reads the cache); True takes Winograd wherever
    it is offered and leaves the rest direct, untimed; False runs everything direct. ``free_rounding``: the
    layers whose outputs decide no max pooling (None: all).
    """
    shapes = _input_shapes(model, shape)
    modules = dict(model.named_modules())
    known, machine, chosen = _load(), _machine(), {}
    for name, (shape, channels_last) in shapes.items():
        conv, (n, c, h, w) = modules[name], shape
        paths = offered(conv, name, free_rounding)
        if not paths:
            continue
        if force is not None:
            chosen[name] = "winograd" if force and "winograd" in paths else DIRECT
            continue
        layout = " channels-last" if channels_last else ""
        key = f"{machine}|{c}x{conv.out_channels} k{conv.kernel_size[0]} at {n}x{h}x{w}{layout}"
        if known.get(key) not in (DIRECT, *paths):
            known[key] = _fastest(conv, shape, paths, channels_last)
            _save(known)
        chosen[name] = known[key] if known[key] in paths else DIRECT
    return chosen


def apply(model: nn.Module, shape: tuple[int, ...], force: bool | None = None,
          free_rounding: Collection[str] | None = None) -> list[str]:  # fmt: skip
    """Replace ``model``'s convolutions by their chosen paths (see :func:`choose`); returns what was done, in words."""
    chosen = choose(model, shape, force, free_rounding)
    WORKSPACE.buffers.clear()  # the timing's scratch buffers: the chosen paths grow their own on first use
    modules = dict(model.named_modules())
    for name, path in chosen.items():
        if path != DIRECT:
            replace_module(model, name, fast_module(modules[name], path))
    how = "forced" if force is not None else "measured faster here"
    where = "decoder" if free_rounding is not None else "eligible"
    paths = {name: offered(modules[name], name, free_rounding) for name in chosen}
    words = []
    winograd = [name for name in chosen if "winograd" in paths[name]]
    if winograd:
        used = sum(chosen[name] == "winograd" for name in winograd)
        words.append(f"Winograd F(2x2, 3x3) on {used} of {len(winograd)} wide 3x3 {where} layers ({how})")
    large = [name for name in chosen if any(p.startswith("dft") for p in paths[name])]
    if large:
        used = [chosen[name] for name in large if chosen[name].startswith("dft")]
        tiles = ", ".join(sorted({f"{p[3:]}x{p[3:]}" for p in used})) or "none"
        words.append(f"DFT on {len(used)} of {len(large)} large-kernel {where} layers (tiles {tiles}; {how})")
    pointwise = [name for name in chosen if "matmul" in paths[name]]
    if pointwise:
        used = sum(chosen[name] == "matmul" for name in pointwise)
        words.append(f"matrix products on {used} of {len(pointwise)} 1x1 layers ({how})")
    return words


def _input_shapes(model: nn.Module, shape: tuple[int, ...]) -> dict[str, tuple[tuple[int, ...], bool]]:
    """The input shape of each convolution with a fast path, and whether that input is channels-last (the paths'
    speeds differ with the memory format), from one forward pass at ``shape``."""
    shapes: dict[str, tuple[tuple[int, ...], bool]] = {}
    hooks = [module.register_forward_hook(_recorder(shapes, name))
             for name, module in model.named_modules() if candidates(module)]  # fmt: skip
    try:
        with torch.no_grad():
            model(torch.zeros(shape))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _recorder(shapes: dict[str, tuple[tuple[int, ...], bool]], name: str) -> Callable:
    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:  # None: the output stays
        shapes.setdefault(name, (tuple(inputs[0].shape), is_channels_last(inputs[0])))

    return record


def _fastest(conv: nn.Conv2d, shape: tuple[int, ...], paths: list[str], channels_last: bool, repeats: int = 3) -> str:
    """The fastest of direct and ``paths`` on random data of ``shape``; a path must beat direct by ``GAIN``.

    The candidates are timed in turns, ``repeats`` rounds, each keeping its best time: a slow spell of a shared
    machine then falls on every candidate rather than on one.
    """
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    runs: dict[str, Callable] = {DIRECT: lambda x: F.conv2d(x, conv.weight, conv.bias, padding=conv.padding)}
    for path in paths:
        runs[path] = fast_module(conv, path).__call__
    best = dict.fromkeys(runs, float("inf"))
    with torch.no_grad():
        for run in runs.values():
            run(x)  # warm-up: buffers, packed weights
        for _ in range(repeats):
            for path, run in runs.items():
                best[path] = min(best[path], _elapsed(run, x))
    fastest = min(paths, key=best.__getitem__, default=DIRECT)
    return fastest if paths and best[fastest] * GAIN < best[DIRECT] else DIRECT


def _elapsed(run: Callable[[torch.Tensor], object], x: torch.Tensor) -> float:
    start = time.perf_counter()
    run(x)
    return time.perf_counter() - start


def _cache_file() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "segnet") / "conv_paths.json"


def _machine() -> str:
    """This CPU and torch build: timings from another machine do not carry over. Not the thread count: runs
    that split their inputs over processes of fewer threads must take the same paths, so that they write
    what one process writes (the paths' results differ by float32 rounding)."""
    return f"{cpu_name()}|torch {torch.__version__}"


def _load() -> dict[str, str]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(_cache_file().read_text())
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if isinstance(v, str)}
    return {}


def _save(choices: dict[str, str]) -> None:
    with contextlib.suppress(OSError):  # a read-only home only costs the timing next time
        path = _cache_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(json.dumps(choices, indent=1, sort_keys=True).encode()))
