"""segnet-serve as a command: a real server on a free loopback port, under load, hostile input and a real browser."""

from __future__ import annotations

import http.client
import io
import json
import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="segnet-serve needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="segnet-serve needs the serve extra: pip install -e '.[serve]'")

from segnet.data.labels import get_label_space
from segnet.deploy import conv_paths

from conftest import ROOT

HOST = "127.0.0.1"
CHROMIUM = "/usr/bin/chromium"
START_S = 180  # converting the example and timing its layers on a busy 2-core machine


@dataclass
class Server:
    port: int
    process: subprocess.Popen

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
        connection = http.client.HTTPConnection(HOST, self.port, timeout=120)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            answer = connection.getresponse()
            return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
        finally:
            connection.close()

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


@contextmanager
def serving(*args: str, cache: Path) -> Iterator[Server]:
    """``python -m segnet.serve --port 0 ARGS`` until the block ends; the port is read from what it prints."""
    env = {**os.environ, conv_paths.CACHE_ENV: str(cache), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "segnet.serve", "--host", HOST, "--port", "0", *args]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        yield Server(_port(lines, process), process)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)


def _port(lines: queue.Queue, process: subprocess.Popen) -> int:
    deadline, seen = time.monotonic() + START_S, []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if process.poll() is not None:
                break
            continue
        seen.append(line)
        if line.startswith(f"serving http://{HOST}:"):
            return int(line.split(f"{HOST}:", 1)[1].split("/", 1)[0])
    raise AssertionError("segnet-serve did not start: " + "".join(seen)[-2000:])


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """The shipped example behind a short queue (6), so that 8 clients at a time meet a full one."""
    with serving("--queue", "6", "--max-batch", "4", "--timeout", "120", cache=tmp_path_factory.mktemp("cache")) as s:
        yield s


@pytest.fixture(scope="module")
def images(camvid_dir) -> list[bytes]:
    return [path.read_bytes() for path in sorted((camvid_dir / "test").glob("*.png"))[:8]]


def test_a_taken_port_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run([sys.executable, "-m", "segnet.serve", "--port", str(port)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [
        f"error: cannot listen on {HOST}:{port}: Address already in use"]  # fmt: skip


def test_a_model_that_cannot_be_read_is_one_line(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    run = subprocess.run([sys.executable, "-m", "segnet.serve", str(tmp_path / "model.pt"), "--port", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "model.pt" in lines[0]


def test_under_load_every_request_is_answered_200_or_503(server, images, capsys):
    def one(i: int) -> tuple[int, dict[str, str], bytes]:
        answer = server.request("POST", "/v1/segment", images[i % len(images)], {"Content-Type": "image/png"})
        if answer[0] == 503:
            time.sleep(0.25)  # a client backing off (less than Retry-After says, to keep the queue full)
        return answer

    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(200)))
    seconds = time.perf_counter() - started
    counts = Counter(status for status, _, _ in answers)
    assert sum(counts.values()) == 200 and set(counts) <= {200, 503} and counts[200] > 0, counts
    for status, headers, body in answers:
        if status == 200:
            assert body.startswith(b"\x89PNG") and Image.open(io.BytesIO(body)).size == (480, 360)
        else:
            assert int(headers["retry-after"]) >= 1 and "busy" in json.loads(body)["error"]
    health = json.loads(server.request("GET", "/healthz")[2])
    assert health["in_flight"] == 0 and health["waiting"] == 0
    with capsys.disabled():
        print(f"\nload test: 200 requests, 8 at a time, in {seconds:.1f} s: {counts[200]} answered 200, "
              f"{counts[503]} answered 503 (queue 6); server peak RSS {server.peak_rss_mb():.0f} MiB")  # fmt: skip


def _raw_post(port: int, headers: str, body_chunks: Iterator[bytes]) -> bytes:
    """A POST written by hand (a body bigger than any client would buffer); returns what the server answers."""
    with socket.create_connection((HOST, port), timeout=60) as connection:
        connection.sendall(f"POST /v1/segment HTTP/1.1\r\nHost: {HOST}\r\n{headers}\r\n".encode())
        try:
            for chunk in body_chunks:
                connection.sendall(chunk)
        except OSError:  # the server may stop reading once it has answered
            pass
        answer = b""
        while b"}" not in answer:
            data = connection.recv(65536)
            if not data:
                break
            answer += data
    return answer


def test_hostile_uploads_to_a_real_server_are_4xx_and_it_keeps_answering(server, images):
    mib = bytes(1 << 20)
    declared = _raw_post(server.port, "Content-Type: image/png\r\nContent-Length: 104857600\r\n",
                         iter([mib] * 4))  # fmt: skip
    assert declared.startswith(b"HTTP/1.1 413") and b'"error"' in declared
    chunked = _raw_post(server.port, "Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n",
                        (b"100000\r\n" + mib + b"\r\n" for _ in range(100)))  # fmt: skip
    assert chunked.startswith(b"HTTP/1.1 413")

    jpeg = io.BytesIO()
    Image.open(io.BytesIO(images[0])).convert("RGB").save(jpeg, format="JPEG")
    hostile = {"bomb": _bomb_png(), "30000x30000": _header_png(30000, 30000), "truncated JPEG": jpeg.getvalue()[:9000],
               "not an image": b"%PDF-1.4\n" + bytes(200), "empty": b""}  # fmt: skip
    for name, body in hostile.items():
        status, _, answer = server.request("POST", "/v1/segment", body, {"Content-Type": "image/png"})
        assert 400 <= status < 500, (name, status, answer)
        assert list(json.loads(answer)) == ["error"], name
    assert server.request("GET", "/healthz")[0] == 200
    assert server.request("POST", "/v1/segment", images[0])[0] == 200


def _header_png(width: int, height: int, idat: bytes | None = None) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    idat = idat if idat is not None else zlib.compress(bytes(16))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _bomb_png(side: int = 9000) -> bytes:
    squeeze = zlib.compressobj(9)
    idat = b"".join(squeeze.compress(bytes(side + 1)) for _ in range(side)) + squeeze.flush()
    return _header_png(side, side, idat)


# ---------------------------------------------------------------- the page in a real browser


def _browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (the test extra)")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    return sync_api


def test_the_page_segments_an_upload_in_headless_chromium(server, camvid_dir, tmp_path):
    sync_api = _browser()
    image = min((camvid_dir / "test").glob("*.png"))
    names = set(get_label_space("camvid").names)
    args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium's sandbox refuses to run as root
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            problems: list[str] = []
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.goto(f"http://{HOST}:{server.port}/")
            expect = sync_api.expect  # waits without evaluating strings: the page's CSP forbids eval
            expect(page.locator("#model")).to_contain_text("camvid")
            page.set_input_files("#file", str(image))
            expect(page.locator("#status")).to_have_text(f"{image.name}: done", timeout=120_000)
            assert page.eval_on_selector("#overlay", "e => e.complete && e.naturalWidth") == 480
            legend = page.locator("#legend li").all_inner_texts()
            shown = {line.split("\n")[0].split("\t")[0].strip() for line in legend}
            assert legend and shown <= names | {"unlabelled"} and "Road" in shown, legend
            page.locator("#opacity").fill("30")
            assert page.eval_on_selector("#overlay", "e => e.style.opacity") == "0.3"
            expect(page.locator("#timing")).to_contain_text("ms")
            assert "cpu" in page.inner_text("#timing")
            page.click("#examples button >> nth=1")
            expect(page.locator("#status")).to_have_text("Seq05VD_f02370.jpg: done", timeout=120_000)
            page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
            assert not problems, problems
        finally:
            browser.close()
    assert (tmp_path / "serve.png").stat().st_size > 10_000
