"""The interface between the services and whatever computes vectors.

Servicers (Embed, EmbedStream, Search queries) and the ingest pipeline depend only on
:class:`Embedder`. Implementations: :class:`server.pool.EncoderPool` (worker processes) and
:class:`server.query_cache.CachedEmbedder` (an LRU of interactive queries in front of another).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from server.errors import ServiceError
from server.model import ModelSpec

if TYPE_CHECKING:
    from embedcore import Tokens

TruncationDirection = Literal["right", "left"]  # which end of an over-long input is cut: "left" keeps the end
FieldNames = str | Sequence[str]  # "inputs": item i is "inputs[i]"; or one request field per text


class Priority(enum.IntEnum):
    """Interactive work (Embed, EmbedStream, Search queries) never waits behind bulk ingestion.

    CLIENT_BULK: a client's request with ``EmbedOptions.bulk`` (throughput wanted): computed by
    the workers like ingestion, whose full batches use the cores best, but taken before BULK.
    """

    INTERACTIVE = 0
    CLIENT_BULK = 1
    BULK = 2


@dataclass(frozen=True)
class Prepared:
    """Texts of one call, tokenized and checked: what the model will read of each."""

    tokens: list[Tokens]
    tokenization_ns: int = 0


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
    # Tokens the model reads of each input, cache hits included (what OpenAI's usage reports);
    # None: the same as token_counts (nothing came from a cache).
    input_tokens: tuple[int, ...] | None = None

    @property
    def tokens_read(self) -> int:
        """Tokens the model reads of all inputs (special tokens included), cached or computed."""
        return sum(self.token_counts if self.input_tokens is None else self.input_tokens)


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
        wait: bool | None = None,
        field: FieldNames = "inputs",
    ) -> EncodeResult:
        """Embed ``texts`` (each with the prompt prepended, cut to the model's maximum on the
        ``truncation_direction`` side).

        InvalidArgument naming the text's field (``field``) for a text over --max-input-chars,
        one with no content token (only zero-width or control characters), one over the
        model's maximum when ``truncate`` is False, or an unknown prompt_name.
        ``wait``: when the encoder queue is full, wait for room (streams, bulk work) instead of
        failing with Overloaded (unary calls); None waits for BULK work only. Overloaded,
        NotReady or WorkerFailed for capacity and worker problems.
        """
        ...

    async def validate(
        self,
        texts: Sequence[str],
        *,
        prompt_name: str = "",
        truncate: bool = True,
        truncation_direction: TruncationDirection = "right",
        field: FieldNames = "inputs",
    ) -> list[ServiceError | None]:
        """Per text, the InvalidArgument :meth:`encode` would raise for it, or None: lets a
        caller (Ingest) reject bad items one by one instead of failing the whole call."""
        ...
