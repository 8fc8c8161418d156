"""The one table from domain errors (server.errors) to HTTP statuses, and the two error bodies.

Each API speaks its own error dialect, chosen by path (:func:`dialect_of`):

- OpenAI (``/v1/...``): ``{"error": {"message", "type", "param", "code"}}``, as api.openai.com
  answers, so the ``openai`` client raises BadRequestError (400), AuthenticationError (401),
  RateLimitError (429), InternalServerError (>= 500) and ``APIStatusError`` for the rest;
- TEI (every other path): ``{"error": "...", "error_type": "..."}``, text-embeddings-inference's
  ``ErrorResponse``.

The status of a domain error is the same in both dialects except where TEI documents its own:
an empty input is 400 ``empty`` (TEI's ErrorType::Empty), any other validation error 422
``validation``, a size limit (items per call, characters, tokens with truncate=false, body
bytes) 413, a worker failure 424 ``backend`` (TEI's Backend). Anything that is not a
:class:`~server.errors.ServiceError` is our bug: 500, a generic message, the traceback in the
log (server.call_log), never on the wire.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import orjson

from server import errors
from server.call_log import FAILURES
from server.errors import INTERNAL_MESSAGE, bounded


class Dialect(enum.Enum):
    OPENAI = "openai"
    TEI = "tei"


@dataclass(frozen=True)
class HttpStatus:
    """How one kind of domain error is answered: the status and the error type of each dialect."""

    openai: int
    openai_type: str
    tei: int
    tei_type: str


STATUS: dict[type[errors.ServiceError], HttpStatus] = {
    errors.EmptyInput: HttpStatus(400, "invalid_request_error", 400, "empty"),
    errors.TooLarge: HttpStatus(413, "invalid_request_error", 413, "validation"),
    errors.InvalidArgument: HttpStatus(400, "invalid_request_error", 422, "validation"),
    errors.NotFound: HttpStatus(404, "invalid_request_error", 404, "validation"),
    errors.Overloaded: HttpStatus(429, "rate_limit_error", 429, "overloaded"),
    errors.StorageFull: HttpStatus(507, "server_error", 507, "backend"),
    errors.NotReady: HttpStatus(503, "server_error", 503, "unhealthy"),
    errors.PreconditionFailed: HttpStatus(409, "invalid_request_error", 424, "backend"),
    errors.Unauthenticated: HttpStatus(401, "invalid_request_error", 401, "unauthorized"),
    errors.WorkerFailed: HttpStatus(503, "server_error", 424, "backend"),
}
INTERNAL = HttpStatus(500, "server_error", 500, "backend")
# OpenAI's ``code`` for the errors clients branch on.
OPENAI_CODES: dict[int, str] = {401: "invalid_api_key", 429: "rate_limit_exceeded"}


def dialect_of(path: str) -> Dialect:
    """The error dialect of a request path: OpenAI's under /v1/, TEI's elsewhere."""
    return Dialect.OPENAI if path.startswith("/v1/") else Dialect.TEI


def status_of(exc: BaseException) -> HttpStatus:
    """The table's row for ``exc`` (the most specific domain error class that has one)."""
    if isinstance(exc, errors.ServiceError):
        for kind in type(exc).__mro__:
            row = STATUS.get(kind)
            if row is not None:
                return row
    return INTERNAL


def error_body(exc: BaseException, dialect: Dialect) -> tuple[int, bytes]:
    """(HTTP status, JSON body) answering ``exc`` in ``dialect`` (log it with :func:`record`)."""
    row = status_of(exc)
    message = bounded(exc.message) if isinstance(exc, errors.ServiceError) else INTERNAL_MESSAGE
    if dialect is Dialect.OPENAI:
        status = row.openai
        param = (exc.field or None) if isinstance(exc, errors.ServiceError) else None
        body: dict[str, Any] = {
            "error": {
                "message": message,
                "type": row.openai_type,
                "param": param,
                "code": OPENAI_CODES.get(status),
            }
        }
    else:
        status = row.tei
        body = {"error": message, "error_type": row.tei_type}
    return status, orjson.dumps(body)


def record(route: str, status: int, exc: BaseException) -> None:
    """Log a failed request once per route and status per minute (server.call_log)."""
    fault = None if isinstance(exc, errors.ServiceError) else exc
    code = "INTERNAL" if fault is not None else f"HTTP {status}"
    FAILURES.record(route, code, str(exc) if fault is None else repr(exc), fault)
