"""Every oracle case of caffe-segnet, run through the converter API.

Tolerances (stated here, checked per blob):
- float blobs: max |ours - caffe| <= 1e-4 * max(1, max |caffe|);
- index blobs (pooling masks, ArgMax): exactly equal;
- the oracle's ``argmax`` of prob: equal on at least 99.99% of pixels;
- TRAIN cases: loss within 1e-5 relative; every recorded diff within 1e-3
  relative in L2 norm (``param_diff`` blobs whose reference norm is below
  1e-6 are pure rounding noise, e.g. a conv bias followed by BN, and are
  checked against an absolute L2 bound of 1e-6 instead).

Max-pooling near-ties: where the two largest values of a pooling window
differ by float32 rounding, Caffe and we may pick different elements, and
SegNet's decoder then moves whole patches (see converter/near_ties.py). When
a case misses the tolerance, the test must show that this is the only cause:
it finds such near-tied windows (fewer than 1 in 10,000 pooling windows may
be used), re-runs with Caffe's choices there, and then applies every check
above unchanged. The raw argmax agreement is reported as well.
The worst error of each case is printed in the run's summary.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from oracle import ORACLE, oracle_cases, relative_l2, scaled_error

import converter
from converter.near_ties import explain_with_near_ties

FORWARD_TOL = 1e-4
LOSS_RTOL = 1e-5
DIFF_RTOL = 1e-3
NOISE_NORM = 1e-6
ARGMAX_AGREEMENT = 0.9999
MAX_FLIPPED_FRACTION = 1e-4


def _run(case, phase: str, want_grad: bool):
    net = converter.convert(ORACLE / case["prototxt"], ORACLE / case["caffemodel"], phase=phase)
    with np.load(ORACLE / case["inputs"]) as f:
        arrays = {k: f[k] for k in f.files}
    feed = {k: torch.from_numpy(v) for k, v in arrays.items() if ":" not in k}
    return net, feed, arrays


def _float_reference(net, ref) -> dict[str, np.ndarray]:
    skip = net.index_blob_names | set(net.loss_weights)
    return {k: v for k, v in ref.items() if k in net.blob_shapes and k not in skip}


def _argmax_source(net, ref) -> list[str]:
    """The oracle's ``argmax`` key (not a blob of the net) is computed from prob."""
    return ["prob"] if "argmax" in ref and "argmax" not in net.blob_shapes else []


def _pool_windows(net, feed) -> int:
    """Number of MAX pooling windows with a mask top in one forward pass."""
    total = 0
    for step, module in net.named_layers():
        if step.type == "Pooling" and len(step.tops) == 2:
            total += int(np.prod(net.blob_shapes[step.tops[0]]))
    return total


@pytest.mark.parametrize("case", oracle_cases())
def test_oracle_case(case, fidelity_report):
    with np.load(ORACLE / case["outputs"]) as f:
        ref = {k: f[k] for k in f.files}
    net, feed, arrays = _run(case, case["phase"], False)
    notes = []

    # Raw comparison first; if it misses, prove the misses are near-ties only.
    flips = None
    with torch.no_grad():
        raw = net(**feed, blobs=list(_float_reference(net, ref)) + _argmax_source(net, ref))
    floats = _float_reference(net, ref)
    raw_worst = max((scaled_error(raw[k].numpy().reshape(v.shape), v), k) for k, v in floats.items()) if floats else None
    if "argmax" in ref and "argmax" not in net.blob_shapes:
        agreement = float((raw["prob"].argmax(dim=1).numpy() == ref["argmax"]).mean())
        notes.append(f"raw argmax agreement {agreement:.6f}")
    if raw_worst and raw_worst[0] > FORWARD_TOL:
        explanation = explain_with_near_ties(net, feed, floats, tol=FORWARD_TOL)
        windows = _pool_windows(net, feed)
        assert explanation.explained, (
            f"{raw_worst[1]} misses by {raw_worst[0]:.2e} and max-pooling near-ties do not explain it: "
            f"after {explanation.flips.count} flips still {explanation.bad_after}"
        )
        assert explanation.flips.count <= MAX_FLIPPED_FRACTION * windows
        notes.append(f"raw worst {raw_worst[0]:.2e} at {raw_worst[1]}; {explanation.flips.count} near-tied "
                     f"pooling windows of {windows} decided as Caffe did")  # fmt: skip
        flips = explanation.flips

    with flips.applied(net) if flips else contextlib.nullcontext():
        report = _check_case(case, net, feed, arrays, ref, flips)
    worst = max(report)
    line = f"worst {worst[0]:.2e} at {worst[1]} ({len(report)} checks, phase {case['phase']})"
    fidelity_report[case["name"]] = "; ".join([line, *notes])


def _check_case(case, net, feed, arrays, ref, flips) -> list[tuple[float, str]]:
    diff_keys = [k for k in ref if k.startswith("diff:") or k.startswith("param_diff:")]
    backward = bool(diff_keys)
    grad_inputs = {k.split(":", 1)[1] for k in diff_keys if k.split(":", 1)[1] in feed}
    feed = {k: v.clone().requires_grad_(backward and k in grad_inputs) for k, v in feed.items()}
    blob_names = [k for k in ref if k in net.blob_shapes]
    top_diffs = {k.split(":", 1)[1]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("top_diff:")}
    diff_blobs = [k.split(":", 1)[1] for k in diff_keys if k.startswith("diff:")]
    wanted = sorted(set(blob_names) | set(top_diffs) | {b for b in diff_blobs if b in net.blob_shapes})
    with torch.set_grad_enabled(backward):
        out = net(**feed, blobs=wanted + _argmax_source(net, ref))
    report = []

    index_blobs = net.index_blob_names
    assert blob_names, "the case recorded no blob this net produces"
    for name in blob_names:
        ours = out[name].detach().float().numpy().reshape(ref[name].shape)
        if name in index_blobs:
            mismatched = int((ours != ref[name]).sum())
            assert mismatched == 0, f"{name}: {mismatched} index values differ"
            report.append((0.0, name))
        elif name in net.loss_weights:
            got, want = float(ours.reshape(())), float(ref[name].reshape(()))
            rel = abs(got - want) / abs(want)
            assert rel <= LOSS_RTOL, f"loss {name}: {got!r} vs caffe {want!r} (rel {rel:.2e})"
            report.append((rel, name))
        else:
            err = scaled_error(ours, ref[name])
            assert err <= FORWARD_TOL, f"{name}: scaled max error {err:.2e} > {FORWARD_TOL}"
            report.append((err, name))

    for key in [k for k in ref if k.startswith("param:")]:
        _, layer, i = key.split(":")
        ours = net.layer(layer).export_blobs()[int(i)]
        np.testing.assert_array_equal(ours.reshape(ref[key].shape), ref[key], err_msg=key)

    if "argmax" in ref and "argmax" not in net.blob_shapes:
        pred = out["prob"].detach().argmax(dim=1).numpy().astype(np.uint8)  # first index on ties, as numpy
        agreement = float((pred == ref["argmax"]).mean())
        assert agreement >= ARGMAX_AGREEMENT, f"argmax agrees on {agreement:.6f} of pixels"
        report.append((1 - agreement, "argmax disagreement"))

    if backward:
        for name in diff_blobs:
            if name in out and out[name].requires_grad:
                out[name].retain_grad()
        if top_diffs:  # gradient of sum(top_diff * top), as the oracle injected it
            objective = sum((out[b] * d).sum() for b, d in top_diffs.items())
        else:
            objective = net.total_loss(out)
        net.zero_grad()
        objective.backward()
        for key in diff_keys:
            if key.startswith("diff:"):
                name = key.split(":", 1)[1]
                grad = (feed[name] if name in feed else out[name]).grad
            else:
                _, layer, i = key.split(":")
                grad = net.layer(layer).blob_tensors()[int(i)].grad
            assert grad is not None, f"{key}: no gradient reached it"
            ours = grad.detach().numpy().reshape(ref[key].shape)
            if float(np.linalg.norm(ref[key].astype(np.float64))) < NOISE_NORM:
                err = float(np.linalg.norm(ours.astype(np.float64) - ref[key]))
                assert err <= NOISE_NORM, f"{key}: absolute L2 error {err:.2e} on a noise-level gradient"
            else:
                err = relative_l2(ours, ref[key])
                assert err <= DIFF_RTOL, f"{key}: relative L2 error {err:.2e} > {DIFF_RTOL}"
            report.append((err, key))

    test_keys = [k for k in ref if k.startswith("test:")]
    if test_keys:  # the same batch through a TEST-phase net
        test_net, test_feed, _ = _run(case, "TEST", False)
        names = [k.split(":", 1)[1] for k in test_keys]
        with torch.no_grad(), flips.applied(test_net) if flips else contextlib.nullcontext():
            test_out = test_net(**test_feed, blobs=names)
        for key, name in zip(test_keys, names):
            err = scaled_error(test_out[name].numpy().reshape(ref[key].shape), ref[key])
            assert err <= FORWARD_TOL, f"{key}: scaled max error {err:.2e}"
            report.append((err, key))
    return report
