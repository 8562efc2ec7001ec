"""Admission by predicted peak: a first-come-first-served queue in front of N workers.

Every job carries the bytes it reserves (its predicted peak), or decides them when it reaches
the head from what is free then (`Job.reserve`: `scheme=auto`). A worker takes the job at the
head of the queue only when that reservation fits in what the running jobs leave of the
device budget; until then every worker waits, so a big job at the head is never overtaken
(starved) by small ones behind it, the way vLLM admits sequences while their KV-cache blocks
fit. A reservation never exceeds the whole budget (the engine caps the request to fit first),
so the head always starts once the running jobs finish. A job whose future is already settled
(its client timed out while it waited, or a draining server refused it) is dropped without
waiting for room.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Job:
    """One inference waiting for the device; `retry_of` is set on an out-of-memory retry."""

    payload: Any
    reserved_bytes: int  # what it reserves; with `reserve`, the least it could
    future: Future = field(default_factory=Future)
    retry_of: BaseException | None = None
    # Decides at admission what the job reserves (None: it waits), from the free bytes and
    # how many jobs could start now, it included (idle workers, jobs waiting).
    reserve: Callable[[int, int], int | None] | None = None


class AdmissionQueue:
    def __init__(self, capacity_bytes: int, workers: int = 1):
        if capacity_bytes <= 0:
            raise ValueError(f"the device budget must be positive, got {capacity_bytes} bytes")
        self.capacity_bytes = capacity_bytes
        self.workers = workers
        self.admitted_bytes = 0  # the sum of the running jobs' reservations
        self.busy = 0  # running jobs (one per busy worker)
        self._jobs: deque[Job] = deque()
        self._closed = False
        self._changed = threading.Condition()

    def put(self, job: Job, first: bool = False) -> None:
        """Queues a job at the back (a retry goes first: it has waited longest); after
        `close()` a new job is refused with RuntimeError, a retry still runs."""
        if job.reserved_bytes > self.capacity_bytes:
            raise ValueError(
                f"a job reserving {job.reserved_bytes} bytes can never fit a device budget "
                f"of {self.capacity_bytes} bytes"
            )
        with self._changed:
            if self._closed and not first:
                raise RuntimeError("the admission queue is closed")
            if first:
                self._jobs.appendleft(job)
            else:
                self._jobs.append(job)
            self._changed.notify_all()

    def take(self) -> Job | None:
        """The head job once its reservation fits (now counted as running); None once the
        queue is closed and empty."""
        with self._changed:
            while True:
                while self._jobs and self._jobs[0].future.done():
                    self._jobs.popleft()
                if self._jobs:
                    head = self._jobs[0]
                    free = self.capacity_bytes - self.admitted_bytes
                    if head.reserve is None:
                        wants = head.reserved_bytes
                    else:
                        could_start = min(len(self._jobs), max(self.workers - self.busy, 1))
                        wants = head.reserve(free, could_start)
                    if wants is not None and wants <= free:
                        self._jobs.popleft()
                        head.reserved_bytes = wants
                        self.admitted_bytes += wants
                        self.busy += 1
                        return head
                elif self._closed:
                    return None
                self._changed.wait()

    def done(self, job: Job) -> None:
        """The job's reservation is free again."""
        with self._changed:
            self.admitted_bytes -= job.reserved_bytes
            self.busy -= 1
            self._changed.notify_all()

    def close(self) -> None:
        """No new jobs; the workers finish the queued ones, then `take` returns None."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def waiting(self) -> int:
        with self._changed:
            return len(self._jobs)
