"""The interface between the services and whatever computes vectors.

Servicers (Embed, EmbedStream, Search queries) and the ingest pipeline depend only on
:class:`Embedder`. Implementations: :class:`server.pool.EncoderPool` (worker processes) and
:class:`server.query_cache.CachedEmbedder` (an LRU of interactive queries in front of another).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from server.model import ModelSpec

TruncationDirection = Literal["right", "left"]  # which end of an over-long input is cut


class Priority(enum.IntEnum):
    """Interactive work (Embed, EmbedStream, Search queries) never waits behind bulk ingestion."""

    INTERACTIVE = 0
    BULK = 1


@dataclass(frozen=True)
class EncodeResult:
    """Pooled vectors, one row per input, in input order.

    ``vectors`` is float32 (n, spec.dimension), L2-normalized exactly when the model's own
    pipeline normalizes (spec.normalize); per-request options (truncate_dim, precision, the
    caller's normalize flag) are applied afterwards by :mod:`server.vectors`. ``raw_norms``
    (n,) float32, for models that end in Normalize: each row's length before it, so
    ``vectors * raw_norms[:, None]`` is the pipeline's output without its Normalize (what
    tei.v1 returns for normalize=false, as TEI never applies that module); None otherwise.
    """

    vectors: np.ndarray
    token_counts: tuple[int, ...]
    queue_ns: int = 0
    tokenization_ns: int = 0
    inference_ns: int = 0
    cache_hits: int = 0  # inputs answered from the query cache (their token_counts are 0)
    raw_norms: np.ndarray | None = None


@dataclass(frozen=True)
class ComputeInfo:
    """What runs the model, for Info and logs."""

    backend: str  # torch | onnx
    device: str  # cpu | cuda:0,cuda:1
    dtype: str  # float32 | bfloat16 | float16 | int8
    workers: int
    compiled: bool = False  # torch.compile took (False: eager, or the onnx backend)


class Embedder(Protocol):
    spec: ModelSpec

    async def start(self) -> None:
        """Load and warm up the model (idempotent). Raises WorkerFailed if it cannot."""
        ...

    async def close(self) -> None:
        """Stop computing: queued work fails with NotReady, workers exit."""
        ...

    def describe(self) -> ComputeInfo: ...

    async def encode(
        self,
        texts: Sequence[str],
        *,
        prompt_name: str = "",
        truncate: bool = True,
        truncation_direction: TruncationDirection = "right",
        priority: Priority = Priority.INTERACTIVE,
    ) -> EncodeResult:
        """Embed ``texts``. Raises InvalidArgument for an over-long input when truncate is
        False (naming its index), or for an unknown prompt_name; Overloaded, NotReady or
        WorkerFailed for capacity and worker problems. ``truncation_direction``: which end of
        an over-long input is cut ("left" keeps its end)."""
        ...
