"""README's commands, run as a new user runs them on the shipped example, leave the checkout as it was.

The quick start is read from README itself (its first code block, without
the install steps); the other commands are those of README's command tour
with their placeholders filled and small ``--limit`` values, and README must
name each of them. Every output goes where README says, and ``git status``
must not change.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = "examples/segnet_basic_camvid"


def quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```\n(python3 -m venv[^\n]*)\n```", text)[1]
    steps = [s.strip() for s in block.split("&&")]
    return [s for s in steps if s.startswith("python -m ")]  # the venv and pip steps are the test's own setup


def status() -> set[str]:
    result = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True,
                            text=True, check=True)  # fmt: skip
    return set(result.stdout.splitlines())


def tour(oracle_dir: Path | str) -> list[str]:
    """The commands of README's tour, as a new user fills them in on the example."""
    commands = [
        "python -m segnet.evaluate --model segnet_basic_camvid.pt --limit 2 --no-progress",
        "python -m segnet.train --init segnet_basic_camvid.pt --iterations 1 --batch-size 2 --limit 2 --val-every 0"
        " --no-progress",
        f"python -m segnet.bn_stats {oracle_dir}/segnet_basic_train.prototxt --caffemodel "
        f"{oracle_dir}/segnet_basic_train.caffemodel --limit 2 -o runs/bn.caffemodel --no-progress",
        "python -m segnet.export segnet_basic_camvid.pt --prototxt runs/m.prototxt --caffemodel runs/m.caffemodel",
        "python -m segnet.class_weights --split val",
        "python -m segnet.variants",
        "python reproduce/table1.py --report",
        f"python reproduce/evaluate_caffe.py {EXAMPLE}/segnet_basic_camvid.prototxt "
        f"{EXAMPLE}/segnet_basic_camvid.caffemodel --limit 2 --no-progress",
    ]
    if _has("onnxscript"):
        commands.append("python -m segnet.onnx_export segnet_basic_camvid.pt runs/model.onnx")
    return commands


def _head(command: str) -> str:
    """What README must show of a command: ``python -m MODULE``, or ``python SCRIPT`` with an option right after it."""
    words = command.split()
    if words[1] == "-m" or (len(words) > 2 and words[2].startswith("--")):
        return " ".join(words[:3])
    return " ".join(words[:2])


def test_readme_names_every_command_the_test_runs():
    text = (ROOT / "README.md").read_text()
    commands = tour("ORACLE") + ["python -m segnet.onnx_export MODEL runs/model.onnx"]
    assert [_head(c) for c in commands if f"`{_head(c)}" not in text] == []


def test_readme_commands_keep_the_checkout_clean(shared_dir, camvid_dir, oracle_dir):
    env = dict(os.environ, SEGNET_SHARED=str(shared_dir))
    commands = quick_start()
    assert commands[0].startswith("python -m converter ") and commands[1].startswith("python -m segnet.predict ")
    commands += tour(oracle_dir)
    made = [ROOT / "segnet_basic_camvid.pt", ROOT / "0001TP_008550_segmentation.png", ROOT / "runs"]
    existed = {p for p in made if p.exists()}
    before = status()
    try:
        for command in commands:
            argv = [sys.executable if word == "python" else word for word in shlex.split(command)]
            result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            assert "Traceback" not in result.stderr, command
        assert (ROOT / "0001TP_008550_segmentation.png").is_file()
        assert status() == before, "README's commands changed what git sees"
    finally:
        for path in made:
            if path not in existed and path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True
