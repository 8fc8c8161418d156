"""Session-wide fixtures. The real model is loaded at most once per test session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

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
    from tests.server_harness import running_server

    with running_server(tmp_path_factory.mktemp("live") / "data") as server:
        yield server


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
