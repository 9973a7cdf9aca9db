"""Time the paper's four metrics (G, C, mIoU, BF) over a CamVid split.

    python benchmarks/bench_metrics.py --data CAMVID_ROOT [--split test]
        [--shift 3 3] [--workers 1 2] [--repeat 1]

The prediction is the ground truth shifted by ``--shift`` pixels (rows,
columns; the vacated border repeats the edge), so that boundaries move and
the one-to-one matching has real work to do. Label decoding is timed apart
from the metrics; the figure that matters is the total.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segnet.data.imageio import read_label  # noqa: E402
from segnet.data.labels import get_label_space  # noqa: E402
from segnet.evaluation.metrics import SegmentationMetrics  # noqa: E402
from segnet.data.splits import list_samples  # noqa: E402

CAMVID = get_label_space("camvid")


def shifted(label: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``label`` moved down by dy and right by dx, edges repeated into the gap."""
    padded = np.pad(label, ((max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0))), mode="edge")
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[top : top + label.shape[0], left : left + label.shape[1]]


def run(labels: list[np.ndarray], preds: list[np.ndarray], workers: int) -> tuple[float, dict]:
    start = time.perf_counter()
    with SegmentationMetrics(CAMVID, workers=workers) as metrics:
        for gt, pred in zip(labels, preds):
            metrics.add(gt, pred)
        summary = metrics.summary()
    return time.perf_counter() - start, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CamVid root folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--shift", type=int, nargs=2, default=(3, 3), metavar=("DY", "DX"))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=1, help="runs per setting; the best is kept")
    args = parser.parse_args()

    start = time.perf_counter()
    labels = [read_label(s.label, CAMVID) for s in list_samples(args.data, args.split)]
    load = time.perf_counter() - start
    preds = [shifted(label, *args.shift) for label in labels]
    print(f"CamVid {args.split}: {len(labels)} images of {labels[0].shape[0]}x{labels[0].shape[1]}, "
          f"prediction = ground truth shifted by {tuple(args.shift)}; {os.cpu_count()} CPUs")
    print(f"decoding the label PNGs: {load:.2f} s")
    for workers in args.workers:
        seconds, summary = min((run(labels, preds, workers) for _ in range(args.repeat)), key=lambda r: r[0])
        print(
            f"workers={workers}: G, C, mIoU, BF in {seconds:.2f} s "
            f"({1000 * seconds / len(labels):.1f} ms/image; {seconds + load:.2f} s with decoding)  "
            f"G={summary['G']:.4f} C={summary['C']:.4f} mIoU={summary['mIoU']:.4f} BF={summary['BF']:.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
