"""Which documents share each distinct vector of a collection's index.

The store is content-addressed: documents with the same text have byte-identical vectors. An
HNSW graph over many identical points links them to each other and strands everything else
(6,000 documents cycling over 40 texts: 127-146 of 200 unique documents no longer found
themselves at k=1), so the index holds each distinct vector once, under a group key, and this
bookkeeping maps group keys to the documents (their index keys) that carry that vector.

Pure bookkeeping, no usearch and no LMDB: :meth:`ContentGroups.assign` moves documents between
groups, :meth:`ContentGroups.settle` then says which groups the usearch index must gain (new
content) or lose (no document left).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

import numpy as np


class ContentGroups:
    """Group key <-> content hash, and the documents of each group.

    Memory, measured with tracemalloc over 100,000 documents: ~340 bytes per document when
    every text is unique (a lone member is kept as an int, not a set), ~140 when 40 texts repeat;
    the usearch index takes ~900 bytes per vector."""

    def __init__(self, next_key: int = 1) -> None:
        self.next_key = next_key  # group keys are never reused within one lineage of saves
        self._key_of: dict[bytes, int] = {}
        self._hash_of: dict[int, bytes] = {}  # every group, with or without documents
        self._members: dict[int, int | set[int]] = {}  # groups with documents only
        self._group_of: dict[int, int] = {}
        self._pending: set[int] = set()  # groups created since the last settle (not indexed yet)
        self._touched: set[int] = set()

    @classmethod
    def indexed(cls, keys: np.ndarray, hashes: np.ndarray, next_key: int) -> ContentGroups:
        """The groups a saved index holds (``keys``: (n,) uint64, ``hashes``: (n, 32) uint8),
        with no documents yet: each must be claimed by :meth:`assign` before :meth:`settle`,
        or it is reported removed."""
        groups = cls(next_key)
        for key, raw in zip(keys.tolist(), hashes, strict=True):
            chash = bytes(raw)
            groups._key_of[chash] = key
            groups._hash_of[key] = chash
            groups._touched.add(key)
        return groups

    def __len__(self) -> int:
        """Distinct vectors (groups)."""
        return len(self._hash_of)

    @property
    def documents(self) -> int:
        return len(self._group_of)

    def assign(self, doc_key: int, content_hash: bytes | None) -> None:
        """Document ``doc_key`` now carries ``content_hash`` (None: it is gone). Idempotent."""
        old = self._group_of.get(doc_key)
        new = None if content_hash is None else self._key_of.get(content_hash)
        if old is not None and old == new:
            return
        if old is not None:
            self._leave(old, doc_key)
            del self._group_of[doc_key]
        if content_hash is None:
            return
        if new is None:
            new = self.next_key
            self.next_key += 1
            self._key_of[content_hash] = new
            self._hash_of[new] = content_hash
            self._pending.add(new)
        self._join(new, doc_key)
        self._group_of[doc_key] = new

    def _join(self, group: int, doc_key: int) -> None:
        members = self._members.get(group)
        if members is None:
            self._members[group] = doc_key
        elif isinstance(members, int):
            self._members[group] = {members, doc_key}
        else:
            members.add(doc_key)
        self._touched.add(group)

    def _leave(self, group: int, doc_key: int) -> None:
        members = self._members[group]
        if isinstance(members, int):
            del self._members[group]
        else:
            members.discard(doc_key)
            if len(members) == 1:
                self._members[group] = next(iter(members))
        self._touched.add(group)

    def settle(self) -> tuple[list[tuple[int, bytes]], list[int]]:
        """(groups to add to the index: (key, content hash); group keys to remove from it) since
        the last settle. Emptied groups are forgotten."""
        added: list[tuple[int, bytes]] = []
        removed: list[int] = []
        for key in self._touched:
            if key in self._members:
                if key in self._pending:
                    added.append((key, self._hash_of[key]))
                continue
            if key not in self._pending:
                removed.append(key)
            del self._key_of[self._hash_of.pop(key)]
        self._pending.clear()
        self._touched.clear()
        return sorted(added), sorted(removed)

    def expand(self, keys: Iterable[int], k: int) -> list[tuple[int, int]]:
        """(group key, document key) for the first ``k`` documents of the groups ``keys``, in
        the groups' order; within a group by document key (the order documents were created)."""
        out: list[tuple[int, int]] = []
        for key in keys:
            members = self._members.get(key)
            if members is None:
                continue
            room = k - len(out)
            if isinstance(members, int):
                chosen = [members]
            else:
                chosen = sorted(members) if len(members) <= room else heapq.nsmallest(room, members)
            out.extend((key, doc) for doc in chosen)
            if len(out) >= k:
                break
        return out

    def table(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys (n,) uint64, hashes (n, 32) uint8) of every group, for saving beside the index."""
        keys = np.fromiter(self._hash_of, dtype=np.uint64, count=len(self._hash_of))
        hashes = np.frombuffer(b"".join(self._hash_of.values()), dtype=np.uint8).reshape(-1, 32)
        return keys, hashes
