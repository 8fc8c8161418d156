"""Run ``embed-server serve`` as a child process and wait until health says SERVING.

One implementation for everything that starts a server as a subprocess: the demo command, the
benchmarks and the test harness. Waiting blocks on the grpc.health.v1 Watch stream, so there
is no polling and no sleep.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    """A port that was free a moment ago on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_command(port: int, data_dir: Path, *extra: str, host: str = "127.0.0.1") -> list[str]:
    """The argv of ``embed-server serve`` with this interpreter (works without the console script)."""
    return [sys.executable, "-m", "server", "serve", "--host", host, "--port", str(port),
            "--data-dir", str(data_dir), *extra]  # fmt: skip


def wait_serving(address: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Block until the server at ``address`` reports SERVING; RuntimeError if it exits first."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        request = health_pb2.HealthCheckRequest(service="")
        for reply in health_pb2_grpc.HealthStub(channel).Watch(request, timeout=timeout):
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
            if process.poll() is not None:
                break
    raise RuntimeError(f"the server at {address} stopped before it was serving")
