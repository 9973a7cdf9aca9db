"""What a device call brings back and carries forward: the size arithmetic reproduce/device.py plans with.

A call returns at most 8 files of 16 MiB, 64 MiB in all: the runner writes
one tar cut into at most four parts of 15 MiB (:data:`BUNDLE_LIMIT`; the
rest is runner.json and runner.log), and plans with a MiB of that kept for
tar headers (:data:`PLAN_LIMIT`). The next call carries the working tree,
the data pack and the state of every row cut short, 64 MiB in all: what
the pack left of that (:func:`carry_room`) bounds the rows that may be cut
in one call.

Per row, from its variant's real sizes (experiment.row_sizes: W weights,
M momentum):

- a row cut short returns, and the next call carries, ``last.pt`` (W + M)
  and its logs: :func:`cut_bytes`;
- its ``best.pt`` (W) comes back once, in the call that selected it, and
  stays here (it never travels to the device again);
- a finished row returns ``best.pt`` (when selected in this call) and logs.

A row trained alone (segnet.training.loop.train) may be cut with a new
best.pt, so it reserves W + M + W (:func:`worst_bytes`). A row of a grouped
set keeps its full state at its best validation on the device: when its
best.pt does not fit, the row is rewound to that state (the iterations
since are trained again next call) instead of losing its selection, so it
reserves W + M.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from experiment import LOG_BYTES, MIB, row_sizes
from packing import state_reserve

PART = 15 * MIB  # each file the device returns holds at most 16 MiB
PARTS = 4
BUNDLE_LIMIT = PARTS * PART  # 60 MiB; with runner.json and runner.log under the 64 MiB returned in all
PLAN_LIMIT = BUNDLE_LIMIT - MIB  # tar headers and padding


def cut_bytes(variant: str) -> int:
    """What a cut row returns and the next call carries: last.pt (weights and momentum) and its logs."""
    weights, momentum = row_sizes(variant)
    return weights + momentum + LOG_BYTES


def best_bytes(variant: str) -> int:
    return row_sizes(variant)[0]


def worst_bytes(variant: str, grouped: bool) -> int:
    """The most a row in flight may add to the bundle: cut with a new best.pt, unless it can be rewound."""
    return cut_bytes(variant) + (0 if grouped else best_bytes(variant))


def carry_room(data: str | Path, given_mib: float | None = None) -> int:
    """Bytes of cut rows' state the next call can carry: ``given_mib``, else what the pack's manifest says it
    left, else what pack_data.py reserves (the largest row's last.pt, best.pt and logs)."""
    if given_mib is not None:
        return int(given_mib * MIB)
    manifest = Path(data).parent / "manifest.json"
    if manifest.is_file():
        room = json.loads(manifest.read_text()).get("state_room_bytes")
        if isinstance(room, int):
            return room
    return state_reserve()


@dataclass(frozen=True)
class Held:
    """What the bundle and the next call's carry are already committed to when a set asks to start."""

    returned: int = 0  # bytes: finished and cut rows' files, plus the worst case of the rows in flight
    carried: int = 0  # bytes: the state of cut rows and of the rows in flight, were they cut


def admit(variant: str, rows: int, held: Held, returned_limit: int, carry_limit: int) -> tuple[int, str | None]:
    """How many of a set's ``rows`` rows of ``variant`` may start (0 to ``rows``), and why not all of them."""
    for k in range(rows, 0, -1):
        carried = held.carried + k * cut_bytes(variant)
        returned = held.returned + k * worst_bytes(variant, k > 1)
        if carried <= carry_limit and returned <= returned_limit:
            break
    else:
        k = 0
    if k == rows:
        return k, None
    carried = held.carried + (k + 1) * cut_bytes(variant)
    returned = held.returned + (k + 1) * worst_bytes(variant, k + 1 > 1)
    why = (f"cut short, {k + 1} {variant} row(s) would leave {carried / MIB:.1f} MiB of state for the next call "
           f"to carry ({carry_limit / MIB:.1f} MiB room)" if carried > carry_limit else
           f"{k + 1} {variant} row(s) could add {(returned - held.returned) / MIB:.1f} MiB to a bundle already "
           f"holding {held.returned / MIB:.1f} MiB ({returned_limit / MIB:.1f} MiB room)")  # fmt: skip
    return k, why
