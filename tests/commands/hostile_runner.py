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
import re
import resource
import sys
import traceback
from pathlib import Path


def _status_kb(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) if match else 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
        return True
    except OSError:
        return False


def main() -> None:
    cases_file, results_file, cap = sys.argv[1], sys.argv[2], int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import torch

    torch.set_num_threads(1)
    from converter import budget

    results = []
    for case in json.loads(Path(cases_file).read_text()):
        name = "converter.cli" if case["command"] == "converter" else case["command"]
        command = importlib.import_module(name).main
        budget.set_limit(None)  # each case starts from the environment and the default, as a new process does
        out, err = io.StringIO(), io.StringIO()
        measured = _reset_peak()
        before = _status_kb("VmRSS")
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
            "peak_rss": (_status_kb("VmHWM") - before) * 1024 if measured else None,
        })  # fmt: skip
    Path(results_file).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
