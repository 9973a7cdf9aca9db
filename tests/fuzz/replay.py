"""Replay corpora through the fuzz targets in one process under an address-space cap (test_replay's worker).

    python tests/fuzz/replay.py RESULTS.json CAP_BYTES READER...

For each reader: its seed corpus (seeds.py) and its crash corpus
(``corpus/<reader>/``), each input run twice (a replay must give the same
outcome). RESULTS.json gets, per input, the outcome of each run ("read",
"refused: <the error line>" or "escaped: <traceback>"), and the peak
resident memory the input took above what the process held before it.
"""

from __future__ import annotations

import json
import resource
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def outcome(reader: str, data: bytes, work) -> str:
    from fuzz import targets

    try:
        refused = targets.run(reader, data, work)
    except BaseException:  # noqa: BLE001 - anything but the project's error is what the replay looks for
        return "escaped: " + traceback.format_exc()
    return "read" if refused is None else "refused: " + refused


def inputs(reader: str) -> dict[str, bytes]:
    from fuzz import seeds

    found = {f"seed/{name}": data for name, data in seeds.seeds(reader).items()}
    folder = HERE / "corpus" / reader
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        found[f"corpus/{path.name}"] = path.read_bytes()
    return found


def main() -> None:
    results_file, cap, readers = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent)]  # the project before tests/, whose folders share names
    from segnet.deploy.measure import current_rss_mb, peak_rss_mb, try_reset_peak_rss
    import torch

    torch.set_num_threads(1)
    from fuzz import targets

    work = targets.Workspace()
    results = []
    for reader in readers:
        for name, data in inputs(reader).items():
            measured = try_reset_peak_rss()
            before = current_rss_mb()
            runs = [outcome(reader, data, work) for _ in range(2)]
            peak = (peak_rss_mb() - before) * 2**20 if measured else None
            results.append({"reader": reader, "input": name, "outcomes": runs, "peak_rss": peak})
    Path(results_file).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
