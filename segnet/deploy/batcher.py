"""Micro-batching: requests from many threads, one inference thread, batches of what can be stacked.

A caller submits one input (a tensor) under a key: inputs of one key stack
into one batch (the key holds their shape and whatever else must agree,
such as a number of Monte-Carlo samples). The worker thread takes the
oldest waiting input, waits up to ``wait_s`` for more of its key, up to
``max_batch`` of them, and runs them as one call of ``run(key, batch)``,
which returns one result per input. The waiting line holds at most
``capacity`` inputs: :meth:`Batcher.submit` refuses more with
:class:`QueueFull` rather than letting memory grow. A caller that gives up
cancels its future; the worker skips cancelled inputs it has not started.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

#: ``run(key, batch)`` -> one result per input of the batch, in order.
RunBatch = Callable[[Hashable, torch.Tensor], Sequence[Any]]


class QueueFull(RuntimeError):
    """The waiting line is full: the caller should answer "busy, try again"."""


@dataclass
class BatchInfo:
    """What a result's batch was: its size and its run time (seconds)."""

    size: int
    seconds: float


@dataclass
class _Job:
    key: Hashable
    tensor: torch.Tensor
    future: Future = field(default_factory=Future)


class Batcher:
    """One worker thread running ``run`` on batches of up to ``max_batch`` inputs of one key."""

    def __init__(self, run: RunBatch, max_batch: int = 4, wait_s: float = 0.005, capacity: int = 32):
        if max_batch < 1 or capacity < 1 or wait_s < 0:
            raise ValueError("max_batch and capacity must be at least 1, wait_s at least 0")
        self.run, self.max_batch, self.wait_s, self.capacity = run, max_batch, wait_s, capacity
        self._jobs: deque[_Job] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self.batches = 0
        self.seconds_per_input = 0.0  # a running mean, for Retry-After
        self._thread = threading.Thread(target=self._loop, name="segnet-inference", daemon=True)
        self._thread.start()

    def submit(self, key: Hashable, tensor: torch.Tensor) -> Future:
        """A future of ``(result, BatchInfo)`` for one input; :class:`QueueFull` when the line is full."""
        job = _Job(key, tensor)
        with self._ready:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if len(self._jobs) >= self.capacity:
                raise QueueFull(f"{len(self._jobs)} images are waiting (at most {self.capacity})")
            self._jobs.append(job)
            self._ready.notify()
        return job.future

    def waiting(self) -> int:
        with self._ready:
            return len(self._jobs)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker after the batch it runs; inputs still waiting are cancelled."""
        with self._ready:
            self._closed = True
            left = list(self._jobs)
            self._jobs.clear()
            self._ready.notify_all()
        for job in left:
            job.future.cancel()
        self._thread.join(timeout)

    # ---------------------------------------------------------------- the worker thread

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)

    def _next_batch(self) -> list[_Job] | None:
        """The oldest waiting job and up to ``max_batch - 1`` more of its key, waiting ``wait_s`` for them."""
        with self._ready:
            while not self._jobs and not self._closed:
                self._ready.wait()
            if self._closed:
                return None
            first = self._jobs.popleft()
            batch = [first]
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch:
                batch += self._take(first.key, self.max_batch - len(batch))
                left = deadline - time.monotonic()
                if len(batch) >= self.max_batch or left <= 0 or self._closed:
                    break
                self._ready.wait(left)
        # Cancelled jobs (their caller timed out) are dropped; the rest are marked running.
        return [job for job in batch if job.future.set_running_or_notify_cancel()]

    def _take(self, key: Hashable, count: int) -> list[_Job]:
        """Up to ``count`` waiting jobs of ``key``, oldest first (called with the lock held)."""
        taken = [job for job in self._jobs if job.key == key][:count]
        for job in taken:
            self._jobs.remove(job)
        return taken

    def _run(self, batch: list[_Job]) -> None:
        if not batch:
            return
        start = time.perf_counter()
        try:
            results = self.run(batch[0].key, torch.stack([job.tensor for job in batch]))
        except Exception as exc:  # handed to every caller of the batch; the worker keeps serving
            for job in batch:
                job.future.set_exception(exc)
            return
        seconds = time.perf_counter() - start
        self.batches += 1
        self.seconds_per_input = 0.8 * self.seconds_per_input + 0.2 * seconds / len(batch) if self.batches > 1 \
            else seconds / len(batch)  # fmt: skip
        info = BatchInfo(len(batch), seconds)
        for job, result in zip(batch, results):
            job.future.set_result((result, info))
