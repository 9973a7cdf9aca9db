"""segnet-serve's HTTP side: a FastAPI app over a :class:`~segnet.deploy.service.SegmentService`.

    GET  /              the demo page (segnet/deploy/static, from the package; no CDN)
    POST /v1/segment    an image (raw body, or the multipart field ``image``) -> the label PNG segnet.predict
                        writes; ?format=json: classes present, size, timing, device; ?format=page: that and the
                        pictures the page shows; ?samples=N: Monte-Carlo dropout samples (Bayesian models)
    GET  /v1/model      label space, classes and colours, input size, device, precision, limits
    GET  /healthz       liveness, queue, memory
    GET  /openapi.json  the API described

Limits, in the order a request meets them: a request past ``limits.queue``
in the server at once is answered 503 with Retry-After; a body over
``limits.max_upload`` is refused (413) by its Content-Length, or while it
streams, before more is kept; the image's format and declared size are
checked before decoding (415, 413); a request not answered within
``limits.timeout_s`` gets 504. Every refusal is a 4xx or 5xx with one line,
``{"error": "..."}``, and the server keeps answering.
"""

from __future__ import annotations

import asyncio
import math
import time
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.datastructures import UploadFile as FormFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from converter.errors import one_line

from segnet.deploy.batcher import QueueFull
from segnet.deploy.measure import current_rss_mb, peak_rss_mb
from segnet.deploy.service import SegmentService, Segmented
from segnet.deploy.uploads import MEDIA_TYPES, UploadError, UploadFile, too_large

CHUNK = 1 << 16
#: The page loads only what this server sends (no CDN, no inline script).
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                                           "base-uri 'none'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff"}  # fmt: skip
_ASSET_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".jpg": "image/jpeg", ".png": "image/png"}  # fmt: skip


# ---------------------------------------------------------------- what the API answers (OpenAPI)


class ErrorBody(BaseModel):
    error: str


class ClassInfo(BaseModel):
    id: int
    name: str
    colour: list[int]


class ClassShare(ClassInfo):
    share: float


class Summary(BaseModel):
    width: int
    height: int
    input_size: list[int]
    classes: list[ClassShare]
    void_share: float
    label_space: str
    device: str
    precision: str
    mc_samples: int
    batch_size: int
    inference_ms: float
    total_ms: float


# Optional[...] rather than "X | None" in the models: pydantic evaluates these annotations, also on Python 3.9.
class PageSummary(Summary):
    photo: str
    mask: str
    labels: str
    uncertainty: Optional[str] = None


class LimitsInfo(BaseModel):
    max_upload_bytes: int
    max_pixels: int
    queue: int
    timeout_s: float


class ModelInfo(BaseModel):
    name: str
    label_space: str
    void: int
    classes: list[ClassInfo]
    input_size: list[int]
    device: str
    precision: str
    engine: str
    bayesian: bool
    mc_samples_max: int
    max_batch: int
    limits: LimitsInfo


class Health(BaseModel):
    status: str
    in_flight: int
    waiting: int
    batches: int
    rss_mb: float
    peak_rss_mb: float


_BINARY = {"schema": {"type": "string", "format": "binary"}}
_SEGMENT_BODY = {"requestBody": {"required": True, "description": "the image: PNG, JPEG, BMP or TIFF", "content": {
    **{media: _BINARY for media in (*MEDIA_TYPES, "application/octet-stream")},
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                       "properties": {"image": {"type": "string", "format": "binary"}}}}}}}  # fmt: skip
_SEGMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "format=png: the label PNG segnet.predict writes (palette mode: pixel values are class "
                         "ids, at the image's size); format=json: a Summary; format=page: a PageSummary",
          "content": {"image/png": _BINARY}, "model": PageSummary},
    400: {"model": ErrorBody, "description": "an unreadable image, an empty body, a bad parameter"},
    413: {"model": ErrorBody, "description": "a body over the upload limit, or an image declaring too many pixels"},
    415: {"model": ErrorBody, "description": "not a PNG, JPEG, BMP or TIFF image"},
    503: {"model": ErrorBody, "description": "busy: the queue is full (see Retry-After)"},
    504: {"model": ErrorBody, "description": "not answered within the server's timeout"},
}  # fmt: skip


# ---------------------------------------------------------------- the app


def create_app(service: SegmentService) -> FastAPI:
    """The app serving ``service``; the caller owns the service (and closes it after the server stops)."""
    assets = load_assets()
    admission = Admission(service.limits.queue)

    # No Swagger or ReDoc pages: they load their scripts from a CDN. /openapi.json stays.
    app = FastAPI(title="segnet-serve", version="1", docs_url=None, redoc_url=None,
                  description="SegNet semantic segmentation of uploaded images (segnet-predict over HTTP).")
    app.add_middleware(BodyLimit, max_bytes=service.limits.max_upload)
    _add_error_handlers(app)

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        body, media = assets["index.html"]
        return Response(body, media_type=media, headers=PAGE_HEADERS)

    @app.get("/static/{name:path}", include_in_schema=False)
    def asset(name: str) -> Response:
        if name not in assets:  # a fixed table read at start-up: no request names a file
            return error(404, f"no such asset: {name[:80]}")
        body, media = assets[name]
        return Response(body, media_type=media, headers={**PAGE_HEADERS, "Cache-Control": "max-age=3600"})

    @app.get("/healthz", response_model=Health)
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "in_flight": admission.count, "waiting": service.batcher.waiting(),
                "batches": service.batcher.batches, "rss_mb": round(current_rss_mb(), 1),
                "peak_rss_mb": round(peak_rss_mb(), 1)}  # fmt: skip

    @app.get("/v1/model", response_model=ModelInfo)
    def model() -> dict[str, Any]:
        return service.model_info()

    @app.post("/v1/segment", responses=_SEGMENT_RESPONSES, openapi_extra=_SEGMENT_BODY, response_class=Response)
    async def segment(request: Request,
                      answer: Literal["png", "json", "page"] = Query("png", alias="format",
                                                                     description="png, json or page"),
                      samples: int = Query(0, description="Monte-Carlo dropout samples (Bayesian models), "
                                                          "0 to --mc-samples-max")) -> Response:  # fmt: skip
        """Segment one image: the label PNG segnet.predict writes, or its summary (format=json, format=page)."""
        try:
            service.check_samples(samples)
        except UploadError as exc:
            return error(exc.status, str(exc))
        if not admission.enter():
            return busy(service, f"busy: {admission.limit} requests in the server already; try again")
        try:
            return await asyncio.wait_for(_segment(request, service, answer, samples), service.limits.timeout_s)
        except asyncio.TimeoutError:
            return error(504, f"not answered within {service.limits.timeout_s:g} s (the server is busy); try again")
        finally:
            admission.leave()

    return app


async def _segment(request: Request, service: SegmentService, answer: str, samples: int) -> Response:
    """One upload through the service: received, checked and decoded, segmented in a batch, answered."""
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    upload = UploadFile(service.folder, service.limits.max_upload)
    try:
        await _receive(request, upload)
        path = upload.finish()
        image, size = await loop.run_in_executor(service.pool, service.prepare, path)
        result, info = await asyncio.wrap_future(service.submit(image, samples))
        done = await loop.run_in_executor(service.pool, service.finish, result, info, size, samples)  # off the loop
        body = await loop.run_in_executor(service.pool, _encode, service, answer, path, done)
    except UploadError as exc:
        return error(exc.status, str(exc))
    except QueueFull as exc:
        return busy(service, f"busy: {exc}; try again")
    except ClientDisconnect:
        return error(400, "the client went away before sending the whole body")
    finally:
        upload.discard()
    total_ms = round(1000 * (time.perf_counter() - started), 2)
    if isinstance(body, bytes):
        return Response(body, media_type="image/png", headers={
            "X-Inference-Ms": f"{1000 * done.batch.seconds:.2f}", "X-Total-Ms": f"{total_ms:.2f}",
            "X-Batch-Size": str(done.batch.size), "X-Device": str(service.engine.device)})  # fmt: skip
    return JSONResponse(body | {"total_ms": total_ms})


def _encode(service: SegmentService, answer: str, path: Path, done: Segmented) -> bytes | dict[str, Any]:
    """On a decoding thread: the label PNG, or the summary (with the page's pictures)."""
    if answer == "png":
        return service.label_png(done.labels)
    summary = service.summary(done)
    return summary | service.pictures(path, done) if answer == "page" else summary


async def _receive(request: Request, upload: UploadFile) -> None:
    """The body (or its multipart field ``image``) into ``upload``, chunk by chunk."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=8)
        try:
            part = form.get("image")
            if not isinstance(part, FormFile):
                raise UploadError("multipart upload without a file field named 'image'")
            while chunk := await part.read(CHUNK):
                upload.write(chunk)
        finally:
            await form.close()
        return
    async for chunk in request.stream():
        upload.write(chunk)


# ---------------------------------------------------------------- limits and errors


class Admission:
    """How many requests are inside the server; at most ``limit`` (touched only on the event loop's thread)."""

    def __init__(self, limit: int):
        self.limit, self.count = limit, 0

    def enter(self) -> bool:
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def leave(self) -> None:
        self.count -= 1


class BodyLimit:
    """ASGI middleware: a body over ``max_bytes`` is refused by its Content-Length, else as it streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await error(413, str(too_large(self.max_bytes)))(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise too_large(self.max_bytes)  # an UploadError (413): the endpoint answers it
            return message

        await self.app(scope, limited, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)


def busy(service: SegmentService, message: str) -> JSONResponse:
    """503 with Retry-After: about how long the images already waiting take (at least a second)."""
    wait = service.batcher.waiting() * service.batcher.seconds_per_input
    return error(503, message, {"Retry-After": str(min(60, max(1, math.ceil(wait))))})


def _add_error_handlers(app: FastAPI) -> None:
    """Every refusal as one line of JSON, ``{"error": "..."}``."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "query")
        return error(400, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(UploadError)
    async def refused(request: Request, exc: UploadError) -> JSONResponse:
        return error(exc.status, str(exc))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:  # uvicorn still logs the traceback
        return error(500, f"internal error ({type(exc).__name__}: {str(exc)[:200]})")


def load_assets() -> dict[str, tuple[bytes, str]]:
    """The page's files (segnet/deploy/static, package data) by name, read once."""
    root = resources.files("segnet.deploy") / "static"
    found: dict[str, tuple[bytes, str]] = {}
    for entry in root.iterdir():
        for name, item in ([(f"{entry.name}/{sub.name}", sub) for sub in entry.iterdir()] if entry.is_dir()
                           else [(entry.name, entry)]):  # fmt: skip
            suffix = "." + name.rpartition(".")[2]
            if suffix in _ASSET_TYPES and item.is_file():
                found[name] = (item.read_bytes(), _ASSET_TYPES[suffix])
    return found
