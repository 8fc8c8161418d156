"""Session-wide fixtures. The real model is loaded at most once per test session."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnxruntime  # noqa: F401  (before usearch, or the process segfaults; see server/app.py)
import pytest

# Model hubs are unreachable here; make every hub lookup fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Every server a test starts (the harness, and the commands that start one: demo, export-edge,
# reembed) runs one eager worker: torch.compile and a second worker cost tens of seconds per
# start on a 2-core machine. The tests about compile and workers pass their own flags.
os.environ.setdefault("EMBED_WORKERS", "1")
os.environ.setdefault("EMBED_COMPILE", "off")


def _onnx_cache() -> str:
    """Where this session's servers and fixtures keep exported ONNX graphs. server/onnx_export.py
    keys each export by the model fingerprint and a hash of its own source, so a change to the
    exporter is exported afresh; the versions of the libraries that shape the graph key this
    directory. Reused across sessions: an export costs a minute or more here, and
    tests/test_startup_health.py still exports from scratch every session (through a server)."""
    from importlib.metadata import version

    libraries = "-".join(version(name) for name in ("torch", "transformers", "onnx", "onnxruntime"))
    return str(Path(tempfile.gettempdir()) / "embedstream-test-onnx" / libraries)


os.environ["EMBED_EDGE_ONNX_CACHE"] = _onnx_cache()

REPO_ROOT = Path(__file__).resolve().parent.parent

if TYPE_CHECKING:
    from tests.server_harness import ServerProcess


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def spec():  # type: ignore[no-untyped-def]
    from server.model import load_spec

    return load_spec()


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One real server (real model, real LMDB in a temp dir) shared by the whole session.

    Tests that use it pick unique collection names; tests that must kill or restart a server
    start their own with tests.server_harness.running_server.
    """
    from tests._collections import LIVE_FILTER_EXACT_MAX
    from tests.server_harness import free_port, running_server

    # Chunking on (the default). A low --search-filter-exact-max: filtered searches of the
    # fixture corpus take both paths (exact over the kept documents, and the oversampled index)
    # in tests/test_filters_live.py.
    metrics_port = free_port()
    with running_server(
        tmp_path_factory.mktemp("live") / "data",
        "--search-filter-exact-max",
        str(LIVE_FILTER_EXACT_MAX),
        "--metrics-port",
        str(metrics_port),
    ) as server:
        server.metrics_port = metrics_port
        yield server


HTTP_TOKEN = "http-test-token"
HTTP_MAX_INPUT_CHARS = 5000
HTTP_MAX_BATCH = 32
# max_receive_bytes = max(--max-message-bytes, 4 * --max-document-bytes + 1 MiB) = 2 MiB
HTTP_BODY_LIMIT = 2 * 1024 * 1024


@dataclass
class HttpServerProcess:
    process: ServerProcess
    http_port: int


@pytest.fixture(scope="session")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServerProcess]:
    """A real server with the HTTP API on (--http-port), a bearer token and small limits (413s
    are cheap to reach), shared by tests/test_http_api.py and tests/test_http_tei.py."""
    from tests.server_harness import free_port, running_server

    http_port = free_port()
    args = ("--http-port", str(http_port), "--max-input-chars", str(HTTP_MAX_INPUT_CHARS),
            "--max-client-batch-size", str(HTTP_MAX_BATCH), "--max-document-bytes", str(256 * 1024),
            "--max-message-bytes", str(1024 * 1024))  # fmt: skip
    data = tmp_path_factory.mktemp("http") / "data"
    with running_server(data, *args, env={"EMBED_AUTH_TOKEN": HTTP_TOKEN}) as process:
        yield HttpServerProcess(process, http_port)


@pytest.fixture(scope="session")
def edge_onnx_dir(spec):  # type: ignore[no-untyped-def]
    """The model's exported ONNX graphs (fp32 + int8) in the test ONNX cache
    (EMBED_EDGE_ONNX_CACHE, which every test server inherits): made by the exporter under test,
    never by an earlier version of it (the cache is keyed by the exporter's source)."""
    from server.onnx_export import ensure_onnx, onnx_cache_dir
    from server.settings import Settings

    return ensure_onnx(spec, onnx_cache_dir(Settings.from_env()))


@pytest.fixture(scope="session")
def edge_bundle(spec, edge_onnx_dir, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """An edge bundle (identity projection, 128 dims) built in-process from edge_onnx_dir."""
    from embedcore import Projection
    from server.edge_bundle import build_bundle

    out = tmp_path_factory.mktemp("edge") / "bundle"
    identity = Projection.identity(spec.dimension)
    return build_bundle(spec, out, identity, default_dims=128, onnx_dir=edge_onnx_dir)
