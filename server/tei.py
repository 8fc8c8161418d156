"""The tei.v1 API's domain: TEI 1.9's input rules, its Tokenize/Decode answers and EmbedAll.

What text-embeddings-inference does, reproduced (router/src/grpc/server.rs, core/src/tokenization.rs
and core/src/infer.rs of huggingface/text-embeddings-inference):
- an input is first limited to ``max_input_length * 250`` characters (MAX_CHAR_MULTIPLIER):
  longer is INVALID_ARGUMENT without truncation, else cut at that UTF-8 byte when it falls on a
  character boundary (TEI's own rule, kept so a LEFT-truncated vector matches TEI's);
- the prompt's text is put before the input, special tokens are added, and the result is cut to
  ``max_input_length`` tokens from the chosen side, or refused when ``truncate`` is false;
- Tokenize reports UTF-8 byte offsets into the prompted input (tokenizers' Rust ``encode``; the
  text is that byte span, as since TEI PR #576); special tokens carry their vocabulary string
  and no offsets; nothing is truncated;
- messages are TEI's, so clients matching on them keep working.

:class:`TeiEngine` is the API's domain, in plain values: the gRPC servicer
(:mod:`server.servicers.tei`) and the HTTP routes (:mod:`server.http.tei`) both call it, and it
computes through the server's one encoder (query cache, interactive priority). Its async methods
run blocking work (tokenization, ONNX) off the event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from tokenizers import Tokenizer

from embedcore import OnnxModel
from server import __version__
from server.embedder import Embedder, FieldNames, Priority
from server.errors import EmptyInput, InvalidArgument, TooLarge
from server.model import ModelSpec
from server.validation import check_count, check_name, check_text
from server.vectors import check_truncate_dim, postprocess

if TYPE_CHECKING:
    from server.edge_builder import EdgeBundles
    from server.settings import Settings

MAX_CHAR_MULTIPLIER = 250  # TEI's character limit per input, in multiples of max_input_length

Direction = Literal["right", "left"]


@dataclass(frozen=True)
class TeiToken:
    id: int
    text: str
    special: bool
    start: int | None  # UTF-8 byte offsets into the prompted input; None for special tokens
    stop: int | None


def empty_input(field: str = "inputs") -> EmptyInput:
    return EmptyInput(f"`{field}` cannot be empty", field=field)


class TeiTokenizer:
    """The model's tokenizer as TEI runs it: one untruncated copy, one truncating per side."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        path = str(spec.path / "tokenizer.json")
        self._plain = Tokenizer.from_file(path)
        self._plain.no_truncation()
        self._plain.no_padding()
        self._cut: dict[Direction, Tokenizer] = {}
        for direction in ("right", "left"):
            tokenizer = Tokenizer.from_file(path)
            tokenizer.no_padding()
            tokenizer.enable_truncation(max_length=spec.max_tokens, direction=direction)
            self._cut[direction] = tokenizer

    @property
    def char_limit(self) -> int:
        return self.spec.max_tokens * MAX_CHAR_MULTIPLIER

    def limit_chars(self, text: str, truncate: bool) -> str:
        """TEI's character limit (module docstring); InvalidArgument when not truncating."""
        limit = self.char_limit
        if len(text) <= limit:
            return text
        if not truncate:
            raise TooLarge(
                f"`inputs` must have less than {limit} characters. Given: {len(text)}", field="inputs"
            )
        data = text.encode("utf-8")
        if (data[limit] & 0xC0) == 0x80:  # not a character boundary: TEI leaves the text whole
            return text
        return data[:limit].decode("utf-8")

    def count(self, full_text: str, truncate: bool, direction: Direction = "right") -> int:
        """Blocking: tokens of ``full_text`` (prompt included) with special tokens, after
        truncation when ``truncate``; what TEI reports as compute_tokens."""
        tokenizer = self._cut[direction] if truncate else self._plain
        return len(tokenizer.encode(full_text).ids)

    def check_length(self, full_text: str) -> int:
        """Blocking: the untruncated token count; InvalidArgument (TEI's message) when it is
        above the model's maximum."""
        length = self.count(full_text, truncate=False)
        if length > self.spec.max_tokens:
            raise TooLarge(
                f"`inputs` must have less than {self.spec.max_tokens} tokens. Given: {length}",
                field="inputs",
            )
        return length

    def encode(self, full_text: str, truncate: bool, direction: Direction) -> tuple[list[int], list[int]]:
        """Blocking: (ids, type ids) the model gets for ``full_text``; over-long refused
        unless ``truncate``."""
        if not truncate:
            self.check_length(full_text)
        encoding = (self._cut[direction] if truncate else self._plain).encode(full_text)
        return list(encoding.ids), list(encoding.type_ids)

    def tokenize(self, full_text: str, add_special_tokens: bool) -> list[TeiToken]:
        """Blocking: Tokenize's answer for ``full_text`` (prompt included), untruncated."""
        encoding = self._plain.encode(full_text, add_special_tokens=add_special_tokens)
        byte_at = np.concatenate(
            ([0], np.cumsum([len(c.encode("utf-8")) for c in full_text], dtype=np.int64))
        )
        tokens = []
        for token_id, token, special, (start, stop) in zip(
            encoding.ids, encoding.tokens, encoding.special_tokens_mask, encoding.offsets, strict=True
        ):
            if special:
                tokens.append(TeiToken(token_id, token, True, None, None))
            else:
                tokens.append(
                    TeiToken(token_id, full_text[start:stop], False, int(byte_at[start]), int(byte_at[stop]))
                )
        return tokens

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        """Blocking: the text of ``ids`` (ids outside the vocabulary are left out, as TEI does)."""
        if not ids:
            raise empty_input("input_ids")
        return str(self._plain.decode(ids, skip_special_tokens=skip_special_tokens))


class TokenVectors:
    """EmbedAll: the transformer's last hidden state for every token, from the fp32 ONNX graph
    of the server's edge bundle (the same export ``--backend onnx`` runs; within 1e-5 of
    torch). It runs in the server process, one call at a time on one thread, loaded on first
    use: EmbedAll is an inspection call, not a bulk path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model: tuple[Path, OnnxModel] | None = None

    def compute(self, graph: Path, ids: list[int], type_ids: list[int]) -> np.ndarray:
        """Blocking: (tokens, hidden) float32 for one encoded input."""
        with self._lock:
            if self._model is None or self._model[0] != graph:  # a new bundle may replace the graph
                self._model = (graph, OnnxModel(graph, pooling="mean", normalize=False, threads=1))
            input_ids = np.asarray([ids], dtype=np.int64)
            hidden = self._model[1].token_embeddings(
                input_ids, np.ones_like(input_ids), np.asarray([type_ids], dtype=np.int64)
            )
        return np.asarray(hidden[0], dtype=np.float32)


# --- the API's domain ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TeiMetadata:
    """TEI's per-response metadata: characters and tokens (special tokens included) of the
    inputs, times in nanoseconds."""

    compute_chars: int
    compute_tokens: int
    total_time_ns: int
    tokenization_time_ns: int
    queue_time_ns: int
    inference_time_ns: int

    def headers(self, compute_type: str) -> tuple[tuple[str, str], ...]:
        """TEI's response headers: times in whole milliseconds; x-compute-time is the total."""

        def ms(ns: int) -> str:
            return str(ns // 1_000_000)

        return (
            ("x-compute-type", compute_type),
            ("x-compute-time", ms(self.total_time_ns)),
            ("x-compute-characters", str(self.compute_chars)),
            ("x-compute-tokens", str(self.compute_tokens)),
            ("x-total-time", ms(self.total_time_ns)),
            ("x-tokenization-time", ms(self.tokenization_time_ns)),
            ("x-queue-time", ms(self.queue_time_ns)),
            ("x-inference-time", ms(self.inference_time_ns)),
        )


@dataclass(frozen=True)
class TeiEmbeddings:
    """``vectors``: float32 (n, dimensions), one row per input in input order."""

    vectors: np.ndarray
    metadata: TeiMetadata


@dataclass(frozen=True)
class TeiTokenEmbeddings:
    """EmbedAll: ``hidden`` float32 (tokens, model dimension), special tokens included."""

    hidden: np.ndarray
    metadata: TeiMetadata


@dataclass(frozen=True)
class TeiInfo:
    """TEI's Info answer (gRPC InfoResponse, HTTP GET /info)."""

    version: str
    model_id: str
    model_sha: str
    model_dtype: str
    model_pooling: str
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_client_batch_size: int
    tokenization_workers: int


class TeiEngine:
    """TEI's API over the server's encoder: input rules, embeddings, tokens, info. Built once
    per process (:func:`server.runtime.build_runtime`); every error is a
    :class:`~server.errors.ServiceError` (EmptyInput, TooLarge, InvalidArgument, Overloaded,
    NotReady, WorkerFailed)."""

    def __init__(self, spec: ModelSpec, embedder: Embedder, settings: Settings, edge: EdgeBundles) -> None:
        self.spec = spec
        self.embedder = embedder
        self.settings = settings
        self.edge = edge
        self.tokenizer = TeiTokenizer(spec)
        self.token_vectors = TokenVectors()
        self.compute_type = "gpu" if embedder.describe().device.startswith("cuda") else "cpu"

    def prompt(self, name: str | None) -> str:
        """The prompt name when set (TEI: set to a name the model lacks, even "", is an error)."""
        if name is None:
            return ""
        name = check_name(name, "prompt_name")
        if name not in self.spec.prompts:
            known = ", ".join(sorted(self.spec.prompts)) or "it has none"
            raise InvalidArgument(
                f"prompt_name {name!r} is not one of this model's prompts ({known})", field="prompt_name"
            )
        return name

    def check_batch(self, inputs: Sequence[object]) -> None:
        """A batch (HTTP) has 1 to --max-client-batch-size inputs: EmptyInput, TooLarge."""
        if not inputs:
            raise empty_input()
        limit = self.settings.max_client_batch_size
        check_count(inputs, "inputs", limit=limit, note="--max-client-batch-size")

    async def prepare(self, inputs: str, truncate: bool, prompt_name: str | None) -> tuple[str, str]:
        """(input after TEI's character limit, prompt name): TEI's checks in TEI's order, the
        token limit included when ``truncate`` is false."""
        if not inputs:
            raise empty_input()
        check_text(inputs, "inputs")  # NUL characters (this server's input rule)
        prompt = self.prompt(prompt_name)
        text = self.tokenizer.limit_chars(inputs, truncate)
        if not truncate:
            await asyncio.to_thread(self.tokenizer.check_length, self.spec.prompt_text(prompt) + text)
        return text, prompt

    async def embed(
        self,
        inputs: Sequence[str],
        *,
        truncate: bool,
        normalize: bool = True,
        direction: Direction = "right",
        prompt_name: str | None = None,
        dimensions: int | None = None,
        wait: bool = False,
        field: FieldNames = "inputs",
    ) -> TeiEmbeddings:
        """Pooled vectors of ``inputs`` (one call to the encoder). ``normalize`` false: the
        pipeline's vector without its Normalize module (TEI never applies it); ``dimensions``:
        Matryoshka truncation, then normalization when asked. ``wait``: a stream's request
        waits for queue room; a unary call fails fast with Overloaded."""
        started = time.perf_counter_ns()
        prepared = [await self.prepare(text, truncate, prompt_name) for text in inputs]
        dims = (
            check_truncate_dim(dimensions, self.spec, "dimensions")
            if dimensions is not None
            else self.spec.dimension
        )
        result = await self.embedder.encode(
            [text for text, _ in prepared],
            prompt_name=prepared[0][1] if prepared else "",
            truncate=truncate,
            truncation_direction=direction,
            priority=Priority.INTERACTIVE,
            wait=wait,
            field=field,
        )
        vectors = result.vectors
        if not normalize and result.raw_norms is not None:  # TEI never applies the Normalize module
            vectors = vectors * result.raw_norms[:, None]
        meta = TeiMetadata(
            compute_chars=sum(map(len, inputs)),
            compute_tokens=result.tokens_read,  # a cached vector's tokens count too, as in TEI
            total_time_ns=time.perf_counter_ns() - started,
            tokenization_time_ns=result.tokenization_ns,
            queue_time_ns=result.queue_ns,
            inference_time_ns=result.inference_ns,
        )
        return TeiEmbeddings(postprocess(vectors, normalize, dims), meta)

    async def embed_all(
        self, inputs: str, *, truncate: bool, direction: Direction = "right", prompt_name: str | None = None
    ) -> TeiTokenEmbeddings:
        """Every token's vector (the last hidden state) of one input."""
        started = time.perf_counter_ns()
        text, prompt = await self.prepare(inputs, truncate, prompt_name)
        full = self.spec.prompt_text(prompt) + text
        ids, types = await asyncio.to_thread(self.tokenizer.encode, full, truncate, direction)
        tokenized = time.perf_counter_ns()
        bundle = self.edge.bundle
        graph = bundle.directory / bundle.manifest.onnx_fp32
        hidden = await asyncio.to_thread(self.token_vectors.compute, graph, ids, types)
        meta = TeiMetadata(
            len(inputs), len(ids), time.perf_counter_ns() - started, tokenized - started, 0,
            time.perf_counter_ns() - tokenized,
        )  # fmt: skip
        return TeiTokenEmbeddings(hidden, meta)

    async def tokenize(
        self, inputs: str, *, add_special_tokens: bool, prompt_name: str | None
    ) -> list[TeiToken]:
        """Every token of the prompted input, untruncated, with UTF-8 byte offsets."""
        if not inputs:
            raise empty_input()
        check_text(inputs, "inputs")
        text = self.tokenizer.limit_chars(inputs, truncate=False)
        full = self.spec.prompt_text(self.prompt(prompt_name)) + text
        return await asyncio.to_thread(self.tokenizer.tokenize, full, add_special_tokens)

    async def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        """The text of ``ids``; at most about the character limit's worth of tokens (TooLarge)."""
        # Tokenize answers at most about TEI's character limit of tokens (plus a prompt and
        # special tokens); the limit keeps the decoded text well inside a reply.
        limit = self.tokenizer.char_limit + self.spec.max_tokens
        check_count(ids, "ids", limit=limit, required=False, note="max_input_length * 251")
        return await asyncio.to_thread(self.tokenizer.decode, list(ids), skip_special_tokens)

    def info(self) -> TeiInfo:
        settings = self.settings
        return TeiInfo(
            version=__version__,
            model_id=self.spec.model_id,
            model_sha=self.spec.fingerprint.rsplit("@", 1)[-1],
            model_dtype=self.embedder.describe().dtype,
            model_pooling=self.spec.pooling,
            max_concurrent_requests=settings.max_queue_items,
            max_input_length=self.spec.max_tokens,
            max_batch_tokens=settings.max_batch_tokens,
            max_client_batch_size=settings.max_client_batch_size,
            tokenization_workers=1,
        )
