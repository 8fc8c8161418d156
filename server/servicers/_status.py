"""The one table from domain errors (server.errors) to gRPC status codes, and the message sent.

Anything that is not a :class:`~server.errors.ServiceError` is our bug, not the client's:
INTERNAL with a generic message; the traceback goes to the server log, never over the wire.
"""

from __future__ import annotations

import grpc

from server import errors

STATUS: dict[type[errors.ServiceError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.StorageFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.NotReady: grpc.StatusCode.UNAVAILABLE,
    errors.PreconditionFailed: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.WorkerFailed: grpc.StatusCode.UNAVAILABLE,
}

INTERNAL_MESSAGE = "internal error (logged on the server)"
# A status message travels in a trailer (gRPC's default header limit is 8 KiB, shared; bytes
# outside printable ASCII are percent-encoded there, 3 characters each), and a message may quote
# fields of the request: it is cut to this many UTF-8 bytes.
MAX_MESSAGE_BYTES = 1000


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and client-facing message for any exception raised while serving a call."""
    if isinstance(exc, errors.ServiceError):
        for kind in type(exc).__mro__:
            code = STATUS.get(kind)
            if code is not None:
                return code, _bounded(exc.message)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def _bounded(message: str) -> str:
    data = message.encode("utf-8")
    if len(data) <= MAX_MESSAGE_BYTES:
        return message
    return data[: MAX_MESSAGE_BYTES - 3].decode("utf-8", errors="ignore") + "\u2026"  # ... is 3 bytes
