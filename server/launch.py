"""Run ``embed-server serve`` as a child process and wait until health says SERVING.

One implementation for everything that starts a server as a subprocess: the demo command, the
benchmarks and the test harness. Waiting blocks on the grpc.health.v1 Watch stream, so there
is no polling and no sleep.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from embedcore.transport import ClientCredentials


def free_port() -> int:
    """A port that was free a moment ago on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_command(port: int, data_dir: Path, *extra: str, host: str = "127.0.0.1") -> list[str]:
    """The argv of ``embed-server serve`` with this interpreter (works without the console script)."""
    return [sys.executable, "-m", "server", "serve", "--host", host, "--port", str(port),
            "--data-dir", str(data_dir), *extra]  # fmt: skip


def wait_serving(
    address: str,
    process: subprocess.Popen[bytes],
    timeout: float,
    credentials: ClientCredentials | None = None,
) -> None:
    """Block until the server at ``address`` reports SERVING; RuntimeError if it exits first.
    ``credentials``: TLS for a server started with ``--tls-cert`` (health needs no token)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from embedcore.transport import ClientCredentials, open_channel

    with open_channel(address, credentials or ClientCredentials()) as channel:
        # Wait for the port in short steps, so a server that exits at start-up (a start-up
        # error: port in use, store locked) is noticed at once instead of after ``timeout``.
        ready = grpc.channel_ready_future(channel)
        deadline = time.monotonic() + timeout
        while True:
            try:
                ready.result(timeout=1.0)
                break
            except grpc.FutureTimeoutError:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"the server at {address} exited (code {process.returncode}) before serving"
                    ) from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no server answered at {address} within {timeout:.0f} s") from None
        request = health_pb2.HealthCheckRequest(service="")
        for reply in health_pb2_grpc.HealthStub(channel).Watch(request, timeout=timeout):
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
            if process.poll() is not None:
                break
    raise RuntimeError(f"the server at {address} stopped before it was serving")
