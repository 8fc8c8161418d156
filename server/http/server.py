"""uvicorn in the gRPC server's own process and event loop.

:func:`start_http` binds ``--host:--http-port`` itself (so a port in use is a one-line
StartupError, never uvicorn's ``sys.exit``) and serves the app on the running loop; uvicorn's
own signal handling is left out (``serve`` owns SIGTERM: NOT_SERVING, drain, exit). TLS uses the
gRPC server's certificate and key, and requires client certificates with --tls-client-ca.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Generator

import uvicorn

from server.http.app import create_app
from server.http.gate import Gate
from server.preflight import StartupError
from server.runtime import Runtime
from server.settings import Settings

log = logging.getLogger(__name__)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers, reporting when it accepts connections."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


class HttpServer:
    """The running HTTP API; :meth:`install` and :meth:`set_serving` follow the gRPC server's
    lifecycle (server.app), :meth:`stop` drains it."""

    def __init__(self, gate: Gate, server: _EmbeddedServer, task: asyncio.Task[None], port: int) -> None:
        self.gate = gate
        self._server = server
        self._task = task
        self.port = port

    def set_phase(self, phase: str) -> None:
        self.gate.phase = phase

    def install(self, runtime: Runtime) -> None:
        self.gate.runtime = runtime

    def set_serving(self, serving: bool) -> None:
        self.gate.serving = serving

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (up to --grace-seconds), close."""
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def bind(settings: Settings) -> socket.socket:
    """The listening socket. Made with IPPROTO_TCP (``socket.create_server`` leaves the protocol
    0), so asyncio turns Nagle off on every accepted connection: otherwise a response's headers
    and body, two writes, waited for the client's delayed ACK (44 ms per keep-alive request)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((settings.host, settings.http_port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"--http-port {settings.http_port}: cannot listen on {settings.host}:{settings.http_port} "
            f"({exc.strerror or exc})"
        ) from None
    sock.setblocking(False)
    return sock


async def start_http(settings: Settings) -> HttpServer:
    """Bind and start serving; every route but /health and /metrics answers 503 until
    :meth:`HttpServer.install`. StartupError when the port cannot be bound."""
    gate = Gate()
    config = uvicorn.Config(
        create_app(settings, gate),
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=int(max(1, settings.grace_seconds)),
        ssl_certfile=settings.tls_cert or None,
        ssl_keyfile=settings.tls_key or None,
        ssl_ca_certs=settings.tls_client_ca or None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if settings.tls_client_ca else ssl.CERT_NONE,
    )
    sock = bind(settings)
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="http-server")
    ready = asyncio.create_task(server.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        ready.cancel()
        await task  # raises what start-up raised
        raise StartupError(f"the HTTP server on port {settings.http_port} stopped during start-up")
    port = int(sock.getsockname()[1])
    scheme = "https" if settings.tls_cert else "http"
    log.info("HTTP API on %s://%s:%d (OpenAI /v1/embeddings, TEI /embed)", scheme, settings.host, port)
    return HttpServer(gate, server, task, port)
