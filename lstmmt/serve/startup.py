"""Starting and stopping `lstmmt serve`: checks before the model loads, the listening socket, uvicorn.

Clients get `--timeout` seconds to send a request's headers and again its body, and at most
`--max-connections` are served at once. uvicorn's graceful shutdown on SIGTERM stops
accepting connections and lets the handlers in flight finish; the worker stops after them.
"""

from __future__ import annotations

import asyncio
import math
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from lstmmt.config import MAX_THREADS
from lstmmt.errors import UserError
from lstmmt.serve.requests import Limits, Model
from lstmmt.translator import Translator

KEEP_ALIVE = 5
"""Seconds an idle kept-alive connection stays open after an answer (uvicorn's default)."""
MAX_HEADER_BYTES = 16 * 1024
"""The most h11 buffers of a request line and headers still incomplete; beyond it, 400 (h11's default)."""


def prepare(limits: Limits, host: str, port: int, shutdown_timeout: float, threads: int | None) -> None:
    """What can fail before the model loads, so a mistake costs no loading time: the serve extra,
    the options' ranges and the address (a busy port, an unknown host); then torch's thread count."""
    require_extra()
    check_options(limits, shutdown_timeout)
    listen(host, port).close()
    if threads is not None:
        if not 1 <= threads <= MAX_THREADS:
            raise UserError(f"--threads must be in [1, {MAX_THREADS}], got {threads}")
        import torch

        torch.set_num_threads(threads)


def require_extra() -> None:
    """The serve extra's libraries, or one line saying how to install them."""
    try:
        import python_multipart  # noqa: F401  (Starlette's form parser)
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise UserError(f"lstmmt serve needs the serve extra ({exc.name} is missing): "
                        "pip install 'lstmmt[serve]' (in a checkout: pip install -e '.[serve]')") from None


def check_options(limits: Limits, shutdown_timeout: float) -> None:
    """The ranges of the serve options (a UserError naming the option)."""
    limits.check()
    if not (shutdown_timeout > 0 and math.isfinite(shutdown_timeout)):
        raise UserError(f"--shutdown-timeout must be a number of seconds > 0, got {shutdown_timeout}")


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so that a busy port is one line (and port 0 picks a free one)."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
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


def serve(translator: Translator, model: Model, limits: Limits, host: str, port: int, shutdown_timeout: float,
          access_log: bool, log: Callable[[str], None]) -> int:
    """Serve until SIGTERM or Ctrl-C; the number of requests answered."""
    require_extra()
    import uvicorn

    from lstmmt.serve.app import create_app

    check_options(limits, shutdown_timeout)
    sock = listen(host, port)
    app = create_app(translator, model, limits, log)
    config = uvicorn.Config(app, log_level="info" if access_log else "warning", access_log=access_log,
                            timeout_graceful_shutdown=shutdown_timeout, lifespan="on", http=timed_h11(limits.timeout),
                            timeout_keep_alive=KEEP_ALIVE, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                            limit_concurrency=limits.max_connections + 1)  # uvicorn counts the asking connection too
    server = uvicorn.Server(config)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if sock.family == socket.AF_INET6 else bound_host
    log(f"Listening on http://{shown}:{bound_port} ({model.source}->{model.target}; web page at /, "
        "LibreTranslate API at /translate, native API at /v1/translate); Ctrl-C or SIGTERM stops")
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


def timed_h11(timeout: float) -> type:
    """uvicorn's h11 protocol, closing a connection that has not sent a whole request's headers within
    `timeout` seconds of opening or of its last answer. uvicorn itself times out only connections idle
    after an answer: one that sends nothing, or part of its headers, would be held for ever."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        headers_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._await_request()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._await_request()

        def connection_lost(self, exc: Exception | None) -> None:
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


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
