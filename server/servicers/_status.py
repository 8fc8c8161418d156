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

INTERNAL_MESSAGE = errors.INTERNAL_MESSAGE
MAX_MESSAGE_BYTES = errors.MAX_MESSAGE_BYTES


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and client-facing message for any exception raised while serving a call."""
    if isinstance(exc, errors.ServiceError):
        for kind in type(exc).__mro__:
            code = STATUS.get(kind)
            if code is not None:
                return code, errors.bounded(exc.message)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
