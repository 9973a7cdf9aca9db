"""What every command of the project shares: the data and reference folders and a few option types.

Each command's ``main`` runs its body through ``converter.errors.run_command``
(a :class:`~converter.UserError` or a file-system error becomes one line,
``error: ...``, and exit status 2).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from converter.budget import add_memory_option
from converter.errors import UserError, add_debug_option

from segnet.data.resize import Size

#: The one environment variable that says where the reference data lives (CamVid/, oracle/, prototxt/);
#: the tests and every script read it. Without it: a folder ``shared`` beside the project.
SHARED_ENV = "SEGNET_SHARED"


def shared_dir() -> Path:
    """The reference data folder: ``$SEGNET_SHARED``, else ``../shared`` beside the project root."""
    return Path(os.environ.get(SHARED_ENV) or Path(__file__).resolve().parents[2] / "shared")


def data_root(given: str | None) -> str:
    """``--data`` as given, else the reference data's CamVid, else a one-line error."""
    if given:
        return given
    camvid = shared_dir() / "CamVid"
    if camvid.is_dir():
        return str(camvid)
    raise UserError(f"no data set: give --data ROOT (or set {SHARED_ENV} to the folder that holds CamVid/)")


def add_data_option(parser: argparse.ArgumentParser) -> None:
    """``--data ROOT``, defaulting to the reference data's CamVid."""
    parser.add_argument("--data", help="data root: list files (<split>.txt) or folders, see segnet.data.splits "
                        f"(default: ${SHARED_ENV}/CamVid, else ../shared/CamVid)")  # fmt: skip


def parse_size(text: str) -> Size:
    """An ``H,W`` (or ``HxW``) option value as (height, width)."""
    parts = text.replace("x", ",").split(",")
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W (two positive integers), got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return height, width


def add_input_size_option(parser: argparse.ArgumentParser, dest: str = "input_size", help: str | None = None) -> None:
    """``--input-size H,W``, the size images are resized to; ``--image-size`` and ``--size`` are its other names."""
    parser.add_argument("--input-size", "--image-size", "--size", dest=dest, type=parse_size, metavar="H,W",
                        help=help)  # fmt: skip


def positive_int(text: str) -> int:
    """An option value that must be an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """What every command takes: ``--no-progress`` (hide progress bars; results and messages still print),
    ``--memory-limit`` (see converter.budget) and ``--debug`` (tracebacks, see converter.errors)."""
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="hide progress bars (results and messages still print)")  # fmt: skip
    add_memory_option(parser)
    add_debug_option(parser)
