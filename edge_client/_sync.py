"""Incremental SyncVectors into the local index: upserts and deletes after the last sequence.
A document the server stored as several chunks arrives with a vector per chunk (VectorChange.
chunks), all of which the index keeps.

Changes arrive in sequence order and applying them is idempotent (an upsert replaces, a
delete of a missing id does nothing), so progress is checkpointed (index saved atomically,
then the sequence committed) every few thousand changes and when the stream breaks; the next
sync resumes after the last checkpoint. A bundle other than the one the index was built with
makes the index stale: it is emptied and synced from the start.

A checkpoint is (collection incarnation, sequence): a sequence means something only within the
incarnation of the collection it was read from. When the server's collection is not that one
any more (recreated under the same name, a wiped data directory) or its head is below the
checkpoint, the server answers ``reset``: the synced documents are dropped (documents added on
the device stay) and everything the server holds follows. A collection the server does not
have (NOT_FOUND: dropped) raises CollectionNotFound after dropping what was synced of it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict

from edge_client.errors import CollectionNotFound, FingerprintMismatch, ServerError, ServerUnavailable
from edge_client.index import Chunk, LocalIndex, vector_content
from protos.embedding.v1 import embedding_pb2 as pb

log = logging.getLogger(__name__)

CHECKPOINT_CHANGES = 5000
CHECKPOINT_SECONDS = 5.0


@dataclass(frozen=True)
class SyncReport:
    collection: str
    upserts: int
    deletes: int
    sequence: int  # the index now reflects the collection up to this sequence
    full_resync: bool  # the synced documents were dropped first (new bundle, recreated collection)
    documents: int  # documents in the local index afterwards
    incarnation: str = ""  # of the server's collection the index now reflects


def _apply(index: LocalIndex, changes: Any, source: str = "sync") -> tuple[int, int, int]:
    """Apply one message's changes in order; returns (upserts, deletes, last sequence)."""
    upserts = deletes = 0
    last = 0
    pending: list[Any] = []

    def flush() -> None:
        if not pending:
            return
        vectors = np.stack([np.frombuffer(c.vector.data, dtype="<f4") for c in pending])
        fallback = vector_content(vectors)  # a server that does not send content hashes
        index.upsert(
            [c.id for c in pending],
            vectors,
            [c.text for c in pending],
            [MessageToDict(c.metadata) for c in pending],
            source=source,
            contents=[
                f"server:{c.content_hash}" if c.content_hash else fallback[i] for i, c in enumerate(pending)
            ],
            truncated=[c.text_truncated for c in pending],
            chunks=[
                [
                    Chunk(
                        np.frombuffer(ch.vector.data, dtype="<f4"),
                        f"server:{ch.content_hash}",
                        ch.start,
                        ch.stop,
                    )
                    for ch in c.chunks
                ]
                for c in pending
            ],
        )
        pending.clear()

    for change in changes:
        if change.op == pb.VectorChange.OP_UPSERT:
            dims = {change.vector.dims, *(ch.vector.dims for ch in change.chunks)}
            if dims != {index.dims}:
                raise ServerError(f"server sent {max(dims)}-dim vectors, index has {index.dims}")
            pending.append(change)
            upserts += 1
        elif change.op == pb.VectorChange.OP_DELETE:
            flush()  # keep the order: an upsert before a delete of the same id must land first
            index.delete([change.id])
            deletes += 1
        last = max(last, int(change.sequence))
    flush()
    return upserts, deletes, last


def sync_collection(
    stub: Any,
    index: LocalIndex,
    *,
    collection: str,
    bundle_fingerprint: str,
    timeout: float = 600.0,
    metadata: tuple[tuple[str, str], ...] = (),
    progress: bool = False,
    part: str = "",
) -> SyncReport:
    """Pull changes after the index's sequence; see the module docstring. ``part``: the
    shard this stream comes from when the collection is split over several (embedcore.router):
    each part keeps its own checkpoint (``sequence@PART``, ``incarnation@PART``) and its
    documents (source ``sync@PART``), so a reset of one part drops only that part's documents.
    The caller resets the index for a new bundle before syncing the parts."""
    source = f"sync@{part}" if part else "sync"

    def key(name: str) -> str:
        return f"{name}@{part}" if part else name

    other_collection = index.get_state("collection") not in ("", collection)
    full = index.get_state("bundle_fingerprint") != bundle_fingerprint or other_collection
    if full:
        index.reset()
        index.set_state("bundle_fingerprint", bundle_fingerprint)
        index.set_state("collection", collection)
        index.save()
    since = int(index.get_state(key("sequence"), "0"))
    request = pb.SyncVectorsRequest(
        collection=collection,
        since_sequence=since,
        bundle_fingerprint=bundle_fingerprint,
        dimensions=index.dims,
        include_text=True,
        incarnation=index.get_state(key("incarnation")),
    )
    upserts = deletes = 0
    applied = since
    unsaved = 0
    last_save = time.monotonic()
    head = since
    bar = None
    try:
        for response in stub.SyncVectors(request, timeout=timeout, metadata=metadata):
            if response.reset:
                # Our checkpoint is not of this collection: what we synced from it goes; the
                # changes that follow are all of it.
                index.drop_source(source)
                applied = head = 0
                full = True
            if response.incarnation:
                index.set_state(key("incarnation"), response.incarnation)
            head = max(head, int(response.head_sequence))
            if bar is None and progress:
                from tqdm import tqdm

                bar = tqdm(total=len(response.changes) + int(response.remaining), unit="vec", desc=collection)
            u, d, last = _apply(index, response.changes, source)
            upserts, deletes, unsaved = upserts + u, deletes + d, unsaved + u + d
            applied = max(applied, last)
            if bar is not None:
                bar.update(len(response.changes))
            if unsaved >= CHECKPOINT_CHANGES or time.monotonic() - last_save > CHECKPOINT_SECONDS:
                _checkpoint(index, applied, key=key("sequence"))
                unsaved, last_save = 0, time.monotonic()
    except grpc.RpcError as exc:
        _checkpoint(
            index, applied, key=key("sequence")
        )  # what arrived is applied in order: keep it, resume later
        code = exc.code()
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            raise FingerprintMismatch(
                f"the server refused to sync {collection!r}: {exc.details()} This edge runs bundle "
                f"{bundle_fingerprint}; run `edge-client init --server HOST:PORT` to fetch the "
                "server's bundle, then sync again (the local index is rebuilt)."
            ) from exc
        if code == grpc.StatusCode.NOT_FOUND:
            # Dropped on the server (or never there): what was synced of it goes, with the
            # checkpoint, so a collection created again under the name starts from scratch.
            index.drop_source(source)
            for name, value in ((key("sequence"), "0"), (key("incarnation"), ""), ("synced_at", "")):
                index.set_state(name, value)
            index.save()
            raise CollectionNotFound(
                f"the server has no collection {collection!r} (dropped or never created); "
                "its synced documents were removed from the local index",
                code=code.name,
                detail=exc.details() or "",
            ) from exc
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise ServerUnavailable(
                f"sync of {collection!r} interrupted ({code.name}) at sequence {applied}; "
                "run sync again to resume"
            ) from exc
        raise ServerError(f"SyncVectors failed: {code.name}: {exc.details()}", code=code.name) from exc
    finally:
        if bar is not None:
            bar.close()
    # The stream ended normally: everything up to the head is reflected (even if the last
    # changes before it were compacted away).
    _checkpoint(index, max(applied, head), complete=True, key=key("sequence"))
    return SyncReport(
        collection,
        upserts,
        deletes,
        max(applied, head),
        full,
        len(index),
        index.get_state(key("incarnation")),
    )


def _checkpoint(index: LocalIndex, sequence: int, *, complete: bool = False, key: str = "sequence") -> None:
    index.set_state(key, str(sequence))
    if complete:
        index.touch_sync()  # staleness counts from the last complete sync
    index.save()
