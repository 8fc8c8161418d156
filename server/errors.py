"""Domain errors, and the one table that maps them to gRPC status codes.

Runtime modules raise these; only the servicers (the service edge) turn them into statuses,
through :func:`status_for`. Messages are written for the person who sent the request: they
name the field and the limit, and never carry a stack trace.

    ServiceError
    ├── InvalidArgument      bad request: names the field (INVALID_ARGUMENT)
    ├── NotFound             unknown collection, document, bundle file (NOT_FOUND)
    ├── Overloaded           a queue or concurrency limit was hit (RESOURCE_EXHAUSTED)
    ├── NotReady             warming up, draining, a worker is restarting (UNAVAILABLE)
    ├── PreconditionFailed   state forbids it: model/fingerprint mismatch (FAILED_PRECONDITION)
    ├── Unauthenticated      missing or wrong bearer token (UNAUTHENTICATED)
    └── WorkerFailed         the encoder process died or hung on this item (UNAVAILABLE: retry)
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """Base of every error the service reports to a client."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class Overloaded(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotReady(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class PreconditionFailed(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class WorkerFailed(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and client-facing message for any exception raised while serving a call.

    Anything that is not a ServiceError is our bug, not the client's: INTERNAL with a generic
    message (the details go to the server log, not over the wire).
    """
    if isinstance(exc, ServiceError):
        return exc.code, exc.message
    return grpc.StatusCode.INTERNAL, "internal error (logged on the server)"
