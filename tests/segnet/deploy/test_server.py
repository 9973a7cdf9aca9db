"""segnet-serve's app in-process (TestClient): segnet.predict's label PNG, the page, the limits, the batcher."""

from __future__ import annotations

import io
import struct
import threading
import time
import warnings
import zlib
from concurrent.futures import Future

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="segnet-serve needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("httpx", reason="TestClient needs httpx (the test extra)")

import converter
from converter import budget
from segnet import predict
from segnet.data.labels import get_label_space
from segnet.deploy import conv_paths
from segnet.deploy.batcher import Batcher, QueueFull
from segnet.deploy.engine import build_engine
from segnet.deploy.server import create_app
from segnet.deploy.service import EXAMPLE, Limits, SegmentService, example_model
from segnet.deploy.uploads import UploadError, UploadFile, check_upload, pixel_limit, sniff_format
from segnet.models.family import bayesian_segnet_basic, segnet_basic

MiB = 1 << 20
LIMITS = Limits(max_upload=4 * MiB, max_pixels=4_000_000, queue=8, timeout_s=120.0, mc_samples_max=3)


def _test_client(app):
    with warnings.catch_warnings():  # newer Starlette prefers httpx2 and warns about httpx
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    return TestClient(app, raise_server_exceptions=False)  # answer as a server would, 500 included


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private Winograd timing cache, shared by the server's engine and segnet.predict's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(conv_paths.CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def example(cache):
    service = SegmentService(*_parts(example_model()), LIMITS, max_batch=2, name="example")
    yield service
    service.close()


@pytest.fixture(scope="module")
def client(example):
    return _test_client(create_app(example))


def _parts(model, size=None, batch=2):
    space = get_label_space("camvid")
    return model, space, build_engine(model, "cpu", input_size=size, batch_size=batch)


def _tiny(model, limits=LIMITS) -> SegmentService:
    """A small random model at 32x48: fast enough to build per test."""
    torch.manual_seed(0)
    return SegmentService(*_parts(model.eval(), (32, 48)), limits, max_batch=2, name="tiny")


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def _error(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and "upload-" not in body["error"]
    return body["error"]


# ---------------------------------------------------------------- the API


def test_a_camvid_image_gets_the_label_png_segnet_predict_writes(client, camvid_dir, tmp_path):
    image = min((camvid_dir / "test").glob("*.png"))
    model = tmp_path / "example.pt"
    converter.save(converter.convert(EXAMPLE / "segnet_basic_camvid.prototxt",
                                     EXAMPLE / "segnet_basic_camvid.caffemodel"), model)  # fmt: skip
    assert predict.main([str(model), str(image), "-o", str(tmp_path / "out"), "--batch-size", "2", "--workers", "0",
                         "--device", "cpu", "--no-progress"]) == 0  # fmt: skip
    written = (tmp_path / "out" / f"{image.stem}_segmentation.png").read_bytes()

    raw = client.post("/v1/segment", content=image.read_bytes(), headers={"Content-Type": "image/png"})
    assert raw.status_code == 200 and raw.headers["content-type"] == "image/png"
    assert raw.content == written  # byte for byte: same decode, resize, engine and PNG writer
    form = client.post("/v1/segment", files={"image": (image.name, image.read_bytes(), "image/png")})
    assert form.status_code == 200 and form.content == written
    labels = np.asarray(Image.open(io.BytesIO(raw.content)))
    assert Image.open(io.BytesIO(raw.content)).mode == "P" and labels.shape == (360, 480)


def test_json_answers_the_classes_present_with_their_shares_and_the_timing(client, camvid_dir):
    image = min((camvid_dir / "test").glob("*.png"))
    body = client.post("/v1/segment?format=json", content=image.read_bytes()).json()
    assert (body["width"], body["height"], body["input_size"]) == (480, 360, [180, 240])
    shares = [c["share"] for c in body["classes"]]
    assert shares == sorted(shares, reverse=True) and abs(sum(shares) + body["void_share"] - 1) < 1e-9
    assert {c["name"] for c in body["classes"]} >= {"Road", "Sky"}
    assert body["device"] == "cpu" and body["inference_ms"] > 0 and body["total_ms"] >= body["inference_ms"]
    page = client.post("/v1/segment?format=page", content=image.read_bytes()).json()
    assert page["photo"].startswith("data:image/jpeg;base64,") and page["mask"].startswith("data:image/png;base64,")
    assert page["labels"].startswith("data:image/png;base64,") and page["uncertainty"] is None


def test_the_model_lists_the_11_camvid_classes(client):
    body = client.get("/v1/model").json()
    assert body["label_space"] == "camvid" and body["input_size"] == [180, 240] and body["device"] == "cpu"
    assert [c["name"] for c in body["classes"]] == list(get_label_space("camvid").names)
    assert len(body["classes"]) == 11 and all(len(c["colour"]) == 3 for c in body["classes"])
    assert body["bayesian"] is False and body["mc_samples_max"] == 0


def test_healthz_and_openapi(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["peak_rss_mb"] > 0
    spec = client.get("/openapi.json").json()
    segment = spec["paths"]["/v1/segment"]["post"]
    assert {"multipart/form-data", "image/png", "image/jpeg"} <= set(segment["requestBody"]["content"])
    assert {"200", "413", "415", "503", "504"} <= set(segment["responses"])
    assert "image/png" in segment["responses"]["200"]["content"]
    assert {"/v1/model", "/healthz"} <= set(spec["paths"])


def test_the_page_has_a_file_input_and_its_assets_come_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and '<input id="file" type="file"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.split("<body>")[0]  # nothing loaded from elsewhere
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    examples = [part.split('"')[0] for part in page.text.split('data-src="')[1:]]
    assert len(examples) == 3
    for src in examples:
        answer = client.get(src)
        assert answer.headers["content-type"] == "image/jpeg" and len(answer.content) < 60_000
    _error(client.get("/static/../serve.py"), 404)
    _error(client.get("/static/%2e%2e/server.py"), 404)


# ---------------------------------------------------------------- hostile uploads


def _png_header(width: int, height: int, idat: bytes = zlib.compress(b"\0" * 16)) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _bomb(side: int = 8000) -> bytes:
    """A small PNG of ``side`` x ``side`` zeros: every byte of it decodes."""
    squeeze = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + pixels
    idat = b"".join(squeeze.compress(row) for _ in range(side)) + squeeze.flush()
    return _png_header(side, side, idat)


def _jpeg(camvid_dir) -> bytes:
    out = io.BytesIO()
    Image.open(min((camvid_dir / "test").glob("*.png"))).convert("RGB").save(out, format="JPEG")
    return out.getvalue()


def test_hostile_uploads_are_refused_in_one_line_and_the_server_keeps_answering(client, camvid_dir):
    bomb = _bomb()
    assert len(bomb) < 200_000
    assert "8000x8000" in _error(client.post("/v1/segment", content=bomb), 413)
    huge = _error(client.post("/v1/segment", content=_png_header(30000, 30000)), 400)  # PIL's own bound comes first
    assert "900000000 pixels" in huge
    truncated = _jpeg(camvid_dir)
    assert "truncated" in _error(client.post("/v1/segment", content=truncated[: len(truncated) // 2]), 400)
    assert "PNG, JPEG, BMP or TIFF" in _error(client.post("/v1/segment", content=b"GIF89a" + bytes(100)), 415)
    _error(client.post("/v1/segment", content=b"#!/bin/sh\nrm -rf /\n"), 415)
    assert "empty body" in _error(client.post("/v1/segment", content=b""), 400)
    _error(client.post("/v1/segment", files={"picture": ("a.png", b"x", "image/png")}), 400)
    hundred = (bytes(MiB) for _ in range(100))
    declared = client.post("/v1/segment", content=hundred, headers={"Content-Length": str(100 * MiB)})
    assert "larger than this server takes" in _error(declared, 413)
    streamed = client.post("/v1/segment", content=(bytes(MiB) for _ in range(100)))  # chunked: no length said
    assert "larger than this server takes" in _error(streamed, 413)
    _error(client.post("/v1/segment?samples=2", content=truncated), 400)  # no dropout layers
    _error(client.post("/v1/segment?format=gif", content=truncated), 400)
    assert client.get("/healthz").json()["in_flight"] == 0
    assert client.post("/v1/segment", content=_jpeg(camvid_dir)).status_code == 200


def test_declared_pixels_meet_the_memory_limit_rule_before_decoding(tmp_path):
    path = tmp_path / "upload-x"
    path.write_bytes(_png_header(3000, 2000))
    try:
        budget.set_limit(64 * MiB)
        assert pixel_limit(10**9, 2) == 64 * MiB // (16 * 2)  # each decoding thread's share, 16 bytes a pixel
        with pytest.raises(UploadError) as refused:
            check_upload(path, pixel_limit(10**9, 2))
        assert refused.value.status == 413 and "3000x2000" in str(refused.value) and str(path) not in str(refused.value)
        budget.set_limit(64 * MiB // 4)
        with pytest.raises(UploadError) as by_reader:  # the reader's own check against the limit
            check_upload(path, 10**9)
        assert by_reader.value.status == 413 and str(path) not in str(by_reader.value)
    finally:
        budget.set_limit(None)
    assert check_upload(path, 10**9) == (2000, 3000)


def test_uploads_are_bounded_while_they_arrive(tmp_path):
    upload = UploadFile(tmp_path, 10)
    upload.write(b"12345")
    with pytest.raises(UploadError) as refused:
        upload.write(b"123456")
    assert refused.value.status == 413
    upload.discard()
    assert not list(tmp_path.iterdir())
    assert [sniff_format(h) for h in (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"BM..", b"II*\0", b"GIF8")] == \
        ["PNG", "JPEG", "BMP", "TIFF", None]  # fmt: skip


# ---------------------------------------------------------------- load, time, Monte-Carlo samples


def test_a_full_server_answers_503_with_retry_after_and_a_slow_one_504(cache):
    service = _tiny(segnet_basic(), Limits(queue=1, timeout_s=1.0))
    release = threading.Event()
    run = service.batcher.run
    service.batcher.run = lambda key, batch: (release.wait(10), run(key, batch))[1]  # a slow model
    client = _test_client(create_app(service))
    image = _png(np.zeros((32, 48, 3), dtype=np.uint8))
    try:
        first: Future = Future()
        threading.Thread(target=lambda: first.set_result(client.post("/v1/segment", content=image))).start()
        deadline = time.monotonic() + 10
        while client.get("/healthz").json()["in_flight"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        second = client.post("/v1/segment", content=image)
        assert "busy" in _error(second, 503) and int(second.headers["retry-after"]) >= 1
        assert "not answered within 1 s" in _error(first.result(timeout=20), 504)
        release.set()
        assert client.post("/v1/segment", content=image).status_code == 200
        assert client.get("/healthz").json()["in_flight"] == 0
    finally:
        release.set()
        service.close()


def test_a_failing_model_is_a_500_in_one_line_and_the_server_goes_on(cache):
    service = _tiny(segnet_basic())
    run = service.batcher.run
    service.batcher.run = lambda key, batch: (_ for _ in ()).throw(RuntimeError("a bug\nin two lines"))
    client = _test_client(create_app(service))
    image = _png(np.zeros((32, 48, 3), dtype=np.uint8))
    try:
        message = _error(client.post("/v1/segment", content=image), 500)
        assert message == "internal error (RuntimeError: a bug; in two lines)"
        service.batcher.run = run
        assert client.post("/v1/segment", content=image).status_code == 200
    finally:
        service.close()


def test_a_bayesian_model_gives_an_uncertainty_map_with_bounded_samples(cache):
    service = _tiny(bayesian_segnet_basic())
    client = _test_client(create_app(service))
    image = _png((np.arange(32 * 48 * 3) % 251).astype(np.uint8).reshape(32, 48, 3))
    try:
        info = client.get("/v1/model").json()
        assert info["bayesian"] is True and info["mc_samples_max"] == 3
        page = client.post("/v1/segment?format=page&samples=2", content=image).json()
        assert page["mc_samples"] == 2 and page["uncertainty"].startswith("data:image/png;base64,")
        assert "0..3" in _error(client.post("/v1/segment?samples=4", content=image), 400)
        plain = client.post("/v1/segment?format=json", content=image).json()
        assert plain["mc_samples"] == 0
    finally:
        service.close()


def test_the_batcher_groups_inputs_of_one_key_up_to_max_batch():
    sizes, gate = [], threading.Event()

    def run(key, batch):
        gate.wait(5)
        sizes.append((key, batch.shape[0]))
        return [float(x.sum()) for x in batch]

    batcher = Batcher(run, max_batch=3, wait_s=0.05, capacity=8)
    try:
        blocker = batcher.submit("b", torch.zeros(1))  # holds the worker while the rest line up
        time.sleep(0.1)
        futures = [batcher.submit("a", torch.full((1,), float(i))) for i in range(5)]
        futures.append(batcher.submit("c", torch.ones(2)))
        cancelled = batcher.submit("a", torch.zeros(1))
        assert cancelled.cancel()
        with pytest.raises(QueueFull):
            for _ in range(8):
                batcher.submit("d", torch.zeros(1))
        gate.set()
        results = [f.result(timeout=10) for f in [blocker, *futures]]
    finally:
        batcher.close()
    assert [r for r, _ in results[1:6]] == [0.0, 1.0, 2.0, 3.0, 4.0] and results[6][0] == 2.0
    assert sizes[:4] == [("b", 1), ("a", 3), ("a", 2), ("c", 1)]
    assert results[1][1].size == 3 and results[4][1].size == 2


def test_a_failing_batch_fails_its_requests_and_the_worker_goes_on():
    def run(key, batch):
        if key == "bad":
            raise RuntimeError("boom")
        return list(batch)

    batcher = Batcher(run, max_batch=2, wait_s=0.0, capacity=4)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            batcher.submit("bad", torch.zeros(1)).result(timeout=10)
        assert batcher.submit("good", torch.ones(1)).result(timeout=10)[0] == 1.0
    finally:
        batcher.close()

