"""The one error path every command shares.

A user's mistake (a bad or wrong-kind file, weights that do not fit, a bad
option) is a :class:`UserError`: ``str()`` is one line naming the file, the
layer when there is one, and the whole reason. Commands run their body
through :func:`run_command`, which prints ``error: <that line>`` on stderr and
returns exit status 2; no traceback, and no half-written output (outputs are
written atomically, see ``converter.atomic``).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Callable


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


def run_command(body: Callable[[], int | None], prog: str | None = None) -> int:
    """Run a command's body with the shared error path; returns the exit status.

    ``UserError`` -> ``error: <one line>`` on stderr, status 2; a file-system
    error (a missing input, an unwritable output folder: the user's to fix)
    as a ``UserError`` naming the file; running out of memory all the same (the memory limit, ``converter.budget``, should
    refuse such input first). Ctrl-C -> 130. Warnings print as one line,
    ``warning: ...``. Anything else is a bug in this project and keeps its
    traceback.
    """
    prefix = prog + ": " if prog else ""
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_, **__: print(f"{prefix}warning: {one_line(str(message))}",
                                                              file=sys.stderr)  # fmt: skip
        try:
            status = body()
            return 0 if status is None else int(status)
        except UserError as exc:
            print(f"{prefix}error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"{prefix}error: {UserError(exc.strerror or str(exc), exc.filename)}", file=sys.stderr)
            return 2
        except MemoryError:
            print(f"{prefix}error: out of memory (the input is too large for this machine; see --memory-limit)",
                  file=sys.stderr)  # fmt: skip
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
