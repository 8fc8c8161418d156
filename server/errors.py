"""Domain errors: what went wrong, in the terms of the request, never of the transport.

Runtime modules raise these; the service edge maps them to statuses in one table
(:mod:`server.servicers._status` for gRPC). Messages are written for the person who sent the
request: they name the field and the limit, and never carry a stack trace.

    ServiceError
    ├── InvalidArgument      bad request: names the field (INVALID_ARGUMENT)
    ├── NotFound             unknown collection, document, bundle file (NOT_FOUND)
    ├── Overloaded           a queue or concurrency limit was hit (RESOURCE_EXHAUSTED)
    ├── StorageFull          the data directory's disk is full (RESOURCE_EXHAUSTED)
    ├── NotReady             warming up, draining, a worker is restarting (UNAVAILABLE)
    ├── PreconditionFailed   state forbids it: model/fingerprint mismatch (FAILED_PRECONDITION)
    ├── Unauthenticated      missing or wrong bearer token (UNAUTHENTICATED)
    └── WorkerFailed         the encoder process died or hung on this item (UNAVAILABLE: retry)
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service reports to a client."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidArgument(ServiceError):
    """The request is malformed or outside a documented limit."""


class NotFound(ServiceError):
    """The named collection, document or file does not exist."""


class Overloaded(ServiceError):
    """A queue or concurrency limit was hit; retrying later can succeed."""


class StorageFull(ServiceError):
    """The disk holding the data directory has no room left for this write."""


class NotReady(ServiceError):
    """The server is starting, draining, or a worker is restarting."""


class PreconditionFailed(ServiceError):
    """The server's state forbids the request (for example another model's collection)."""


class Unauthenticated(ServiceError):
    """Missing or wrong bearer token."""


class WorkerFailed(ServiceError):
    """The encoder process died or hung while holding this item; retrying can succeed."""
