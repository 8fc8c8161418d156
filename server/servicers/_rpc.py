"""Helpers shared by the compute servicers: registration with a forgiving request parser,
error-to-status mapping at the edge, and the ordered, bounded stream pipeline.

Why register by hand instead of the generated ``add_*_to_server``: a request that is not valid
protobuf (invalid UTF-8 in a string field, e.g. a lone surrogate from a raw client) makes the
generated deserializer raise, which gRPC reports as INTERNAL. Here it becomes a
:class:`BadRequest` value that the servicer answers with INVALID_ARGUMENT (or an in-band
ItemError on a stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError

from server.errors import InvalidArgument, ServiceError, status_for

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class BadRequest:
    """Stands in for a request message that could not be parsed."""

    reason: str

    def error(self) -> InvalidArgument:
        return InvalidArgument(
            f"request is not a valid protobuf message ({self.reason}); string fields must be valid "
            "UTF-8 (no lone surrogates)",
            field="request",
        )


def _safe_parser(cls: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except (DecodeError, UnicodeDecodeError, ValueError) as exc:
            return BadRequest(str(exc)[:200] or type(exc).__name__)

    return parse


def register(server: grpc.aio.Server, service: ServiceDescriptor, servicer: object) -> str:
    """Add ``servicer``'s methods (named as in the proto) for ``service``; returns its full name."""
    handlers = {}
    for method in service.methods:
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        kind = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = kind(
            getattr(servicer, method.name),
            request_deserializer=_safe_parser(request_cls),
            response_serializer=response_cls.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    return str(service.full_name)


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """End the call with the status of ``exc`` (the one mapping table in server.errors)."""
    code, message = status_for(exc)
    if not isinstance(exc, ServiceError):
        log.exception("internal error serving a call", exc_info=exc)
    await context.abort(code, message)


def check_text(text: str, field: str) -> None:
    """Inputs must be non-empty and free of NUL characters (they are almost always a client bug:
    C strings, binary data sent as text)."""
    if not text:
        raise InvalidArgument(f"{field} is empty; send at least one character", field=field)
    if "\x00" in text:
        raise InvalidArgument(
            f"{field} contains a NUL character (U+0000), which is not accepted", field=field
        )


async def ordered_pipeline(
    requests: AsyncIterator[T],
    handle: Callable[[T], Coroutine[Any, Any, R]],
    max_in_flight: int,
) -> AsyncIterator[R]:
    """Run ``handle`` on each request concurrently (at most ``max_in_flight`` at once) and yield
    results in request order. While the window is full the reader stops reading, so gRPC flow
    control blocks the client's send and memory stays flat. If ``handle`` raises, the exception
    propagates (after cancelling the rest); callers that want in-band errors catch inside it.
    """
    slots = asyncio.Semaphore(max_in_flight)
    pending: asyncio.Queue[asyncio.Task[R] | None] = asyncio.Queue()

    async def read() -> None:
        try:
            async for request in requests:
                await slots.acquire()
                pending.put_nowait(asyncio.create_task(handle(request)))
        finally:
            pending.put_nowait(None)

    reader = asyncio.create_task(read())
    try:
        while True:
            task = await pending.get()
            if task is None:
                break
            try:
                result = await task
            finally:
                slots.release()
            yield result
        await reader  # surface a read error (the client's stream broke)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        while not pending.empty():
            leftover = pending.get_nowait()
            if leftover is not None:
                leftover.cancel()
