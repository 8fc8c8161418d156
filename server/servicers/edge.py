"""embedding.v1.EdgeService: GetEdgeBundle streams the server's edge bundle (server.edge_builder)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from protos.embedding.v1 import embedding_pb2 as pb
from server.edge_builder import EdgeBundles
from server.edge_bundle import bundle_files
from server.errors import NotFound
from server.ingest import validate_collection
from server.runtime import Runtime
from server.servicers._rpc import UnparsedRequest, abort
from server.validation import check_count, check_name, check_unique

CHUNK_BYTES = 1 << 20  # at most; less when the message limit asks for it
_CHUNK_OVERHEAD = 4096  # path, offset and tags of a chunk message, with room to spare
MAX_FILES = 64  # a bundle has a handful of files


class EdgeServicer:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def _bundle_of(self, collection: str) -> EdgeBundles:
        validate_collection(collection)
        if self.runtime.store.collection(collection) is None:
            raise NotFound(f"no collection {collection!r}", field="collection")
        return self.runtime.router.bound(collection).edge

    async def GetEdgeBundle(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EdgeBundleChunk]:
        try:
            if isinstance(request, UnparsedRequest):
                raise request.error()
            files = list(request.files)
            check_count(files, "files", limit=MAX_FILES, required=False)
            for i, name in enumerate(files):
                check_name(name, f"files[{i}]", required=True)
            check_unique(files, "files")
            edge = self.runtime.edge
            if request.collection:  # the bundle of the model the collection is bound to
                edge = await asyncio.to_thread(self._bundle_of, request.collection)
            await edge.refit_if_due()
            bundle = edge.bundle
            try:
                names = bundle_files(bundle, files)
            except KeyError as exc:
                raise NotFound(str(exc.args[0]), field="files") from exc
            manifest_json = await asyncio.to_thread((bundle.directory / "manifest.json").read_text, "utf-8")
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
            # A chunk must fit the message limit (--max-message-bytes is at least 1 MiB).
            chunk_bytes = min(CHUNK_BYTES, self.runtime.settings.max_message_bytes - _CHUNK_OVERHEAD)
            for name in names:
                with (bundle.directory / name).open("rb") as handle:
                    offset = 0
                    while True:
                        data = await asyncio.to_thread(handle.read, chunk_bytes)
                        if not data:
                            break
                        yield pb.EdgeBundleChunk(chunk=pb.FileChunk(path=name, offset=offset, data=data))
                        offset += len(data)
        except Exception as exc:
            await abort(context, exc)
