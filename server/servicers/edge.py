"""embedding.v1.EdgeService: GetEdgeBundle, and the server's copy of the edge bundle.

attach() loads the bundle from ``--edge-bundle-dir`` (default DATA_DIR/edge_bundle) or builds
it (ONNX export, cached per model; ``--edge-projection`` fitted on the store's vectors: the
Matryoshka adaptor, with sentences of the stored texts embedded as pseudo-queries, or the PCA
rotation; identity until the store holds enough) off the event loop, before the server
reports SERVING, and sets ``runtime.edge_projection``, which SyncVectors uses. A bundle fitted
on too few vectors is refitted at the next start or GetEdgeBundle once the store holds
enough, one of another kind than ``--edge-projection`` at the next start; the new fingerprint
makes edge clients re-init and resync.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from embedcore import BundleError, EdgeBundle
from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1.embedding_pb2_grpc import EdgeServiceServicer, add_EdgeServiceServicer_to_server
from server.app import Runtime
from server.edge_adaptor import MAX_FIT_DOCS, OUT_DIMS, pseudo_query_sentences
from server.edge_bundle import build_bundle, bundle_files, ensure_onnx
from server.edge_projection import BundleProjection, fit_projection, sample_store_documents
from server.embedder import Priority
from server.errors import NotFound, NotReady, ServiceError, status_for
from server.settings import Settings

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20  # well under the default 16 MiB message limit
EMBED_CHUNK = 512  # pseudo-query sentences per encode call (a few model batches each)


def bundle_dir(settings: Settings) -> Path:
    if settings.edge_bundle_dir:
        return Path(settings.edge_bundle_dir)
    return Path(settings.data_dir) / "edge_bundle"


def onnx_cache_dir(settings: Settings) -> Path:
    if settings.edge_onnx_cache:
        return Path(settings.edge_onnx_cache)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("embedstream", appauthor=False)) / "onnx"


@dataclass
class _Plan:
    """What load_or_build found on disk and in the store."""

    keep: EdgeBundle | None  # the bundle on disk, still right: serve it as it is
    vectors: np.ndarray | None = None  # stored vectors to fit on (None: none sampled)
    texts: list[str | None] = field(default_factory=list)  # their stored texts


def _kind_for(settings: Settings, documents: int, texts: list[str | None]) -> str:
    """The projection kind fit_projection makes from ``documents`` vectors with these texts
    (the adaptor needs enough documents, and stored texts for its pseudo-queries)."""
    if settings.edge_projection == "adaptor" and (
        documents < settings.edge_adaptor_min_docs or not any(texts)
    ):
        return "rotation"
    return settings.edge_projection


def _store_state(store: object, fingerprint: str) -> str:
    """The change-log heads of the collections of this model: equal states, same documents."""
    metas = getattr(store, "collections", None)
    if metas is None:
        return ""
    heads = sorted((name, meta.sequence) for name, meta in metas().items() if meta.fingerprint == fingerprint)
    return json.dumps(heads)


def _check_path(target: Path) -> Path:
    """Beside the bundle, not in it: the bundle's files are hashed into its fingerprint."""
    return target.with_name(target.name + ".fit-check.json")


def _already_checked(target: Path, bundle: EdgeBundle, state: str) -> bool:
    """True when the store was sampled for this bundle at this state and could not give the
    configured kind (too few documents, or no texts): sampling again would find the same."""
    try:
        check = json.loads(_check_path(target).read_text())
    except (OSError, ValueError):
        return False
    return bool(state) and check == {"bundle": bundle.fingerprint, "store": state}


def _plan(runtime: Runtime) -> _Plan:
    """Blocking: read the bundle on disk and, when a (re)fit is due, sample the store."""
    settings, spec = runtime.settings, runtime.spec
    target = bundle_dir(settings)
    existing: EdgeBundle | None = None
    try:
        existing = EdgeBundle.load(target)
    except BundleError as exc:
        if target.exists():
            log.warning("rebuilding the edge bundle in %s: %s", target, exc)
    min_vectors = settings.edge_fit_min_vectors
    fitted_on = int(existing.manifest.extra.get("fit_vectors", 0)) if existing else 0
    # A fitted bundle of another kind than --edge-projection is refitted (when the store can).
    existing_kind = existing.manifest.projection_kind if existing else ""
    other_kind = fitted_on > 0 and existing_kind != settings.edge_projection
    state = _store_state(runtime.store, spec.fingerprint)
    if other_kind and existing is not None and _already_checked(target, existing, state):
        other_kind = False  # no walk over a large store at every start to find the same answer
    vectors: np.ndarray | None = None
    texts: list[str | None] = []
    if existing is None or fitted_on < min_vectors or other_kind:
        limit = settings.edge_fit_sample
        if settings.edge_projection == "adaptor":
            limit = min(limit, MAX_FIT_DOCS)  # the adaptor fits on at most this many anyway
        vectors, texts = sample_store_documents(runtime.store, limit, spec.fingerprint)
    can_refit = vectors is not None and len(vectors) >= min_vectors
    if other_kind and vectors is not None and _kind_for(settings, len(vectors), texts) == existing_kind:
        can_refit = False  # e.g. a rotation, and still too few documents (or no texts) for the adaptor
        if existing is not None and state:
            _check_path(target).write_text(json.dumps({"bundle": existing.fingerprint, "store": state}))
    if (
        existing is not None
        and existing.manifest.model_fingerprint == spec.fingerprint
        and existing.manifest.default_dims == settings.edge_dims
        and bool(existing.manifest.onnx_int8) == settings.edge_int8
        and ((fitted_on >= min_vectors and not other_kind) or not can_refit)
    ):
        log.info("edge bundle %s loaded from %s", existing.fingerprint, target)
        return _Plan(existing)
    return _Plan(None, vectors, texts)


async def _pseudo_query_vectors(runtime: Runtime, texts: list[str | None]) -> np.ndarray | None:
    """Vectors of sentences of the sampled documents (the adaptor's query-like anchors),
    embedded by the server's own encoder at bulk priority; None without texts or on failure."""
    sentences = pseudo_query_sentences(texts)
    if not sentences:
        log.info("edge adaptor: the sampled documents have no stored text; fitting the PCA rotation")
        return None
    start = getattr(runtime.embedder, "start", None)
    if start is not None:  # at attach the pool is not started yet; start() is idempotent
        await start()
    log.info("edge adaptor: embedding %d pseudo-query sentences", len(sentences))
    parts = []
    try:
        for i in range(0, len(sentences), EMBED_CHUNK):
            result = await runtime.embedder.encode(
                sentences[i : i + EMBED_CHUNK],
                prompt_name=runtime.spec.query_prompt_name,  # they stand in for queries
                priority=Priority.BULK,
            )
            parts.append(np.asarray(result.vectors, dtype=np.float32))
    except ServiceError as exc:
        log.warning("edge adaptor: embedding pseudo-queries failed (%s); fitting the PCA rotation", exc)
        return None
    return np.concatenate(parts)


def _build(runtime: Runtime, plan: _Plan, pseudo_queries: np.ndarray | None) -> EdgeBundle:
    """Blocking: fit the projection and write the bundle."""
    settings, spec = runtime.settings, runtime.spec
    vectors = plan.vectors
    projection = fit_projection(
        vectors,
        spec.dimensions,
        min_vectors=settings.edge_fit_min_vectors,
        kind=settings.edge_projection,
        pseudo_queries=pseudo_queries,
        out_dims=max(OUT_DIMS, settings.edge_dims),  # the default dims must exist
        adaptor_min_docs=settings.edge_adaptor_min_docs,
    )
    fit = len(vectors) if vectors is not None and projection.kind != "identity" else 0
    queries = (
        len(pseudo_queries) if fit and projection.kind == "adaptor" and pseudo_queries is not None else 0
    )
    return build_bundle(
        spec,
        bundle_dir(settings),
        projection,
        default_dims=settings.edge_dims,
        onnx_dir=ensure_onnx(spec, onnx_cache_dir(settings), int8=settings.edge_int8),
        int8=settings.edge_int8,
        extra={
            "fit_vectors": fit,
            "fit_pseudo_queries": queries,
            "fit_source": "store sample" if fit else "none",
            "kind": projection.kind,
        },
    )


async def load_or_build(runtime: Runtime) -> EdgeBundle:
    """The server's bundle: the one on disk if it still fits this model and settings, else new.
    Disk, store and fitting run in threads; the pseudo-queries are embedded on this loop."""
    plan = await asyncio.to_thread(_plan, runtime)
    if plan.keep is not None:
        return plan.keep
    pseudo_queries = None
    settings = runtime.settings
    n = 0 if plan.vectors is None else len(plan.vectors)
    if n >= settings.edge_fit_min_vectors and _kind_for(settings, n, plan.texts) == "adaptor":
        pseudo_queries = await _pseudo_query_vectors(runtime, plan.texts)
    return await asyncio.to_thread(_build, runtime, plan, pseudo_queries)


class EdgeServicer(EdgeServiceServicer):  # type: ignore[misc]
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.bundle: EdgeBundle | None = None
        self._refit_lock = asyncio.Lock()

    def install(self, bundle: EdgeBundle) -> None:
        self.bundle = bundle
        self.runtime.edge_projection = BundleProjection(bundle)

    async def refit_if_due(self) -> None:
        """A bundle without a fitted rotation is refitted as soon as the store holds enough
        vectors (checked when a client fetches the bundle), so ingest -> init -> sync gets the
        rotation without a restart. Edges on the old bundle are refused by SyncVectors with a
        clear message and re-init."""
        bundle = self.bundle
        min_vectors = self.runtime.settings.edge_fit_min_vectors
        if bundle is None or int(bundle.manifest.extra.get("fit_vectors", 0)) >= min_vectors:
            return
        async with self._refit_lock:
            fresh = await load_or_build(self.runtime)
            if fresh.fingerprint != bundle.fingerprint:
                log.info("edge bundle refitted: %s -> %s", bundle.fingerprint, fresh.fingerprint)
            self.install(fresh)

    async def GetEdgeBundle(
        self, request: pb.GetEdgeBundleRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EdgeBundleChunk]:
        try:
            await self.refit_if_due()
            bundle = self.bundle
            if bundle is None:
                raise NotReady("the edge bundle is not built yet; retry shortly")
            try:
                names = bundle_files(bundle, list(request.files))
            except KeyError as exc:
                raise NotFound(str(exc.args[0]), field="files") from exc
            manifest_json = (bundle.directory / "manifest.json").read_text(encoding="utf-8")
            yield pb.EdgeBundleChunk(
                manifest=pb.BundleManifest(
                    fingerprint=bundle.fingerprint,
                    manifest_json=manifest_json,
                    files=[
                        pb.BundleFile(path=n, size=e.size, sha256=e.sha256)
                        for n, e in sorted(bundle.manifest.files.items())
                    ],
                )
            )
            for name in names:
                with (bundle.directory / name).open("rb") as handle:
                    offset = 0
                    while True:
                        data = await asyncio.to_thread(handle.read, CHUNK_BYTES)
                        if not data:
                            break
                        yield pb.EdgeBundleChunk(chunk=pb.FileChunk(path=name, offset=offset, data=data))
                        offset += len(data)
        except ServiceError as exc:
            code, message = status_for(exc)
            await context.abort(code, message)
        except OSError as exc:
            log.exception("reading the edge bundle failed")
            code, message = status_for(exc)
            await context.abort(code, message)


async def attach(server: grpc.aio.Server, runtime: Runtime) -> list[str]:
    servicer = EdgeServicer(runtime)
    # ONNX export, hashing and fitting take seconds: load_or_build runs them in threads.
    servicer.install(await load_or_build(runtime))
    add_EdgeServiceServicer_to_server(servicer, server)
    return ["embedding.v1.EdgeService"]
