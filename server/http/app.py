"""The FastAPI application: the HTTP edge over the same runtime as gRPC.

Every request passes :class:`HttpEdge` (a plain ASGI middleware) before any route sees it:
1. it is counted and timed in the same Prometheus collectors as the RPCs (``embed_requests_total``
   with ``method`` = "POST /v1/embeddings" and ``code`` = the HTTP status);
2. the bearer token is checked before the body is read, so a wrong token is 401 whatever the
   body holds (/health and /metrics stay open, as grpc.health.v1 and the metrics port do);
3. a body over the limit (the gRPC receive limit, ``Settings.max_receive_bytes``) is 413 without
   being read further.
Routes get the runtime through :func:`server.http.gate.runtime`, which is NotReady (503) until the server is
serving (the same start-up gate as gRPC). Errors are answered from the one table in
:mod:`server.http.errors`, in the dialect of the path (OpenAI's or TEI's).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from server import metrics
from server.auth import bearer_token_matches
from server.errors import InvalidArgument, ServiceError, TooLarge, Unauthenticated
from server.http.errors import Dialect, dialect_of, error_body, record
from server.http.gate import ROUTES, Gate, error_response, json_response
from server.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health", "/metrics"})  # no token needed (load balancers, Prometheus)


def _validation_message(exc: RequestValidationError) -> InvalidArgument:
    """pydantic's first error as an InvalidArgument naming the field ("input", "inputs[2]")."""
    first = exc.errors()[0] if exc.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    name = ""
    for part in location:
        if part.isdigit():
            name += f"[{part}]"
        elif not name:
            name = part
        else:
            break  # pydantic appends the union member it tried ("str", "list[int]"): not a field
    what = first.get("msg", "invalid request")
    members = _union_members(exc.errors(), name)
    if members:  # one error per accepted form: name them all, and where the value went wrong
        deepest = max(exc.errors(), key=lambda e: len(e.get("loc", ())))
        where = name + "".join(f"[{p}]" for p in deepest.get("loc", ()) if isinstance(p, int))
        return InvalidArgument(
            f"{where}: the value matches none of the accepted forms of {name} ({', '.join(members)})",
            field=where,
        )
    if first.get("type") == "json_invalid":
        return InvalidArgument(f"the request body is not valid JSON ({what})", field="body")
    if not name:
        return InvalidArgument(
            f"the request body must be a JSON object, sent with 'Content-Type: application/json' ({what})",
            field="body",
        )
    return InvalidArgument(f"{name}: {what}", field=name)


def _union_members(errors: Sequence[Any], name: str) -> list[str]:
    """The forms of a union field that pydantic tried, when every error is about field ``name``
    (its location then reads body, name, form, ...); [] otherwise."""
    forms: list[str] = []
    for error in errors:
        loc = [part for part in error.get("loc", ()) if part != "body"]
        if len(loc) < 2 or loc[0] != name or not isinstance(loc[1], str):
            return []
        if loc[1] not in forms:
            forms.append(loc[1])
    return forms if len(forms) > 1 else []


class HttpEdge:
    """ASGI middleware: metrics, the bearer token, the body limit (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, token: str, max_body_bytes: int) -> None:
        self.app = app
        self.token = token
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope["path"]
        status = 500

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            failure = self._refuse(scope)
            if failure is not None:
                await self._answer(scope, failure, counted)
                return
            body = await self._read_body(scope, receive)
            if isinstance(body, ServiceError):
                await self._answer(scope, body, counted)
                return
            await self.app(scope, _replay(body, receive), counted)
        finally:
            label = f"{scope['method']} {path if path in ROUTES else 'other'}"
            metrics.REQUESTS.labels(label, str(status)).inc()
            metrics.LATENCY.labels(label).observe(time.perf_counter() - started)

    def _refuse(self, scope: Scope) -> ServiceError | None:
        """Unauthenticated, or TooLarge from the Content-Length header, before reading the body."""
        headers = dict(scope["headers"])
        if (
            self.token
            and scope["path"] not in OPEN_PATHS
            and not bearer_token_matches(headers.get(b"authorization", b""), self.token)
        ):
            return Unauthenticated(
                "missing or wrong bearer token: send the header 'Authorization: Bearer <token>'"
            )
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return self._too_large(int(length))
        return None

    def _too_large(self, size: int) -> TooLarge:
        return TooLarge(
            f"the request body is {'at least ' if size < 0 else ''}{abs(size):,} bytes, more than the "
            f"limit of {self.max_body_bytes:,} (--max-message-bytes / --max-document-bytes); send fewer "
            "or shorter inputs per request",
            field="body",
        )

    async def _read_body(self, scope: Scope, receive: Receive) -> list[Message] | ServiceError:
        """The request's body messages, read whole (TooLarge past the limit, for a chunked body
        without Content-Length too); routes parse it afterwards."""
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages  # the client went away: the route sees it
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                return self._too_large(-size)
            if not message.get("more_body", False):
                return messages

    async def _answer(self, scope: Scope, exc: ServiceError, send: Send) -> None:
        status, body = error_body(exc, dialect_of(scope["path"]))
        path = scope["path"]
        record(f"{scope['method']} {path if path in ROUTES else 'other'}", status, exc)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that hands out the already-read body messages, then the client's next ones
    (a disconnect)."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


def create_app(settings: Settings, gate: Gate) -> FastAPI:
    """The app: OpenAI's and TEI's routes over ``gate``'s runtime, behind :class:`HttpEdge`."""
    from server.http import openai, tei

    app = FastAPI(
        title="embedstream",
        summary="OpenAI- and TEI-compatible embeddings over the gRPC server's engine",
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.gate = gate
    app.include_router(openai.router)
    app.include_router(tei.router)

    @app.exception_handler(ServiceError)
    async def domain_error(request: Request, exc: ServiceError) -> Response:
        return error_response(request, request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> Response:
        return error_response(request, request.url.path, _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 400:  # FastAPI could not decode the body: bad input, as a domain error
            unparsed = InvalidArgument(
                f"the request body could not be parsed as JSON ({exc.detail}): send UTF-8 JSON "
                "nested less than a few hundred levels deep",
                field="body",
            )
            return error_response(request, request.url.path, unparsed)
        # Starlette's own answers (404 no route, 405 method): in the path's dialect.
        dialect = dialect_of(request.url.path)
        message = str(exc.detail)
        body: dict[str, Any] = (
            {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
            if dialect is Dialect.OPENAI
            else {"error": message, "error_type": "validation"}
        )
        return json_response(exc.status_code, orjson.dumps(body), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> Response:
        return error_response(request, request.url.path, exc)

    app.add_middleware(HttpEdge, token=settings.auth_token, max_body_bytes=settings.max_receive_bytes)
    return app
