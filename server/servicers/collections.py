"""embedding.v1.CollectionService: Ingest, Search, SearchBatch, Delete, SyncVectors,
ListCollections, DropCollection, GetDocuments.

Each RPC converts its request into a domain call (server.ingest, server.search, server.sync,
server.catalog)
and the result back into protobuf; nothing else happens here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np

from protos.embedding.v1 import embedding_pb2 as pb
from server.errors import InvalidArgument
from server.ingest import (
    MAX_COLLECTION_BYTES,
    MAX_ID_BYTES,
    IngestItem,
    IngestOutcome,
    ReadAhead,
    footprint,
    validate_collection,
)
from server.memory import release_freed_memory
from server.migration import Progress
from server.runtime import Runtime
from server.search import FirstPass, FusionKind, Mode, SearchQuery, SearchResult, positioned
from server.servicers._convert import item_error, plain_struct, precision_of, struct
from server.servicers._rpc import UnparsedRequest, abort
from server.sync import SyncRequest
from server.validation import (
    MAX_DELETE_IDS,
    check_count,
    check_name,
    check_prompt_name,
    check_unique,
    choice,
)
from server.vectors import Precision

log = logging.getLogger(__name__)

# A stream whose read-ahead held this much returns freed memory to the OS when it ends (a
# malloc_trim costs milliseconds: not after every small stream).
_TRIM_AFTER_BYTES = 1 << 20
_FIRST_PASS: dict[Precision, FirstPass] = {
    Precision.FLOAT32: "float",
    Precision.INT8: "int8",
    Precision.UBINARY: "ubinary",
}
_MODE: dict[int, Mode] = {
    pb.SEARCH_MODE_UNSPECIFIED: "dense",
    pb.SEARCH_MODE_DENSE: "dense",
    pb.SEARCH_MODE_LEXICAL: "lexical",
    pb.SEARCH_MODE_HYBRID: "hybrid",
}
_FUSION: dict[int, FusionKind | None] = {
    pb.FUSION_UNSPECIFIED: None,
    pb.FUSION_RRF: "rrf",
    pb.FUSION_WEIGHTED: "weighted",
}


def _ingest_item(request: pb.IngestRequest | UnparsedRequest) -> IngestItem | IngestOutcome:
    """The domain item, or an outcome carrying the request's error (named by what could be read)."""
    if isinstance(request, UnparsedRequest):
        partial = request.partial or pb.IngestRequest()
        item = IngestItem(partial.collection, partial.id, "")
        return IngestOutcome(item, error=request.error())
    # Checked (finite numbers, depth, size) with the rest of the document by the ingestor.
    metadata = plain_struct(request.metadata) if request.HasField("metadata") else {}
    return IngestItem(
        request.collection,
        request.id,
        request.text,
        metadata,
        request.store_text if request.HasField("store_text") else True,
        request.chunking if request.HasField("chunking") else None,
    )


def _echo(value: str, limit: int) -> str:
    """``value`` when within its limit (UTF-8 bytes), else "": a rejected document's oversized
    id must not make its ack larger than the message limit (which would end the stream)."""
    return value if len(value) <= limit and len(value.encode("utf-8")) <= limit else ""


def _ack(outcome: IngestOutcome) -> pb.IngestAck:
    ack = pb.IngestAck(
        collection=_echo(outcome.item.collection, MAX_COLLECTION_BYTES),
        id=_echo(outcome.item.doc_id, MAX_ID_BYTES),
        content_hash=outcome.content_hash,
        cached=outcome.cached,
        sequence=outcome.sequence,
        chunks_embedded=outcome.chunks_embedded,
        chunks_cached=outcome.chunks - outcome.chunks_embedded,
        unembedded_chars=outcome.unembedded_chars,
    )
    if outcome.error is not None:
        ack.error.CopyFrom(item_error(outcome.error))
    return ack


def _vector(vector: np.ndarray) -> pb.Vector:
    """A float32 edge vector on the wire."""
    return pb.Vector(data=vector.astype("<f4").tobytes(), dims=len(vector), precision=pb.PRECISION_FLOAT32)


class CollectionServicer:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def Ingest(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.IngestAck]:
        settings = self.runtime.settings
        ingestor = self.runtime.ingestor
        # Bounded read-ahead (items and bytes): when full, we stop reading and gRPC flow control
        # holds the client.
        ahead: ReadAhead[IngestItem | IngestOutcome] = ReadAhead(
            settings.ingest_max_pending, settings.ingest_max_pending_bytes
        )

        async def read() -> None:
            try:
                async for request in requests:
                    # Converted (and an oversized text refused) as it arrives: the read-ahead
                    # holds domain items, never a large request message.
                    parsed = _ingest_item(request)
                    del request
                    if isinstance(parsed, IngestItem):
                        parsed = ingestor.screen(parsed)
                    await ahead.put(parsed, footprint(parsed))
            finally:
                ahead.close()

        reader = asyncio.create_task(read())
        try:
            while (
                batch := await ahead.batch(settings.ingest_commit_docs, settings.ingest_commit_bytes)
            ) is not None:
                items = [p for p in batch if isinstance(p, IngestItem)]
                stored = iter(await ingestor.process(items) if items else [])
                del items
                for p in batch:
                    yield _ack(next(stored) if isinstance(p, IngestItem) else p)
                del batch, stored
            await reader  # surfaces a broken client stream
        except Exception as exc:
            await abort(context, exc)
        finally:
            # A cancelled or failed stream lets go of everything it read ahead at once, and a
            # stream that held large documents hands the freed pages back to the OS.
            reader.cancel()
            ahead.clear()
            if ahead.peak_bytes >= _TRIM_AFTER_BYTES:
                # Trimmed once the reader has ended: until then it may hold the request it was
                # converting, and the pages under it would stay behind.
                await asyncio.wait([reader])
                asyncio.get_running_loop().run_in_executor(None, release_freed_memory)

    def _search_query(self, request: pb.SearchRequest) -> SearchQuery:
        precision = precision_of(request.precision, "precision")
        if precision not in _FIRST_PASS:
            raise InvalidArgument("precision must be FLOAT32, INT8 or UBINARY", field="precision")
        mode = choice(request.mode, _MODE, "mode", "DENSE, LEXICAL or HYBRID")
        if mode == "lexical" and request.rescore_multiplier:
            raise InvalidArgument(
                "rescore_multiplier shapes the dense ranking; mode LEXICAL has none (leave it unset)",
                field="rescore_multiplier",
            )
        return SearchQuery(
            collection=request.collection,
            query=request.query,
            k=request.k or 10,
            exact=request.exact,
            truncate_dim=request.dimensions if request.HasField("dimensions") else None,
            first_pass=_FIRST_PASS[precision],
            rescore_multiplier=request.rescore_multiplier or 4,
            prompt_name=(
                check_prompt_name(request.prompt_name, self.runtime.spec.prompts, "prompt_name")
                if request.HasField("prompt_name")
                else None
            ),
            include_text=request.include_text if request.HasField("include_text") else True,
            mode=mode,
            fusion=choice(request.fusion, _FUSION, "fusion", "RRF or WEIGHTED"),
            alpha=request.hybrid_alpha if request.HasField("hybrid_alpha") else None,
            rrf_k=request.rrf_k if request.HasField("rrf_k") else None,
            filter=request.filter,
            vector=np.asarray(request.vector, dtype=np.float32) if len(request.vector) else None,
        )

    def _search_response(
        self, request: pb.SearchRequest, result: SearchResult, started: int
    ) -> pb.SearchResponse:
        return pb.SearchResponse(
            hits=[
                pb.SearchHit(
                    id=h.id,
                    score=h.score,
                    text=h.text,
                    metadata=struct(h.metadata),
                    text_truncated=h.text_truncated,
                    metadata_omitted=h.metadata_omitted,
                    snippet_start=h.snippet_start,
                    snippet_stop=h.snippet_stop,
                    snippet=h.snippet,
                )
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
            model_fingerprint=result.fingerprint or self.runtime.spec.fingerprint,
        )

    async def Search(self, request: Any, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        started = time.perf_counter_ns()
        try:
            if isinstance(request, UnparsedRequest):
                raise request.error()
            result = await self.runtime.searcher.search(self._search_query(request))
        except Exception as exc:
            await abort(context, exc)
            raise  # unreachable: abort raises
        return self._search_response(request, result, started)

    async def SearchBatch(self, request: Any, context: grpc.aio.ServicerContext) -> pb.SearchBatchResponse:
        started = time.perf_counter_ns()
        try:
            if isinstance(request, UnparsedRequest):
                raise request.error()
            queries = []
            for i, one in enumerate(request.requests):
                with positioned("requests", i):
                    queries.append(self._search_query(one))
            results = await self.runtime.searcher.search_batch(queries)
        except Exception as exc:
            await abort(context, exc)
            raise
        return pb.SearchBatchResponse(
            responses=[
                self._search_response(one, result, started)
                for one, result in zip(request.requests, results, strict=True)
            ]
        )

    async def ListCollections(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> pb.ListCollectionsResponse:
        try:
            if isinstance(request, UnparsedRequest):
                raise request.error()
            rows = await self.runtime.catalog.collections()
        except Exception as exc:
            await abort(context, exc)
            raise
        return pb.ListCollectionsResponse(
            collections=[
                pb.CollectionSummary(
                    name=r.name,
                    documents=r.documents,
                    sequence=r.sequence,
                    model_fingerprint=r.model_fingerprint,
                    stale=r.stale,
                    incarnation=r.incarnation,
                    document_bytes=r.document_bytes,
                    vector_bytes=r.vector_bytes,
                    index_bytes=r.index_bytes,
                    lexical_index_bytes=r.lexical_index_bytes,
                )
                for r in rows
            ]
        )

    async def DropCollection(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> pb.DropCollectionResponse:
        try:
            if isinstance(request, UnparsedRequest):
                raise request.error()
            documents = await self.runtime.catalog.drop(request.collection)
        except Exception as exc:
            await abort(context, exc)
            raise
        return pb.DropCollectionResponse(documents=documents)

    async def GetDocuments(self, request: Any, context: grpc.aio.ServicerContext) -> pb.GetDocumentsResponse:
        try:
            if isinstance(request, UnparsedRequest):
                raise request.error()
            found = await self.runtime.catalog.get(
                request.collection,
                list(request.ids),
                include_text=request.include_text if request.HasField("include_text") else True,
            )
        except Exception as exc:
            await abort(context, exc)
            raise
        return pb.GetDocumentsResponse(
            documents=[
                pb.Document(
                    id=d.id,
                    text=d.text,
                    metadata=struct(d.metadata),
                    content_hash=d.content_hash,
                    chunks=d.chunks,
                    sequence=d.sequence,
                    text_truncated=d.text_truncated,
                    stored_text=d.stored_text,
                )
                for d in found.found
            ],
            missing=found.missing,
            sequence=found.sequence,
        )

    async def Delete(self, request: Any, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        try:
            if isinstance(request, UnparsedRequest):
                raise request.error()
            ids = list(request.ids)
            check_count(ids, "ids", limit=MAX_DELETE_IDS)
            check_unique(ids, "ids")
            deleted, sequence = await self.runtime.ingestor.delete(request.collection, ids)
        except Exception as exc:
            await abort(context, exc)
            raise
        return pb.DeleteResponse(deleted=deleted, sequence=sequence)

    async def SyncVectors(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SyncVectorsResponse]:
        try:
            if isinstance(request, UnparsedRequest):
                raise request.error()
            sync = SyncRequest(
                collection=request.collection,
                since_sequence=request.since_sequence,
                bundle_fingerprint=check_name(request.bundle_fingerprint, "bundle_fingerprint"),
                dims=request.dimensions,
                include_text=request.include_text if request.HasField("include_text") else True,
                incarnation=check_name(request.incarnation, "incarnation"),
            )
            async for page in self.runtime.syncer.pages(sync):
                response = pb.SyncVectorsResponse(
                    head_sequence=page.head_sequence,
                    remaining=page.remaining,
                    incarnation=page.incarnation,
                    reset=page.reset,
                )
                for change in page.changes:
                    if change.vector is None:
                        response.changes.add(
                            sequence=change.sequence, op=pb.VectorChange.OP_DELETE, id=change.doc_id
                        )
                        continue
                    response.changes.add(
                        sequence=change.sequence,
                        op=pb.VectorChange.OP_UPSERT,
                        id=change.doc_id,
                        vector=_vector(change.vector),
                        text=change.text,
                        metadata=struct(change.metadata) if change.metadata is not None else None,
                        text_truncated=change.text_truncated,
                        content_hash=change.content_hash,
                        chunks=[
                            pb.ChunkVector(
                                vector=_vector(c.vector),
                                content_hash=c.content_hash,
                                start=c.start,
                                stop=c.stop,
                            )
                            for c in change.chunks
                        ],
                    )
                yield response
        except Exception as exc:
            await abort(context, exc)

    async def Migrate(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.MigrateProgress]:
        """Start (or join) a migration and stream its progress until the cutover; or roll back,
        or abort (one message each). See server.migration.Migrations."""
        try:
            if isinstance(request, UnparsedRequest):
                raise request.error()
            validate_collection(request.collection)
            chosen = sum((bool(request.to_model), request.rollback, request.abort))
            if chosen != 1:
                raise InvalidArgument("give exactly one of to_model, rollback and abort", field="to_model")
            migrations = self.runtime.migrations
            if request.rollback:
                yield _progress(await migrations.rollback(request.collection))
                return
            if request.abort:
                yield _progress(await migrations.abort(request.collection))
                return
            check_name(request.to_model, "to_model", required=True)
            await migrations.start(request.collection, request.to_model)
            async for step in migrations.watch(request.collection):
                yield _progress(step)
        except Exception as exc:
            await abort(context, exc)


def _progress(step: Progress) -> pb.MigrateProgress:
    return pb.MigrateProgress(
        state=step.state,
        documents=step.documents,
        done=step.done,
        embedded=step.embedded,
        skipped=step.skipped,
        fingerprint=step.fingerprint,
    )
