"""Collection management: list the collections with their sizes, drop one, get documents by id.

A dropped collection loses its documents, change log, vector index files and lexical index in
one store transaction plus the removal of its cache files; its vectors stay in the
content-addressed store (other collections may share them) until ``embed-server gc``. Edges
that sync it get NOT_FOUND (the collection is unknown); one created again under the name is a
new incarnation.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

from server import message_size as size
from server.errors import NotFound
from server.ingest import validate_collection, validate_id
from server.store import Indexes, Store
from server.store.lexical import LexicalIndexes
from server.validation import check_count, check_unique


class _SearchCaches(Protocol):
    """What the catalog needs of the searcher: dropping a collection's caches."""

    def forget(self, collection: str) -> None: ...


MAX_GET_IDS = 1000


@dataclass(frozen=True)
class CollectionSummary:
    """One collection: counters, model, and sizes in bytes (see embedding.v1.CollectionSummary)."""

    name: str
    documents: int
    sequence: int
    model_fingerprint: str
    stale: bool  # stored under another model than the serving one
    incarnation: str
    document_bytes: int  # document records in the store
    vector_bytes: int  # distinct stored vectors its documents use
    index_bytes: int  # the saved usearch index file
    lexical_index_bytes: int  # the saved BM25 index files


@dataclass(frozen=True)
class StoredDocument:
    id: str
    text: str  # "" when stored without text or not asked for
    metadata: dict[str, Any]
    content_hash: str  # hex
    chunks: int  # 1: embedded whole
    sequence: int  # of its last upsert
    stored_text: bool
    text_truncated: bool = False  # cut to keep the response under the message limit


@dataclass(frozen=True)
class Documents:
    found: list[StoredDocument]  # in request order
    missing: list[str]  # in request order
    sequence: int


class Catalog:
    """List, drop, get; every method runs its store reads off the event loop."""

    def __init__(
        self,
        store: Store,
        indexes: Indexes,
        lexical: LexicalIndexes,
        searcher: _SearchCaches,
        *,
        serving_fingerprint: str,
        max_message_bytes: int,
        served_fingerprints: frozenset[str] = frozenset(),
    ) -> None:
        """``served_fingerprints``: the models served beside ``serving_fingerprint`` (a
        collection stored under one of them is not stale)."""
        self.store, self.indexes, self.lexical, self.searcher = store, indexes, lexical, searcher
        self.serving_fingerprint = serving_fingerprint
        self.served_fingerprints = served_fingerprints
        self.max_response_bytes = max_message_bytes - size.RESPONSE_OVERHEAD

    async def collections(self) -> list[CollectionSummary]:
        """Every collection, by name."""
        return await asyncio.to_thread(self._list)

    def _list(self) -> list[CollectionSummary]:
        out = []
        for row in self.store.collection_rows(self.serving_fingerprint):
            document_bytes, vector_bytes = self.store.collection_bytes(row.name)
            out.append(
                CollectionSummary(
                    row.name,
                    row.documents,
                    row.sequence,
                    row.model_fingerprint,
                    row.stale and row.model_fingerprint not in self.served_fingerprints,
                    row.incarnation,
                    document_bytes,
                    vector_bytes,
                    self.indexes.nbytes_of(row.name),
                    self.lexical.nbytes_of(row.name),
                )
            )
        return out

    async def drop(self, collection: str) -> int:
        """Remove ``collection`` (see the module docstring); returns how many documents it
        held. NotFound when there is no such collection."""
        validate_collection(collection)
        return await asyncio.to_thread(self._drop, collection)

    def _drop(self, collection: str) -> int:
        documents = self.store.drop_collection(collection)
        if documents is None:
            raise NotFound(f"no collection {collection!r}", field="collection")
        self.indexes.drop(collection)
        self.lexical.drop(collection)
        self.searcher.forget(collection)
        return documents

    async def get(self, collection: str, ids: list[str], *, include_text: bool = True) -> Documents:
        """The documents of ``ids`` that exist (in order) and the ids that do not. Texts fill
        the message limit in request order; one that does not fit is cut (``text_truncated``).
        NotFound for an unknown collection; InvalidArgument for ids over their limits."""
        validate_collection(collection)
        check_count(ids, "ids", limit=MAX_GET_IDS)
        check_unique(ids, "ids")
        for i, doc_id in enumerate(ids):
            validate_id(doc_id, f"ids[{i}]")
        return await asyncio.to_thread(self._get, collection, ids, include_text)

    def _get(self, collection: str, ids: list[str], include_text: bool) -> Documents:
        meta = self.store.collection(collection)
        if meta is None:
            raise NotFound(f"no collection {collection!r}", field="collection")
        records = self.store.documents(collection, ids)
        found: list[StoredDocument] = []
        missing: list[str] = []
        # Fixed parts first (id, hash, counters, metadata), then texts in order, as Search does.
        room = self.max_response_bytes
        for doc_id, doc in zip(ids, records, strict=True):
            if doc is None:
                missing.append(doc_id)
                room -= size.text(doc_id) + 2
                continue
            metadata = doc.metadata if include_text else {}
            fixed = 5 + size.text(doc_id) + size.text("0" * 64) + 6 + size.FIXED64 + 2 * size.FLAG
            room -= fixed + size.struct(metadata)
            found.append(
                StoredDocument(
                    doc_id,
                    (doc.text or "") if include_text else "",
                    metadata,
                    doc.content_hash.hex(),
                    max(1, len(doc.chunks)),
                    doc.sequence,
                    doc.text is not None,
                )
            )
        out = []
        for document in found:
            raw = len(document.text.encode("utf-8"))
            keep = min(raw, max(0, room))
            room -= keep + 5
            if keep < raw:
                document = StoredDocument(
                    **{
                        **document.__dict__,
                        "text": size.cut_utf8(document.text, keep),
                        "text_truncated": True,
                    }
                )
            out.append(document)
        return Documents(out, missing, meta.sequence)
