"""The edge path, through ``edge_client``'s public API only (``edge_client.__all__``)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from server.evaluation.configs import EvalConfig


class EdgeUnavailable(Exception):
    """The edge client cannot run this configuration; the message says why."""


def _public_api() -> Any:
    try:
        module = importlib.import_module("edge_client")
    except ImportError as exc:
        raise EdgeUnavailable(f"edge_client is not installed ({exc}); pip install '.[edge]'") from exc
    if "EdgeClient" not in getattr(module, "__all__", ()):
        raise EdgeUnavailable("edge_client exports no EdgeClient yet")
    return module


def run_edge(
    config: EvalConfig,
    *,
    address: str,
    collection: str,
    queries: Mapping[str, str],
    workdir: Path,
) -> tuple[dict[str, dict[str, float]], float | None]:
    """Run every query through the edge client; returns the run and, for auto, the local share."""
    _public_api()
    raise EdgeUnavailable("edge_client's search API is not wired into the evaluator yet")
