"""embedding.v1.CollectionService: Ingest, Search, Delete, SyncVectors over the LMDB store.

``attach`` opens the store (once per process, after any fork), catches the indexes of current
collections up with it, logs collections stored under another model, and registers a closer
that saves the indexes and closes the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format, struct_pb2

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1.embedding_pb2_grpc import (
    CollectionServiceServicer,
    add_CollectionServiceServicer_to_server,
)
from server.app import Runtime
from server.errors import InvalidArgument, NotFound, PreconditionFailed, ServiceError, status_for
from server.ingest import IngestItem, Ingestor, stale_message, validate_collection
from server.search import FirstPass, Searcher, SearchQuery
from server.store import Indexes, Store, open_store
from server.store import records as rec

log = logging.getLogger(__name__)

SYNC_PAGE = 256
_FIRST_PASS: dict[int, FirstPass] = {pb.PRECISION_INT8: "int8", pb.PRECISION_UBINARY: "ubinary"}
_END = object()


def _struct(data: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    if data:
        out.update(data)
    return out


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    if not isinstance(exc, ServiceError):
        log.exception("collection call failed", exc_info=exc)
    code, message = status_for(exc)
    await context.abort(code, message)


class CollectionServicer(CollectionServiceServicer):  # type: ignore[misc]
    def __init__(self, runtime: Runtime, store: Store, indexes: Indexes) -> None:
        self.runtime, self.store, self.indexes = runtime, store, indexes
        self.ingestor = Ingestor(store, indexes, runtime.embedder, runtime.spec)
        self.searcher = Searcher(
            store, indexes, runtime.embedder, runtime.spec, runtime.settings.search_max_k
        )

    # -- Ingest --------------------------------------------------------------------------------

    async def Ingest(
        self, request_iterator: AsyncIterator[pb.IngestRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.IngestAck]:
        settings = self.runtime.settings
        # Bounded read-ahead: when full, we stop reading and gRPC flow control holds the client.
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=settings.ingest_max_pending)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await queue.put(request)
            finally:
                await queue.put(_END)

        reader = asyncio.create_task(read())
        try:
            done = False
            while not done:
                batch = [await queue.get()]
                while len(batch) < settings.ingest_commit_docs and not queue.empty():
                    batch.append(queue.get_nowait())
                if batch[-1] is _END:
                    batch.pop()
                    done = True
                if not batch:
                    continue
                items = [
                    IngestItem(
                        r.collection,
                        r.id,
                        r.text,
                        json_format.MessageToDict(r.metadata) if r.HasField("metadata") else {},
                        r.store_text if r.HasField("store_text") else True,
                    )
                    for r in batch
                ]
                for outcome in await self.ingestor.process(items):
                    ack = pb.IngestAck(
                        collection=outcome.item.collection,
                        id=outcome.item.doc_id,
                        content_hash=outcome.content_hash,
                        cached=outcome.cached,
                        sequence=outcome.sequence,
                    )
                    if outcome.error is not None:
                        code, message = status_for(outcome.error)
                        ack.error.CopyFrom(
                            pb.ItemError(code=code.value[0], message=message, field=outcome.error.field)
                        )
                    yield ack
            await reader  # surfaces a broken client stream
        except Exception as exc:
            await _abort(context, exc)
        finally:
            reader.cancel()

    # -- Search --------------------------------------------------------------------------------

    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        started = time.perf_counter_ns()
        try:
            query = SearchQuery(
                collection=request.collection,
                query=request.query,
                k=request.k or 10,
                exact=request.exact,
                dimensions=request.dimensions if request.HasField("dimensions") else None,
                first_pass=_FIRST_PASS.get(request.precision, "float"),
                rescore_multiplier=request.rescore_multiplier or 4,
                prompt_name=request.prompt_name if request.HasField("prompt_name") else None,
                include_text=request.include_text if request.HasField("include_text") else True,
            )
            result = await self.searcher.search(query)
        except Exception as exc:
            await _abort(context, exc)
            raise  # unreachable: abort raises
        return pb.SearchResponse(
            hits=[
                pb.SearchHit(id=h.id, score=h.score, text=h.text, metadata=_struct(h.metadata))
                for h in result.hits
            ],
            timing=pb.Timing(
                queue_ns=result.queue_ns,
                tokenization_ns=result.tokenization_ns,
                inference_ns=result.inference_ns,
                total_ns=time.perf_counter_ns() - started,
                tokens=result.tokens,
                characters=len(request.query),
            ),
            sequence=result.sequence,
            model_fingerprint=self.runtime.spec.fingerprint,
        )

    # -- Delete --------------------------------------------------------------------------------

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        try:
            validate_collection(request.collection)
            if any(not doc_id for doc_id in request.ids):
                raise InvalidArgument("ids must not contain an empty id", field="ids")
            if await asyncio.to_thread(self.store.collection, request.collection) is None:
                raise NotFound(f"no collection {request.collection!r}", field="collection")
            deleted, sequence = await asyncio.to_thread(
                self.store.delete, request.collection, list(request.ids)
            )
            await asyncio.to_thread(self._refresh_index, request.collection)
        except Exception as exc:
            await _abort(context, exc)
            raise
        return pb.DeleteResponse(deleted=deleted, sequence=sequence)

    def _refresh_index(self, collection: str) -> None:
        meta = self.store.collection(collection)
        if meta is not None and meta.fingerprint == self.runtime.spec.fingerprint:
            self.indexes.get(collection)

    # -- SyncVectors ---------------------------------------------------------------------------

    async def SyncVectors(
        self, request: pb.SyncVectorsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SyncVectorsResponse]:
        try:
            projection = self.runtime.edge_projection  # read per call: the edge service sets it
            if projection is None:
                raise PreconditionFailed("edge bundle not available on this server")
            if request.bundle_fingerprint != projection.fingerprint:
                raise PreconditionFailed(
                    f"bundle_fingerprint {request.bundle_fingerprint!r} is not the server's edge bundle "
                    f"{projection.fingerprint!r}: download the current bundle (GetEdgeBundle) and sync "
                    "again from sequence 0",
                    field="bundle_fingerprint",
                )
            spec = self.runtime.spec
            validate_collection(request.collection)
            dims = request.dimensions or projection.default_dims
            if dims > projection.max_dims:
                raise InvalidArgument(
                    f"dimensions must be at most {projection.max_dims} (the edge bundle's projection "
                    f"produces {projection.max_dims} of the model's {spec.dimensions}), got {dims}",
                    field="dimensions",
                )
            meta = await asyncio.to_thread(self.store.collection, request.collection)
            if meta is None:
                raise NotFound(f"no collection {request.collection!r}", field="collection")
            if meta.fingerprint != spec.fingerprint:
                raise PreconditionFailed(
                    stale_message(request.collection, meta.fingerprint, spec.fingerprint)
                )
            include_text = request.include_text if request.HasField("include_text") else True
            head, since = meta.sequence, request.since_sequence
            remaining = await asyncio.to_thread(self.store.count_changes, request.collection, since, head)
            sent = False
            while True:
                changes = await asyncio.to_thread(
                    self.store.changes, request.collection, since, head, SYNC_PAGE
                )
                if not changes:
                    break
                message = await asyncio.to_thread(self._sync_message, changes, dims, include_text, projection)
                remaining = max(0, remaining - len(changes))
                message.head_sequence, message.remaining = head, remaining
                yield message
                sent = True
                since = changes[-1].sequence
            if not sent:
                yield pb.SyncVectorsResponse(head_sequence=head, remaining=0)
        except Exception as exc:
            await _abort(context, exc)

    def _sync_message(
        self, changes: list[Any], dims: int, include_text: bool, projection: Any
    ) -> pb.SyncVectorsResponse:
        upserts = [c for c in changes if c.op == rec.OP_UPSERT and c.doc is not None]
        projected = np.zeros((0, dims), np.float32)
        if upserts:
            full = self.store.vectors([c.doc.content_hash for c in upserts])
            projected = np.asarray(projection.project(full, dims), dtype="<f4")
        rows = {c.sequence: projected[i] for i, c in enumerate(upserts)}
        out = pb.SyncVectorsResponse()
        for c in changes:
            if c.op == rec.OP_UPSERT and c.doc is not None:
                vector = pb.Vector(data=rows[c.sequence].tobytes(), dims=dims, precision=pb.PRECISION_FLOAT32)
                out.changes.append(
                    pb.VectorChange(
                        sequence=c.sequence,
                        op=pb.VectorChange.OP_UPSERT,
                        id=c.doc_id,
                        vector=vector,
                        text=(c.doc.text or "") if include_text else "",
                        metadata=_struct(c.doc.metadata) if include_text else None,
                    )
                )
            elif c.op == rec.OP_DELETE:
                out.changes.append(
                    pb.VectorChange(sequence=c.sequence, op=pb.VectorChange.OP_DELETE, id=c.doc_id)
                )
        return out


def _warm_indexes(store: Store, indexes: Indexes, fingerprint: str) -> None:
    """Load or rebuild the index of every current collection, and say which ones are stale."""
    stale = store.collection_rows(fingerprint)
    for row in stale:
        if row.stale:
            log.warning(
                "collection %r holds vectors of model %s, not the serving model %s: it will not be "
                "searched or synced until you run `embed-server reembed --collection %s`",
                row.name,
                row.model_fingerprint,
                fingerprint,
                row.name,
            )
        else:
            indexes.get(row.name)
    indexes.save_all()


async def attach(server: grpc.aio.Server, runtime: Runtime) -> list[str]:
    settings, spec = runtime.settings, runtime.spec
    store = open_store(
        settings.data_dir, map_size=settings.store_map_size_mb << 20, float16=settings.store_float16
    )
    indexes = Indexes(
        store,
        settings.data_dir / "indexes",
        fingerprint=spec.fingerprint,
        ndim=spec.dimensions,
        metric="ip" if spec.normalize else "cos",
        dtype=settings.index_dtype,
    )
    store.serving_fingerprint = spec.fingerprint
    await asyncio.to_thread(_warm_indexes, store, indexes, spec.fingerprint)
    runtime.store = store

    async def save_periodically() -> None:
        while True:
            await asyncio.sleep(settings.index_save_interval_s)  # the save timer, not a wait
            try:
                saved = await asyncio.to_thread(indexes.save_all)
            except OSError:
                log.exception("saving the vector indexes failed; retrying at the next interval")
                continue
            if saved:
                log.debug("saved %d changed vector indexes", saved)

    saver = asyncio.create_task(save_periodically(), name="index-saver")

    async def close() -> None:
        saver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await saver
        await asyncio.to_thread(indexes.save_all)
        await asyncio.to_thread(store.close)

    runtime.closers.append(close)
    add_CollectionServiceServicer_to_server(CollectionServicer(runtime, store, indexes), server)
    return ["embedding.v1.CollectionService"]
