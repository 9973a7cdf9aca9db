"""The one error path every command shares.

A user's mistake (a bad or wrong-kind file, weights that do not fit, a bad
option) is a :class:`UserError`: ``str()`` is one line naming the file, the
layer when there is one, and the whole reason. Commands run their body
through :func:`run_command`, which prints ``error: <that line>`` on stderr and
returns exit status 2; no traceback, and no half-written output (outputs are
written atomically, see ``converter.atomic``). Anything else that escapes a
command is a bug in this project: one line saying so, exit status 3, and the
traceback only with ``--debug`` (or ``SEGNET_DEBUG=1``).

Readers of files turn the exceptions of the parsers they use (zipfile,
zlib, numpy's header parser, PIL, protobuf) into their own ``UserError``
subclass, naming the file, with the parser's exception chained as the cause.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import traceback
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Callable

DEBUG_ENV = "SEGNET_DEBUG"
BUG_STATUS = 3  # not 2: a bug is not the user's mistake
MESSAGE_CHARS = 300  # of an unexpected exception's message (some hold a whole tensor)

#: What reading a zip archive (a torch checkpoint, an .npz) raises for a damaged or hostile one: an unsupported
#: version or compression method (NotImplementedError), encryption (RuntimeError), names that are not UTF-8
#: (UnicodeDecodeError, a ValueError), bad deflate data (zlib.error), fields cut short (struct.error, EOFError).
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, ValueError, EOFError,
              struct.error, zlib.error, OverflowError)  # fmt: skip

_debug = False


def one_line(text: str) -> str:
    """A possibly multi-line message as one line (lines joined with '; ')."""
    parts = [part.strip() for part in str(text).splitlines() if part.strip()]
    return "; ".join(parts)


class UserError(ValueError):
    """A problem with what the user gave: one line naming the file, the layer and the reason.

    Subclasses name the kind of input (Caffe files, data sets, checkpoints);
    every command catches this base class.
    """

    def __init__(self, problem: str, path: str | Path | None = None, layer: str | None = None):
        self.problem = one_line(problem)
        self.path = str(path) if path is not None else None
        self.layer = layer
        where = []
        if self.path:
            where.append(self.path)
        if layer:
            where.append(f"layer '{layer}'")
        super().__init__(f"{': '.join(where)}: {self.problem}" if where else self.problem)


class CaffeFormatError(UserError):
    """A Caffe file (prototxt, caffemodel, converted checkpoint) that cannot be read or does not fit the net."""


def exception_name(exc: BaseException) -> str:
    """An exception's type as a reader's message names it: ``zlib.error``, ``tokenize.TokenError``, ``ValueError``."""
    kind = type(exc)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"


def set_debug(enabled: bool) -> None:
    """Show tracebacks of errors (``--debug``); ``SEGNET_DEBUG=1`` does the same."""
    global _debug
    _debug = enabled


def debugging() -> bool:
    return _debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def add_debug_option(parser: argparse.ArgumentParser) -> None:
    """``--debug``: applied while the command line is parsed; it adds nothing to the parsed arguments."""

    class Apply(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            set_debug(True)

    parser.add_argument("--debug", action=Apply, nargs=0, default=argparse.SUPPRESS,
                        help=f"show the traceback of an error (also: {DEBUG_ENV}=1)")  # fmt: skip


def command_name(body: Callable, prog: str | None = None) -> str:
    """How a user runs the command whose body this is (its module: ``python -m segnet.predict``)."""
    if prog:
        return prog
    module = getattr(body, "__module__", None) or ""
    if module in ("", "__main__"):
        return Path(sys.argv[0]).name or "this command"
    return "python -m " + (module[: -len(".cli")] if module.endswith(".cli") else module)


def run_command(body: Callable[[], int | None], prog: str | None = None) -> int:
    """Run a command's body with the shared error path; returns the exit status.

    ``UserError`` -> ``error: <one line>`` on stderr, status 2; a file-system
    error (a missing input, an unwritable output folder: the user's to fix)
    as a ``UserError`` naming the file; running out of memory (Python's or
    torch's) all the same (the memory limit, ``converter.budget``, should
    refuse such input first). Ctrl-C -> 130. Warnings print as one line,
    ``warning: ...``. Anything else is a bug in this project: one line
    naming the command and the exception, status 3 (``BUG_STATUS``). With
    ``--debug`` or ``SEGNET_DEBUG=1`` every error also shows its traceback.
    """
    prefix = prog + ": " if prog else ""
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_, **__: print(f"{prefix}warning: {one_line(str(message))}",
                                                              file=sys.stderr)  # fmt: skip
        try:
            status = body()
            return 0 if status is None else int(status)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Exception as exc:
            _traceback_when_debugging()
            line, status = _error_line(exc, command_name(body, prog))
            print(f"{prefix}error: {line}", file=sys.stderr)
            return status


OUT_OF_MEMORY = "out of memory (the input is too large for this machine; see --memory-limit)"


def _error_line(exc: Exception, command: str) -> tuple[str, int]:
    """The one line a command prints for ``exc``, and its exit status."""
    if isinstance(exc, UserError):
        return str(exc), 2
    if isinstance(exc, OSError):
        return str(UserError(exc.strerror or str(exc), exc.filename)), 2
    if _out_of_memory(exc):
        return OUT_OF_MEMORY, 2
    return bug_report(command, exc), BUG_STATUS


def _out_of_memory(exc: Exception) -> bool:
    """Python's MemoryError, or torch's: its CPU allocator raises a RuntimeError, CUDA's a torch.OutOfMemoryError."""
    return isinstance(exc, MemoryError) or isinstance(exc, RuntimeError) and (
        type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(exc))


def bug_report(command: str, exc: BaseException) -> str:
    """The one line for an exception no reader turned into a ``UserError``."""
    hint = "" if debugging() else f"; run it again with --debug (or {DEBUG_ENV}=1) for the traceback"
    message = one_line(str(exc))
    if len(message) > MESSAGE_CHARS:
        message = message[:MESSAGE_CHARS] + "..."
    return f"{command} failed with an unexpected {type(exc).__name__}: {message} (a bug in this project: please " \
           f"report it{hint})"


def _traceback_when_debugging() -> None:
    if debugging():
        traceback.print_exc(file=sys.stderr)
