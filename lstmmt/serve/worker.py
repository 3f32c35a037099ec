"""The thread of `lstmmt serve` that owns the model and searches queued requests in batches.

Requests queue up for it (a bounded queue: 503 with Retry-After when full); each time it is
free it takes every request waiting, up to `batch_sentences` sentences, and searches the
sentences of requests with the same decode settings as one batch, with one Translator whose
`translate` takes each batch's settings. Search results do not depend on the batch (a project
guarantee), so each answer is the one that request would get alone; a batch that fails is
searched again a request at a time, so a request fails alone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import dataclasses
import math
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lstmmt.config import DecodeConfig
from lstmmt.serve.requests import Limits, ServeError
from lstmmt.translator import Translation, Translator


@dataclass
class Job:
    lines: list[str]
    decode: DecodeConfig
    alignment: bool
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


STOP = object()
Receive = Callable[[], Awaitable[dict[str, Any]]]  # an ASGI receive


class Worker:
    """The thread that owns the model: takes queued jobs, searches them in batches, answers each.

    It searches with a copy of `translator` whose warnings (a truncated sentence) go to `log`."""

    def __init__(self, translator: Translator, limits: Limits, log: Callable[[str], None]):
        self.translator = copy.copy(translator)
        self.translator.warn = self._warn
        self.limits = limits
        self.log = log
        self.queue: queue.Queue = queue.Queue(maxsize=limits.queue_size)
        self.thread = threading.Thread(target=self._run, name="lstmmt-worker", daemon=True)
        self.busy = False
        self.requests = self.sentences = self.batches = 0
        self.pending = 0  # jobs submitted and not yet answered
        self.lock = threading.Lock()
        self.seconds_per_batch = 0.0  # moving average, for Retry-After
        self.threads = torch.get_num_threads()  # OpenMP thread counts are per thread: the worker sets its own

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Answer what is queued, then end the thread."""
        if self.thread.is_alive():
            self.queue.put(STOP)
            self.thread.join(timeout)

    def submit(self, lines: list[str], decode: DecodeConfig, alignment: bool) -> concurrent.futures.Future:
        job = Job(lines, decode, alignment)
        try:
            self.queue.put_nowait(job)
            with self.lock:
                self.pending += 1
            job.future.add_done_callback(self._done)
        except queue.Full:
            retry = max(1, math.ceil(self.seconds_per_batch * (self.queue.qsize() + 1)))
            raise ServeError(503, f"the server is busy ({self.queue.qsize()} requests waiting); retry after {retry} s",
                             {"Retry-After": str(retry)}) from None
        return job.future

    def _done(self, future: concurrent.futures.Future) -> None:
        with self.lock:
            self.pending -= 1

    def waiting(self) -> int:
        return self.queue.qsize()

    def _run(self) -> None:
        torch.set_num_threads(self.threads)
        stopping = False
        while not stopping:
            first = self.queue.get()
            if first is STOP:
                return
            jobs, count = [first], len(first.lines)
            while self.limits.batching and count < self.limits.batch_sentences:
                try:
                    job = self.queue.get_nowait()
                except queue.Empty:
                    break
                if job is STOP:
                    stopping = True
                    break
                jobs.append(job)
                count += len(job.lines)
            self._answer(jobs)

    def _answer(self, jobs: list[Job]) -> None:
        """Search the jobs' sentences, one batch per set of decode settings; each job's future gets
        its own translations (or its own exception). Jobs whose client went away are skipped."""
        groups: dict[tuple, list[Job]] = {}
        for job in jobs:
            if job.future.set_running_or_notify_cancel():
                groups.setdefault((dataclasses.astuple(job.decode), job.alignment), []).append(job)
        self.busy = True
        start = time.perf_counter()
        try:
            for (_, alignment), group in groups.items():
                self._search(group, alignment)
        finally:
            self.busy = False
            if groups:
                elapsed = time.perf_counter() - start
                self.seconds_per_batch = elapsed if not self.seconds_per_batch else \
                    0.8 * self.seconds_per_batch + 0.2 * elapsed

    def _search(self, group: list[Job], alignment: bool) -> None:
        """One search for the sentences of jobs with the same decode settings. If it fails, each job
        is searched alone: only a job that fails by itself gets the error, the others their answers."""
        lines = [line for job in group for line in job.lines]
        try:
            translations = self.translator.translate(lines, alignment=alignment, decode=group[0].decode)
        except Exception as exc:  # noqa: BLE001 (handed to the request: 400 for a UserError, else 500)
            if len(group) == 1:
                group[0].future.set_exception(exc)
            else:
                for job in group:
                    self._search([job], alignment)
            return
        self.batches += 1
        self.requests += len(group)
        self.sentences += len(lines)
        offset = 0
        for job in group:
            job.future.set_result(translations[offset:offset + len(job.lines)])
            offset += len(job.lines)

    def _warn(self, message: str) -> None:
        self.log("warning: a request sentence has " + message.split(": ", 1)[-1])


async def translated(worker: Worker, receive: Receive, lines: list[str], decode: DecodeConfig,
                     alignment: bool) -> list[Translation]:
    """The job's translations. `receive` is the request's ASGI receive, its body already read: its
    next message is "http.disconnect" when the client leaves, and then the job is cancelled, which
    drops it unsearched if the worker has not taken it yet (ServeError 499: nobody reads it)."""
    answer = asyncio.wrap_future(worker.submit(lines, decode, alignment))
    left = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((answer, left), return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
    if not answer.done():
        answer.cancel()
        raise ServeError(499, "the client disconnected before its answer")
    return answer.result()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
