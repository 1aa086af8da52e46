"""Dynamic micro-batching: requests that arrive together run as one forward pass.

Each request becomes a `Job` (its inputs, its options) on a thread-safe queue. Worker
threads, off the event loop, take the first waiting job, then keep taking jobs until the
batch holds `max_batch_size` inputs or `max_wait_ms` have passed, and run the jobs that share
options as one `Predictor.predict` call (the one prediction path: records are exactly what
`bigmodel predict` writes). Results go back to each request's asyncio future.

A batch whose forward fails with a UsageError (an input the task refuses, e.g. a text
without [MASK]) is retried job by job, so only the offending request gets its 4xx; any
other failure answers 500 to the requests of that batch only, and the worker goes on.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bigmodel_cli.errors import UsageError

log = logging.getLogger("bigmodel.serve")


class ForwardFailed(Exception):
    """The model failed on a batch (our failure: HTTP 500)."""


@dataclass
class Job:
    raws: list                      # the request's inputs, as the data kind reads them
    options: Any                    # PredictOptions, already checked
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    on_text: Callable[[int, str], None] | None = None  # streaming: called on the worker thread
    cancelled: bool = False         # the request timed out or went away: skip it
    enqueued: float = field(default_factory=time.perf_counter)

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        def set_() -> None:
            if not self.future.done():
                if error is not None:
                    self.future.set_exception(error)
                else:
                    self.future.set_result(result)
        self.loop.call_soon_threadsafe(set_)


class Batcher:
    def __init__(self, predictor, max_batch_size: int, max_wait_ms: float, workers: int,
                 metrics) -> None:
        self.predictor = predictor
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.metrics = metrics
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.threads = [threading.Thread(target=self._work, name=f"forward-{i}", daemon=True)
                        for i in range(workers)]
        self.take_lock = threading.Lock()  # one worker at a time gathers a batch
        self.busy = 0

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self, timeout: float) -> None:
        """Let the workers finish the queued jobs, then end them."""
        for _ in self.threads:
            self.queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def submit(self, job: Job) -> None:
        self.queue.put(job)
        self.metrics.queue_depth.inc(len(job.raws))

    def _take(self) -> list[Job] | None:
        """The next batch: the first job, then whatever arrives within max_wait."""
        with self.take_lock:
            first = self.queue.get()
            if first is None:
                return None
            jobs, size = [first], len(first.raws)
            deadline = time.perf_counter() + self.max_wait
            while size < self.max_batch_size:
                try:
                    job = self.queue.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if job is None:  # stopping: put the sentinel back for this worker's loop
                    self.queue.put(None)
                    break
                if size + len(job.raws) > self.max_batch_size:
                    self.queue.put(job)  # next batch (order among equals is not promised)
                    break
                jobs.append(job)
                size += len(job.raws)
            return jobs

    def _work(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            self.metrics.queue_depth.dec(sum(len(j.raws) for j in jobs))
            live = [j for j in jobs if not j.cancelled]
            for group in _by_options(live):
                self._run(group)

    def _run(self, jobs: list[Job]) -> None:
        size = sum(len(j.raws) for j in jobs)
        self.busy += 1
        started = time.perf_counter()
        try:
            results = self._forward(jobs)
        except UsageError as exc:
            if len(jobs) > 1:  # find the job that caused it; the others still succeed
                for job in jobs:
                    self._run([job])
                return
            jobs[0].resolve(error=exc)
            return
        except Exception as exc:
            log.error("forward pass failed on a batch of %d input(s) from %d request(s)",
                      size, len(jobs), exc_info=True)
            failure = ForwardFailed(f"{type(exc).__name__}: {str(exc)[:200]}")
            for job in jobs:
                job.resolve(error=failure)
            return
        finally:
            self.busy -= 1
        self.metrics.batch_size.observe(size)
        self.metrics.forward_seconds.observe(time.perf_counter() - started)
        self.metrics.inputs.inc(size)
        for job, result in zip(jobs, results):
            job.resolve(result)

    def _forward(self, jobs: list[Job]) -> list:
        """One predict call over every input of `jobs`; each job's rows keep their own
        index (the position within its request), so records equal predict's."""
        items, owner = [], []
        for j, job in enumerate(jobs):
            for i, raw in enumerate(job.raws):
                items.append(({"index": i}, raw))
                owner.append((j, i))
        on_text = None
        if any(job.on_text for job in jobs):
            def on_text(position: int, piece: str) -> None:
                j, i = owner[position]
                if jobs[j].on_text is not None:
                    jobs[j].on_text(i, piece)
        prediction = self.predictor.predict(items, jobs[0].options, on_text=on_text)
        results, start = [], 0
        for job in jobs:
            end = start + len(job.raws)
            results.append((prediction.records[start:end], prediction.truncated[start:end]))
            start = end
        return results


def _by_options(jobs: list[Job]) -> list[list[Job]]:
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(repr(job.options), []).append(job)
    return list(groups.values())
