"""The one error type users see when a Caffe file cannot be used."""

from __future__ import annotations

from pathlib import Path


class CaffeFormatError(ValueError):
    """A Caffe file that cannot be read or does not fit the net.

    ``str()`` gives one line naming the file, the layer (when there is one)
    and the problem, which is what the command line prints.
    """

    def __init__(self, problem: str, path: str | Path | None = None, layer: str | None = None):
        self.problem = problem
        self.path = str(path) if path is not None else None
        self.layer = layer
        where = []
        if self.path:
            where.append(self.path)
        if layer:
            where.append(f"layer '{layer}'")
        super().__init__(f"{': '.join(where)}: {problem}" if where else problem)
