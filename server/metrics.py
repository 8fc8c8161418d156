"""Prometheus metrics of the compute path and the RPC layer, and the optional /metrics endpoint.

Collectors live in the default registry; they are created once at import (prometheus_client's
model) and cost nothing until scraped. :class:`MetricsInterceptor` counts every RPC by method and
final status code and times it; the pool and the scheduler update the rest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

REQUESTS = Counter("embed_requests_total", "RPCs by method and final status code", ["method", "code"])
LATENCY = Histogram(
    "embed_request_seconds",
    "RPC wall time by method",
    ["method"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
QUEUE_DEPTH = Gauge("embed_queue_depth", "items waiting for an encoder worker")
QUEUE_WAITING = Gauge(
    "embed_queue_waiting", "items of streams and bulk work waiting for room in the full encoder queue"
)
BATCH_SIZE = Histogram(
    "embed_batch_size", "inputs per model batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
)
BATCH_TOKENS = Histogram(
    "embed_batch_tokens",
    "padded tokens per model batch",
    buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536),
)
ITEMS = Counter("embed_items_total", "inputs embedded by the workers, by priority", ["priority"])
LANE_ITEMS = Counter("embed_lane_items_total", "inputs embedded by the interactive lane (server.pool.lane)")
CACHE_HITS = Counter("embed_query_cache_hits_total", "query-embedding cache hits")
CACHE_MISSES = Counter("embed_query_cache_misses_total", "query-embedding cache misses")
WORKERS_READY = Gauge("embed_workers_ready", "encoder workers loaded and serving")
WORKER_RESTARTS = Counter("embed_worker_restarts_total", "encoder worker (re)starts after a failure")
INGEST_CHUNKS = Counter(
    "embed_ingest_chunks_total",
    "chunks of ingested documents (a document embedded whole is one), by whether their vector was "
    "computed (embedded) or already stored (cached)",
    ["result"],
)
CUT_DOCUMENTS = Counter(
    "embed_ingest_cut_documents_total",
    "chunked documents longer than --chunk-max-chars: their tail is stored but not embedded",
)
CHUNKED_DOCUMENTS = Counter(
    "embed_ingest_chunked_documents_total",
    "ingested documents longer than the model reads, stored as several chunks",
)


def start_metrics_server(port: int, host: str) -> None:
    """Serve /metrics over HTTP on ``host:port`` (a daemon thread of prometheus_client)."""
    start_http_server(port, addr=host)
    log.info("metrics on http://%s:%d/metrics", host, port)


def _code_name(context: Any, exc: BaseException | None) -> str:
    code = context.code() if hasattr(context, "code") else None
    if code is None:
        if exc is None:
            return "OK"
        return (
            "CANCELLED"
            if isinstance(exc, BaseException) and type(exc).__name__ == "CancelledError"
            else "UNKNOWN"
        )
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    return str(code)


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts and times every RPC (health and reflection included: they are cheap)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(method, handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(method, handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _record(method: str, context: Any, exc: BaseException | None, start: float) -> None:
    """Count one finished call by method and status code, and observe its latency."""
    REQUESTS.labels(method, _code_name(context, exc)).inc()
    LATENCY.labels(method).observe(time.perf_counter() - start)


def _wrap_unary(method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def wrapped(request: Any, context: Any) -> Any:
        start = time.perf_counter()
        exc: BaseException | None = None
        try:
            return await behavior(request, context)
        except BaseException as err:
            exc = err
            raise
        finally:
            _record(method, context, exc, start)

    return wrapped


def _wrap_stream(method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def wrapped(request: Any, context: Any) -> AsyncIterator[Any]:
        start = time.perf_counter()
        exc: BaseException | None = None
        try:
            result = behavior(request, context)
            if hasattr(result, "__aiter__"):
                async for response in result:
                    yield response
            else:  # a handler that writes with context.write and returns a coroutine
                await result
        except BaseException as err:
            exc = err
            raise
        finally:
            _record(method, context, exc, start)

    return wrapped


MIGRATION_DOCUMENTS = Gauge(
    "embed_migration_documents",
    "documents of a collection's migration to another model: total (when its pass began), done "
    "(settled), embedded (new vectors computed)",
    ["collection", "kind"],
)
