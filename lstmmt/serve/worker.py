"""The thread of `lstmmt serve` that owns the model and searches queued requests in batches.

Requests queue up for it (a bounded queue: 503 with Retry-After when full). With batching, it
holds up to `batch_sentences` requests at once and fills each batch of `batch_sentences`
sentences with one sentence of each request in turn, so a large request is searched a slice
at a time beside the small ones that come after it instead of holding them until it is done;
the sentences of requests with the same decode settings are searched together, with one
Translator whose `translate` takes each batch's settings. Search results do not depend on the
batch (a project guarantee), so each answer is the one that request would get alone; a batch
that fails is searched again a request at a time, so a request fails alone. Without batching,
it searches one whole request at a time.
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


@dataclass(eq=False)  # a job is itself: two equal requests are two jobs
class Job:
    lines: list[str]
    decode: DecodeConfig
    alignment: bool
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    done: list[Translation] = field(default_factory=list)  # the translations of lines[:len(done)]

    @property
    def left(self) -> int:
        return len(self.lines) - len(self.done)

    def next_lines(self, count: int) -> list[str]:
        return self.lines[len(self.done):len(self.done) + count]


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
        self.warnings = 0  # warnings of the batch being searched
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
        active: list[Job] = []  # taken, not yet answered; the next batch starts with the first
        stopping = False
        while active or not stopping:
            if not active:
                job = self.queue.get()
                if job is STOP:
                    return
                self._take(job, active)
            while self.limits.batching and len(active) < self.limits.batch_sentences and not stopping:
                try:
                    job = self.queue.get_nowait()
                except queue.Empty:
                    break
                if job is STOP:
                    stopping = True
                else:
                    self._take(job, active)
            if active:
                self._search_next(active)

    def _take(self, job: Job, active: list[Job]) -> None:
        """Hold `job` for searching, unless its client went away while it waited."""
        if job.future.set_running_or_notify_cancel():
            active.append(job)

    def _search_next(self, active: list[Job]) -> None:
        """Search the next batch of the active jobs' sentences and answer the jobs it finishes: with
        batching, one sentence of each job in turn up to batch_sentences; without, the first job
        whole. Answered jobs leave `active`; the others that had sentences in the batch move to its end."""
        counts = self._shares(active) if self.limits.batching else {id(active[0]): active[0].left}
        slices = [(job, counts[id(job)]) for job in active if counts.get(id(job))]
        groups: dict[tuple, list[tuple[Job, int]]] = {}
        for job, count in slices:
            groups.setdefault((dataclasses.astuple(job.decode), job.alignment), []).append((job, count))
        self.busy, self.warnings = True, 0
        start = time.perf_counter()
        try:  # the cheapest group first: small requests are answered before a large one's slice is searched
            for (_, alignment), group in sorted(groups.items(), key=lambda item: _cost(item[1])):
                self._search(group, alignment)
        finally:
            self.busy = False
            if self.warnings > 1:
                self.log(f"warning: {self.warnings - 1} more request sentences of that batch were truncated too")
            elapsed = time.perf_counter() - start
            self.seconds_per_batch = elapsed if not self.seconds_per_batch else \
                0.8 * self.seconds_per_batch + 0.2 * elapsed
        active[:] = [job for job in active if not counts.get(id(job))] + \
            [job for job, _ in slices if not job.future.done()]

    def _shares(self, active: list[Job]) -> dict[int, int]:
        """How many sentences of each job (by id) the next batch holds: one of each (there are at
        most batch_sentences jobs), then one of each in turn while they fit batch_sentences
        sentences at the server's search width. A sentence searched wider (a larger beam, more
        samples) takes more of that budget, so a wide request is cut in thinner slices."""
        counts = {id(job): 1 for job in active}
        budget = self.limits.batch_sentences * width(self.translator.decode) - sum(width(job.decode) for job in active)
        taken = True
        while taken:
            taken = False
            for job in active:
                if counts[id(job)] < job.left and width(job.decode) <= budget:
                    counts[id(job)] += 1
                    budget -= width(job.decode)
                    taken = True
        return counts

    def _search(self, group: list[tuple[Job, int]], alignment: bool) -> None:
        """One search for the next `count` sentences of each job (all with the same decode settings).
        If it fails, each job's slice is searched alone: only a job that fails by itself gets the
        error, the others their translations."""
        lines = [line for job, count in group for line in job.next_lines(count)]
        try:
            translations = self.translator.translate(lines, alignment=alignment, decode=group[0][0].decode)
        except Exception as exc:  # noqa: BLE001 (handed to the request: 400 for a UserError, else 500)
            if len(group) == 1:
                group[0][0].future.set_exception(exc)
            else:
                for one in group:
                    self._search([one], alignment)
            return
        self.batches += 1
        self.sentences += len(lines)
        offset = 0
        for job, count in group:
            job.done.extend(translations[offset:offset + count])
            offset += count
            if not job.left:
                self.requests += 1
                job.future.set_result(job.done)

    def _warn(self, message: str) -> None:
        """The first warning of a batch (a truncated sentence) in the log; the others are counted,
        so one request of many long sentences cannot flood the log."""
        if not self.warnings:
            self.log("warning: a request sentence has " + message.split(": ", 1)[-1])
        self.warnings += 1


def width(decode: DecodeConfig) -> int:
    """Hypotheses searched per sentence: the beam, or the samples drawn when sampling."""
    return decode.beam_size if decode.sample_topk is None else decode.n_best


def _cost(group: list[tuple[Job, int]]) -> int:
    """Characters times width of a group's sentences in the next batch: what its search costs, roughly."""
    return sum(width(job.decode) * sum(map(len, job.next_lines(count))) for job, count in group)


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
