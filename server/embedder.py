"""The interface between the services and whatever computes vectors.

Servicers (Embed, EmbedStream, Search queries) and the store (Ingest) depend only on
:class:`Embedder`. Implementations: the multi-process encoder pool (production) and
:class:`InProcessEmbedder` (one model in this process; tools and small deployments).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from server.errors import InvalidArgument
from server.model import ModelSpec


class Priority(enum.IntEnum):
    """Interactive work (Embed, EmbedStream, Search queries) never waits behind bulk ingestion."""

    INTERACTIVE = 0
    BULK = 1


@dataclass(frozen=True)
class EncodeResult:
    """Pooled vectors, one row per input, in input order.

    ``vectors`` is float32 (n, spec.dimensions), L2-normalized exactly when the model's own
    pipeline normalizes (spec.normalize); per-request options (dimensions, precision, the
    caller's normalize flag) are applied afterwards by :mod:`server.vectors`.
    """

    vectors: np.ndarray
    token_counts: tuple[int, ...]
    queue_ns: int = 0
    tokenization_ns: int = 0
    inference_ns: int = 0
    cache_hits: int = 0  # inputs answered from the query cache (their token_counts are 0)


class Embedder(Protocol):
    spec: ModelSpec

    async def encode(
        self,
        texts: Sequence[str],
        *,
        prompt_name: str = "",
        truncate: bool = True,
        priority: Priority = Priority.INTERACTIVE,
    ) -> EncodeResult:
        """Embed ``texts``. Raises InvalidArgument for an over-long input when truncate is
        False (naming its index), or for an unknown prompt_name; Overloaded, NotReady or
        WorkerFailed for capacity and worker problems."""
        ...


class InProcessEmbedder:
    """sentence-transformers in this process, one call at a time, off the event loop."""

    def __init__(self, spec: ModelSpec, *, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer  # heavy: only when used

        self.spec = spec
        self._model: Any = SentenceTransformer(str(spec.path), device=device)
        self._model.max_seq_length = spec.max_tokens
        self._lock = asyncio.Lock()

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text without truncation (special tokens included)."""
        encoded = self._model.tokenizer(list(texts), add_special_tokens=True, truncation=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def _encode_sync(self, texts: list[str]) -> np.ndarray:
        return np.asarray(
            self._model.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=False),
            dtype=np.float32,
        )

    async def encode(
        self,
        texts: Sequence[str],
        *,
        prompt_name: str = "",
        truncate: bool = True,
        priority: Priority = Priority.INTERACTIVE,
    ) -> EncodeResult:
        try:
            prefix = self.spec.prompt_text(prompt_name)
        except KeyError as exc:
            raise InvalidArgument(str(exc.args[0]), field="prompt_name") from exc
        full = [prefix + t for t in texts]
        t0 = time.perf_counter_ns()
        counts = self.token_counts(full)
        if not truncate:
            for i, n in enumerate(counts):
                if n > self.spec.max_tokens:
                    raise InvalidArgument(
                        f"input {i} has {n} tokens, more than the model's maximum of "
                        f"{self.spec.max_tokens}; shorten it or set truncate=true",
                        field="inputs",
                    )
        t1 = time.perf_counter_ns()
        async with self._lock:
            t2 = time.perf_counter_ns()
            vectors = await asyncio.to_thread(self._encode_sync, full)
            t3 = time.perf_counter_ns()
        return EncodeResult(
            vectors=vectors,
            token_counts=tuple(min(n, self.spec.max_tokens) for n in counts),
            queue_ns=t2 - t1,
            tokenization_ns=t1 - t0,
            inference_ns=t3 - t2,
        )
