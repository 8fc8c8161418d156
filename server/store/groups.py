"""Which documents share each distinct vector of a collection's index.

The store is content-addressed: documents with the same text have byte-identical vectors. An
HNSW graph over many identical points links them to each other and strands everything else
(6,000 documents cycling over 40 texts: 127-146 of 200 unique documents no longer found
themselves at k=1), so the index holds each distinct vector once, under a group key, and this
bookkeeping maps group keys to the documents (their index keys) that carry that vector.

A document stored as several chunks has one vector per chunk, so the members of a group are
chunks: member id = document key << :data:`CHUNK_BITS` | chunk ordinal (a document embedded
whole is its chunk 0). Pure bookkeeping, no usearch and no LMDB: :meth:`ContentGroups.assign_doc`
moves a document's chunks between groups, :meth:`ContentGroups.settle` then says which groups
the usearch index must gain (new content) or lose (no chunk left).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence

import numpy as np

CHUNK_BITS = 20  # chunks per document: at most 2**20 (an 8 MiB text has ~10,000 windows)
_ORDINAL_MASK = (1 << CHUNK_BITS) - 1


def member_id(doc_key: int, ordinal: int) -> int:
    """The group member standing for chunk ``ordinal`` of document ``doc_key``."""
    return (doc_key << CHUNK_BITS) | ordinal


def split_member(member: int) -> tuple[int, int]:
    """(document key, chunk ordinal) of a group member."""
    return member >> CHUNK_BITS, member & _ORDINAL_MASK


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
        self._chunk_count: dict[int, int] = {}  # documents of more than one chunk only
        self._extra_chunks = 0  # sum of (chunks - 1) over them

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
        return len(self._group_of) - self._extra_chunks

    @property
    def chunks(self) -> int:
        """Chunks of the live documents (a document embedded whole is one)."""
        return len(self._group_of)

    def assign_doc(self, doc_key: int, hashes: Sequence[bytes]) -> None:
        """Document ``doc_key`` now carries ``hashes``, one per chunk in order (empty: it is
        gone). Idempotent."""
        old = self._chunk_count.get(doc_key, 1)
        for ordinal, chash in enumerate(hashes):
            self.assign(member_id(doc_key, ordinal), chash)
        for ordinal in range(len(hashes), old):
            self.assign(member_id(doc_key, ordinal), None)
        self._extra_chunks -= old - 1
        if len(hashes) > 1:
            self._chunk_count[doc_key] = len(hashes)
            self._extra_chunks += len(hashes) - 1
        else:
            self._chunk_count.pop(doc_key, None)

    def assign(self, doc_key: int, content_hash: bytes | None) -> None:
        """Member ``doc_key`` (a chunk: :func:`member_id`) now carries ``content_hash`` (None:
        it is gone). Idempotent. Documents go through :meth:`assign_doc`."""
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

    def expand(self, keys: Iterable[int], k: int) -> list[tuple[int, int, int]]:
        """(group key, document key, chunk ordinal) for the first ``k`` documents of the groups
        ``keys``, in the groups' order, each document once (at its first group: its best chunk
        when ``keys`` are ranked); within a group by document key (the order documents were
        created). Fewer than ``k`` when the groups hold fewer documents."""
        out: list[tuple[int, int, int]] = []
        seen: set[int] = set()
        for key in keys:
            members = self._members.get(key)
            if members is None:
                continue
            room = k - len(out)
            if isinstance(members, int):
                chosen = [members]
            elif self._chunk_count:  # chunks of one document may share the group: take all
                chosen = sorted(members)
            else:
                chosen = sorted(members) if len(members) <= room else heapq.nsmallest(room, members)
            for member in chosen:
                doc, ordinal = split_member(member)
                if doc in seen:
                    continue
                seen.add(doc)
                out.append((key, doc, ordinal))
                if len(out) >= k:
                    return out
        return out

    def table(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys (n,) uint64, hashes (n, 32) uint8) of every group, for saving beside the index."""
        keys = np.fromiter(self._hash_of, dtype=np.uint64, count=len(self._hash_of))
        hashes = np.frombuffer(b"".join(self._hash_of.values()), dtype=np.uint8).reshape(-1, 32)
        return keys, hashes
