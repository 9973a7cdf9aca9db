"""Do this project's blob shapes equal a Caffe build's for a net at given input sizes?

    PYTHONPATH=/tmp/caffe-mainline/python GLOG_minloglevel=2 /usr/bin/python3 \
        tools/caffe-mainline/compare_shapes.py NET.prototxt data=1,3,500,500 [label=1,1,500,500] ...

Data and Input layers (Python data layers included) are replaced by Input layers of the given
shapes for Caffe, as the converter turns them into named inputs. Caffe builds
the TEST phase here; the converter runs in the project's virtual environment
(``.venv/bin/python``, or $PROJECT_PYTHON). Prints one line per size and
blob that differs, and exits 1 when any does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import caffe

ROOT = Path(__file__).resolve().parents[2]
DATA_TYPES = ("Input", "Python", "Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DenseImageData")


def caffe_shapes(prototxt: Path, shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    text = prototxt.read_text()
    # drop data layers (brace-balanced blocks whose type is a data type); the inputs take their tops
    out, i = [], 0
    for match in re.finditer(r"layer\s*\{", text):
        if match.start() < i:
            continue
        depth, j = 0, match.end() - 1
        while True:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
            if depth == 0:
                break
        block = text[match.start():j]
        kind = re.search(r'type:\s*"(\w+)"', block)
        out.append(text[i:match.start()])
        if not (kind and kind.group(1) in DATA_TYPES):
            out.append(block)
        i = j
    out.append(text[i:])
    inputs = "".join(f'layer {{ name: "{n}" type: "Input" top: "{n}" input_param {{ shape {{ '
                     + " ".join(f"dim: {d}" for d in s) + " } } }\n" for n, s in shapes.items())
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(inputs + "".join(out))
    net = caffe.Net(f.name, caffe.TEST)
    os.unlink(f.name)
    return {b: list(net.blobs[b].data.shape) for b in net.blobs if "_split_" not in b}


def our_shapes(prototxt: Path, shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    python = os.environ.get("PROJECT_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(tmp) / "summary.json"
        options = [f"--input-shape={n}={','.join(map(str, s))}" for n, s in shapes.items()]
        subprocess.run([python, "-m", "converter", str(prototxt), *options, "-q", "--summary-json", str(summary)],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)  # fmt: skip
        rows = json.loads(summary.read_text())["layers"]
    return {top["name"]: top["shape"] for row in rows for top in row["tops"]}


def main() -> int:
    prototxt = Path(sys.argv[1]).resolve()
    shapes = {}
    for spec in sys.argv[2:]:
        name, _, dims = spec.partition("=")
        shapes[name] = [int(d) for d in dims.split(",")]
    caffe.set_mode_cpu()
    theirs, ours = caffe_shapes(prototxt, shapes), our_shapes(prototxt, shapes)
    bad = [b for b in theirs if ours.get(b) != theirs[b]]
    for blob in bad:
        print(f"{prototxt.name} {shapes}: {blob} Caffe {theirs[blob]}, here {ours.get(blob)}")
    first = next(iter(shapes.values()))
    same_size = [b for b in theirs if b not in shapes and len(theirs[b]) == 4 and theirs[b][2:] == first[2:]]
    print(f"{prototxt.name} {' '.join(sys.argv[2:])}: {len(theirs) - len(bad)} of {len(theirs)} blob shapes equal; "
          f"blobs of the input's height and width: {', '.join(same_size) or '-'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
