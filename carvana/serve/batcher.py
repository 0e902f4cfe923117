"""The service's device: one thread owns the model and runs every forward. Requests wait in one queue; those of one
kind (the photo's size and TTA) that arrive within max_wait_ms of the oldest share its forward, up to max_batch."""

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field


@dataclass(eq=False)  # taken out of the queue by identity, never by comparing tensors
class _Job:
    kind: Hashable
    item: object
    arrived: float
    future: Future = field(default_factory=Future)


class Batcher:
    """`forward(kind, items) -> results` (one per item) run by one thread on batches of items of one kind, at most
    `limit(kind)` (default max_batch) a batch; `setup()` runs first in that thread (torch's thread count is the calling
    thread's)."""

    def __init__(self, forward: Callable[[Hashable, list], list], max_batch: int, max_wait_ms: float,
                 setup: Callable[[], None] | None = None, limit: Callable[[Hashable], int] | None = None):
        self.forward, self.max_batch, self.max_wait, self.setup = forward, max_batch, max_wait_ms / 1000, setup
        self.limit = limit or (lambda kind: max_batch)  # items of a kind in one forward (a big photo's: fewer)
        self.jobs: deque[_Job] = deque()
        self.changed = threading.Condition()
        self.stopping = False
        self.forwards = self.photos = 0  # counts for /health: photos / forwards is the mean batch
        self.thread = threading.Thread(target=self._run, name="carvana-model", daemon=True)

    def start(self) -> None:
        """Start the model's thread (the service's lifespan does, once uvicorn runs)."""
        self.thread.start()

    def submit(self, kind: Hashable, item: object) -> Future:
        """Queue one item -> the Future of its result (or of the forward's exception)."""
        job = _Job(kind, item, time.monotonic())
        with self.changed:
            if self.stopping:
                raise RuntimeError("the model thread has stopped")
            self.jobs.append(job)
            self.changed.notify()
        return job.future

    @property
    def waiting(self) -> int:
        """Items queued, not yet in a forward."""
        return len(self.jobs)

    def stop(self) -> None:
        """Finish what is queued, then end the thread (the service drains its requests before)."""
        with self.changed:
            self.stopping = True
            self.changed.notify()
        self.thread.join()

    def _next_batch(self) -> list[_Job] | None:
        """The oldest job and up to limit - 1 others of its kind, once limit are there or the oldest has waited
        max_wait; None when stopping with nothing queued. Jobs of other kinds keep their places."""
        with self.changed:
            while not self.jobs:
                if self.stopping:
                    return None
                self.changed.wait()
            first = self.jobs[0]
            deadline, most = first.arrived + self.max_wait, self.limit(first.kind)
            while True:
                batch = [job for job in self.jobs if job.kind == first.kind][:most]
                left = deadline - time.monotonic()
                if len(batch) == most or left <= 0 or self.stopping:
                    break
                self.changed.wait(left)
            for job in batch:
                self.jobs.remove(job)
        return [job for job in batch if job.future.set_running_or_notify_cancel()]  # a gone client's is cancelled

    def _run(self) -> None:
        if self.setup is not None:
            self.setup()
        while (batch := self._next_batch()) is not None:
            if not batch:
                continue
            try:
                results = self.forward(batch[0].kind, [job.item for job in batch])
            except Exception as err:  # noqa: BLE001 -- each request of the batch answers it; the thread goes on
                for job in batch:
                    job.future.set_exception(err)
                continue
            assert len(results) == len(batch), (len(results), len(batch))
            self.forwards += 1  # counted before any answer leaves: /health after an answer includes it
            self.photos += len(batch)
            for job, result in zip(batch, results):
                job.future.set_result(result)
