"""A server that cannot start says why in one line on stderr and exits 2 (server.preflight):
no traceback, no gRPC C-core log lines, nothing bound."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests._certs import self_signed
from tests.server_harness import ServerProcess


def _serve(*args: str) -> tuple[int, list[str]]:
    """``embed-server serve ARGS``: (exit code, the lines on stderr)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--workers", "1", "--compile", "off", *args],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    return result.returncode, result.stderr.strip().splitlines()


def _one_line(result: tuple[int, list[str]]) -> str:
    code, lines = result
    assert code == 2 and len(lines) == 1, result
    assert lines[0].startswith("embed-server serve: ")
    return lines[0]


def test_tls_files_that_cannot_work(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path, "a")
    _, other_key = self_signed(tmp_path, "b")
    data = ["--port", "0", "--data-dir", str(tmp_path / "data")]
    line = _one_line(_serve(*data, "--tls-cert", str(cert), "--tls-key", str(other_key)))
    assert f"--tls-key {other_key} is not the private key of the certificate in --tls-cert {cert}" in line
    missing = tmp_path / "missing.key"
    line = _one_line(_serve(*data, "--tls-cert", str(cert), "--tls-key", str(missing)))
    assert f"--tls-key {missing}: cannot read it (No such file or directory)" in line
    line = _one_line(_serve(*data, "--tls-cert", str(cert), "--tls-key", str(cert)))  # a cert, not a key
    assert f"--tls-cert {cert} / --tls-key {cert}: not a PEM certificate and its private key" in line
    line = _one_line(_serve(*data, "--auth-token-file", str(tmp_path / "no-token")))
    assert f"--auth-token-file {tmp_path / 'no-token'}: cannot read the token file" in line


def test_ports_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = ["--data-dir", str(tmp_path / "data")]
        line = _one_line(_serve("--port", str(port), *data))
        assert f"--port {port}: cannot listen on 127.0.0.1:{port} (Address already in use;" in line
        line = _one_line(_serve("--port", "0", "--metrics-port", str(port), *data))
        assert f"--metrics-port {port}: cannot listen on 127.0.0.1:{port}" in line


def test_a_data_dir_that_cannot_be_used(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    line = _one_line(_serve("--port", "0", "--data-dir", str(not_a_dir)))
    assert f"--data-dir {not_a_dir} is a file, not a directory" in line
    inside_a_file = not_a_dir / "data"
    line = _one_line(_serve("--port", "0", "--data-dir", str(inside_a_file)))
    assert f"--data-dir {inside_a_file}: cannot use" in line and "Not a directory" in line


def test_a_data_dir_another_server_holds_names_that_process(live_server: ServerProcess) -> None:
    line = _one_line(_serve("--port", "0", "--data-dir", str(live_server.data_dir)))
    store, pid = live_server.data_dir / "store", live_server.process.pid
    assert f"the store in {store} is in use by process {pid} " in line
    assert "(python -m server serve)" in line.replace(Path(sys.executable).name, "python")
