"""How fast a SegNet-sized caffemodel (about 117 MB) is read.

Compares, in one run, converter.read_weights with the straightforward way
(parse the whole NetParameter with protobuf, then turn each blob's repeated
float field into a numpy array). Uses the caffe-segnet oracle's full SegNet
caffemodel when the reference data is present, otherwise writes a file of the
same layer shapes with random values.

    python benchmarks/bench_read_weights.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from caffe_proto import caffe_pb2
from converter.weights import read_weights
from converter.writer import write_caffemodel

ORACLE_MODEL = Path(__file__).resolve().parents[2] / "shared" / "oracle" / "segnet_full.caffemodel.gz"

# SegNet (VGG-16 encoder + mirrored decoder) conv layers: (out, in) with 3x3 kernels.
SEGNET_CONVS = [
    (64, 3), (64, 64), (128, 64), (128, 128), (256, 128), (256, 256), (256, 256), (512, 256), (512, 512),
    (512, 512), (512, 512), (512, 512), (512, 512),
    (512, 512), (512, 512), (512, 512), (512, 512), (512, 512), (256, 512), (256, 256), (256, 256),
    (128, 256), (128, 128), (64, 128), (64, 64), (11, 64),
]  # fmt: skip


def synthetic(path: Path) -> None:
    rng = np.random.default_rng(0)
    layers = []
    for i, (out, inp) in enumerate(SEGNET_CONVS):
        conv = caffe_pb2.LayerParameter(name=f"conv{i}", type="Convolution")
        layers.append((conv, [rng.standard_normal((out, inp, 3, 3), np.float32), rng.standard_normal(out, np.float32)]))
        bn = caffe_pb2.LayerParameter(name=f"conv{i}_bn", type="BN")
        layers.append((bn, [rng.standard_normal((1, out, 1, 1), np.float32)] * 2))
    write_caffemodel(path, layers)


def naive_read(path: Path) -> dict[str, list[np.ndarray]]:
    net = caffe_pb2.NetParameter.FromString(path.read_bytes())
    return {layer.name: [np.array(b.data, dtype=np.float32) for b in layer.blobs] for layer in net.layer}


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "segnet.caffemodel"
        if ORACLE_MODEL.exists():
            path.write_bytes(gzip.decompress(ORACLE_MODEL.read_bytes()))
            source = "caffe-segnet oracle segnet_full"
        else:
            synthetic(path)
            source = "synthetic, SegNet layer shapes"
        size = path.stat().st_size
        ours = timed(lambda: read_weights(path), args.repeats)
        naive = timed(lambda: naive_read(path), max(1, args.repeats // 2))
        gz = Path(tmp) / "segnet.caffemodel.gz"
        gz.write_bytes(gzip.compress(path.read_bytes(), compresslevel=1))
        ours_gz = timed(lambda: read_weights(gz), args.repeats)
    print(f"caffemodel: {size / 1e6:.1f} MB ({source}); median of {args.repeats} runs")
    print(f"{'reader':<42} {'seconds':>8} {'vs protobuf':>12}")
    print(f"{'protobuf parse + numpy per blob (baseline)':<42} {naive:>8.3f} {1.0:>11.1f}x")
    print(f"{'converter.read_weights':<42} {ours:>8.3f} {naive / ours:>11.1f}x")
    print(f"{'converter.read_weights, gzip-compressed':<42} {ours_gz:>8.3f} {naive / ours_gz:>11.1f}x")


if __name__ == "__main__":
    main()
