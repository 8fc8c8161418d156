"""The composition root: builds the gRPC server and the runtime (server.runtime), and runs them.

Start-up order (grpc.health.v1 is the lifecycle):
1. build the grpc.aio server, register every service (each call answers UNAVAILABLE "starting"
   until the runtime is installed), health (NOT_SERVING), reflection; bind the port and start;
   from here on a probe gets NOT_SERVING, never a refused connection; with --http-port, the
   HTTP API (server.http, same event loop) is bound just before, answering 503 the same way;
2. open the store and catch the indexes up, start and warm the encoder workers, load the int8
   calibration, load or build the edge bundle (off the event loop);
3. install the servicers (and the HTTP routes' runtime) and report SERVING.
On SIGTERM: NOT_SERVING, the servers stop accepting calls, in-flight calls drain for
``grace_seconds``, then background tasks stop, indexes are saved, the store and the pool close,
and the process exits 0 (1 when the final index save could not be written).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

# onnxruntime must be loaded before usearch: the other order segfaults the process (usearch
# 2.26 + onnxruntime 1.32). The store imports usearch; the edge bundle and ONNX backend use ORT.
import onnxruntime  # noqa: F401
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.embedder import Embedder
from server.model import load_spec
from server.preflight import StartupError, check_ports, check_store, check_tls, read_file
from server.runtime import Runtime, build_runtime, create_embedder
from server.servicers import NEVER_SERVING, SERVICES, ServiceTable, register, servicers_for
from server.settings import Settings

if TYPE_CHECKING:
    from server.http import HttpServer

log = logging.getLogger(__name__)


# --- the gRPC server ---------------------------------------------------------------------------


@dataclass
class GrpcServer:
    """The bound, started gRPC server; its services answer once :meth:`install` ran."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    services: ServiceTable
    service_names: list[str]

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            serving = status if name not in NEVER_SERVING else health_pb2.HealthCheckResponse.NOT_SERVING
            await self.health.set(name, serving)

    def install(self, runtime: Runtime) -> None:
        self.services.install(servicers_for(runtime))


def _server_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_receive_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]


def _interceptors(settings: Settings) -> list[grpc.aio.ServerInterceptor]:
    from server.auth import BearerAuthInterceptor
    from server.metrics import MetricsInterceptor

    interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor()]
    if settings.auth_token:  # after metrics, so rejected calls are counted too
        interceptors.append(BearerAuthInterceptor(settings.auth_token))
    return interceptors


def _bind(server: grpc.aio.Server, settings: Settings) -> int:
    """Add the listening port (TLS with --tls-cert; client certificates required with
    --tls-client-ca). StartupError when it cannot be bound."""
    address = f"{settings.host}:{settings.port}"
    try:
        if settings.tls_cert:
            key = read_file("--tls-key", settings.tls_key)
            cert = read_file("--tls-cert", settings.tls_cert)
            client_ca = (
                read_file("--tls-client-ca", settings.tls_client_ca) if settings.tls_client_ca else None
            )
            credentials = grpc.ssl_server_credentials(
                [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
            )
            port = int(server.add_secure_port(address, credentials))
        else:
            port = int(server.add_insecure_port(address))
    except RuntimeError as exc:  # gRPC: "Failed to bind to address ..."
        raise StartupError(f"cannot listen on {address}: {exc}") from None
    if port == 0:
        raise StartupError(f"cannot listen on {address}")
    return port


async def start_grpc(settings: Settings) -> GrpcServer:
    """Register every service (gated until :meth:`GrpcServer.install`), health NOT_SERVING and
    reflection; bind ``settings.host:port`` and start. StartupError if it cannot be bound."""
    server = grpc.aio.server(options=_server_options(settings), interceptors=_interceptors(settings))
    services = ServiceTable()
    names = [register(server, descriptor, services) for descriptor in SERVICES]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = _bind(server, settings)
    grpc_server = GrpcServer(server, port, health_servicer, services, names)
    await grpc_server.set_serving(False)
    await server.start()
    return grpc_server


async def serve(settings: Settings, *, embedder: Embedder | None = None) -> bool:
    """Run until SIGTERM/SIGINT, then drain and return (see the module docstring): True, or
    False when the final index save could not be written (logged; exit code 1).
    StartupError (one line) for a configuration that cannot start: checked before binding."""
    spec = load_spec(settings.model)
    check_tls(settings)
    await asyncio.to_thread(check_store, settings)
    check_ports(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    http_server: HttpServer | None = None
    if settings.http_port:  # first: once gRPC answers, so does HTTP (both 503/NOT_SERVING)
        from server.http import start_http  # FastAPI and uvicorn only when the HTTP API is on

        http_server = await start_http(settings)
    try:
        grpc_server = await start_grpc(settings)
    except BaseException:
        if http_server is not None:
            await http_server.stop()
        raise
    log.info("listening on %s:%d (model %s); starting up", settings.host, grpc_server.port, spec.fingerprint)
    if settings.metrics_port:
        from server.metrics import start_metrics_server

        start_metrics_server(settings.metrics_port, settings.host)

    def phase(what: str) -> None:
        grpc_server.services.phase = what
        if http_server is not None:
            http_server.set_phase(what)
        log.info("start-up: %s", what)

    async def stop_servers(grace: float) -> None:
        if http_server is not None:
            await asyncio.gather(grpc_server.server.stop(grace), http_server.stop())
        else:
            await grpc_server.server.stop(grace)

    embedder = embedder or create_embedder(settings, spec)
    building = asyncio.create_task(build_runtime(settings, spec, embedder, phase))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({building, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not building.done():  # SIGTERM during start-up: give up starting
            log.info("stopping during start-up")
            building.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await building
            await embedder.close()
            await stop_servers(0)
            return True
        runtime = building.result()  # raises what start-up raised
    except BaseException:
        stopping.cancel()
        await embedder.close()
        await stop_servers(0)
        raise
    grpc_server.install(runtime)
    if http_server is not None:
        http_server.install(runtime)
        http_server.set_serving(True)
    await grpc_server.set_serving(True)
    log.info("serving")
    await stopping
    log.info("draining (up to %.0fs)", settings.grace_seconds)
    if http_server is not None:
        http_server.set_serving(False)
    await grpc_server.set_serving(False)
    try:
        await stop_servers(settings.grace_seconds)
    finally:  # the runtime is closed even if the drain fails
        saved = await runtime.close()
    log.info("stopped")
    return saved
