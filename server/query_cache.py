"""An LRU of query embeddings in front of the encoder pool (interactive calls only).

Key: the model fingerprint and the token ids the model reads, after the tokenizer's
normalization, the prompt and truncation on the requested side. Two inputs share an entry
exactly when the model cannot tell them apart ("Alpha  beta" and "alpha beta" for an uncased
model), never because they look alike ("alpha\\x1fbeta" is "alphabet ##a" to the model, not
"alpha beta"): the key is what the model sees, not a guess at it. The cached value is the
model's vector before per-request options, so the same query asked at other dimensions or
precisions is still a hit. Bulk calls (ingestion) bypass it: the store has its own
content-hash cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from server import metrics
from server.embedder import (
    ComputeInfo,
    Embedder,
    EncodeResult,
    FieldNames,
    Prepared,
    Priority,
    TruncationDirection,
)
from server.errors import ServiceError
from server.model import ModelSpec


class TokenEmbedder(Embedder, Protocol):
    """What the cache needs of the encoder: the Embedder, plus tokenizing apart from computing."""

    async def tokenize(
        self,
        texts: Sequence[str],
        *,
        prompt_name: str = "",
        truncate: bool = True,
        truncation_direction: TruncationDirection = "right",
        field: FieldNames = "inputs",
    ) -> Prepared: ...

    async def encode_tokens(
        self, prepared: Prepared, *, priority: Priority = Priority.INTERACTIVE, wait: bool | None = None
    ) -> EncodeResult: ...


class CachedEmbedder:
    """Wraps ``inner``; same :class:`~server.embedder.Embedder` interface."""

    def __init__(self, inner: TokenEmbedder, capacity: int) -> None:
        self.inner = inner
        self.spec: ModelSpec = inner.spec
        self.capacity = capacity
        # key -> (the model's vector, its length before a final Normalize or NaN)
        self._entries: OrderedDict[tuple[str, bytes], tuple[np.ndarray, float]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def _key(self, ids: np.ndarray) -> tuple[str, bytes]:
        return (self.spec.fingerprint, np.ascontiguousarray(ids, dtype=np.int64).tobytes())

    async def encode(
        self,
        texts: Sequence[str],
        *,
        prompt_name: str = "",
        truncate: bool = True,
        truncation_direction: TruncationDirection = "right",
        priority: Priority = Priority.INTERACTIVE,
        wait: bool | None = None,
        field: FieldNames = "inputs",
    ) -> EncodeResult:
        if self.capacity <= 0 or priority != Priority.INTERACTIVE or not texts:
            return await self.inner.encode(
                texts,
                prompt_name=prompt_name,
                truncate=truncate,
                truncation_direction=truncation_direction,
                priority=priority,
                wait=wait,
                field=field,
            )
        prepared = await self.inner.tokenize(
            texts,
            prompt_name=prompt_name,
            truncate=truncate,
            truncation_direction=truncation_direction,
            field=field,
        )
        keys = [self._key(t.ids) for t in prepared.tokens]
        found: dict[int, tuple[np.ndarray, float]] = {}
        for i, key in enumerate(keys):
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                found[i] = entry
        missing = [i for i in range(len(texts)) if i not in found]
        self.hits += len(found)
        self.misses += len(missing)
        metrics.CACHE_HITS.inc(len(found))
        metrics.CACHE_MISSES.inc(len(missing))
        if not missing:
            vectors = np.stack([found[i][0] for i in range(len(texts))])
            norms = np.asarray([found[i][1] for i in range(len(texts))], dtype=np.float32)
            return EncodeResult(
                vectors=vectors,
                token_counts=(0,) * len(texts),
                tokenization_ns=prepared.tokenization_ns,
                cache_hits=len(texts),
                raw_norms=None if np.isnan(norms).any() else norms,
                input_tokens=tuple(t.length for t in prepared.tokens),
            )
        inner = await self.inner.encode_tokens(
            Prepared([prepared.tokens[i] for i in missing], prepared.tokenization_ns),
            priority=priority,
            wait=wait,
        )
        out = np.empty((len(texts), inner.vectors.shape[1]), dtype=np.float32)
        out_norms = np.full(len(texts), np.nan, dtype=np.float32)
        counts = [0] * len(texts)
        for i, (vector, norm) in found.items():
            out[i], out_norms[i] = vector, norm
        for row, i in enumerate(missing):
            out[i] = inner.vectors[row]
            out_norms[i] = np.nan if inner.raw_norms is None else inner.raw_norms[row]
            counts[i] = inner.token_counts[row]
            self._entries[keys[i]] = (inner.vectors[row].copy(), float(out_norms[i]))
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return EncodeResult(
            vectors=out,
            token_counts=tuple(counts),
            queue_ns=inner.queue_ns,
            tokenization_ns=inner.tokenization_ns,
            inference_ns=inner.inference_ns,
            cache_hits=len(found),
            raw_norms=None if np.isnan(out_norms).any() else out_norms,
            input_tokens=tuple(t.length for t in prepared.tokens),
        )

    async def validate(
        self,
        texts: Sequence[str],
        *,
        prompt_name: str = "",
        truncate: bool = True,
        truncation_direction: TruncationDirection = "right",
        field: FieldNames = "inputs",
    ) -> list[ServiceError | None]:
        return await self.inner.validate(
            texts,
            prompt_name=prompt_name,
            truncate=truncate,
            truncation_direction=truncation_direction,
            field=field,
        )

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    def describe(self) -> ComputeInfo:
        return self.inner.describe()
