"""The write path of collections: Ingest and Delete (and ``reembed``, which re-ingests).

Ingest validates a batch of documents, cuts those longer than the model reads into chunks
(:mod:`server.chunking`; unless chunking is off for them: then they are cut at the model's
maximum, as before), embeds only the chunks the store has not seen (content hash of each
chunk's text; a short document is one chunk, its whole text), commits the batch in one LMDB
transaction, then brings the indexes up to date.

The caller acknowledges a document only after :meth:`Ingestor.process` returned it, i.e. after
the transaction holding it committed. Memory stays bounded because the caller reads ahead
through a :class:`ReadAhead` (at most ``ingest_max_pending`` documents and
``ingest_max_pending_bytes``) and hands over batches of at most ``ingest_commit_docs`` documents
and ``ingest_commit_bytes`` (one larger document goes alone).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from embedcore.chunking import embedded_part
from server import metrics
from server.chunking import Chunker, chunker_for
from server.embedder import Embedder, Priority
from server.errors import InvalidArgument, NotFound, NotReady, PreconditionFailed, ServiceError
from server.model import ModelSpec
from server.settings import Settings
from server.store import ChunkRef, Indexes, StaleCollection, Store, Upsert, VectorsMissing, content_hash
from server.store.lexical import LexicalIndexes
from server.store.versions import SEPARATOR as VERSION_SEPARATOR
from server.validation import check_characters, check_metadata

log = logging.getLogger(__name__)

T = TypeVar("T")

# LMDB keys are at most 511 bytes; a document key is collection + NUL + id.
MAX_COLLECTION_BYTES = 128
MAX_ID_BYTES = 256


@dataclass(frozen=True)
class IngestItem:
    collection: str
    doc_id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    store_text: bool = True
    chunking: bool | None = None  # None: the server's --chunking


@dataclass(frozen=True)
class IngestOutcome:
    item: IngestItem
    content_hash: str = ""  # hex, of the whole text (a chunked document has no vector under it)
    cached: bool = False  # nothing was embedded for it
    sequence: int = 0
    error: ServiceError | None = None
    chunks: int = 0  # vectors the document is stored as (1: embedded whole)
    chunks_embedded: int = 0  # of them, computed for this request (the rest were stored)
    unembedded_chars: int = 0  # characters at the end past --chunk-max-chars, stored, not embedded


def stale_message(collection: str, stored: str, serving: str) -> str:
    return (
        f"collection {collection!r} was embedded with model {stored}, but this server runs "
        f"{serving}; its vectors are not comparable. Stop the server and run "
        f"`embed-server reembed --collection {collection} --data-dir DIR --model MODEL`"
    )


def validate_collection(name: str, *, hidden_ok: bool = False) -> None:
    """InvalidArgument unless ``name`` is a collection name a client may use: 1 to
    MAX_COLLECTION_BYTES UTF-8 bytes, no NUL, no U+001F (it separates a collection's name from
    its hidden model versions, server.store.versions; ``hidden_ok``: such a name, used inside
    the server, whose collection part must be valid)."""
    if hidden_ok:
        name = name.split(VERSION_SEPARATOR, 1)[0]
    if not name:
        raise InvalidArgument("collection must not be empty", field="collection")
    if len(name.encode("utf-8")) > MAX_COLLECTION_BYTES or "\0" in name:
        raise InvalidArgument(
            f"collection must be at most {MAX_COLLECTION_BYTES} UTF-8 bytes without NUL", field="collection"
        )
    if VERSION_SEPARATOR in name:
        raise InvalidArgument(
            "collection must not contain U+001F (reserved for a collection's model versions)",
            field="collection",
        )


def validate_id(doc_id: str, field: str = "id") -> None:
    if not doc_id:
        raise InvalidArgument(f"{field} must not be empty", field=field)
    if len(doc_id.encode("utf-8")) > MAX_ID_BYTES or "\0" in doc_id:
        raise InvalidArgument(f"{field} must be at most {MAX_ID_BYTES} UTF-8 bytes without NUL", field=field)


def check_text_size(text: str, limit: int | None) -> None:
    """InvalidArgument when ``text`` is over ``limit`` UTF-8 bytes (None: no limit)."""
    if limit is None or len(text) <= limit // 4:  # at most 4 bytes per character: fits
        return
    size = len(text.encode("utf-8"))
    if size > limit:
        raise InvalidArgument(
            f"text is {size:,} UTF-8 bytes; a document may have at most {limit:,} "
            "(the server's --max-document-bytes)",
            field="text",
        )


def _validate(item: IngestItem, max_text_bytes: int | None, hidden_ok: bool = False) -> None:
    validate_collection(item.collection, hidden_ok=hidden_ok)
    validate_id(item.doc_id)
    if not item.text.strip():
        raise InvalidArgument("text must not be empty", field="text")
    check_characters(item.text, "text")
    check_text_size(item.text, max_text_bytes)
    check_metadata(item.metadata)


def footprint(item: IngestItem | IngestOutcome) -> int:
    """Bytes an item holds while it waits: its text as Python keeps it (1 to 4 bytes per
    character) and its metadata (as JSON, close to what the dict holds)."""
    if isinstance(item, IngestOutcome):
        item = item.item
    metadata = len(json.dumps(item.metadata, default=str)) if item.metadata else 0
    return sys.getsizeof(item.text) + metadata


class ReadAhead(Generic[T]):
    """One stream's read-ahead: FIFO bounded in items and in bytes. :meth:`put` waits while
    either bound is reached (the reader then stops reading, so gRPC flow control holds the
    client); an item larger than the byte bound is let in alone, once the queue is empty.
    Event-loop only (not thread-safe)."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: collections.deque[tuple[T, int]] = collections.deque()
        self.bytes = 0  # held now
        self.peak_bytes = 0  # the most held at once
        self._closed = False
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def _fits(self, size: int) -> bool:
        if not self._items:
            return True
        return len(self._items) < self.max_items and self.bytes + size <= self.max_bytes

    async def put(self, item: T, size: int) -> None:
        while not self._fits(size):
            self._changed.clear()
            await self._changed.wait()
        self._items.append((item, size))
        self.bytes += size
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        self._changed.set()

    def close(self) -> None:
        """No more items: :meth:`batch` returns what is left, then None."""
        self._closed = True
        self._changed.set()

    async def batch(self, max_items: int, max_bytes: int) -> list[T] | None:
        """Wait for items and take the oldest ones, at most ``max_items`` and ``max_bytes`` (at
        least one); None once closed and empty."""
        while not self._items:
            if self._closed:
                return None
            self._changed.clear()
            await self._changed.wait()
        out: list[T] = []
        taken = 0
        while self._items and len(out) < max_items:
            item, size = self._items[0]
            if out and taken + size > max_bytes:
                break
            self._items.popleft()
            out.append(item)
            taken += size
        self.bytes -= taken
        self._changed.set()
        return out

    def clear(self) -> None:
        """Drop everything held (a cancelled stream)."""
        self._items.clear()
        self.bytes = 0
        self._changed.set()


class Ingestor:
    """Shared by every Ingest stream of one server (and by ``reembed``)."""

    def __init__(
        self,
        store: Store,
        indexes: Indexes | None,
        embedder: Embedder,
        spec: ModelSpec,
        *,
        max_document_bytes: int | None = None,
        chunker: Chunker | None = None,
        chunking: bool = False,
        chunk_max_chars: int | None = None,
        lexical: LexicalIndexes | None = None,
        hidden_names: bool = False,
    ) -> None:
        """``max_document_bytes``: the largest text stored, in UTF-8 bytes (None: any).
        ``chunker``: cuts long documents (None: never, every document is embedded whole, cut at
        the model's maximum); ``chunking``: whether documents that do not say are chunked;
        ``chunk_max_chars``: characters of a document that chunking embeds (None: all);
        ``lexical``: the BM25 indexes, told of every commit (None: there are none);
        ``hidden_names``: it writes collections' hidden model versions (migrations), whose
        names carry the reserved U+001F."""
        self.store, self.indexes, self.embedder, self.spec = store, indexes, embedder, spec
        self.hidden_names = hidden_names
        self.max_document_bytes = max_document_bytes
        self.lexical = lexical
        self.chunker, self.chunking, self.chunk_max_chars = chunker, chunking, chunk_max_chars
        self.prompt = spec.document_prompt_name
        self.prompt_text = spec.prompt_text(self.prompt)

    @classmethod
    def from_settings(
        cls,
        store: Store,
        indexes: Indexes | None,
        embedder: Embedder,
        spec: ModelSpec,
        settings: Settings,
        *,
        lexical: LexicalIndexes | None = None,
        hidden_names: bool = False,
    ) -> Ingestor:
        """The ingestor a server with ``settings`` runs (the server, ``reembed`` and
        ``export-edge`` all build theirs here): its document size limit and chunking options."""
        return cls(
            store,
            indexes,
            embedder,
            spec,
            max_document_bytes=settings.max_document_bytes,
            chunker=chunker_for(spec, window=settings.chunk_tokens, overlap=settings.chunk_overlap_tokens),
            chunking=settings.chunking,
            chunk_max_chars=settings.chunk_max_chars,
            lexical=lexical,
            hidden_names=hidden_names,
        )

    def screen(self, item: IngestItem) -> IngestItem | IngestOutcome:
        """``item``, or its error outcome (without its text) when the text is too large: a
        stream's reader calls this first, so read-ahead never holds an oversized text."""
        try:
            check_text_size(item.text, self.max_document_bytes)
        except InvalidArgument as exc:
            return IngestOutcome(dataclasses.replace(item, text="", metadata={}), error=exc)
        return item

    def hash_of(self, text: str) -> bytes:
        return content_hash(self.spec.fingerprint, self.prompt_text, text)

    async def process(
        self, items: Sequence[IngestItem], *, rewrite_from: str | None = None
    ) -> list[IngestOutcome]:
        """Store ``items`` (one commit); outcomes in input order. Raises only for call-level
        failures (overload, worker trouble), never for one bad document.

        ``rewrite_from``: the collections are stored under that (older) model fingerprint and are
        being re-embedded (``reembed``): they are written while they stay marked with it."""
        allowed = {self.spec.fingerprint, *([rewrite_from] if rewrite_from else [])}
        errors: dict[int, ServiceError] = {}
        stale: dict[str, str | None] = {}
        for i, item in enumerate(items):
            try:
                _validate(item, self.max_document_bytes, self.hidden_names)
            except ServiceError as exc:
                errors[i] = exc
                continue
            if item.collection not in stale:
                meta = await asyncio.to_thread(self.store.collection, item.collection)
                stale[item.collection] = (
                    meta.fingerprint if meta and meta.fingerprint not in allowed else None
                )
            stored = stale[item.collection]
            if stored is not None:
                errors[i] = PreconditionFailed(stale_message(item.collection, stored, self.spec.fingerprint))
        good = [i for i in range(len(items)) if i not in errors]
        # The encoder's checks (size, content), per document: a bad one is rejected alone.
        checked = await self.embedder.validate(
            [items[i].text for i in good], prompt_name=self.prompt, field=["text"] * len(good)
        )
        errors.update({i: error for i, error in zip(good, checked, strict=True) if error is not None})
        good = [i for i in good if i not in errors]
        chunks = await asyncio.to_thread(self._chunk, {i: items[i] for i in good})
        # Every vector this batch needs: content hash -> the text it is computed from.
        text_of: dict[bytes, str] = {}
        hashes: dict[int, list[bytes]] = {}  # of each document's vectors (chunks)
        whole: dict[int, bytes] = {}  # of each document's whole text
        for i in good:
            spans = chunks.get(i)
            texts = [items[i].text] if spans is None else [items[i].text[a:b] for a, b in spans]
            hashes[i] = [self.hash_of(t) for t in texts]
            whole[i] = hashes[i][0] if spans is None else self.hash_of(items[i].text)
            text_of.update(zip(hashes[i], texts, strict=True))
        missing = await asyncio.to_thread(self.store.missing_hashes, list(text_of))
        vectors = await self._embed({h: text_of[h] for h in text_of if h in missing})
        results: list[tuple[int, bool]] = []
        for _attempt in range(3):
            upserts = [self._upsert(items[i], whole[i], hashes[i], chunks.get(i), vectors) for i in good]
            try:
                results = await asyncio.to_thread(self._commit, upserts, rewrite_from)
                break
            except VectorsMissing as exc:  # gc removed a vector we counted as cached
                vectors.update(await self._embed({h: text_of[h] for h in exc.hashes if h in text_of}))
                missing |= exc.hashes
            except StaleCollection as exc:  # the collection appeared under another model meanwhile
                for i in good:
                    if items[i].collection == exc.collection:
                        errors[i] = PreconditionFailed(str(exc))
                good = [i for i in good if i not in errors]
        else:
            raise NotReady("the store kept changing under this batch; send it again")
        by_index = dict(zip(good, results, strict=True))
        out = []
        for i, item in enumerate(items):
            if i in errors:
                out.append(IngestOutcome(item, error=errors[i]))
            else:
                seq, _changed = by_index[i]
                # a text (chunk) repeated within the batch is embedded once: later copies are hits
                embedded = len({h for h in hashes[i] if h in missing})
                missing.difference_update(hashes[i])
                count = len(hashes[i])
                tail = self._unembedded(item.text, chunks.get(i))
                out.append(
                    IngestOutcome(item, whole[i].hex(), embedded == 0, seq, None, count, embedded, tail)
                )
                if tail:
                    metrics.CUT_DOCUMENTS.inc()
                metrics.INGEST_CHUNKS.labels("embedded").inc(embedded)
                metrics.INGEST_CHUNKS.labels("cached").inc(count - embedded)
                if count > 1:
                    metrics.CHUNKED_DOCUMENTS.inc()
        return out

    def _chunk(self, items: dict[int, IngestItem]) -> dict[int, list[tuple[int, int]]]:
        """(Blocking) character spans of the chunks of each item cut into several; items
        embedded whole (short, or chunking off) are left out."""
        out: dict[int, list[tuple[int, int]]] = {}
        if self.chunker is None:
            return out
        for i, item in items.items():
            if not (self.chunking if item.chunking is None else item.chunking):
                continue
            spans = self.chunker.split(self._chunked_part(item.text))
            if len(spans) > 1:
                out[i] = [(span.start, span.stop) for span in spans]
        return out

    def _chunked_part(self, text: str) -> str:
        """The beginning of ``text`` that chunking embeds (embedcore.chunking.embedded_part)."""
        return embedded_part(text, self.chunk_max_chars)

    def _unembedded(self, text: str, spans: list[tuple[int, int]] | None) -> int:
        """Characters at the end of a chunked ``text`` past --chunk-max-chars (0: none)."""
        if spans is None or self.chunk_max_chars is None or len(text) <= self.chunk_max_chars:
            return 0
        return len(text) - spans[-1][1]

    @staticmethod
    def _upsert(
        item: IngestItem,
        whole: bytes,
        hashes: list[bytes],
        spans: list[tuple[int, int]] | None,
        vectors: dict[bytes, np.ndarray],
    ) -> Upsert:
        text = item.text if item.store_text else None
        if spans is None:
            vector = vectors.get(hashes[0])
            return Upsert(item.collection, item.doc_id, hashes[0], text, item.metadata, vector)
        refs = tuple(ChunkRef(h, a, b) for h, (a, b) in zip(hashes, spans, strict=True))
        return Upsert(
            item.collection,
            item.doc_id,
            whole,
            text,
            item.metadata,
            chunks=refs,
            chunk_vectors={h: vectors[h] for h in hashes if h in vectors},
        )

    async def _embed(self, texts_by_hash: dict[bytes, str]) -> dict[bytes, np.ndarray]:
        if not texts_by_hash:
            return {}
        keys = list(texts_by_hash)
        result = await self.embedder.encode(
            [texts_by_hash[k] for k in keys], prompt_name=self.prompt, priority=Priority.BULK
        )
        return {k: result.vectors[j] for j, k in enumerate(keys)}

    def _commit(self, upserts: list[Upsert], rewrite_from: str | None) -> list[tuple[int, bool]]:
        if not upserts:
            return []
        results = self.store.upsert(
            upserts,
            fingerprint=self.spec.fingerprint,
            dimension=self.spec.dimension,
            expect_fingerprint=rewrite_from,
        )
        if self.indexes is not None and rewrite_from is None:
            for collection in {u.collection for u in upserts}:
                self.indexes.get(collection).catch_up(self.store)
        if self.lexical is not None:
            for collection in {u.collection for u in upserts}:
                self.lexical.touch(collection)
        return results

    async def delete(self, collection: str, doc_ids: Sequence[str]) -> tuple[int, int]:
        """Delete documents of ``collection``; returns (how many existed, sequence afterwards).
        NotFound for an unknown collection."""
        validate_collection(collection)
        for i, doc_id in enumerate(doc_ids):
            validate_id(doc_id, f"ids[{i}]")
        meta = await asyncio.to_thread(self.store.collection, collection)
        if meta is None:
            raise NotFound(f"no collection {collection!r}", field="collection")
        deleted, sequence = await asyncio.to_thread(self.store.delete, collection, list(doc_ids))
        if self.indexes is not None and meta.fingerprint == self.spec.fingerprint:
            await asyncio.to_thread(self.indexes.get, collection)  # catches up with the delete
        if self.lexical is not None:
            self.lexical.touch(collection)
        return deleted, sequence
