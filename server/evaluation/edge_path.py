"""The edge path, through ``edge_client``'s public API only (``edge_client.__all__``).

Each edge dimension gets its own client home under the work folder (an edge index holds one
dimension): ``init`` downloads the server's bundle, ``sync`` pulls the collection's projected
vectors, then every query runs through ``EdgeClient.search`` (int8 ONNX query encoder, local
usearch index; ``auto`` may fall back to the server).

"naive" vs "fitted" is the projection of the server's bundle (identity = plain truncation,
otherwise fitted on the store: a PCA rotation or a Matryoshka adaptor); the evaluator measures
whichever the server serves and reports the other as unavailable, saying why (the server rows
at 256/128/64 dims are naive truncation).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from embedcore.transport import ClientCredentials
from server.evaluation.configs import EvalConfig

log = logging.getLogger(__name__)

SEARCH_K = 100


class EdgeUnavailable(Exception):
    """The edge client cannot run this configuration; the message says why."""


def _edge_module() -> Any:
    try:
        module = importlib.import_module("edge_client")
    except ImportError as exc:
        raise EdgeUnavailable(f"edge_client is not installed ({exc}); pip install '.[edge]'") from exc
    if "EdgeClient" not in getattr(module, "__all__", ()):
        raise EdgeUnavailable("edge_client exports no EdgeClient")
    return module


class EdgeSession:
    """Edge clients of one evaluation run, one per dimension, created (init + sync) on demand."""

    def __init__(
        self,
        *,
        address: str,
        collection: str,
        workdir: Path,
        credentials: ClientCredentials | None = None,
        router: Any = None,
    ) -> None:
        self.address = address
        self.router = router  # embedcore.router.Router: sync (and fallback) over the shards
        self.credentials = credentials
        self.collection = collection
        self.workdir = workdir
        self._clients: dict[int | None, tuple[Any, str]] = {}  # dims -> (client, projection kind)
        self._failed: dict[int | None, str] = {}

    def client(self, dims: int | None) -> tuple[Any, str]:
        if dims in self._failed:
            raise EdgeUnavailable(self._failed[dims])
        if dims not in self._clients:
            edge = _edge_module()
            home = self.workdir / f"edge-{dims or 'default'}"
            routed = {"router": self.router} if self.router is not None else {}
            client = edge.EdgeClient(
                home, server=self.address, dims=dims, credentials=self.credentials, **routed
            )
            try:
                bundle = client.init()
                report = client.sync(self.collection)
            except edge.EdgeError as exc:
                client.close()
                self._failed[dims] = f"edge init/sync failed: {type(exc).__name__}: {exc}"
                raise EdgeUnavailable(self._failed[dims]) from exc
            kind = str(getattr(bundle.manifest, "projection_kind", "") or "unknown")
            log.info("edge client dims=%s: bundle projection %s, sync %s", dims, kind, report)
            self._clients[dims] = (client, kind)
        return self._clients[dims]

    def close(self) -> None:
        for client, _ in self._clients.values():
            client.close()
        self._clients.clear()


def _rotation_of(kind: str) -> str:
    return "naive" if kind in ("identity", "none", "truncate") else "fitted"


def run_edge(
    session: EdgeSession, config: EvalConfig, queries: Mapping[str, str]
) -> tuple[dict[str, dict[str, float]], float | None, int]:
    """Every query through the edge client: (run, local share for auto, effective dims)."""
    edge = _edge_module()
    client, kind = session.client(config.dims)
    if config.path == "edge-local" and config.rotation != _rotation_of(kind):
        raise EdgeUnavailable(
            f"the server's edge bundle uses the {kind!r} projection, so this run measures "
            f"'{_rotation_of(kind)}' only"
        )
    mode = "local" if config.path == "edge-local" else "auto"
    run: dict[str, dict[str, float]] = {}
    local = 0
    try:
        for qid, text in queries.items():
            result = client.search(text, collection=session.collection, k=SEARCH_K, mode=mode)
            run[qid] = {hit.id: float(hit.score) for hit in result.results}
            local += result.source == "local"
    except edge.EdgeError as exc:
        raise EdgeUnavailable(f"edge search failed: {type(exc).__name__}: {exc}") from exc
    share = local / len(queries) if (mode == "auto" and queries) else None
    return run, share, int(client.dims)
