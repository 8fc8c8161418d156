"""The one request path of every service: registration, parsing, the start-up gate, errors.

Every service (EmbeddingService, CollectionService, EdgeService and tei.v1's) is registered
here from its descriptor, never with the generated ``add_*_to_server``:
- a request that is not valid protobuf (invalid UTF-8 in a string field, e.g. a lone surrogate
  from a raw client) does not make gRPC answer INTERNAL or UNKNOWN: it becomes an
  :class:`UnparsedRequest` naming the field (:mod:`server.servicers._wire`), which the servicer
  answers with INVALID_ARGUMENT, or in-band on a stream that goes on;
- until the runtime is installed (start-up), every call answers UNAVAILABLE naming the phase;
- errors end a call with the status of the one table in :mod:`server.servicers._status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from server.call_log import FAILURES
from server.errors import InvalidArgument, NotReady, ServiceError
from server.servicers._status import status_for
from server.servicers._wire import find_fault
from server.validation import MAX_METADATA_DEPTH

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# The method being served, for the log line of a failed call (set per call: each call runs in
# its own task, and tasks a call starts copy it).
_method: contextvars.ContextVar[str] = contextvars.ContextVar("method", default="?")


@dataclass(frozen=True)
class UnparsedRequest:
    """Stands in for a request message that is not valid protobuf.

    ``partial`` is the message parsed with the offending string fields left out (None when even
    that fails), so a stream can still name the item (its id) in its in-band error.
    """

    field: str  # path of the first invalid field ("inputs[2]", "metadata.fields[k]"), or ""
    reason: str  # the message type, when the bytes are not its wire format at all
    partial: Any = None
    too_deep: str = ""  # a top-level field nesting messages deeper than protobuf reads
    broken: str = ""  # a top-level message field whose bytes are not its type ...
    broken_type: str = ""  # ... which is this

    def error(self) -> InvalidArgument:
        if self.field:
            return InvalidArgument(
                f"{self.field} is not valid UTF-8 (string fields must be UTF-8, with no lone surrogates)",
                field=self.field,
            )
        if self.too_deep:
            return InvalidArgument(
                f"{self.too_deep} is nested too deeply for protobuf to read (metadata may nest at "
                f"most {MAX_METADATA_DEPTH} levels)",
                field=self.too_deep,
            )
        if self.broken:
            return InvalidArgument(
                f"{self.broken} is not a valid {self.broken_type} message (protobuf wire format)",
                field=self.broken,
            )
        # protobuf's own text is not passed on: it names internals, not the request's fields.
        return InvalidArgument(
            f"the request is not a valid {self.reason} message (protobuf wire format)", field="request"
        )


def _parser(cls: type[Message], descriptor: Descriptor) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except (DecodeError, UnicodeDecodeError, ValueError, RuntimeError):
            fault = find_fault(descriptor, data)
            partial = None
            if fault.cleaned is not None:
                with contextlib.suppress(DecodeError, UnicodeDecodeError, ValueError, RuntimeError):
                    partial = cls.FromString(fault.cleaned)
            name = str(descriptor.full_name)
            return UnparsedRequest(
                fault.field, name, partial, fault.too_deep, fault.broken, fault.broken_type
            )

    return parse


class ServiceTable:
    """The servicers by full service name; empty (the gate closed) until :meth:`install`."""

    def __init__(self) -> None:
        self._servicers: Mapping[str, object] = {}
        self.phase = "starting"

    def install(self, servicers: Mapping[str, object]) -> None:
        self._servicers = dict(servicers)

    def lookup(self, service: str) -> object:
        servicer = self._servicers.get(service)
        if servicer is None:
            raise NotReady(f"the server is starting ({self.phase}); retry when health reports SERVING")
        return servicer


def register(server: grpc.aio.Server, service: ServiceDescriptor, table: ServiceTable) -> str:
    """Add handlers for every method of ``service``; each looks its servicer up in ``table``
    (method named as in the proto) at call time. Returns the service's full name."""
    handlers = {}
    name = str(service.full_name)
    for method in service.methods:
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        behavior = (
            _unary(table, name, method.name)
            if not method.server_streaming
            else _streaming(table, name, method.name)
        )
        kind = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = kind(
            behavior,
            request_deserializer=_parser(request_cls, method.input_type),
            response_serializer=response_cls.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    return name


def _unary(table: ServiceTable, service: str, method: str) -> Callable[..., Any]:
    async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
        _method.set(f"/{service}/{method}")
        try:
            handler = getattr(table.lookup(service), method)
        except ServiceError as exc:
            await abort(context, exc)
        return await handler(request, context)

    return behavior


def _streaming(table: ServiceTable, service: str, method: str) -> Callable[..., Any]:
    async def behavior(request: Any, context: grpc.aio.ServicerContext) -> None:
        _method.set(f"/{service}/{method}")
        try:
            handler = getattr(table.lookup(service), method)
        except ServiceError as exc:
            await abort(context, exc)
        responses: AsyncIterator[Any] = handler(request, context)
        try:
            async for response in responses:
                # Written here rather than yielded to gRPC: when the client cancels or goes away
                # while a message is being sent, core rejects the write (ExecuteBatchError, a
                # grpc.aio.InternalError). Raised from a generator gRPC logs it as an ERROR with a
                # traceback (grpc/grpc#32551); nobody is left to answer, so the call just ends.
                try:
                    await context.write(response)
                except grpc.aio.InternalError as exc:
                    log.debug("/%s/%s: the client left mid-stream (%s)", service, method, exc)
                    return
        finally:
            aclose = getattr(responses, "aclose", None)
            if aclose is not None:
                await aclose()

    return behavior


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """End the call with the status of ``exc`` (the one table in server.servicers._status).
    Logged in one line, rate-limited per method and status (server.call_log); our own faults
    (not a ServiceError: INTERNAL) with their traceback."""
    code, message = status_for(exc)
    fault = None if isinstance(exc, ServiceError) else exc
    FAILURES.record(_method.get(), code.name, message if fault is None else repr(exc), fault)
    await context.abort(code, message)


class ByteBudget:
    """At most ``limit`` bytes held at once; one item larger than the limit is let in alone
    (it has already arrived: the bound is on what is read after it)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._changed = asyncio.Condition()

    async def acquire(self, size: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.held == 0 or self.held + size <= self.limit)
            self.held += size

    async def release(self, size: int) -> None:
        async with self._changed:
            self.held -= size
            self._changed.notify_all()


def request_bytes(request: Any) -> int:
    """A received request's size on the wire (its parsed part for an UnparsedRequest)."""
    message = request.partial if isinstance(request, UnparsedRequest) else request
    size = getattr(message, "ByteSize", None)
    return int(size()) if callable(size) else 0


async def ordered_pipeline(
    requests: AsyncIterator[T],
    handle: Callable[[T], Coroutine[Any, Any, R]],
    max_in_flight: int,
    *,
    max_bytes: int = 0,
    size: Callable[[T], int] = request_bytes,
) -> AsyncIterator[R]:
    """Run ``handle`` on each request concurrently (at most ``max_in_flight`` at once, and at
    most ``max_bytes`` of requests by ``size`` when > 0) and yield results in request order.
    While the window is full the reader stops reading, so gRPC flow control blocks the client's
    send and memory stays bounded (256 items of 10 MB would be 2.5 GB without the byte bound). If
    ``handle`` raises, the exception propagates (after cancelling the rest); callers that want
    in-band errors catch inside it.
    """
    slots = asyncio.Semaphore(max_in_flight)
    budget = ByteBudget(max_bytes) if max_bytes > 0 else None
    pending: asyncio.Queue[tuple[asyncio.Task[R], int] | None] = asyncio.Queue()

    async def read() -> None:
        try:
            async for request in requests:
                await slots.acquire()
                cost = size(request) if budget else 0
                if budget:
                    await budget.acquire(cost)
                pending.put_nowait((asyncio.create_task(handle(request)), cost))
                del request  # held by the task only: released with it
        finally:
            pending.put_nowait(None)

    reader = asyncio.create_task(read())
    try:
        while True:
            entry = await pending.get()
            if entry is None:
                break
            task, cost = entry
            try:
                result = await task
            finally:
                slots.release()
                if budget:
                    await budget.release(cost)
            del task  # the request it held goes now, not after the next item
            yield result
        await reader  # surface a read error (the client's stream broke)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        while not pending.empty():
            leftover = pending.get_nowait()
            if leftover is not None:
                leftover[0].cancel()
