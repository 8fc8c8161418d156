"""Start the real server as a subprocess on a free port and wait until health says SERVING."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    address: str
    data_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def wait_serving(address: str, process: subprocess.Popen[bytes], timeout: float = 180) -> None:
    """Block on the health Watch stream (no polling, no sleep) until SERVING or the process dies."""
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        stub = health_pb2_grpc.HealthStub(channel)
        for reply in stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=timeout):
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
            if process.poll() is not None:
                break
    raise RuntimeError(f"server at {address} never became SERVING")


@contextmanager
def running_server(
    data_dir: Path, *extra_args: str, env: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    """``embed-server serve`` on a free port with its store in ``data_dir``."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"server-{port}.log"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                *extra_args,
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    server = ServerProcess(process, f"127.0.0.1:{port}", data_dir, log_path)
    try:
        try:
            wait_serving(server.address, process)
        except Exception as exc:
            process.kill()
            process.wait()
            raise RuntimeError(f"server failed to start:\n{server.log()[-4000:]}") from exc
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
