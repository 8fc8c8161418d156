"""An LRU of query embeddings in front of any Embedder (interactive calls only).

Key: model fingerprint, prompt name, truncate flag and the canonicalized text (Unicode NFC,
runs of whitespace collapsed to one space, ends stripped, lowercased only when the model's
tokenizer lowercases anyway). The cached value is the model's vector before per-request
options, so the same query asked at other dimensions or precisions is still a hit. Bulk calls
(ingestion) bypass it: the store has its own content-hash cache.
"""

from __future__ import annotations

import unicodedata
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from server import metrics
from server.embedder import ComputeInfo, Embedder, EncodeResult, Priority, TruncationDirection
from server.model import ModelSpec


def canonical_text(text: str, *, lower: bool) -> str:
    text = " ".join(unicodedata.normalize("NFC", text).split())
    return text.lower() if lower else text


class CachedEmbedder:
    """Wraps ``inner``; same :class:`~server.embedder.Embedder` interface."""

    def __init__(self, inner: Embedder, capacity: int) -> None:
        self.inner = inner
        self.spec: ModelSpec = inner.spec
        self.capacity = capacity
        # key -> (the model's vector, its length before a final Normalize or NaN)
        self._entries: OrderedDict[tuple[str, str, bool, str, str], tuple[np.ndarray, float]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def _key(
        self, text: str, prompt_name: str, truncate: bool, direction: TruncationDirection
    ) -> tuple[str, str, bool, str, str]:
        return (
            self.spec.fingerprint,
            prompt_name,
            truncate,
            direction,
            canonical_text(text, lower=self.spec.do_lower_case),
        )

    async def encode(
        self,
        texts: Sequence[str],
        *,
        prompt_name: str = "",
        truncate: bool = True,
        truncation_direction: TruncationDirection = "right",
        priority: Priority = Priority.INTERACTIVE,
    ) -> EncodeResult:
        async def compute(some: Sequence[str]) -> EncodeResult:
            return await self.inner.encode(
                some,
                prompt_name=prompt_name,
                truncate=truncate,
                truncation_direction=truncation_direction,
                priority=priority,
            )

        if self.capacity <= 0 or priority != Priority.INTERACTIVE or not texts:
            return await compute(texts)
        keys = [self._key(t, prompt_name, truncate, truncation_direction) for t in texts]
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
                cache_hits=len(texts),
                raw_norms=None if np.isnan(norms).any() else norms,
            )
        inner = await compute([texts[i] for i in missing])
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
        )

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    def describe(self) -> ComputeInfo:
        return self.inner.describe()
