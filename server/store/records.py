"""Byte layouts of what the store keeps in LMDB, and the content hash.

Keys put the collection name first, NUL-separated, so one cursor range covers one collection.
Values are fixed-width headers followed by variable parts, written and read only here.
"""

from __future__ import annotations

import hashlib
import json
import struct
import uuid
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

# Bump when tokenization/pooling code changes what a (model, prompt, text) embeds to.
PREPROCESSING_VERSION = "1"

OP_UPSERT = 1
OP_DELETE = 2

_DTYPES: dict[int, np.dtype[Any]] = {0: np.dtype("<f4"), 1: np.dtype("<f2")}
_CODES = {v: k for k, v in _DTYPES.items()}
_DOC_HEADER = struct.Struct(">32sQQBI")  # content hash, index key, sequence, flags, text bytes
_HAS_TEXT, _ZLIB, _CHUNKED = 1, 2, 4
# A chunked document's chunk table follows the header (before the text, so the hashes are read
# without decompressing the text): count, then per chunk its content hash and character span.
_CHUNK_COUNT = struct.Struct(">I")
_CHUNK = struct.Struct(">32sII")  # content hash, start, stop (characters of the text)
# Longer texts are zlib-compressed: a record over ~2 KB would take a whole LMDB overflow page.
_COMPRESS_FROM = 200
_LOGPOS = struct.Struct(">QQ")  # sequence of the doc's latest change, its index key
_CHANGE_HEADER = struct.Struct(">BQ")  # op, index key; then the doc id
_U64 = struct.Struct(">Q")


def content_hash(fingerprint: str, prompt: str, text: str) -> bytes:
    """sha256 over (model fingerprint, preprocessing version, prompt text, text), length-prefixed
    so that no two different tuples share a byte stream."""
    digest = hashlib.sha256()
    for part in (fingerprint, PREPROCESSING_VERSION, prompt, text):
        raw = part.encode("utf-8")
        digest.update(_U64.pack(len(raw)))
        digest.update(raw)
    return digest.digest()


def _check_name(value: str, what: str) -> bytes:
    raw = value.encode("utf-8")
    if b"\0" in raw:
        raise ValueError(f"{what} must not contain NUL characters")
    return raw


def doc_key(collection: str, doc_id: str) -> bytes:
    return _check_name(collection, "collection") + b"\0" + _check_name(doc_id, "id")


def prefix(collection: str) -> bytes:
    return _check_name(collection, "collection") + b"\0"


def seq_key(collection: str, sequence: int) -> bytes:
    return prefix(collection) + _U64.pack(sequence)


def int_key(collection: str, key: int) -> bytes:
    return prefix(collection) + _U64.pack(key)


def suffix_u64(key: bytes) -> int:
    return int(_U64.unpack(key[-8:])[0])


def suffix_str(key: bytes) -> str:
    return key[key.index(b"\0") + 1 :].decode("utf-8")


def pack_vector(vector: np.ndarray, float16: bool) -> bytes:
    dtype = _DTYPES[1] if float16 else _DTYPES[0]
    return bytes([_CODES[dtype]]) + np.ascontiguousarray(vector, dtype=dtype).tobytes()


def unpack_vector(raw: bytes | memoryview) -> np.ndarray:
    data = bytes(raw)
    return np.frombuffer(data, dtype=_DTYPES[data[0]], offset=1).astype(np.float32)


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of a document stored as several: the content hash its vector is stored under
    (:func:`content_hash` of the chunk's text) and its span ``[start, stop)`` in the document's
    text, in characters (Python string indices, Unicode code points)."""

    content_hash: bytes
    start: int
    stop: int


@dataclass(frozen=True)
class DocRecord:
    """A stored document. ``content_hash``: :func:`content_hash` of its whole text (for a
    document embedded whole, the key its vector is stored under). ``chunks``: empty for a
    document embedded whole (one vector, every short document), else every chunk in text order,
    each vector stored under its chunk's hash. :attr:`hashes` are the keys of its vectors."""

    content_hash: bytes
    key: int
    sequence: int
    text: str | None  # None: stored without text
    metadata: dict[str, Any]
    chunks: tuple[ChunkRef, ...] = ()

    @property
    def hashes(self) -> list[bytes]:
        """The content hashes of the document's vectors, one per chunk (one for a whole one)."""
        return [c.content_hash for c in self.chunks] if self.chunks else [self.content_hash]

    def span(self, ordinal: int) -> tuple[int, int]:
        """Characters ``[start, stop)`` of chunk ``ordinal``; the whole text for a document
        embedded whole (0, len(text); (0, 0) when stored without text)."""
        if self.chunks:
            chunk = self.chunks[ordinal]
            return chunk.start, chunk.stop
        return 0, len(self.text or "")


def pack_doc(doc: DocRecord) -> bytes:
    flags, text = 0, b""
    if doc.text is not None:
        flags, text = _HAS_TEXT, doc.text.encode("utf-8")
        if len(text) >= _COMPRESS_FROM:
            packed = zlib.compress(text, 6)
            if len(packed) < len(text):
                flags, text = _HAS_TEXT | _ZLIB, packed
    table = b""
    if doc.chunks:
        flags |= _CHUNKED
        table = _CHUNK_COUNT.pack(len(doc.chunks)) + b"".join(
            _CHUNK.pack(c.content_hash, c.start, c.stop) for c in doc.chunks
        )
    meta = json.dumps(doc.metadata, separators=(",", ":")).encode("utf-8") if doc.metadata else b""
    header = _DOC_HEADER.pack(doc.content_hash, doc.key, doc.sequence, flags, len(text))
    return header + table + text + meta


def _unpack_chunks(data: bytes | memoryview, flags: int) -> tuple[tuple[ChunkRef, ...], int]:
    """(chunks, offset after the chunk table) of a packed document."""
    start = _DOC_HEADER.size
    if not flags & _CHUNKED:
        return (), start
    (count,) = _CHUNK_COUNT.unpack_from(data, start)
    start += _CHUNK_COUNT.size
    chunks = []
    for _ in range(count):
        chash, begin, stop = _CHUNK.unpack_from(data, start)
        chunks.append(ChunkRef(bytes(chash), int(begin), int(stop)))
        start += _CHUNK.size
    return tuple(chunks), start


def unpack_doc_hash_key(raw: bytes | memoryview) -> tuple[bytes, int]:
    """(content hash, index key) of a packed document, without decoding its text."""
    chash, key = _DOC_HEADER.unpack_from(raw)[:2]
    return bytes(chash), int(key)


def unpack_doc_hashes_key(raw: bytes | memoryview) -> tuple[list[bytes], int]:
    """(content hashes of its vectors, one per chunk; index key) of a packed document, without
    decoding its text."""
    chash, key, _sequence, flags, _length = _DOC_HEADER.unpack_from(raw)
    chunks, _ = _unpack_chunks(raw, flags)
    return ([c.content_hash for c in chunks] if chunks else [bytes(chash)]), int(key)


def unpack_doc(raw: bytes | memoryview) -> DocRecord:
    data = bytes(raw)
    chash, key, sequence, flags, length = _DOC_HEADER.unpack_from(data)
    chunks, start = _unpack_chunks(data, flags)
    end = start + length
    text = None
    if flags & _HAS_TEXT:
        body = data[start:end]
        text = (zlib.decompress(body) if flags & _ZLIB else body).decode("utf-8")
    meta = json.loads(data[end:]) if len(data) > end else {}
    return DocRecord(chash, key, sequence, text, meta, chunks)


def unpack_doc_metadata(raw: bytes | memoryview) -> dict[str, Any]:
    """The metadata of a packed document, without decoding its text."""
    data = bytes(raw)
    _chash, _key, _sequence, flags, length = _DOC_HEADER.unpack_from(data)
    _chunks, start = _unpack_chunks(data, flags)
    end = start + length
    meta: dict[str, Any] = json.loads(data[end:]) if len(data) > end else {}
    return meta


def pack_logpos(sequence: int, key: int) -> bytes:
    return _LOGPOS.pack(sequence, key)


def unpack_logpos(raw: bytes | memoryview) -> tuple[int, int]:
    sequence, key = _LOGPOS.unpack(bytes(raw))
    return int(sequence), int(key)


def pack_change(op: int, key: int, doc_id: str) -> bytes:
    return _CHANGE_HEADER.pack(op, key) + doc_id.encode("utf-8")


def unpack_change(raw: bytes | memoryview) -> tuple[int, int, str]:
    data = bytes(raw)
    op, key = _CHANGE_HEADER.unpack_from(data)
    return int(op), int(key), data[_CHANGE_HEADER.size :].decode("utf-8")


def new_incarnation() -> str:
    """A collection's identity: random, so a collection created again under the same name (a
    wiped data directory, another server) never gets the identity of an earlier one."""
    return uuid.uuid4().hex


@dataclass
class CollectionMeta:
    """Per-collection header: the model its vectors come from, its counters, and its identity.

    ``incarnation`` is created with the collection and never changes; a sequence number means
    something only together with it (SyncVectors checkpoints carry both). Stores written before
    it existed get one when opened (``""`` only until then)."""

    fingerprint: str
    dimension: int  # width of the stored vectors
    sequence: int = 0  # head of the change log
    documents: int = 0
    next_key: int = 1  # next free index key
    incarnation: str = ""

    def pack(self) -> bytes:
        return json.dumps(self.__dict__, separators=(",", ":")).encode("utf-8")

    @classmethod
    def unpack(cls, raw: bytes | memoryview) -> CollectionMeta:
        data = json.loads(bytes(raw))
        if "dimensions" in data:  # the key's name before it was renamed (same meaning)
            data["dimension"] = data.pop("dimensions")
        return cls(**data)
