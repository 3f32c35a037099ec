"""`lstmmt serve`: a trained model behind HTTP (Starlette on uvicorn; the `serve` extra).

Endpoints (docs/serve.md): LibreTranslate's `POST /translate` and `GET /languages`, the
native `POST /v1/translate` (n-best, scores, alignments: what `Translator.translate` gives),
`GET /health` and a web page at `GET /`.

One worker thread owns the model. Requests queue up for it (a bounded queue: 503 with
Retry-After when full); each time it is free it takes every request waiting, up to
`batch_sentences` sentences, and searches the sentences of requests with the same decode
options as one batch. Search results do not depend on the batch (a project guarantee), so each
answer is the one that request would get alone; a batch that fails is searched again a request
at a time, so a request fails alone. Clients get `--timeout` seconds to send a request's headers
and again its body, and at most `--max-connections` are served at once. uvicorn's graceful
shutdown on SIGTERM stops accepting connections and lets the handlers in flight finish; the
worker stops after them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import math
import os
import queue
import re
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Awaitable, Callable, Optional, Sequence

import torch

from lstmmt.config import DecodeConfig
from lstmmt.errors import UserError
from lstmmt.translator import Translation, Translator, as_dict

LANGUAGE_NAMES = {
    "ar": "Arabic", "bg": "Bulgarian", "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek", "en": "English",
    "es": "Spanish", "et": "Estonian", "fi": "Finnish", "fr": "French", "hu": "Hungarian", "it": "Italian",
    "ja": "Japanese", "ko": "Korean", "lt": "Lithuanian", "lv": "Latvian", "nl": "Dutch", "pl": "Polish",
    "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sk": "Slovak", "sl": "Slovenian", "sv": "Swedish",
    "tr": "Turkish", "uk": "Ukrainian", "zh": "Chinese",
}
"""Names for GET /languages; other codes are named by themselves."""

REQUEST_DECODE_KEYS = ("beam_size", "n_best", "length_penalty", "max_len_a", "max_len_b")
"""Decode settings a request of the native API may choose; the others belong to the server."""

KEEP_ALIVE = 5
"""Seconds an idle kept-alive connection stays open after an answer (uvicorn's default)."""
MAX_HEADER_BYTES = 16 * 1024
"""The most h11 buffers of a request line and headers still incomplete; beyond it, 400 (h11's default)."""

LINE_BREAK = re.compile(r"\r\n|[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")
"""Where LibreTranslate text is split into sentences (each line is translated on its own)."""


@dataclass
class Limits:
    """What one server accepts and how it batches (the options of `lstmmt serve`)."""

    max_body: int = 1 << 20  # bytes of one request body
    max_sentences: int = 100  # sentences (lines) of one request
    queue_size: int = 64  # requests waiting for the worker
    batch_sentences: int = 64  # sentences searched together, across requests
    max_beam: int = 16  # the largest beam_size a request may ask for
    batching: bool = True  # False: one request per search
    timeout: float = 30.0  # seconds a client has to send a request's headers, and again its body
    max_connections: int = 512  # open connections served at once; requests beyond them get 503

    def check(self) -> None:
        for name in ("max_body", "max_sentences", "queue_size", "batch_sentences", "max_beam", "max_connections"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise UserError(f"--timeout must be a number of seconds > 0, got {self.timeout}")


class ServeError(Exception):
    """An answer other than 200: status, one message, optional headers."""

    def __init__(self, status: int, message: str, headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# -- the worker -----------------------------------------------------------------------------


@dataclass
class Job:
    lines: list[str]
    decode: DecodeConfig
    alignment: bool
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


STOP = object()


class Worker:
    """The thread that owns the model: takes queued jobs, searches them in batches, answers each."""

    def __init__(self, translator: Translator, limits: Limits, log: Callable[[str], None]):
        self.base = translator
        self.limits = limits
        self.log = log
        self.queue: queue.Queue = queue.Queue(maxsize=limits.queue_size)
        self.thread = threading.Thread(target=self._run, name="lstmmt-worker", daemon=True)
        self.translators: OrderedDict[tuple, Translator] = OrderedDict()
        self.busy = False
        self.requests = self.sentences = self.batches = 0
        self.pending = 0  # jobs submitted and not yet answered
        self.lock = threading.Lock()
        self.seconds_per_batch = 0.0  # moving average, for Retry-After
        self.threads = torch.get_num_threads()  # OpenMP thread counts are per thread: the worker sets its own

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: Optional[float] = None) -> None:
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
        """Search the jobs' sentences, one batch per set of decode options; each job's future gets
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
                self.seconds_per_batch = elapsed if not self.seconds_per_batch else 0.8 * self.seconds_per_batch + 0.2 * elapsed

    def _search(self, group: list[Job], alignment: bool) -> None:
        """One search for the sentences of jobs with the same decode options. If it fails, each job
        is searched alone: only a job that fails by itself gets the error, the others their answers."""
        lines = [line for job in group for line in job.lines]
        try:
            translations = self._translator(group[0].decode).translate(lines, alignment=alignment)
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

    def _translator(self, decode: DecodeConfig) -> Translator:
        """The base translator's models with these decode settings (a few kept)."""
        key = dataclasses.astuple(decode)
        if key not in self.translators:
            base = self.base
            self.translators[key] = Translator(base.models, base.tokenizer, decode, base.device, base.precision, self._warn,
                                               base.shortlist)
            while len(self.translators) > 32:
                self.translators.popitem(last=False)
        self.translators.move_to_end(key)
        return self.translators[key]

    def _warn(self, message: str) -> None:
        self.log("warning: a request sentence has " + message.split(": ", 1)[-1])


def translated(worker: Worker, lines: list[str], decode: DecodeConfig, alignment: bool) -> Awaitable[list[Translation]]:
    """An awaitable of the job's translations; cancelling it (the client left) drops the job if not started."""
    return asyncio.wrap_future(worker.submit(lines, decode, alignment))


# -- request parsing ------------------------------------------------------------------------


def media_type(headers: Any) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_body(request: Any, limits: Limits) -> bytes:
    """The request body, refused with 413 beyond limits.max_body bytes (before reading when Content-Length
    says so), and with 408 (closing the connection) when it has not all come within limits.timeout
    seconds: a body shorter than its Content-Length, or one trickled a byte at a time, holds nothing longer."""
    limit = limits.max_body
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ServeError(400, f"Invalid request: Content-Length {_shown(declared)} is not a number") from None
        if size > limit:
            raise ServeError(413, f"Request body of {size} bytes exceeds this server's limit of {limit} bytes")
    try:
        return await asyncio.wait_for(_body(request, limit), limits.timeout)
    except asyncio.TimeoutError:
        raise ServeError(408, f"Request body not received within {limits.timeout:g} s",
                         {"Connection": "close"}) from None


async def _body(request: Any, limit: int) -> bytes:
    """The body's bytes as they come. A client that leaves before sending it all gets a 400 that nobody
    reads: leaving is not a server error."""
    from starlette.requests import ClientDisconnect

    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ServeError(413, f"Request body exceeds this server's limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ServeError(400, "Invalid request: the client disconnected before sending the whole body") from None
    return b"".join(chunks)


def parse_json(body: bytes) -> dict[str, Any]:
    """The body's JSON object; anything else is a 400: malformed JSON or UTF-8, NaN and Infinity (which
    Python reads but JSON has not), integers longer than int() converts, nesting deeper than the parser goes."""
    try:
        data = json.loads(body, parse_constant=_not_json)
    except RecursionError:
        raise ServeError(400, "Invalid request: malformed JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError and int()'s digit limit are ValueErrors
        raise ServeError(400, f"Invalid request: malformed JSON ({str(exc).split(';')[0]})") from None
    if not isinstance(data, dict):
        raise ServeError(400, "Invalid request: the JSON body must be an object")
    return data


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not a JSON number")


async def request_fields(request: Any, limits: Limits) -> dict[str, Any]:
    """LibreTranslate's parameters: query string, then a JSON, urlencoded or multipart body."""
    from starlette.requests import Request

    fields: dict[str, Any] = dict(request.query_params)
    kind = media_type(request.headers)
    body = await read_body(request, limits)
    if kind == "application/json":
        fields.update(parse_json(body))
    elif kind in ("application/x-www-form-urlencoded", "multipart/form-data"):
        sent = False

        async def replay() -> dict[str, Any]:  # the body read above, once, to the form parser
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form()
        except Exception as exc:  # noqa: BLE001 (python-multipart's and Starlette's parse errors)
            raise ServeError(400, f"Invalid request: malformed form data ({exc})") from None
        for key in form.keys():
            values = form.getlist(key)
            if not all(isinstance(v, str) for v in values):
                raise ServeError(400, f"Invalid request: {key} must be text, not a file")
            fields[key] = values[0] if len(values) == 1 else list(values)
    elif body or kind:
        raise ServeError(415, f"Unsupported content type {kind or '(none)'}: send application/json, "
                         "application/x-www-form-urlencoded or multipart/form-data")
    return fields


# -- the application ------------------------------------------------------------------------


@dataclass
class Model:
    """What the server tells about its model."""

    source: str
    target: str
    checkpoints: list[str]

    def pair_error(self, source: Any, target: Any) -> ServeError:
        return ServeError(400, f"This server translates {self.source} to {self.target} only (source {self.source} "
                          f"or auto, target {self.target}); got source {_shown(source)}, target {_shown(target)}")


def create_app(translator: Translator, model: Model, limits: Limits, log: Callable[[str], None] = print) -> Any:
    """The Starlette application; its lifespan starts and stops the worker."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    worker = Worker(translator, limits, log)
    page = resources.files("lstmmt").joinpath("static/index.html").read_text(encoding="utf-8")

    def answers_json(handler: Callable) -> Callable:
        async def wrapped(request: Any) -> Any:
            try:
                return JSONResponse(await handler(request))
            except ServeError as exc:
                return JSONResponse({"error": exc.message}, exc.status, exc.headers)
            except UserError as exc:  # a request the model cannot take (found while translating it alone)
                return JSONResponse({"error": f"Invalid request: {exc}"}, 400)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 (a bug: one line in the log, 500 to the client)
                if os.environ.get("LSTMMT_TRACEBACK"):
                    import traceback

                    traceback.print_exc()
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                log(f"internal error: {type(exc).__name__}: {first}")
                return JSONResponse({"error": f"internal error: {type(exc).__name__}: {first}"}, 500)

        return wrapped

    async def libre_translate(request: Any) -> dict[str, Any]:
        fields = await request_fields(request, limits)
        q = fields.get("q")
        if not q:
            raise ServeError(400, "Invalid request: missing q parameter")
        texts = [q] if isinstance(q, str) else q
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ServeError(400, "Invalid request: q must be a string or a list of strings")
        for name in ("source", "target"):
            if not fields.get(name):
                raise ServeError(400, f"Invalid request: missing {name} parameter")
        source, target = fields["source"], fields["target"]
        if source not in (model.source, "auto") or target != model.target:
            raise model.pair_error(source, target)
        text_format = fields.get("format", "text") or "text"
        if text_format != "text":
            raise ServeError(400, f"Invalid request: format {_shown(text_format)} is not supported; this server "
                             "translates plain text (format text)")
        alternatives = _non_negative_int(fields.get("alternatives", 0), "alternatives")
        decode = translator.decode
        n_best = min(alternatives + 1, decode.beam_size)
        if n_best != decode.n_best:
            decode = decode.updated(n_best=n_best)
        split = [LINE_BREAK.split(text) for text in texts]
        _check_count(sum(map(len, split)), limits)
        lines = [line for text_lines in split for line in text_lines]
        translations = await translated(worker, lines, decode, False) if lines else []
        results, offset = [], 0
        for text_lines in split:
            results.append(translations[offset:offset + len(text_lines)])
            offset += len(text_lines)
        joined = ["\n".join(t.text for t in result) for result in results]
        answer: dict[str, Any] = {"translatedText": joined[0] if isinstance(q, str) else joined}
        if source == "auto":
            detected = {"confidence": 100.0, "language": model.source}
            answer["detectedLanguage"] = detected if isinstance(q, str) else [detected] * len(texts)
        if alternatives:
            others = [[_alternative(result, k) for k in range(1, n_best)] for result in results]
            answer["alternatives"] = others[0] if isinstance(q, str) else others
        return answer

    async def languages(request: Any) -> list[dict[str, Any]]:
        return [{"code": model.source, "name": LANGUAGE_NAMES.get(model.source, model.source), "targets": [model.target]},
                {"code": model.target, "name": LANGUAGE_NAMES.get(model.target, model.target), "targets": []}]

    async def native_translate(request: Any) -> dict[str, Any]:
        if media_type(request.headers) != "application/json":
            raise ServeError(415, f"Unsupported content type {media_type(request.headers) or '(none)'}: "
                             "POST /v1/translate takes application/json")
        fields = parse_json(await read_body(request, limits))
        unknown = sorted(set(fields) - {"sentences", "alignment", *REQUEST_DECODE_KEYS})
        if unknown:
            raise ServeError(400, f"Invalid request: unknown field(s) {', '.join(unknown)}; valid: sentences, alignment, "
                             f"{', '.join(REQUEST_DECODE_KEYS)}")
        sentences = fields.get("sentences")
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise ServeError(400, "Invalid request: sentences must be a list of strings")
        alignment = fields.get("alignment", False)
        if not isinstance(alignment, bool):
            raise ServeError(400, f"Invalid request: alignment must be true or false, got {_shown(alignment)}")
        _check_count(len(sentences), limits)
        chosen = {key: fields[key] for key in REQUEST_DECODE_KEYS if key in fields}
        try:
            decode = translator.decode.updated(**chosen)
        except UserError as exc:
            raise ServeError(400, f"Invalid request: {exc}") from None
        if decode.beam_size > max(limits.max_beam, translator.decode.beam_size):
            raise ServeError(400, f"Invalid request: beam_size {decode.beam_size} is above this server's limit of {limits.max_beam}")
        for key in ("max_len_a", "max_len_b"):  # a request may lower the output length limit, not raise it
            if getattr(decode, key) > getattr(translator.decode, key):
                raise ServeError(400, f"Invalid request: {key} {getattr(decode, key)} is above this server's "
                                 f"{getattr(translator.decode, key)} (lstmmt serve --set decode.{key}=...)")
        translations = await translated(worker, sentences, decode, alignment) if sentences else []
        return {"translations": [as_dict(t) for t in translations]}

    async def health(request: Any) -> dict[str, Any]:
        return {"status": "ok", "source": model.source, "target": model.target, "checkpoints": model.checkpoints,
                "device": str(translator.device), "precision": translator.precision.name,
                "decode": dataclasses.asdict(translator.decode), "batching": limits.batching,
                "queue": {"waiting": worker.waiting(), "size": limits.queue_size, "in_flight": worker.pending,
                          "busy": worker.busy},
                "served": {"requests": worker.requests, "sentences": worker.sentences, "batches": worker.batches}}

    async def index(request: Any) -> Any:
        return HTMLResponse(page)

    async def http_error(request: Any, exc: Any) -> Any:
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, getattr(exc, "headers", None))

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        worker.start()
        try:
            yield
        finally:
            await asyncio.to_thread(worker.stop)

    routes = [
        Route("/translate", answers_json(libre_translate), methods=["POST"]),
        Route("/languages", answers_json(languages), methods=["GET", "POST"]),
        Route("/v1/translate", answers_json(native_translate), methods=["POST"]),
        Route("/health", answers_json(health), methods=["GET"]),
        Route("/", index, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.worker = worker
    return app


def _non_negative_int(value: Any, name: str) -> int:
    """A whole number >= 0 from JSON or form text; 400 otherwise (an infinite float included)."""
    error = ServeError(400, f"Invalid request: {name} must be a whole number >= 0, got {_shown(value)}")
    if isinstance(value, bool):
        raise error
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise error from None
    if number < 0 or number != value and not isinstance(value, str):
        raise error
    return number


def _shown(value: Any, most: int = 60) -> str:
    """A request value for an error message, cut short: a message never echoes a whole request."""
    try:
        shown = repr(value)
    except ValueError:  # an int too long for repr
        shown = f"a {type(value).__name__}"
    return shown if len(shown) <= most else shown[:most] + "..."


def _check_count(count: int, limits: Limits) -> None:
    if count > limits.max_sentences:
        raise ServeError(400, f"Invalid request: {count} sentences (lines) exceed this server's limit of "
                         f"{limits.max_sentences} per request")


def _alternative(result: Sequence[Translation], k: int) -> str:
    """The k-th candidate of each line, joined (a line with fewer candidates gives its best)."""
    return "\n".join(t.n_best[k].text if k < len(t.n_best) else t.text for t in result)


# -- running --------------------------------------------------------------------------------


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so that a busy port is one line (and port 0 picks a free one)."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise UserError(f"--host {host}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def timed_h11(timeout: float) -> type:
    """uvicorn's h11 protocol, closing a connection that has not sent a whole request's headers within
    `timeout` seconds of opening or of its last answer. uvicorn itself times out only connections idle
    after an answer: one that sends nothing, or part of its headers, would be held for ever."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        headers_timer: Optional[asyncio.TimerHandle] = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._await_request()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._await_request()

        def connection_lost(self, exc: Optional[Exception]) -> None:
            self._cancel_timer()
            super().connection_lost(exc)

        def _await_request(self) -> None:
            self._cancel_timer()
            self.headers_timer = self.loop.call_later(timeout, self._close_if_no_request, self.cycle)

        def _close_if_no_request(self, cycle: Any) -> None:
            """Close unless a request has begun since the timer was set (a new cycle, or this one still running)."""
            if self.cycle is cycle and (cycle is None or cycle.response_complete):
                self.transport.close()

        def _cancel_timer(self) -> None:
            if self.headers_timer is not None:
                self.headers_timer.cancel()
                self.headers_timer = None

    return TimedH11Protocol


def require_extra() -> None:
    """The serve extra's libraries, or one line saying how to install them."""
    try:
        import python_multipart  # noqa: F401  (Starlette's form parser)
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise UserError(f"lstmmt serve needs the serve extra ({exc.name} is missing): pip install 'lstmmt[serve]'") from None


def serve(translator: Translator, model: Model, limits: Limits, host: str, port: int, shutdown_timeout: float,
          access_log: bool, log: Callable[[str], None]) -> int:
    """Serve until SIGTERM or Ctrl-C; the number of requests answered."""
    require_extra()
    import uvicorn

    limits.check()
    if not (shutdown_timeout > 0 and math.isfinite(shutdown_timeout)):
        raise UserError(f"--shutdown-timeout must be a number of seconds > 0, got {shutdown_timeout}")
    sock = listen(host, port)
    app = create_app(translator, model, limits, log)
    config = uvicorn.Config(app, log_level="info" if access_log else "warning", access_log=access_log,
                            timeout_graceful_shutdown=shutdown_timeout, lifespan="on", http=timed_h11(limits.timeout),
                            timeout_keep_alive=KEEP_ALIVE, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                            limit_concurrency=limits.max_connections + 1)  # uvicorn counts the asking connection too
    server = uvicorn.Server(config)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if sock.family == socket.AF_INET6 else bound_host
    log(f"Listening on http://{shown}:{bound_port} ({model.source}->{model.target}; web page at /, LibreTranslate API at "
        f"/translate, native API at /v1/translate); Ctrl-C or SIGTERM stops")
    # uvicorn raises the signal that stopped it again once it has shut down; for SIGTERM that
    # should end the process with status 0, so this handler takes it instead of the default.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    worker = app.state.worker
    log(f"Stopped after {worker.requests:,} requests ({worker.sentences:,} sentences in {worker.batches:,} batches)")
    return worker.requests


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
