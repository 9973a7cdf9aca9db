"""``python -m segnet.serve``: SegNet's demo as a local web page and HTTP API (``segnet-serve``).

    python -m segnet.serve [MODEL] [--host 127.0.0.1] [--port 8000] [--device auto|cpu|cuda[:N]]
                           [--precision fp32|bf16|fp16] [--max-batch 4] [--batch-wait-ms 5] [--queue 32]
                           [--timeout 30] [--mc-samples-max 8] [--max-upload 32M] [--max-pixels 40000000]

MODEL is a converted Caffe net or a segnet checkpoint, as segnet.predict
takes; without it, the shipped example (SegNet-Basic on CamVid) is
converted in memory. Open the printed address for the page; the API:
POST /v1/segment (an image as the body, or the multipart field "image")
answers the label PNG that ``python -m segnet.predict MODEL IMAGE`` writes
(?format=json: the classes present, size, timing and device), GET
/v1/model, GET /healthz, and /openapi.json describes it all. Requests are
segmented in micro-batches (up to --max-batch images, waiting at most
--batch-wait-ms for them) on one inference thread. At most --queue requests
are inside the server at once (more are answered 503 with Retry-After),
each answered within --timeout seconds (else 504); bodies over
--max-upload (413) and images that are not PNG, JPEG, BMP or TIFF (415)
are refused, and an image's declared pixels are checked against
--max-pixels and the memory limit before it is decoded. It listens on
127.0.0.1 unless --host says otherwise; --port 0 takes a free port. Needs
the serve extra: pip install -e ".[serve]". Details: docs/serve.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import socket
import sys
from pathlib import Path

from converter.budget import parse_bytes
from converter.errors import UserError, run_command

from segnet.cli import add_common_options, add_input_size_option, positive_int
from segnet.data.labels import label_space_for
from segnet.deploy.engine import PRECISIONS, build_engine
from segnet.deploy.service import EXAMPLE_NAME, Limits, SegmentService, example_model
from segnet.models.caffe_graph import declared_input_size, num_outputs
from segnet.models.checkpoint import load_model

SERVE_HINT = 'pip install -e ".[serve]" (FastAPI, uvicorn, python-multipart)'


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m segnet.serve", description=__doc__.splitlines()[0].split(": ", 1)[1],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("model", nargs="?", help="a converted Caffe net or a segnet checkpoint (default: the shipped "
                   "example, SegNet-Basic on CamVid)")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default, Caffe's numbers), bf16 or fp16 where the hardware computes it natively")  # fmt: skip
    add_input_size_option(p, "size", help="resize images to this before the network (default: the model's)")
    p.add_argument("--labels", help="label space: a name, a class count or a JSON file (default: the model's)")
    p.add_argument("--max-batch", type=positive_int, default=4, help="images per forward pass, at most (default 4)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits for more images "
                   "(default 5 ms)")  # fmt: skip
    p.add_argument("--queue", type=positive_int, default=32, help="requests inside the server at once; more get "
                   "503 (default 32)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a request may take before 504 (default 30)")
    p.add_argument("--mc-samples-max", type=int, default=8, help="most Monte-Carlo dropout samples a request may ask "
                   "of a Bayesian model (default 8; 0: none)")  # fmt: skip
    p.add_argument("--max-upload", type=parse_bytes, default=Limits.max_upload, metavar="SIZE",
                   help="largest request body, e.g. 32M (default 32M)")  # fmt: skip
    p.add_argument("--max-pixels", type=positive_int, default=Limits.max_pixels,
                   help=f"most pixels an image may declare (default {Limits.max_pixels}; the memory limit may "
                        "allow fewer)")  # fmt: skip
    add_common_options(p)
    args = p.parse_args(argv)
    return run_command(lambda: _command(args))


def _command(args: argparse.Namespace) -> int:
    if args.batch_wait_ms < 0 or args.timeout <= 0 or args.mc_samples_max < 0:
        raise UserError("--batch-wait-ms and --mc-samples-max must be 0 or more, --timeout more than 0")
    _check_extra()
    import uvicorn  # the serve extra, checked above

    from segnet.deploy.server import create_app

    listener = _listen(args.host, args.port)  # first: a taken port is said before the model loads
    try:
        service = _service(args)
        try:
            service.warm_up()
            listener.listen(2048)  # before the address is printed: a client may connect at once
            host, port = listener.getsockname()[:2]
            print(f"segnet-serve: {service.name}, label space {service.space.name}, on {service.engine.describe()}",
                  flush=True)  # fmt: skip
            print(f"serving http://{_url_host(host)}:{port}/ (API: /openapi.json; Ctrl-C stops)", flush=True)
            config = uvicorn.Config(create_app(service), log_level="warning", access_log=False, server_header=False,
                                    limit_concurrency=args.queue + 64, timeout_keep_alive=5)  # fmt: skip
            uvicorn.Server(config).run(sockets=[listener])
        finally:
            service.close()
    finally:
        listener.close()
    return 0


def _service(args: argparse.Namespace) -> SegmentService:
    """The model (or the shipped example), its label space and engine, behind the server's limits."""
    model = load_model(args.model) if args.model else example_model()
    space, note = label_space_for(args.labels, num_outputs(model), getattr(model, "label_space", None))
    if note:
        print(f"note: {note}", file=sys.stderr)
    engine = build_engine(model, args.device, args.precision, args.size or declared_input_size(model), args.max_batch)
    limits = Limits(max_upload=args.max_upload, max_pixels=args.max_pixels, queue=args.queue,
                    timeout_s=args.timeout, mc_samples_max=args.mc_samples_max)  # fmt: skip
    name = Path(args.model).name if args.model else EXAMPLE_NAME
    return SegmentService(model, space, engine, limits, args.max_batch, args.batch_wait_ms / 1000, name)


def _check_extra() -> None:
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if not any(importlib.util.find_spec(name) for name in ("python_multipart", "multipart")):
        missing.append("python-multipart")
    if missing:
        raise UserError(f"segnet-serve needs {', '.join(missing)}: {SERVE_HINT}")


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port is one line, not a log."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must lie in 0..65535, got {port}")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
    except (OSError, UnicodeError) as exc:
        raise UserError(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None
    if not _loopback(host):
        print(f"warning: listening on {host}: anyone who can reach this machine can use the server",
              file=sys.stderr)  # fmt: skip
    return listener


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


if __name__ == "__main__":
    sys.exit(main())
