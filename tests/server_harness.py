"""Start the real server as a subprocess on a free port and wait until health says SERVING.

Servers start with one eager worker (``--workers 1 --compile off``): torch.compile and a second
worker cost tens of seconds per start on a 2-core machine and only matter to the tests that are
about them, which opt in by passing their own ``--workers`` / ``--compile`` (the last flag wins).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from embedcore.transport import ClientCredentials
from server.launch import free_port, serve_command, wait_serving

__all__ = ["FAST_START", "ServerProcess", "free_port", "running_server", "running_servers", "wait_serving"]

FAST_START = ("--workers", "1", "--compile", "off")


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    address: str
    data_dir: Path
    log_path: Path
    metrics_port: int = 0  # set by callers that pass --metrics-port

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


@contextmanager
def running_server(
    data_dir: Path,
    *extra_args: str,
    env: dict[str, str] | None = None,
    credentials: ClientCredentials | None = None,
) -> Iterator[ServerProcess]:
    """``embed-server serve`` on a free port with its store in ``data_dir``; ``extra_args`` come
    after :data:`FAST_START`, so a test about workers or compile overrides it; ``credentials``
    to reach a server started with TLS."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"server-{port}.log"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            serve_command(port, data_dir, *FAST_START, *extra_args),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    server = ServerProcess(process, f"127.0.0.1:{port}", data_dir, log_path)
    try:
        try:
            wait_serving(server.address, process, timeout=300, credentials=credentials)
        except Exception as exc:
            process.kill()
            process.wait()
            raise RuntimeError(f"server failed to start:\n{server.log()[-4000:]}") from exc
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@contextmanager
def running_servers(data_dirs: list[Path], *extra_args: str) -> Iterator[list[ServerProcess]]:
    """Several ``embed-server serve`` processes started at once (their model loads overlap),
    each on a free port with its own store; yields them once every one is SERVING."""
    servers: list[ServerProcess] = []
    with ExitStack() as stack:
        for data_dir in data_dirs:
            port = free_port()
            data_dir.mkdir(parents=True, exist_ok=True)
            log_path = data_dir.parent / f"server-{port}.log"
            with log_path.open("wb") as log_file:
                process = subprocess.Popen(
                    serve_command(port, data_dir, *FAST_START, *extra_args),
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "HF_HUB_OFFLINE": "1"},
                )
            server = ServerProcess(process, f"127.0.0.1:{port}", data_dir, log_path)
            servers.append(server)
            stack.callback(_kill, process)
        for server in servers:
            try:
                wait_serving(server.address, server.process, timeout=300)
            except Exception as exc:
                raise RuntimeError(
                    f"server {server.address} failed to start:\n{server.log()[-4000:]}"
                ) from exc
        yield servers


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()
