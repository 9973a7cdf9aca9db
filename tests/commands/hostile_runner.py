"""Run command-line cases in one process under an address-space cap (the corruption suite's worker).

    python tests/commands/hostile_runner.py CASES.json RESULTS.json CAP_BYTES

CASES.json is a list of {"id", "command", "argv"}: "converter" is ``python
-m converter``, "segnet.<name>" that command. Each case runs its command's
``main(argv)`` as ``python -m`` would, with RLIMIT_AS set to CAP_BYTES for the
whole process, so that a file which makes a command allocate past the cap
fails here as it would on a small machine. RESULTS.json gets, per case, the
exit status, what it printed, the traceback of any exception that escaped
``main`` (there should be none), the memory limit the command saw, and its
peak resident memory above what the process held before it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import resource
import sys
import traceback
from pathlib import Path


def main() -> None:
    cases_file, results_file, cap = sys.argv[1], sys.argv[2], int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from segnet.deploy.measure import current_rss_mb, peak_rss_mb, try_reset_peak_rss
    import torch

    torch.set_num_threads(1)
    from converter import budget

    results = []
    for case in json.loads(Path(cases_file).read_text()):
        name = "converter.cli" if case["command"] == "converter" else case["command"]
        command = importlib.import_module(name).main
        budget.set_limit(None)  # each case starts from the environment and the default, as a new process does
        out, err = io.StringIO(), io.StringIO()
        measured = try_reset_peak_rss()
        before = current_rss_mb()
        status, trace = None, None
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = command(case["argv"])
            except SystemExit as exc:  # argparse
                status = exc.code
            except BaseException:  # noqa: BLE001 - what a user would see as a traceback
                trace = traceback.format_exc()
        results.append({
            "id": case["id"], "status": status, "stdout": out.getvalue(), "stderr": err.getvalue(),
            "traceback": trace, "limit": budget.limit(),
            "peak_rss": (peak_rss_mb() - before) * 2**20 if measured else None,
        })  # fmt: skip
    Path(results_file).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
