"""SyncVectors as a domain operation: a collection's changes after a sequence, as edge vectors.

The change log is compacted (one entry per document id), so a sync from sequence S sends each
document changed after S once: its projected vector (the edge bundle's projection, the exact
numpy code the edge runs after its own encoder) or its deletion. Pages are bounded in bytes as
well as in changes, so no response outgrows the message limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.edge_builder import EdgeBundles
from server.errors import InvalidArgument, NotFound, PreconditionFailed
from server.ingest import stale_message, validate_collection
from server.model import ModelSpec
from server.store import Change, Store
from server.store import records as rec

PAGE_CHANGES = 256  # most changes read from the log per page
# Serialized overhead of one change besides its vector, text, metadata and id (tags, lengths,
# sequence): generous, so the byte bound holds.
_CHANGE_OVERHEAD = 64


@dataclass(frozen=True)
class SyncRequest:
    collection: str
    since_sequence: int
    bundle_fingerprint: str
    dims: int  # 0: the bundle's default
    include_text: bool = True


@dataclass(frozen=True)
class SyncedChange:
    sequence: int
    doc_id: str
    vector: np.ndarray | None  # (dims,) float32 for an upsert; None for a delete
    text: str = ""
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class SyncPage:
    changes: list[SyncedChange]
    head_sequence: int  # the collection's sequence when the sync started
    remaining: int  # changes still to come after this page


class Syncer:
    def __init__(self, store: Store, spec: ModelSpec, edge: EdgeBundles, *, max_page_bytes: int) -> None:
        self.store, self.spec, self.edge = store, spec, edge
        self.max_page_bytes = max_page_bytes

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
                yield SyncPage(page, head, remaining)
                sent = True
        if not sent:
            yield SyncPage([], head, 0)

    def _page(self, changes: list[Change], dims: int, include_text: bool) -> tuple[list[SyncedChange], int]:
        """Project the upserts of ``changes`` and take as many as fit ``max_page_bytes`` (at
        least one); returns (page, how many of ``changes`` it consumed)."""
        upserts = [c for c in changes if c.op == rec.OP_UPSERT and c.doc is not None]
        rows: dict[int, np.ndarray] = {}
        if upserts:
            full = self.store.vectors([c.doc.content_hash for c in upserts if c.doc is not None])
            projected = np.asarray(self.edge.project(full, dims), dtype=np.float32)
            rows = {c.sequence: projected[i] for i, c in enumerate(upserts)}
        page: list[SyncedChange] = []
        used = 0
        for i, c in enumerate(changes):
            if c.op == rec.OP_UPSERT and c.doc is not None:
                text = (c.doc.text or "") if include_text else ""
                metadata = c.doc.metadata if include_text else None
                item = SyncedChange(c.sequence, c.doc_id, rows[c.sequence], text, metadata)
            elif c.op == rec.OP_DELETE:
                item = SyncedChange(c.sequence, c.doc_id, None)
            else:  # an upsert whose document is gone again: its delete comes later in the log
                continue
            size = _size(item, dims)
            if page and used + size > self.max_page_bytes:
                return page, i
            page.append(item)
            used += size
        return page, len(changes)


def _size(change: SyncedChange, dims: int) -> int:
    """An upper bound of the change's serialized size in bytes."""
    size = _CHANGE_OVERHEAD + len(change.doc_id.encode("utf-8"))
    if change.vector is not None:
        size += 4 * dims + len(change.text.encode("utf-8"))
        if change.metadata:
            # A Struct spends a few bytes of tags per value beyond its JSON text.
            size += 2 * len(repr(change.metadata).encode("utf-8"))
    return size
