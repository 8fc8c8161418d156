"""Domain errors: what went wrong, in the terms of the request, never of the transport.

Runtime modules raise these; the service edge maps them to statuses in one table
(:mod:`server.servicers._status` for gRPC). Messages are written for the person who sent the
request: they name the field and the limit, and never carry a stack trace.

    ServiceError
    ├── InvalidArgument      bad request: names the field (INVALID_ARGUMENT)
    │   ├── EmptyInput       an input or list of inputs that is empty (INVALID_ARGUMENT)
    │   └── TooLarge         over a size limit: characters, tokens with truncate=false, items
    │                        per call, bytes of an HTTP body (INVALID_ARGUMENT; HTTP 413)
    ├── NotFound             unknown collection, document, bundle file (NOT_FOUND)
    ├── Overloaded           a queue or concurrency limit was hit (RESOURCE_EXHAUSTED)
    ├── StorageFull          the data directory's disk is full (RESOURCE_EXHAUSTED)
    ├── NotReady             warming up, draining, a worker is restarting (UNAVAILABLE)
    ├── PreconditionFailed   state forbids it: model/fingerprint mismatch (FAILED_PRECONDITION)
    ├── Unauthenticated      missing or wrong bearer token (UNAUTHENTICATED)
    └── WorkerFailed         the encoder process died or hung on this item (UNAVAILABLE: retry)
"""

from __future__ import annotations

INTERNAL_MESSAGE = "internal error (logged on the server)"  # what a client sees of our own faults
# A message may quote fields of the request; it travels in a gRPC trailer (gRPC's default header
# limit is 8 KiB, shared; bytes outside printable ASCII are percent-encoded there, 3 characters
# each) or an HTTP error body: it is cut to this many UTF-8 bytes.
MAX_MESSAGE_BYTES = 1000


def bounded(message: str) -> str:
    """``message`` cut to :data:`MAX_MESSAGE_BYTES` UTF-8 bytes (an ellipsis marks the cut)."""
    data = message.encode("utf-8")
    if len(data) <= MAX_MESSAGE_BYTES:
        return message
    return data[: MAX_MESSAGE_BYTES - 3].decode("utf-8", errors="ignore") + "\u2026"  # ... is 3 bytes


class ServiceError(Exception):
    """Base of every error the service reports to a client."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidArgument(ServiceError):
    """The request is malformed or outside a documented limit."""


class EmptyInput(InvalidArgument):
    """An input, or the list of inputs, is empty (TEI's HTTP API answers 400 for it, other
    validation errors 413 or 422)."""


class TooLarge(InvalidArgument):
    """The request is over a size limit (an input's characters or tokens, the number of inputs,
    an HTTP body's bytes); a smaller request can succeed."""


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
