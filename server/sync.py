"""SyncVectors as a domain operation: a collection's changes after a sequence, as edge vectors.

The change log is compacted (one entry per document id), so a sync from sequence S sends each
document changed after S once: its projected vector (the edge bundle's projection, the exact
numpy code the edge runs after its own encoder), or one per chunk for a document stored as
several (with their character spans), or its deletion.

A checkpoint S means something only within one incarnation of the collection (records.
CollectionMeta.incarnation). A client whose checkpoint is of another incarnation (the collection
was recreated, the data directory wiped), or of none while S > 0, or ahead of the head, gets
``reset`` and every live document from the start.

Responses are bounded in bytes (server.message_size): pages hold up to a quarter of the message
limit; a change that would not fit a message alone is sent with its text cut
(``text_truncated``), so no document can make a collection unsyncable.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from server import message_size as size
from server.edge_builder import EdgeBundles
from server.errors import InvalidArgument, NotFound, PreconditionFailed
from server.ingest import stale_message, validate_collection
from server.model import ModelSpec
from server.store import Change, Store
from server.store import records as rec

PAGE_CHANGES = 256  # most changes read from the log per page


@dataclass(frozen=True)
class SyncRequest:
    collection: str
    since_sequence: int
    bundle_fingerprint: str
    dims: int  # 0: the bundle's default
    include_text: bool = True
    incarnation: str = ""  # of the client's checkpoint; "" on a first sync


@dataclass(frozen=True)
class SyncedChunk:
    """One chunk of a document stored as several: (dims,) float32 edge vector, hex content
    hash, characters [start, stop) of the document's text."""

    vector: np.ndarray
    content_hash: str
    start: int
    stop: int


@dataclass(frozen=True)
class SyncedChange:
    sequence: int
    doc_id: str
    vector: np.ndarray | None  # (dims,) float32 for an upsert; None for a delete
    text: str = ""
    metadata: dict[str, Any] | None = None
    text_truncated: bool = False
    content_hash: str = ""  # hex; upserts with the same one carry the same vector
    # A document stored as several chunks: all of them (vector and content_hash are the first's)
    chunks: tuple[SyncedChunk, ...] = ()


@dataclass(frozen=True)
class SyncPage:
    changes: list[SyncedChange]
    head_sequence: int  # the collection's sequence when the sync started
    remaining: int  # changes still to come after this page
    incarnation: str = ""
    reset: bool = False  # first page only: drop the local copy, these changes are all of it


class Syncer:
    def __init__(self, store: Store, spec: ModelSpec, edge: EdgeBundles, *, max_message_bytes: int) -> None:
        """``max_message_bytes``: the server's gRPC message limit; pages hold up to a quarter of
        it (several per call keep memory flat), one change alone up to all of it."""
        self.store, self.spec, self.edge = store, spec, edge
        self.max_item_bytes = max_message_bytes - size.RESPONSE_OVERHEAD
        self.max_page_bytes = max(1, max_message_bytes // 4)

    def _check(self, request: SyncRequest) -> int:
        """Validate ``request``; returns the edge dimensions to project to."""
        bundle = self.edge.bundle
        if request.bundle_fingerprint != bundle.fingerprint:
            raise PreconditionFailed(
                f"bundle_fingerprint {request.bundle_fingerprint!r} is not the server's edge bundle "
                f"{bundle.fingerprint!r}: download the current bundle (GetEdgeBundle) and sync "
                "again from sequence 0",
                field="bundle_fingerprint",
            )
        validate_collection(request.collection)
        top = bundle.projection.max_dims
        dims = request.dims or bundle.manifest.default_dims
        if dims > top:
            raise InvalidArgument(
                f"dimensions must be at most {top} (the edge bundle's projection produces {top} of "
                f"the model's {self.spec.dimension}), got {dims}",
                field="dimensions",
            )
        return dims

    async def pages(self, request: SyncRequest) -> AsyncIterator[SyncPage]:
        """Pages of changes with sequence > since_sequence, up to the head at the start. Always
        at least one page (empty when nothing changed)."""
        dims = self._check(request)
        meta = await asyncio.to_thread(self.store.collection, request.collection)
        if meta is None:
            raise NotFound(f"no collection {request.collection!r}", field="collection")
        if meta.fingerprint != self.spec.fingerprint:
            raise PreconditionFailed(
                stale_message(request.collection, meta.fingerprint, self.spec.fingerprint)
            )
        head, since = meta.sequence, request.since_sequence
        first_sync = since == 0 and not request.incarnation
        reset = since > head or not (first_sync or request.incarnation == meta.incarnation)
        if reset:
            since = 0
        remaining = await asyncio.to_thread(self.store.count_changes, request.collection, since, head)
        sent = False
        while True:
            changes = await asyncio.to_thread(
                self.store.changes, request.collection, since, head, PAGE_CHANGES
            )
            if not changes:
                break
            page, used = await asyncio.to_thread(self._page, changes, dims, request.include_text)
            remaining = max(0, remaining - used)
            since = changes[used - 1].sequence
            if page:
                yield SyncPage(page, head, remaining, meta.incarnation, reset and not sent)
                sent = True
        if not sent:
            yield SyncPage([], head, 0, meta.incarnation, reset)

    def _page(self, changes: list[Change], dims: int, include_text: bool) -> tuple[list[SyncedChange], int]:
        """Project the upserts of ``changes`` and take as many as fit ``max_page_bytes`` (at
        least one); returns (page, how many of ``changes`` it consumed)."""
        upserts = [c for c in changes if c.op == rec.OP_UPSERT and c.doc is not None]
        projected: dict[bytes, np.ndarray] = {}
        wanted = list(dict.fromkeys(h for c in upserts if c.doc is not None for h in c.doc.hashes))
        if wanted:
            full = self.store.vectors(wanted)
            rows = np.asarray(self.edge.project(full, dims), dtype=np.float32)
            projected = dict(zip(wanted, rows, strict=True))
        page: list[SyncedChange] = []
        used = 0
        for i, c in enumerate(changes):
            if c.op == rec.OP_UPSERT and c.doc is not None:
                chunks = tuple(
                    SyncedChunk(projected[ref.content_hash], ref.content_hash.hex(), ref.start, ref.stop)
                    for ref in c.doc.chunks
                )
                item = self._fit(
                    SyncedChange(
                        c.sequence,
                        c.doc_id,
                        projected[c.doc.hashes[0]],
                        (c.doc.text or "") if include_text else "",
                        c.doc.metadata if include_text else None,
                        content_hash=c.doc.hashes[0].hex(),  # what its vector was computed from
                        chunks=chunks,
                    )
                )
            elif c.op == rec.OP_DELETE:
                item = SyncedChange(c.sequence, c.doc_id, None)
            else:  # an upsert whose document is gone again: its delete comes later in the log
                continue
            cost = wire_size(item)
            if page and used + cost > self.max_page_bytes:
                return page, i
            page.append(item)
            used += cost
        return page, len(changes)

    def _fit(self, change: SyncedChange) -> SyncedChange:
        """``change`` with its text cut so that it fits a message alone."""
        over = wire_size(change) - self.max_item_bytes
        if over <= 0:
            return change
        raw = len(change.text.encode("utf-8"))
        text = size.cut_utf8(change.text, raw - over)
        return dataclasses.replace(change, text=text, text_truncated=True)


def wire_size(change: SyncedChange) -> int:
    """An upper bound of the change's serialized size in bytes, as an item of the response."""
    body = size.FIXED64 + size.FLAG + size.text(change.doc_id)  # sequence, op, id
    if change.vector is not None:
        vector = size.field(4 * len(change.vector)) + size.FIXED64 + size.FLAG  # data, dims, precision
        body += size.field(vector) + size.text(change.text) + size.struct(change.metadata)
        body += size.FLAG + size.field(len(change.content_hash))
        for chunk in change.chunks:  # vector, content hash, start, stop
            item = size.field(size.field(4 * len(chunk.vector)) + size.FIXED64 + size.FLAG)
            body += size.field(item + size.field(len(chunk.content_hash)) + 2 * size.FIXED64)
    return 1 + 5 + body  # a repeated message field: tag + length (at most 5 bytes) + body
