"""Every reader's corpora replayed: each input read or refused with the project's one-line error, never another
exception, the same way twice, in bounded memory.

The seed corpora are made by seeds.py; the crash corpora under
``corpus/<reader>/`` hold inputs that once broke a reader (the findings
rebuilt by findings.py, and what ``run.py`` found). The replay needs no
atheris: it runs the fuzz targets on these inputs in a worker process whose
address space is capped at 3 GiB, as tests/commands/test_hostile.py's are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import findings
from fuzz.targets import READERS

HERE = Path(__file__).resolve().parent
CAP = 3 << 30
PEAK = 1 << 30  # the most one input may take above the loaded process


@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> dict[str, list[dict]]:
    results_file = tmp_path_factory.mktemp("replay") / "results.json"
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(HERE / "replay.py"), str(results_file), str(CAP), *READERS],
                          capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    by_reader: dict[str, list[dict]] = {reader: [] for reader in READERS}
    for result in json.loads(results_file.read_text()):
        by_reader[result["reader"]].append(result)
    return by_reader


@pytest.mark.parametrize("reader", READERS)
def test_corpus_is_read_or_refused_in_one_line(replayed, reader):
    results = replayed[reader]
    corpus = HERE / "corpus" / reader
    committed = {f"corpus/{p.name}" for p in corpus.iterdir()} if corpus.is_dir() else set()
    assert committed <= {r["input"] for r in results}
    assert any(r["input"].startswith("seed/") for r in results)
    problems = []
    for result in results:
        first, second = result["outcomes"]
        if first.startswith("escaped") or second.startswith("escaped"):
            problems.append(f"{result['input']}: {first if first.startswith('escaped') else second}")
        elif first != second:
            problems.append(f"{result['input']}: not the same twice: {first!r} then {second!r}")
        elif "\n" in first:
            problems.append(f"{result['input']}: an error of several lines: {first!r}")
        elif result["peak_rss"] is not None and result["peak_rss"] > PEAK:
            problems.append(f"{result['input']}: took {result['peak_rss'] >> 20} MiB")
    assert not problems, "\n\n".join(problems)


@pytest.mark.parametrize("reader", sorted({reader for reader, _ in findings.BYTE_FINDINGS}))
def test_findings_are_refused(replayed, reader):
    """Each byte finding is in its crash corpus, byte for byte as findings.py builds it, and is refused."""
    outcomes = {r["input"]: r["outcomes"][0] for r in replayed[reader]}
    for (kind, name), build in findings.BYTE_FINDINGS.items():
        if kind == reader:
            assert (HERE / "corpus" / reader / name).read_bytes() == build(), f"corpus/{reader}/{name} differs"
            assert outcomes[f"corpus/{name}"].startswith("refused: "), outcomes[f"corpus/{name}"]
            assert findings.BYTE_WORDS[name] in outcomes[f"corpus/{name}"]


def test_seeds_are_valid_files(replayed):
    """The byte readers' seeds are read (a seed that is refused teaches the fuzzer little)."""
    refused = [f"{reader}/{r['input']}: {r['outcomes'][0]}" for reader in ("caffemodel", "prototxt", "checkpoint",
                                                                          "image", "arrays")
               for r in replayed[reader] if r["input"].startswith("seed/") and r["outcomes"][0] != "read"]  # fmt: skip
    assert not refused, refused
