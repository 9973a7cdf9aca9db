"""Is this conversion consistent with Caffe? A verdict judged against float32's own noise.

Two correct float32 implementations of one net do not agree bit for bit:
they add the terms of each dot product in different orders, and where two
values of a max-pooling window (or two classes of an argmax) differ by less
than that rounding, they can decide differently, after which SegNet's
decoder moves whole patches. caffe-segnet disagrees with itself that way
when only its BLAS kernel changes. A fixed tolerance is therefore wrong on
some net; this module measures the noise on the net and input at hand.

The rule (the only place it is stated; README repeats it in words):

* The exact result: the converted net run in float64. It computes the same
  formulas as Caffe with negligible rounding.
* The noise: the same net in float32, once with our kernels and
  ``JITTERED_RUNS`` more times with a random rounding error added to every
  value a layer writes (forward values, the gradients flowing back, and
  parameter gradients). The added error is what a plain sequential float32
  sum would make: ``2**-24 * sqrt(T) * (|v| + rms(v))`` times a uniform
  random number in [-1, 1], where T is the number of terms the layer combines
  into one value (a convolution's fan-in, the positions of a loss, ...; zero
  for exact operations such as max pooling or ReLU). These runs flip
  near-tied decisions as another float32 implementation would.
* Statistics a layer takes over many positions (BN's batch mean and
  variance, and the two sums of its backward) round once and move a whole
  channel together, which noise on each value does not do. In the noisy
  runs such a layer also rounds its statistics, each mean of m values as a
  running float32 sum rounds it (``2**-24 (|mean| sqrt(m/3) + spread /
  sqrt(2))``, ``layers.statistics.mean_rounding``), through its own formula
  (caffe-segnet's variance ``E[x^2] - E[x]^2`` amplifies the rounding where
  the mean is large against the spread), one random number per statistic
  shared by the channels (like sums round alike): ``CaffeLayer.coherent_rounding``.
* For every compared blob, the deviations from the exact result are sorted,
  largest first. Caffe passes when its k-th largest deviation is at most
  ``SIZE_MARGIN`` times the noise's ceil(k / ``COUNT_MARGIN``)-th largest
  (the largest over the noisy runs), plus ``FLOOR_ULPS`` float32 ulps of the
  blob's largest value: Caffe may deviate at ``COUNT_MARGIN`` times as many
  positions, each ``SIZE_MARGIN`` times as much, as float32 rounding moves
  our own result. Index blobs (pooling masks, ArgMax tops) count
  differing entries: at most ``COUNT_MARGIN`` times the noise's count. A
  float blob must also not be scaled against the exact result: its
  least-squares factor ``<caffe - exact, exact> / <exact, exact>`` may be at
  most ``SIZE_MARGIN`` times the noise's (plus the floor), which catches a
  wrong normalisation hidden in a noisy gradient.
* Layer by layer: where the reference holds the blobs a layer (or an
  in-place chain) reads and the blob it writes, that part of the net runs
  alone on Caffe's own inputs and is judged by the same rule. This removes
  everything upstream, so the first layer that computes something else is
  named.

Margins: caffe-segnet against itself (two sgemm kernels of the same
OpenBLAS) differs from the float64 result of SegNet-Basic on about 3.5 times
as many argmax pixels as our float32 does; the margins of 4 cover the
reference's own, sometimes coarser, rounding. A real error is far outside:
one convolution's weights scaled by 1.0001 move thousands of pixels.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from .graph import CaffeNet, Step
from .layers.base import FLOAT32_ROUNDING

FLOAT32_ULP = 2.0**-23
COUNT_MARGIN = 4
SIZE_MARGIN = 4
FLOOR_ULPS = 8
JITTERED_RUNS = 3
NOISE_FACTOR = 2
#: a layer's rounding is measured on an even sample of this many of its values
MEASURED_VALUES = 1 << 18


@dataclass(frozen=True)
class Derived:
    """A value the reference computed outside Caffe from one blob, e.g. ``argmax`` of ``prob``."""

    source: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    kind: str = "values"  # or "indices"


# ---------------------------------------------------------------- the verdict on one blob


@dataclass
class Check:
    """The verdict on one reference key."""

    key: str
    kind: str  # values | indices | weights
    scope: str  # "net", or the layers run alone on Caffe's inputs
    caffe: float  # Caffe's deviation from the exact result (scaled max, or differing entries)
    noise: float  # the same for the noisiest float32 run
    use: float  # share of the allowance Caffe uses; <= 1 passes
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.use <= 1.0


def _deviation(x: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """|x - exact| with NaN/inf handled: equal specials count 0, unequal ones inf."""
    with np.errstate(invalid="ignore"):
        dev = np.abs(x - exact)
    special = ~np.isfinite(dev)
    if special.any():
        same = (x == exact) | (np.isnan(x) & np.isnan(exact))
        dev[special] = np.where(same[special], 0.0, np.inf)
    return dev


def judge_values(key: str, caffe: np.ndarray, exact: np.ndarray, noise: Sequence[np.ndarray], scope: str = "net",
                 kind: str = "values") -> Check:  # fmt: skip
    """The rule for float blobs (see the module docstring)."""
    exact = exact.astype(np.float64).ravel()
    caffe = caffe.astype(np.float64).ravel()
    finite = exact[np.isfinite(exact)]
    scale = float(np.abs(finite).max()) if finite.size else 0.0
    floor = FLOOR_ULPS * FLOAT32_ULP * scale
    dev_caffe = -np.sort(-_deviation(caffe, exact))
    envelope = np.zeros_like(dev_caffe)
    for run in noise:
        envelope = np.maximum(envelope, -np.sort(-_deviation(run.astype(np.float64).ravel(), exact)))
    allowed = SIZE_MARGIN * envelope[np.arange(dev_caffe.size) // COUNT_MARGIN] + floor
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(dev_caffe == 0, 0.0, dev_caffe / allowed)
    use = float(ratios.max()) if ratios.size else 0.0
    worst = int(ratios.argmax()) if ratios.size else 0
    detail = ""
    if use > 1:
        beyond = int((ratios > 1).sum())
        detail = (f"{beyond} value(s) beyond the noise; e.g. the {_ordinal(worst + 1)} largest deviation "
                  f"{dev_caffe[worst]:.3g} against {allowed[worst]:.3g} allowed")  # fmt: skip
    # A scale error hides in noisy blobs: compare least-squares factors too.
    norm = float(np.dot(np.nan_to_num(exact), np.nan_to_num(exact)))
    if norm > 0 and exact.size > 1:
        def factor(x):  # the least-squares factor, less 1 (signed)
            return float(np.dot(np.nan_to_num(x - exact), np.nan_to_num(exact))) / norm

        f_caffe = factor(caffe)
        f_noise = max((abs(factor(run.astype(np.float64).ravel())) for run in noise), default=0.0)
        f_allowed = SIZE_MARGIN * f_noise + FLOOR_ULPS * FLOAT32_ULP
        f_use = abs(f_caffe) / f_allowed
        if f_use > use:
            use = f_use
            if f_use > 1:  # 1 + f printed as such: a deviation of 1e-6 would vanish in 1.000001's digits
                detail = (f"scaled by 1 {'+' if f_caffe >= 0 else '-'} {abs(f_caffe):.2e} against the exact result "
                          f"(noise allows 1 +- {f_allowed:.2e})")  # fmt: skip
    noise_max = max((float(np.nanmax(_deviation(r.astype(np.float64).ravel(), exact), initial=0)) for r in noise),
                    default=0.0)  # fmt: skip
    unit = scale if scale > 0 else 1.0
    return Check(key, kind, scope, float(dev_caffe[0]) / unit if dev_caffe.size else 0.0, noise_max / unit, use,
                 detail)  # fmt: skip


def judge_indices(key: str, caffe: np.ndarray, exact: np.ndarray, noise: Sequence[np.ndarray],
                  scope: str = "net") -> Check:  # fmt: skip
    """The rule for index blobs (pooling masks, argmax): how many entries differ, and where.

    Caffe may differ from the exact result in up to COUNT_MARGIN times as
    many entries as a noise run does, and in up to COUNT_MARGIN times as many
    entries that no noise run changed as a noise run has that no other run
    changed. The second count tells rounding from error where rounding
    already moves much (flat image regions, where exactly tied values are
    decided by each implementation's rounding): an error changes entries that
    rounding leaves alone.
    """
    exact = exact.ravel()
    caffe_differs = caffe.ravel() != exact
    run_differs = [run.ravel() != exact for run in noise]
    differ = int(caffe_differs.sum())
    noise_count = max((int(d.sum()) for d in run_differs), default=0)
    changed_by_noise = np.logical_or.reduce(run_differs) if run_differs else np.zeros_like(exact, dtype=bool)
    novel = int((caffe_differs & ~changed_by_noise).sum())
    noise_novel = 0
    for k, d in enumerate(run_differs):
        others = [o for j, o in enumerate(run_differs) if j != k]
        noise_novel = max(noise_novel, int((d & ~np.logical_or.reduce(others)).sum()) if others else int(d.sum()))
    use = max(_count_use(differ, noise_count), _count_use(novel, noise_novel))
    detail = ""
    if differ:
        detail = (f"{differ} of {exact.size} entries differ ({COUNT_MARGIN * noise_count} allowed), {novel} where no "
                  f"float32 noise run differs ({COUNT_MARGIN * noise_novel} allowed)")  # fmt: skip
    return Check(key, "indices", scope, float(differ), float(noise_count), use, detail)


def _count_use(count: int, noise_count: int) -> float:
    if count == 0:
        return 0.0
    return count / (COUNT_MARGIN * noise_count) if noise_count else math.inf


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# ---------------------------------------------------------------- running the net with rounding noise

#: (step key, top position) -> that layer's own float32 rounding relative to its values, measured;
#: top -1: the largest over the layer's tops (for its gradients)
Rounding = dict[tuple[str, int], float]


class _Noise:
    """Uniform random numbers of rms 1, cheaply: windows of one seeded block at random offsets.

    The block's length is a prime, so its repeats do not line up with the
    rows and channels of a blob.
    """

    LENGTH = 1_048_573

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)
        self.block = (torch.rand(self.LENGTH, generator=self.generator, dtype=torch.float64) * 2 - 1) * math.sqrt(3)
        self._typed: dict[torch.dtype, torch.Tensor] = {}

    def like(self, value: torch.Tensor) -> torch.Tensor:
        block = self._typed.setdefault(value.dtype, self.block.to(value.dtype))
        n = value.numel()
        start = int(torch.randint(self.LENGTH, (1,), generator=self.generator))
        return block.repeat(-(-(start + n) // self.LENGTH))[start : start + n].view(value.shape)

    def uniform(self, count: int, dtype: torch.dtype) -> torch.Tensor:
        """``count`` fresh uniform random numbers of rms 1 (for the few values a layer's statistics hold)."""
        return (torch.rand(count, generator=self.generator, dtype=torch.float64) * 2 - 1).to(dtype) * math.sqrt(3)

    def rerounded(self, value: torch.Tensor, relative: float) -> torch.Tensor:
        """``value`` with an independent relative error of rms ``relative`` per element (zeros stay zero)."""
        return torch.addcmul(value, value, self.like(value), value=relative)


class _Jitter(torch.autograd.Function):
    """Rounds a value, and in backward its gradient, again: each element times (1 + relative error)."""

    @staticmethod
    def forward(ctx, value, relative, noise):
        ctx.relative, ctx.noise = relative, noise
        return noise.rerounded(value, relative)

    @staticmethod
    def backward(ctx, grad):
        return ctx.noise.rerounded(grad, ctx.relative), None, None


@dataclass
class Run:
    """How to run the net: its dtype, and the rounding noise to add (seed None: none)."""

    dtype: torch.dtype
    jitter_seed: int | None = None
    rounding: Rounding | None = None  # noise sizes, for jittered runs
    measure_with: CaffeNet | None = None  # the float32 net: measure each layer's rounding in an exact run


@dataclass
class Request:
    """What to take from a run: blobs, gradients, derived values."""

    blobs: list[str] = field(default_factory=list)
    diffs: list[str] = field(default_factory=list)  # blob names
    param_diffs: list[tuple[str, int]] = field(default_factory=list)
    derived: dict[str, Derived] = field(default_factory=dict)
    top_diffs: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def backward(self) -> bool:
        return bool(self.diffs or self.param_diffs)


def _measure(module32, key: str, bottoms: Sequence[torch.Tensor], tops: Sequence[torch.Tensor]) -> Rounding:
    """A layer's own float32 rounding, relative: rms(float32 - float64) / rms(float64) per top.

    The float32 layer reads the exact run's inputs rounded to float32; the
    rms is taken over an even sample of at most ``MEASURED_VALUES`` values.
    """
    with torch.no_grad():
        outs32 = module32(*(b.detach().float() if b.is_floating_point() else b for b in bottoms))
    measured: Rounding = {(key, -1): 0.0}
    for j, (o32, o64) in enumerate(zip(outs32, tops)):
        if j in module32.index_tops() or not o64.is_floating_point() or not o64.numel():
            continue
        step = max(1, o64.numel() // MEASURED_VALUES)
        o64, o32 = o64.detach().reshape(-1)[::step], o32.reshape(-1)[::step].double()
        finite = torch.isfinite(o64) & torch.isfinite(o32)
        d = torch.where(finite, o32 - o64, torch.zeros_like(o64))
        rms = float(torch.where(finite, o64, torch.zeros_like(o64)).square().mean().sqrt())
        relative = float(d.square().mean().sqrt()) / rms if rms > 0 else 0.0
        terms = module32.sequential_terms(j)
        if terms:  # caffe-segnet adds these in a plain float32 loop: allow at least that loop's rounding
            relative = max(relative, FLOAT32_ROUNDING * math.sqrt(terms))
        measured[(key, j)] = relative
        measured[(key, -1)] = max(measured[(key, -1)], relative)
    return measured


def run_steps(net: CaffeNet, steps: Sequence[Step], given: Mapping[str, np.ndarray | torch.Tensor],
              request: Request, how: Run) -> tuple[dict[str, np.ndarray], Rounding]:  # fmt: skip
    """Run ``steps`` of ``net`` (already in ``how.dtype``) on ``given`` blobs.

    Returns the requested arrays (float64, or integers) and, when
    ``how.measure_with`` is set, each layer's measured float32 rounding.
    """
    jitter = how.jitter_seed is not None and how.rounding is not None
    noise = _Noise(how.jitter_seed) if jitter else None
    grad = request.backward
    env: dict[str, torch.Tensor] = {}
    leaves: dict[str, torch.Tensor] = {}
    for name, value in given.items():
        t = torch.as_tensor(np.asarray(value) if isinstance(value, np.ndarray) else value).to(how.dtype).clone()
        if grad and name in request.diffs:
            t.requires_grad_(True)
        env[name] = t
        leaves[name] = t
    measured: Rounding = {}
    first_version: dict[str, torch.Tensor] = {}
    handles = []
    if grad and jitter:
        for layer, i in request.param_diffs:
            relative = NOISE_FACTOR * how.rounding.get((_key_of(net, layer), -1), 0.0)
            tensor = net.layer(layer).blob_tensors()[i]
            handles.append(tensor.register_hook(lambda g, r=relative: noise.rerounded(g, r)))
    wanted = set(request.blobs) | set(request.top_diffs) | {d.source for d in request.derived.values()}
    last_read = {b: i for i, step in enumerate(steps) for b in step.bottoms}
    try:
        with torch.set_grad_enabled(grad):
            if grad:
                net.zero_grad(set_to_none=True)
            for i, step in enumerate(steps):
                module = net.layers[step.key]
                bottoms = [env[b] for b in step.bottoms]
                outs = module(*bottoms)
                if jitter:  # statistics over many positions round together: a whole channel moves at once
                    outs = module.coherent_rounding(bottoms, outs, noise.uniform)
                if how.measure_with is not None:
                    measured.update(_measure(how.measure_with.layers[step.key], step.key, bottoms, outs))
                for j, (top, value) in enumerate(zip(step.tops, outs)):
                    if jitter and value.is_floating_point():
                        relative = how.rounding.get((step.key, j), 0.0)
                        if relative > FLOAT32_ROUNDING:  # below that, storing the value in float32 rounds as much
                            value = _Jitter.apply(value, NOISE_FACTOR * relative, noise)
                    if grad and top not in env and top not in first_version and value.requires_grad:
                        value.retain_grad()
                        first_version[top] = value
                    env[top] = value
                for b in step.bottoms:
                    if last_read[b] == i and b not in wanted and b not in request.diffs:
                        env.pop(b, None)
            out: dict[str, torch.Tensor] = {name: env[name] for name in request.blobs}
            for name, d in request.derived.items():
                out[name] = d.fn(env[d.source])
            if grad:
                if request.top_diffs:
                    objective = sum((env[b] * torch.as_tensor(d).to(how.dtype).reshape(env[b].shape)).sum()
                                    for b, d in request.top_diffs.items())  # fmt: skip
                else:
                    objective = net.total_loss(env)
                objective.backward()
                for name in request.diffs:
                    tensor = leaves.get(name, first_version.get(name))
                    out[f"diff:{name}"] = _grad_or_zero(tensor, env.get(name))
                for layer, i in request.param_diffs:
                    tensor = net.layer(layer).blob_tensors()[i]
                    out[f"param_diff:{layer}:{i}"] = _grad_or_zero(tensor, tensor)
    finally:
        for h in handles:
            h.remove()
    arrays = {k: v.detach().to(torch.float64).numpy() if v.is_floating_point() else v.detach().numpy()
              for k, v in out.items()}  # fmt: skip
    return arrays, measured


def _key_of(net: CaffeNet, layer: str) -> str:
    return next(step.key for step in net.steps if step.name == layer)


def _grad_or_zero(tensor: torch.Tensor | None, like: torch.Tensor | None) -> torch.Tensor:
    if tensor is not None and tensor.grad is not None:
        return tensor.grad
    return torch.zeros_like(like) if like is not None else torch.zeros(0)


# ---------------------------------------------------------------- which blobs the reference holds


def final_writers(steps: Sequence[Step]) -> dict[str, int]:
    """Blob -> position of the step that writes its final value (what a dump of the net holds)."""
    last = {}
    for i, step in enumerate(steps):
        for top in step.tops:
            last[top] = i
    return last


@dataclass
class Segment:
    """Layers that recompute some reference blobs from Caffe's own blobs."""

    steps: list[Step]
    caffe_reads: list[str]  # final values the reference holds (or net inputs)
    side_reads: list[str]  # blobs nothing of Caffe's reaches: taken from the same run of the whole net


def segment(net: CaffeNet, blob: str, available: set[str]) -> Segment | None:
    """The layers between ``available`` blobs (Caffe's) and ``blob``'s final value.

    A layer is included when ``blob`` needs it and it depends on one of
    Caffe's blobs; what it reads from elsewhere (e.g. SegNet's decoder reading
    the encoder's pooling masks) comes from the whole net's run. None when no
    Caffe blob is involved (that is the whole net's result, judged already).
    """
    steps = net.steps
    last = final_writers(steps)
    if blob not in last:
        return None
    # Which steps depend on Caffe's blobs (as they read them: final values only).
    depends: set[int] = set()
    reached: set[str] = set()
    for i, step in enumerate(steps):
        reads_caffe = any(b in available and _final_at(steps, b, i) for b in step.bottoms)
        if reads_caffe or any(b in reached for b in step.bottoms):
            depends.add(i)
            reached.update(step.tops)
        else:
            reached.difference_update(step.tops)
    if last[blob] not in depends:
        return None
    chosen, caffe_reads, side_reads, stack = set(), set(), set(), [last[blob]]
    while stack:
        i = stack.pop()
        if i in chosen:
            continue
        chosen.add(i)
        for b in steps[i].bottoms:
            writer = next((j for j in range(i - 1, -1, -1) if b in steps[j].tops), None)
            if (b in available and _final_at(steps, b, i)) or writer is None:
                caffe_reads.add(b)  # Caffe's value, or a net input
            elif writer in depends or not _final_at(steps, b, i):
                stack.append(writer)
            else:
                side_reads.add(b)
    return Segment([steps[i] for i in sorted(chosen)], sorted(caffe_reads), sorted(side_reads))


def _final_at(steps: Sequence[Step], blob: str, i: int) -> bool:
    """Whether step ``i`` reads ``blob``'s final value (no step from ``i`` on writes it)."""
    return not any(blob in step.tops for step in steps[i:])


# ---------------------------------------------------------------- the report


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)

    def first_layer_failing(self) -> Check | None:
        return next((c for c in self.checks if c.scope != "net" and not c.ok), None)

    def format(self) -> str:
        rows = [("reference key", "kind", "scope", "caffe", "float32 noise", "use", "verdict")]
        for c in self.checks:
            if c.kind == "indices":
                caffe, noise = f"{int(c.caffe)} differ", f"{int(c.noise)} differ"
            else:
                caffe, noise = f"{c.caffe:.2e}", f"{c.noise:.2e}"
            rows.append((c.key, c.kind, c.scope, caffe, noise, "inf" if math.isinf(c.use) else f"{c.use:.2f}",
                         "ok" if c.ok else "NOT CONSISTENT"))  # fmt: skip
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        for c in self.checks:
            if not c.ok and c.detail:
                lines.append(f"  {c.key} ({c.scope}): {c.detail}")
        if self.unmatched:
            lines.append(f"reference keys that match nothing in this net (not compared): {', '.join(self.unmatched)}")
        lines.extend(self.notes)
        first = self.first_layer_failing()
        if first is not None:
            lines.append(f"first part that disagrees when run on Caffe's own blobs: {first.scope}")
        lines.append(
            f"verdict: {'consistent with Caffe' if self.passed else 'NOT consistent with Caffe'} "
            f"({sum(c.ok for c in self.checks)} of {len(self.checks)} checks within float32 noise)"
        )
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({
            "passed": self.passed,
            "rule": {"count_margin": COUNT_MARGIN, "size_margin": SIZE_MARGIN, "floor_ulps": FLOOR_ULPS,
                     "jittered_runs": JITTERED_RUNS},
            "checks": [{**asdict(c), "ok": c.ok, "use": None if math.isinf(c.use) else c.use} for c in self.checks],
            "unmatched": self.unmatched,
            "notes": self.notes,
        }, indent=1)  # fmt: skip


# ---------------------------------------------------------------- comparing a net with a reference


def compare(
    net: CaffeNet,
    inputs: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    *,
    test_net: CaffeNet | None = None,
    derived: Mapping[str, Derived] | None = None,
    layer_by_layer: bool = True,
) -> Report:
    """Judge ``reference`` (Caffe's blobs after a pass on ``inputs``) against ``net``.

    Reference keys: ``<blob>``, ``diff:<blob>``, ``param_diff:<layer>:<i>``
    (gradients after one backward of the net's loss, or of
    ``sum(top_diff * top)`` when ``inputs`` holds ``top_diff:<blob>`` arrays),
    ``param:<layer>:<i>`` (the loaded weights, compared exactly), and
    ``test:<blob>`` (a TEST-phase pass, given ``test_net``). ``derived`` adds
    values the reference computed outside Caffe. Raises ``ValueError`` when
    nothing can be compared or the arrays do not fit the net.
    """
    feed = {k: v for k, v in inputs.items() if ":" not in k and k in net.input_shapes}
    judging = _Judging(net, reference, dict(derived or {}), feed)
    request, test_keys = _sort_reference_keys(judging, inputs, test_net)
    parts = _plan_parts(net, reference, request) if layer_by_layer else {}
    # Blobs the parts read from the whole net's run rather than from Caffe: that run must keep them.
    side = sorted({b for part, _ in parts.values() for b in part.side_reads})
    exact, runs, rounding = _judge_whole_net(judging, request, side)
    _judge_parts(judging, parts, [exact, *runs], rounding)
    if test_keys:
        _judge_test_pass(judging, test_net, test_keys)
    return judging.report


#: float32 runs: one plain, JITTERED_RUNS with rounding noise
_NOISE_RUNS = 1 + JITTERED_RUNS

#: the arrays of one run, by reference key or blob name
Arrays = dict[str, np.ndarray]


@dataclass
class _Judging:
    """What the phases of ``compare`` share: the reference, the report they fill, float64 copies of the nets."""

    net: CaffeNet
    reference: Mapping[str, np.ndarray]
    derived: dict[str, Derived]
    feed: dict[str, np.ndarray]
    report: Report = field(default_factory=Report)
    exact_nets: dict[int, CaffeNet] = field(default_factory=dict)
    index_blobs: set[str] = field(init=False)  # compared as indices: the main net's, also in the TEST pass

    def __post_init__(self) -> None:
        self.index_blobs = self.net.index_blob_names  # taken once: it walks every layer

    def exact_net(self, of: CaffeNet) -> CaffeNet:
        """``of`` in float64, copied once (every phase runs the same exact net)."""
        if id(of) not in self.exact_nets:
            self.exact_nets[id(of)] = copy.deepcopy(of).double()
        return self.exact_nets[id(of)]

    def judge(self, key: str, name: str, exact: Arrays, runs: Sequence[Arrays], scope: str) -> None:
        """Add the check of reference ``key`` against our ``name`` in the exact run and the noise runs."""
        ref, ours = self.reference[key], exact[name]
        if ours.size != ref.size:
            self.report.checks.append(Check(key, "values", scope, math.inf, 0.0, math.inf,
                                            f"shape {list(ours.shape)} here, {list(ref.shape)} in the reference"))
            return
        ref, noise = ref.reshape(ours.shape), [r[name] for r in runs]
        if name in self.index_blobs or (name in self.derived and self.derived[name].kind == "indices"):
            self.report.checks.append(judge_indices(key, ref, ours, noise, scope))
        else:
            kind = "gradient" if ":" in name else "values"
            self.report.checks.append(judge_values(key, ref, ours, noise, scope, kind))


def _sort_reference_keys(judging: _Judging, inputs: Mapping[str, np.ndarray],
                         test_net: CaffeNet | None) -> tuple[Request, list[str]]:  # fmt: skip
    """What to run for the reference: the request on the net and the keys of a TEST pass.

    Weights (``param:``) are judged here, as they need no run; keys that name
    nothing of the net are listed as unmatched.
    """
    net, reference, derived, report = judging.net, judging.reference, judging.derived, judging.report
    top_diffs = {k.split(":", 1)[1]: v for k, v in inputs.items() if k.startswith("top_diff:")}
    unknown_diffs = sorted(set(top_diffs) - set(net.blob_shapes))
    if unknown_diffs:
        raise ValueError(f"top_diff given for {unknown_diffs}, which this net does not have")
    request = Request(top_diffs=top_diffs)
    test_keys: list[str] = []
    for key in reference:
        kind, _, rest = key.partition(":")
        if key in net.blob_shapes:
            request.blobs.append(key)
        elif key in derived and derived[key].source in net.blob_shapes:
            request.derived[key] = derived[key]
        elif kind == "diff" and rest in net.blob_shapes:
            request.diffs.append(rest)
        elif kind == "param_diff" and _param_index(net, rest) is not None:
            request.param_diffs.append(_param_index(net, rest))
        elif kind == "param" and _param_index(net, rest) is not None:
            report.checks.append(_judge_weights(net, key, _param_index(net, rest), reference[key]))
        elif kind == "test" and test_net is not None and rest in test_net.blob_shapes:
            test_keys.append(key)
        else:
            report.unmatched.append(key)
    _check_comparable(net, request, test_keys, report)
    return request, test_keys


def _check_comparable(net: CaffeNet, request: Request, test_keys: Sequence[str], report: Report) -> None:
    """Refuse a reference that gives gradients without a loss, or that matches nothing."""
    if request.backward and not net.loss_weights and not request.top_diffs:
        raise ValueError("the reference holds gradients, but this net has no loss layer (build it in the TRAIN phase) "
                         "and the inputs hold no top_diff:<blob> arrays")  # fmt: skip
    if not (request.blobs or request.derived or request.backward or test_keys or report.checks):
        listing = ", ".join(report.unmatched[:8]) + (", ..." if len(report.unmatched) > 8 else "")
        raise ValueError(f"no reference key names a blob, gradient or parameter of this net ({listing})")


#: parts judged layer by layer: their steps' keys -> (the part, the reference blobs it recomputes)
Parts = dict[tuple[str, ...], tuple[Segment, list[str]]]


def _plan_parts(net: CaffeNet, reference: Mapping[str, np.ndarray], request: Request) -> Parts:
    """Which parts of the net run alone on Caffe's own blobs, and which reference blobs each recomputes."""
    parts: Parts = {}
    available = {k for k in reference if k in net.blob_shapes}
    for blob in request.blobs:
        part = segment(net, blob, available - {blob})
        if part is not None:
            parts.setdefault(tuple(s.key for s in part.steps), (part, []))[1].append(blob)
    return parts


def _judge_whole_net(judging: _Judging, request: Request,
                     side: Sequence[str]) -> tuple[Arrays, list[Arrays], Rounding | None]:  # fmt: skip
    """Run the whole net on the inputs and judge the requested blobs and gradients.

    It also keeps the ``side`` blobs the parts read from this run. Returns
    (exact arrays, noise runs' arrays, measured rounding); empty when nothing
    asks for the whole net.
    """
    if not (request.blobs or request.derived or request.backward):
        return {}, [], None
    net, feed = judging.net, judging.feed
    wanted = set(request.blobs) | set(request.top_diffs) | {d.source for d in request.derived.values()} | set(side)
    steps, needed = net.plan(set(net.blob_shapes) if request.backward else wanted)
    missing = [n for n in needed if n not in feed]
    if missing:
        raise ValueError(f"the inputs lack {missing}")
    whole = Request(request.blobs + [b for b in side if b not in request.blobs], request.diffs,
                    request.param_diffs, request.derived, request.top_diffs)  # fmt: skip
    exact, runs, rounding = _runs(net, judging.exact_net(net), steps, whole, [feed] * (1 + _NOISE_RUNS))
    keys = request.blobs + list(request.derived) + [f"diff:{d}" for d in request.diffs]
    keys += [f"param_diff:{layer}:{i}" for layer, i in request.param_diffs]
    for key in keys:
        judging.judge(key, key, exact, runs, "net")
    return exact, runs, rounding


def _judge_parts(judging: _Judging, parts: Parts, whole_runs: Sequence[Arrays], rounding: Rounding | None) -> None:
    """Run each part alone on Caffe's blobs (and the whole net's ``whole_runs`` for its side reads) and judge it."""
    net, reference, feed = judging.net, judging.reference, judging.feed
    for part, blobs in parts.values():
        caffe = {b: _as_blob(reference[b] if b in reference else feed[b], net.blob_shapes[b]) for b in part.caffe_reads}
        givens = [{**caffe, **{b: run[b] for b in part.side_reads}} for run in whole_runs]
        part_exact, part_runs, rounding = _runs(net, judging.exact_net(net), part.steps, Request(blobs=blobs), givens,
                                                rounding)  # fmt: skip
        scope = _part_scope(part, reference)
        for blob in blobs:
            judging.judge(blob, blob, part_exact, part_runs, scope)


def _part_scope(part: Segment, reference: Mapping[str, np.ndarray]) -> str:
    """How the report names a part: its layers and the blobs it was given."""
    first, final = part.steps[0].name, part.steps[-1].name
    scope = first if len(part.steps) == 1 else f"{first}..{final} ({len(part.steps)} layers)"
    caffe_reads = [b for b in part.caffe_reads if b in reference]
    own = f" and this net's {', '.join(part.side_reads)}" if part.side_reads else ""
    return f"{scope} on Caffe's {', '.join(caffe_reads)}{own}"


def _judge_test_pass(judging: _Judging, test_net: CaffeNet, test_keys: Sequence[str]) -> None:
    """Run ``test_net`` (the TEST phase) on the same inputs and judge the ``test:<blob>`` keys."""
    names = [k.split(":", 1)[1] for k in test_keys]
    steps, _ = test_net.plan(set(names))
    test_feed = {k: v for k, v in judging.feed.items() if k in test_net.input_shapes}
    exact, runs, _ = _runs(test_net, judging.exact_net(test_net), steps, Request(blobs=names),
                           [test_feed] * (1 + _NOISE_RUNS))  # fmt: skip
    for key, name in zip(test_keys, names):
        judging.judge(key, name, exact, runs, "TEST net")


def _runs(net: CaffeNet, exact_net: CaffeNet, steps: Sequence[Step], request: Request,
          givens: Sequence[Mapping[str, np.ndarray]], rounding: Rounding | None = None):  # fmt: skip
    """The exact (float64) run and the float32 noise runs: (exact arrays, [arrays of each noise run], rounding).

    ``givens[0]`` feeds the exact run, ``givens[1 + k]`` noise run k. Each
    layer's rounding is measured in the exact run unless ``rounding`` gives it.
    """
    saved = copy.deepcopy(net.state_dict())  # layers with running statistics change them in TRAIN
    exact_saved = copy.deepcopy(exact_net.state_dict())
    try:
        measure = None if rounding is not None and all((s.key, -1) in rounding for s in steps) else net
        exact, measured = run_steps(exact_net, steps, givens[0], request, Run(torch.float64, measure_with=measure))
        rounding = {**(rounding or {}), **measured}
        net.load_state_dict(saved)
        runs = []
        for k, seed in enumerate([None, *range(1, JITTERED_RUNS + 1)]):
            arrays, _ = run_steps(net, steps, givens[1 + k], request, Run(torch.float32, seed, rounding))
            runs.append(arrays)
            net.load_state_dict(saved)
    finally:
        net.load_state_dict(saved)
        exact_net.load_state_dict(exact_saved)
    return exact, runs, rounding


def _judge_weights(net: CaffeNet, key: str, where: tuple[str, int], ref: np.ndarray) -> Check:
    layer, i = where
    ours = net.layer(layer).export_blobs()[i]
    equal = ours.size == ref.size and np.array_equal(ours.reshape(ref.shape), ref)
    detail = "" if equal else "the loaded weights differ from the reference's"
    return Check(key, "weights", "net", 0.0 if equal else 1.0, 0.0, 0.0 if equal else math.inf, detail)


def _param_index(net: CaffeNet, text: str) -> tuple[str, int] | None:
    layer, _, index = text.rpartition(":")
    if not layer or not index.isdigit():
        return None
    try:
        module = net.layer(layer)
    except KeyError:
        return None
    return (layer, int(index)) if int(index) < len(module.blob_attrs) else None


def _as_blob(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A reference array in the net's shape for that blob (Caffe stores scalars as (1,)); data-dependent
    shapes (Filter) keep the reference's."""
    array = np.asarray(array)
    return array.reshape(shape) if array.size == math.prod(shape) else array
