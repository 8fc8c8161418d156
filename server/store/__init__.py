"""The LMDB content-hash store and the usearch indexes derived from it."""

from server.store.index import CollectionIndex, Indexes
from server.store.lmdb_store import (
    Change,
    CollectionRow,
    DiskFull,
    StaleCollection,
    Store,
    StoreError,
    Upsert,
    VectorsMissing,
    open_store,
    store_in_use,
)
from server.store.records import ChunkRef, CollectionMeta, DocRecord, content_hash

__all__ = [
    "Change",
    "ChunkRef",
    "CollectionIndex",
    "CollectionMeta",
    "CollectionRow",
    "DiskFull",
    "DocRecord",
    "Indexes",
    "StaleCollection",
    "Store",
    "StoreError",
    "Upsert",
    "VectorsMissing",
    "content_hash",
    "open_store",
    "store_in_use",
]
