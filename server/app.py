"""Builds the grpc.aio server: services, health, reflection; runs it until SIGTERM.

Lifecycle (grpc.health.v1): every service starts NOT_SERVING; once the embedder has warmed up
they flip to SERVING; on SIGTERM they go NOT_SERVING, the server stops accepting calls, drains
in-flight ones for ``grace_seconds`` and the process exits 0.

Each service module under ``server/servicers/`` exposes ``attach(server, runtime) -> list[str]``
(it registers its servicer and returns the full service names it serves), so adding a service
never means editing another one.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
import numpy as np

# onnxruntime must be loaded before usearch: the other order segfaults the process (usearch
# 2.26 + onnxruntime 1.32). The store imports usearch; the edge bundle and ONNX backend use ORT.
import onnxruntime  # noqa: F401
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.embedder import Embedder, Priority
from server.model import ModelSpec, load_spec
from server.settings import Settings

log = logging.getLogger(__name__)

SERVICE_MODULES = (
    "server.servicers.embedding",
    "server.servicers.tei",
    "server.servicers.collections",
    "server.servicers.edge",
)


class EdgeProjection(Protocol):
    """How full-dimension store vectors become edge vectors (rotation, then truncation).

    Implemented with the edge bundle (issue 5); SyncVectors applies it so that synced vectors
    match what the edge's own ONNX encoder produces.
    """

    fingerprint: str  # the edge bundle's fingerprint; clients must present the same one
    default_dims: int
    max_dims: int  # widest edge vector the bundle's projection produces

    def project(self, vectors: np.ndarray, dims: int) -> np.ndarray:
        """(n, full dims) float32 -> (n, dims) float32, renormalized."""
        ...


@dataclass
class Runtime:
    """What the services of one server process share. Built once, after any fork."""

    settings: Settings
    spec: ModelSpec
    embedder: Embedder
    health: health.aio.HealthServicer
    service_names: list[str] = field(default_factory=list)  # full names, for health
    store: Any = None  # the LMDB store, opened by the collections service (issue 4)
    edge_projection: EdgeProjection | None = None  # set by the edge service (issue 5)
    calibration: Any = None  # server.calibration.Calibration: int8 ranges, loaded at warm-up
    # Called in reverse order on shutdown (close the store after the services stop).
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def _server_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]


def create_embedder(settings: Settings, spec: ModelSpec) -> Embedder:
    """The encoder pool (worker processes), behind the query-embedding LRU.

    The workers start in :func:`warm_up`, so building the server stays fast and health can
    report NOT_SERVING while they load.
    """
    from server.pool import PoolEmbedder
    from server.query_cache import CachedEmbedder

    return CachedEmbedder(PoolEmbedder(settings, spec), settings.query_cache_size)


def _interceptors(settings: Settings) -> list[grpc.aio.ServerInterceptor]:
    from server.auth import BearerAuthInterceptor
    from server.metrics import MetricsInterceptor

    interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor()]
    if settings.auth_token:  # after metrics, so rejected calls are counted too
        interceptors.append(BearerAuthInterceptor(settings.auth_token))
    return interceptors


def _bind(server: grpc.aio.Server, settings: Settings) -> int:
    address = f"{settings.host}:{settings.port}"
    if settings.tls_cert:
        key = Path(settings.tls_key).read_bytes()
        cert = Path(settings.tls_cert).read_bytes()
        return int(server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)])))
    return int(server.add_insecure_port(address))


async def build_server(
    settings: Settings, *, embedder: Embedder | None = None
) -> tuple[grpc.aio.Server, int, Runtime]:
    """Create and start the server on ``settings.host:port``; returns (server, bound port, runtime).

    Health reports NOT_SERVING until :func:`mark_serving`.
    """
    spec = load_spec(settings.model)
    server = grpc.aio.server(options=_server_options(settings), interceptors=_interceptors(settings))
    runtime = Runtime(
        settings=settings,
        spec=spec,
        embedder=embedder or create_embedder(settings, spec),
        health=health.aio.HealthServicer(),
    )
    for module_name in SERVICE_MODULES:
        module = importlib.import_module(module_name)
        runtime.service_names.extend(await module.attach(server, runtime))
    names = runtime.service_names
    health_pb2_grpc.add_HealthServicer_to_server(runtime.health, server)
    for name in ("", *names):
        await runtime.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = _bind(server, settings)
    if port == 0:
        raise OSError(f"could not bind {settings.host}:{settings.port}")
    close = getattr(runtime.embedder, "close", None)
    if close is not None:  # first added, so closed last: the services drain before the pool stops
        runtime.closers.insert(0, close)
    if settings.metrics_port:
        from server.metrics import start_metrics_server

        start_metrics_server(settings.metrics_port, settings.host)
    await server.start()
    log.info("listening on %s:%d (model %s)", settings.host, port, spec.fingerprint)
    return server, port, runtime


async def set_serving(runtime: Runtime, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *runtime.service_names):
        await runtime.health.set(name, status)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then drain and return."""
    server, _port, runtime = await build_server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await warm_up(runtime)
    await set_serving(runtime, True)
    log.info("serving")
    await stop.wait()
    log.info("draining (up to %.0fs)", settings.grace_seconds)
    await set_serving(runtime, False)
    await server.stop(settings.grace_seconds)
    for close in reversed(runtime.closers):
        await close()
    log.info("stopped")


async def warm_up(runtime: Runtime) -> None:
    """Start the encoder workers (each loads and warms up the model), load the int8 calibration
    (computed once per model and stored), then one real encode through the whole path."""
    from server.calibration import Calibration, sample_path

    start = getattr(runtime.embedder, "start", None)
    if start is not None:
        await start()

    async def encode(texts: list[str]) -> np.ndarray:
        return (await runtime.embedder.encode(texts, priority=Priority.BULK)).vectors

    runtime.calibration = await Calibration.load_or_create(
        sample_path(runtime.settings.data_dir, runtime.spec.fingerprint), encode
    )
    await runtime.embedder.encode(["warm up"], priority=Priority.BULK)
