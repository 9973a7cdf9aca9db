"""segnet-serve on loopback: requests/s and p50/p95 latency at 1, 4 and 16 clients at a time.

Starts ``python -m segnet.serve`` as a subprocess on a free 127.0.0.1 port
(the shipped example unless ``--model`` names another), warms it up, then
for each concurrency sends ``--requests`` CamVid test images (PNG, 360x480)
to POST /v1/segment from that many client threads, each waiting for its
answer before sending the next. Latency is what a client waits, from
sending the body to the last byte of the label PNG; requests/s is answers
over the level's wall time. The queue is deep enough (``--queue 64``) that
no request is refused; any 503 is counted.

    python benchmarks/bench_serve.py [--requests 48] [--max-batch 4] [--model MODEL] [--device cpu] [--json FILE]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from segnet.cli import shared_dir
from segnet.deploy.measure import cpu_name

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
LEVELS = (1, 4, 16)


def start(args: argparse.Namespace) -> tuple[subprocess.Popen, int]:
    """The server as a subprocess, and the port it printed."""
    command = [sys.executable, "-m", "segnet.serve", "--port", "0", "--queue", "64", "--max-batch", str(args.max_batch),
               "--device", args.device, *([args.model] if args.model else [])]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        print(line.rstrip())
        if line.startswith(f"serving http://{HOST}:"):
            return process, int(line.split(f"{HOST}:", 1)[1].split("/", 1)[0])
    process.kill()
    raise SystemExit("segnet-serve did not start")


def post(port: int, body: bytes) -> tuple[int, float]:
    """(status, seconds) of one POST /v1/segment on a fresh connection."""
    start = time.perf_counter()
    connection = http.client.HTTPConnection(HOST, port, timeout=300)
    try:
        connection.request("POST", "/v1/segment", body=body, headers={"Content-Type": "image/png"})
        answer = connection.getresponse()
        answer.read()
        return answer.status, time.perf_counter() - start
    finally:
        connection.close()


def level(port: int, images: list[bytes], clients: int, requests: int) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(lambda i: post(port, images[i % len(images)]), range(requests)))
    wall = time.perf_counter() - start
    ok = [seconds for status, seconds in answers if status == 200]
    return {"concurrency": clients, "requests": requests, "ok": len(ok), "refused": requests - len(ok),
            "requests_per_s": len(ok) / wall, "p50_ms": 1000 * float(np.percentile(ok, 50)) if ok else None,
            "p95_ms": 1000 * float(np.percentile(ok, 95)) if ok else None}  # fmt: skip


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def table(rows: list[dict]) -> str:
    lines = ["| concurrency | requests | requests/s | p50 latency | p95 latency | refused (503) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['concurrency']} | {r['requests']} | {r['requests_per_s']:.2f} | {r['p50_ms']:.0f} ms | "
                     f"{r['p95_ms']:.0f} ms | {r['refused']} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=48, help="requests per concurrency level (default 48)")
    p.add_argument("--max-batch", type=int, default=4, help="the server's --max-batch (default 4)")
    p.add_argument("--model", help="a converted net or segnet checkpoint (default: the shipped example)")
    p.add_argument("--device", default="auto", help="the server's --device (default auto)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    folder = shared_dir() / "CamVid" / "test"
    paths = sorted(folder.glob("*.png"))[:16] or sorted((ROOT / "segnet/deploy/static/examples").glob("*.jpg"))
    images = [path.read_bytes() for path in paths]
    process, port = start(args)
    try:
        for i in range(4):  # warm-up: the first batches set up buffers
            post(port, images[i % len(images)])
        rows = [level(port, images, clients, args.requests) for clients in LEVELS]
        rss = peak_rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(60)
    print(f"\nsegnet-serve on loopback, {len(images)} CamVid test images ({paths[0].suffix[1:].upper()}, "
          f"360x480) in turn, --max-batch {args.max_batch}")  # fmt: skip
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores); clients and server on the same machine")
    print(table(rows))
    print(f"server peak RSS: {rss:.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "max_batch": args.max_batch, "rows": rows,
                                               "peak_rss_mb": rss}, indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
