"""embedding.v1.EdgeService: GetEdgeBundle, and the server's copy of the edge bundle.

attach() loads the bundle from ``--edge-bundle-dir`` (default DATA_DIR/edge_bundle) or builds
it (ONNX export, cached per model; PCA rotation fitted on the store's vectors, else identity)
off the event loop, before the server reports SERVING, and sets ``runtime.edge_projection``,
which SyncVectors uses. A bundle fitted on too few vectors is refitted at the next start once
the store holds enough; the new fingerprint makes edge clients re-init and resync.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from edge_client._bundle import EdgeBundle
from edge_client.errors import BundleError
from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1.embedding_pb2_grpc import EdgeServiceServicer, add_EdgeServiceServicer_to_server
from server.app import Runtime
from server.edge_bundle import build_bundle, bundle_files, ensure_onnx
from server.edge_projection import BundleProjection, fit_projection, sample_store_vectors
from server.errors import NotFound, NotReady, ServiceError, status_for
from server.settings import Settings

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20  # well under the default 16 MiB message limit


def bundle_dir(settings: Settings) -> Path:
    if settings.edge_bundle_dir:
        return Path(settings.edge_bundle_dir)
    return Path(settings.data_dir) / "edge_bundle"


def onnx_cache_dir(settings: Settings) -> Path:
    if settings.edge_onnx_cache:
        return Path(settings.edge_onnx_cache)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("embedstream", appauthor=False)) / "onnx"


def load_or_build(runtime: Runtime) -> EdgeBundle:
    """The server's bundle: the one on disk if it still fits this model and settings, else new."""
    settings, spec = runtime.settings, runtime.spec
    target = bundle_dir(settings)
    existing: EdgeBundle | None = None
    try:
        existing = EdgeBundle.load(target)
    except BundleError as exc:
        if target.exists():
            log.warning("rebuilding the edge bundle in %s: %s", target, exc)
    fitted_on = int(existing.manifest.extra.get("fit_vectors", 0)) if existing else 0
    vectors = None
    if existing is None or fitted_on < settings.edge_fit_min_vectors:
        vectors = sample_store_vectors(runtime.store, settings.edge_fit_sample, spec.fingerprint)
    can_refit = vectors is not None and len(vectors) >= settings.edge_fit_min_vectors
    if (
        existing is not None
        and existing.manifest.model_fingerprint == spec.fingerprint
        and existing.manifest.default_dims == settings.edge_dims
        and bool(existing.manifest.onnx_int8) == settings.edge_int8
        and (fitted_on >= settings.edge_fit_min_vectors or not can_refit)
    ):
        log.info("edge bundle %s loaded from %s", existing.fingerprint, target)
        return existing
    projection = fit_projection(vectors, spec.dimensions, min_vectors=settings.edge_fit_min_vectors)
    fit = len(vectors) if vectors is not None and projection.kind != "identity" else 0
    return build_bundle(
        spec,
        target,
        projection,
        default_dims=settings.edge_dims,
        onnx_dir=ensure_onnx(spec, onnx_cache_dir(settings), int8=settings.edge_int8),
        int8=settings.edge_int8,
        extra={"fit_vectors": fit, "fit_source": "store sample" if fit else "none"},
    )


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
            fresh = await asyncio.to_thread(load_or_build, self.runtime)
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
    # ONNX export and hashing take seconds and hold the GIL in places: off the event loop.
    servicer.install(await asyncio.to_thread(load_or_build, runtime))
    add_EdgeServiceServicer_to_server(servicer, server)
    return ["embedding.v1.EdgeService"]
