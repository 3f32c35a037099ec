"""The HTTP application of `lstmmt serve` (Starlette; the `serve` extra).

Endpoints (docs/serve.md): LibreTranslate's `POST /translate` and `GET /languages`, the
native `POST /v1/translate` (n-best, scores, alignments: what `Translator.translate` gives),
`GET /health` and a web page at `GET /`. The handlers are module functions that find what
they serve in `request.app.state` (translator, model, limits, worker, log, page): they read
the body here and leave its checks to lstmmt/serve/requests.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from lstmmt.errors import UserError, first_line
from lstmmt.serve.requests import (
    Limits,
    Model,
    ServeError,
    languages as model_languages,
    libre_answer,
    libre_request,
    media_type,
    native_answer,
    native_request,
    parse_json,
    shown,
)
from lstmmt.serve.worker import Worker, translated
from lstmmt.translator import Translator

Answer = dict[str, Any] | list[dict[str, Any]]


def create_app(translator: Translator, model: Model, limits: Limits, log: Callable[[str], None] = print) -> Starlette:
    """The Starlette application; its lifespan starts and stops the worker. Any web page may call it
    (CORS, as LibreTranslate allows), so browser extensions and pages on other origins work."""
    cors = Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST"], allow_headers=["*"])
    app = Starlette(routes=ROUTES, middleware=[cors], exception_handlers={HTTPException: http_error},
                    lifespan=lifespan)
    app.state.translator, app.state.model, app.state.limits, app.state.log = translator, model, limits, log
    app.state.worker = Worker(translator, limits, log)
    app.state.page = resources.files("lstmmt").joinpath("static/index.html").read_text(encoding="utf-8")
    return app


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.worker.start()
    try:
        yield
    finally:
        await asyncio.to_thread(app.state.worker.stop)


def answers_json(handler: Callable[[Request], Awaitable[Answer]]) -> Callable[[Request], Awaitable[Response]]:
    """The handler's answer as JSON; a ServeError as its status and `{"error": message}`, a UserError
    (a request the model cannot take, found while translating it alone) as 400, anything else as 500
    with one line in the log."""

    async def wrapped(request: Request) -> Response:
        try:
            return JSONResponse(await handler(request))
        except ServeError as exc:
            return JSONResponse({"error": exc.message}, exc.status, exc.headers)
        except UserError as exc:
            return JSONResponse({"error": f"Invalid request: {exc}"}, 400)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 (a bug: one line in the log, 500 to the client)
            if os.environ.get("LSTMMT_TRACEBACK"):
                import traceback

                traceback.print_exc()
            first = first_line(exc)
            request.app.state.log(f"internal error: {type(exc).__name__}: {first}")
            return JSONResponse({"error": f"internal error: {type(exc).__name__}: {first}"}, 500)

    return wrapped


async def libre_translate(request: Request) -> Answer:
    state = request.app.state
    fields = await request_fields(request, state.limits)
    asked = libre_request(fields, state.model, state.translator.decode, state.limits)
    lines = asked.lines
    translations = await translated(state.worker, request.receive, lines, asked.decode, False) if lines else []
    return libre_answer(asked, translations, state.model)


async def languages(request: Request) -> Answer:
    return model_languages(request.app.state.model)


async def native_translate(request: Request) -> Answer:
    state = request.app.state
    if media_type(request.headers) != "application/json":
        raise ServeError(415, f"Unsupported content type {media_type(request.headers) or '(none)'}: "
                         "POST /v1/translate takes application/json")
    asked = native_request(parse_json(await read_body(request, state.limits)), state.translator.decode, state.limits)
    sentences = asked.sentences
    translations = await translated(state.worker, request.receive, sentences, asked.decode,
                                    asked.alignment) if sentences else []
    return native_answer(translations)


async def health(request: Request) -> Answer:
    state = request.app.state
    worker, limits, model = state.worker, state.limits, state.model
    return {"status": "ok", "source": model.source, "target": model.target, "checkpoints": model.checkpoints,
            "device": str(state.translator.device), "precision": state.translator.precision.name,
            "decode": dataclasses.asdict(state.translator.decode), "batching": limits.batching,
            "queue": {"waiting": worker.waiting(), "size": limits.queue_size, "in_flight": worker.pending,
                      "busy": worker.busy},
            "served": {"requests": worker.requests, "sentences": worker.sentences, "batches": worker.batches}}


async def index(request: Request) -> Response:
    return HTMLResponse(request.app.state.page)


async def http_error(request: Request, exc: Any) -> Response:
    return JSONResponse({"error": str(exc.detail)}, exc.status_code, getattr(exc, "headers", None))


ROUTES = [
    Route("/translate", answers_json(libre_translate), methods=["POST"]),
    Route("/languages", answers_json(languages), methods=["GET", "POST"]),
    Route("/v1/translate", answers_json(native_translate), methods=["POST"]),
    Route("/health", answers_json(health), methods=["GET"]),
    Route("/", index, methods=["GET"]),
]


# -- reading request bodies ------------------------------------------------------------------


async def read_body(request: Request, limits: Limits) -> bytes:
    """The request body, refused with 413 beyond limits.max_body bytes (before reading when Content-Length
    says so), and with 408 (closing the connection) when it has not all come within limits.timeout
    seconds: a body shorter than its Content-Length, or one trickled a byte at a time, holds nothing longer."""
    limit = limits.max_body
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ServeError(400, f"Invalid request: Content-Length {shown(declared)} is not a number") from None
        if size > limit:
            raise ServeError(413, f"Request body of {size} bytes exceeds this server's limit of {limit} bytes")
    try:
        return await asyncio.wait_for(_body(request, limit), limits.timeout)
    except asyncio.TimeoutError:
        raise ServeError(408, f"Request body not received within {limits.timeout:g} s",
                         {"Connection": "close"}) from None


async def _body(request: Request, limit: int) -> bytes:
    """The body's bytes as they come. A client that leaves before sending it all gets a 400 that nobody
    reads: leaving is not a server error."""
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


async def request_fields(request: Request, limits: Limits) -> dict[str, Any]:
    """LibreTranslate's parameters: query string, then a JSON, urlencoded or multipart body."""
    fields: dict[str, Any] = dict(request.query_params)
    kind = media_type(request.headers)
    body = await read_body(request, limits)
    if kind == "application/json":
        fields.update(parse_json(body))
    elif kind in ("application/x-www-form-urlencoded", "multipart/form-data"):
        fields.update(await _form_fields(request, body))
    elif body or kind:
        raise ServeError(415, f"Unsupported content type {kind or '(none)'}: send application/json, "
                         "application/x-www-form-urlencoded or multipart/form-data")
    return fields


async def _form_fields(request: Request, body: bytes) -> dict[str, Any]:
    """The fields of a form body already read: a field given twice becomes a list; a file is a 400."""
    sent = False

    async def replay() -> dict[str, Any]:  # the body read before, once, to the form parser
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form()
    except Exception as exc:  # noqa: BLE001 (python-multipart's and Starlette's parse errors)
        raise ServeError(400, f"Invalid request: malformed form data ({exc})") from None
    fields: dict[str, Any] = {}
    for key in form:
        values = form.getlist(key)
        if not all(isinstance(v, str) for v in values):
            raise ServeError(400, f"Invalid request: {key} must be text, not a file")
        fields[key] = values[0] if len(values) == 1 else list(values)
    return fields
