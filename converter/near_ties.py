"""Tell float rounding apart from real differences when comparing with Caffe.

MAX pooling picks the largest value of each window. When the two largest
values of a window differ by less than float32 rounding (a "near-tie"),
Caffe's arithmetic and ours can pick different elements. SegNet's decoder
then writes its values at the other position, so a handful of such windows
change whole patches of the output by O(1): on SegNet-Basic at 360x480, 14
of its 2.8 million pooling windows do, moving 50 argmax pixels. No
implementation can avoid this without repeating caffe-segnet's exact
sequence of float operations.

``explain_with_near_ties`` shows that a difference is only that: it finds,
near each region where the outputs differ, a near-tied window whose other
choice makes the region match, and re-runs the net with Caffe's choices to
confirm that every blob then agrees within tolerance. The returned
``TieFlips`` can be applied again (``with flips.applied(net): ...``), for
example to check gradients under Caffe's choices.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .graph import CaffeNet
from .layers.pooling import Pooling, _overhang

#: Windows whose two largest values differ by less than this fraction of
#: max(1, |largest|) count as near-tied.
DEFAULT_REL_GAP = 1e-5


@dataclass
class _Candidates:
    window: torch.Tensor  # flat index of the window in the (N, C, OH, OW) output
    index: torch.Tensor  # the runner-up's flat index in the input plane
    value: torch.Tensor  # the runner-up's value
    out_shape: tuple[int, int, int, int]
    in_size: tuple[int, int]


@dataclass
class TieFlips:
    """Max-pooling windows to decide the other way: layer name -> candidate numbers."""

    chosen: dict[str, set[int]] = field(default_factory=dict)
    candidates: dict[str, _Candidates] = field(default_factory=dict)
    rounds: int = 0

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.chosen.values())

    @property
    def candidate_count(self) -> int:
        return sum(len(c.window) for c in self.candidates.values())

    @contextlib.contextmanager
    def applied(self, net: CaffeNet) -> Iterator[None]:
        """Run ``net`` with the chosen windows taking their runner-up."""
        with _hooks(net, lambda name: _flip_hook(self.candidates.get(name), self.chosen.get(name))):
            yield


@dataclass
class Explanation:
    flips: TieFlips
    #: blob -> scaled max error after applying the flips
    errors_after: dict[str, float]
    #: blob -> number of values beyond tolerance after applying the flips
    bad_after: dict[str, int]

    @property
    def explained(self) -> bool:
        return not any(self.bad_after.values())


def _pooling_layers(net: CaffeNet):
    for step, module in net.named_layers():
        if isinstance(module, Pooling) and module.method == "MAX" and module.num_tops == 2:
            yield step.name, module


@contextlib.contextmanager
def _hooks(net: CaffeNet, make: Callable[[str], Callable | None]):
    handles = []
    try:
        for name, module in _pooling_layers(net):
            hook = make(name)
            if hook is not None:
                handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


def near_tie_candidates(x: torch.Tensor, module: Pooling, rel_gap: float = DEFAULT_REL_GAP) -> _Candidates:
    """The near-tied windows of a MAX pooling over ``x`` and their runner-ups."""
    kh, kw = module.kernel_for(x.shape)
    (sh, sw), (ph, pw) = module.stride, module.pad
    n, c, h, w = x.shape
    bottom, right = _overhang(h, kh, sh, ph), _overhang(w, kw, sw, pw)
    padded = F.pad(x.detach(), (pw, right, ph, bottom), value=float("-inf"))
    windows = padded.unfold(2, kh, sh).unfold(3, kw, sw)
    oh, ow = windows.shape[2:4]
    top2, pos = windows.reshape(n, c, oh, ow, kh * kw).topk(2, dim=-1)
    gap = top2[..., 0] - top2[..., 1]
    near = (top2[..., 0] != 0) & (gap < rel_gap * top2[..., 0].abs().clamp(min=1))
    row = torch.arange(oh).view(1, 1, -1, 1) * sh + pos[..., 1] // kw - ph
    col = torch.arange(ow).view(1, 1, 1, -1) * sw + pos[..., 1] % kw - pw
    window = near.flatten().nonzero().flatten()
    return _Candidates(
        window, (row * w + col).flatten()[window], top2[..., 1].flatten()[window], (n, c, oh, ow), (h, w)
    )


def _flip_hook(cands: _Candidates | None, chosen: set[int] | None):
    if not cands or not chosen:
        return None
    sel = torch.tensor(sorted(chosen))

    def hook(module, inputs, outputs):
        value, index = outputs
        value, index = value.clone(), index.clone()
        value.view(-1)[cands.window[sel]] = cands.value[sel].to(value.dtype)
        index.view(-1)[cands.window[sel]] = cands.index[sel]
        return value, index

    return hook


def _error_maps(outputs: Mapping[str, torch.Tensor], reference: Mapping[str, np.ndarray], tol: float):
    """blob -> (scaled max error, boolean map of values beyond tolerance)."""
    result = {}
    for name, ref in reference.items():
        ours = outputs[name].detach().float().cpu().numpy().reshape(ref.shape)
        scale = max(1.0, float(np.abs(ref).max()))
        diff = np.abs(ours.astype(np.float64) - ref)
        result[name] = (float(diff.max() / scale) if diff.size else 0.0, diff > tol * scale)
    return result


def explain_with_near_ties(
    net: CaffeNet,
    feed: Mapping[str, torch.Tensor],
    reference: Mapping[str, np.ndarray],
    tol: float = 1e-4,
    rel_gap: float = DEFAULT_REL_GAP,
    max_rounds: int = 40,
) -> Explanation:
    """Find max-pooling near-ties whose other choice reproduces ``reference``.

    ``reference`` maps blob names to Caffe's arrays (index blobs excluded);
    a value is within tolerance when |ours - ref| <= tol * max(1, max|ref|).
    Regions beyond tolerance in 4-D blobs are matched with the near-tied
    windows that lie inside them; each round tries one more candidate per
    unresolved region (regions far apart do not interact, so one forward
    pass serves them all) and keeps it when the region's error shrinks.
    """
    names = list(reference)
    flips = TieFlips()

    def capture(name):
        module = net.layer(name)

        def hook(mod, inputs, outputs):
            flips.candidates[name] = near_tie_candidates(inputs[0], module, rel_gap)

        return hook

    with torch.no_grad():
        with _hooks(net, capture):
            base = net(**feed, blobs=names)
    errors = _error_maps(base, reference, tol)

    # Regions beyond tolerance, per 4-D blob and batch item, with the candidates inside each.
    regions = []  # (blob, n, slices) ; candidates listed separately
    region_cands: list[list[tuple[str, int]]] = []
    for blob, (_, bad) in errors.items():
        if bad.ndim != 4 or not bad.any():
            continue
        bad2d = bad.any(axis=1)
        for n in range(bad2d.shape[0]):
            labels, count = ndimage.label(ndimage.binary_dilation(bad2d[n], iterations=2))
            for box in ndimage.find_objects(labels):
                regions.append((blob, n, box))
                region_cands.append(_inside(flips.candidates, n, box, bad.shape[-2:]))
    if not regions:
        return _explanation(flips, errors)

    def region_error(err_maps, r) -> int:
        blob, n, box = regions[r]
        return int(err_maps[blob][1][n][:, box[0], box[1]].sum())

    current = [region_error(errors, r) for r in range(len(regions))]
    kept: list[list[tuple[str, int]]] = [[] for _ in regions]
    queue = [list(c) for c in region_cands]
    while flips.rounds < max_rounds:
        trial = {r: queue[r].pop(0) for r in range(len(regions)) if current[r] and queue[r]}
        if not trial:
            break
        flips.rounds += 1
        flips.chosen = _union(kept + [[c] for c in trial.values()])
        with torch.no_grad(), flips.applied(net):
            out = net(**feed, blobs=names)
        maps = _error_maps(out, reference, tol)
        for r, cand in trial.items():
            err = region_error(maps, r)
            if err < current[r]:
                kept[r].append(cand)
                current[r] = err
    flips.chosen = _union(kept)
    with torch.no_grad(), flips.applied(net):
        out = net(**feed, blobs=names)
    return _explanation(flips, _error_maps(out, reference, tol))


def _explanation(flips: TieFlips, maps) -> Explanation:
    return Explanation(flips, {b: e for b, (e, _) in maps.items()}, {b: int(m.sum()) for b, (_, m) in maps.items()})


def _inside(candidates: Mapping[str, _Candidates], n: int, box, map_size) -> list[tuple[str, int]]:
    """Candidates of batch item ``n`` whose window lies in ``box`` (in the blob's coordinates)."""
    found = []
    for name, c in candidates.items():
        _, _, oh, ow = c.out_shape
        scale_y, scale_x = map_size[0] / c.in_size[0], map_size[1] / c.in_size[1]
        item = c.window // (c.out_shape[1] * oh * ow)
        y = (c.index // c.in_size[1]).double() * scale_y
        x = (c.index % c.in_size[1]).double() * scale_x
        margin_y, margin_x = 2 * scale_y + 2, 2 * scale_x + 2
        inside = (
            (item == n)
            & (y >= box[0].start - margin_y) & (y < box[0].stop + margin_y)
            & (x >= box[1].start - margin_x) & (x < box[1].stop + margin_x)
        )  # fmt: skip
        found.extend((name, int(i)) for i in inside.nonzero().flatten())
    # Finer layers first: they are the most numerous, and a wrong flip of a
    # coarser layer moves a larger patch (and is rejected as it adds error).
    return sorted(found, key=lambda item: _scale_of(candidates[item[0]], map_size))


def _scale_of(c: _Candidates, map_size) -> float:
    return map_size[0] / c.in_size[0]


def _union(groups) -> dict[str, set[int]]:
    chosen: dict[str, set[int]] = {}
    for group in groups:
        for name, i in group:
            chosen.setdefault(name, set()).add(i)
    return chosen
