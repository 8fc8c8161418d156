"""tei.v1 (Info, Embed, Predict, Rerank, Tokenize): wire- and behaviour-compatible with
text-embeddings-inference 1.9 serving an embedding model.

Differences from embedding.v1 that TEI clients rely on: one input per request, vectors as
``repeated float``, ``truncate`` a plain bool (false = reject over-long input), ``normalize``
unset = true, TEI's validation order and messages (server.tei), an error status ends a stream,
and unary embedding responses carry x-* headers (milliseconds). What an embedding model cannot
serve answers as TEI does: EmbedSparse (SPLADE only), Predict and Rerank (classifiers and
rerankers) are FAILED_PRECONDITION with TEI's messages, after TEI's own input checks.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import grpc
import numpy as np

from protos.tei.v1 import tei_pb2 as pb
from server import __version__
from server.embedder import Priority
from server.errors import InvalidArgument, PreconditionFailed
from server.runtime import Runtime
from server.servicers._rpc import UnparsedRequest, abort, ordered_pipeline
from server.tei import Direction, TeiTokenizer, TokenVectors, empty_input
from server.validation import check_count, check_name, check_text, choice
from server.vectors import check_truncate_dim, postprocess

R = TypeVar("R")

DIRECTIONS: dict[int, Direction] = {
    pb.TRUNCATION_DIRECTION_RIGHT: "right",
    pb.TRUNCATION_DIRECTION_LEFT: "left",
}
# TEI's answers for what only other model types serve (core/src/infer.rs, router/src/grpc/server.rs).
NOT_SPLADE = "Model is not an embedding model with SPLADE pooling"
NOT_CLASSIFIER = "Model is not a classifier model"
NOT_RERANKER = "model is not a classifier model"  # TEI's gRPC Rerank says this for embedding models


def _headers(meta: pb.Metadata, compute_type: str) -> tuple[tuple[str, str], ...]:
    """TEI's response headers: times in whole milliseconds; x-compute-time is the total time."""

    def ms(ns: int) -> str:
        return str(ns // 1_000_000)

    return (
        ("x-compute-type", compute_type),
        ("x-compute-time", ms(meta.total_time_ns)),
        ("x-compute-characters", str(meta.compute_chars)),
        ("x-compute-tokens", str(meta.compute_tokens)),
        ("x-total-time", ms(meta.total_time_ns)),
        ("x-tokenization-time", ms(meta.tokenization_time_ns)),
        ("x-queue-time", ms(meta.queue_time_ns)),
        ("x-inference-time", ms(meta.inference_time_ns)),
    )


def _parsed(request: Any) -> Any:
    if isinstance(request, UnparsedRequest):
        raise request.error()
    return request


class TeiServicer:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.spec = runtime.spec
        self.tokenizer = TeiTokenizer(runtime.spec)
        self.token_vectors = TokenVectors()
        self.compute_type = "gpu" if runtime.embedder.describe().device.startswith("cuda") else "cpu"

    # --- validation shared by the embedding RPCs -----------------------------------------------

    def _direction(self, value: int) -> Direction:
        return choice(
            value,
            DIRECTIONS,
            "truncation_direction",
            "TRUNCATION_DIRECTION_RIGHT (0) or TRUNCATION_DIRECTION_LEFT (1)",
        )

    def _prompt(self, request: Any) -> str:
        """The prompt name when set (TEI: set to a name the model lacks, even "", is an error)."""
        if not request.HasField("prompt_name"):
            return ""
        name = check_name(str(request.prompt_name), "prompt_name")
        if name not in self.spec.prompts:
            known = ", ".join(sorted(self.spec.prompts)) or "it has none"
            raise InvalidArgument(
                f"prompt_name {name!r} is not one of this model's prompts ({known})", field="prompt_name"
            )
        return name

    async def _prepared(self, request: Any) -> tuple[str, str, Direction]:
        """(input after TEI's character limit, prompt name, direction); TEI's checks in TEI's
        order, the token limit included when ``truncate`` is false."""
        if not request.inputs:
            raise empty_input()
        check_text(request.inputs, "inputs")  # NUL characters (this server's input rule)
        direction = self._direction(request.truncation_direction)
        prompt = self._prompt(request)
        text = self.tokenizer.limit_chars(request.inputs, request.truncate)
        if not request.truncate:
            await asyncio.to_thread(self.tokenizer.check_length, self.spec.prompt_text(prompt) + text)
        return text, prompt, direction

    def _metadata(
        self, text: str, tokens: int, started: int, tokenization: int, queue: int, inference: int
    ) -> pb.Metadata:
        return pb.Metadata(
            compute_chars=len(text),
            compute_tokens=tokens,
            total_time_ns=time.perf_counter_ns() - started,
            tokenization_time_ns=tokenization,
            queue_time_ns=queue,
            inference_time_ns=inference,
        )

    # --- Embed -----------------------------------------------------------------------------------

    async def _embed(self, request: Any, *, wait: bool = False) -> pb.EmbedResponse:
        """``wait``: a stream's request waits for queue room; a unary call fails fast."""
        started = time.perf_counter_ns()
        request = _parsed(request)
        text, prompt, direction = await self._prepared(request)
        dims = (
            check_truncate_dim(request.dimensions, self.spec, "dimensions")
            if request.HasField("dimensions")
            else self.spec.dimension
        )
        normalize = request.normalize if request.HasField("normalize") else True
        result = await self.runtime.embedder.encode(
            [text],
            prompt_name=prompt,
            truncate=request.truncate,
            truncation_direction=direction,
            priority=Priority.INTERACTIVE,
            wait=wait,
            field=["inputs"],  # TEI's request has one input, named without an index
        )
        tokens = result.token_counts[0]
        if result.cache_hits:  # a cached vector reports 0 tokens; TEI always counts them
            full = self.spec.prompt_text(prompt) + text
            tokens = await asyncio.to_thread(self.tokenizer.count, full, request.truncate, direction)
        vectors = result.vectors
        if not normalize and result.raw_norms is not None:  # TEI never applies the Normalize module
            vectors = vectors * result.raw_norms[:, None]
        vector = postprocess(vectors, normalize, dims)[0]
        meta = self._metadata(
            request.inputs, tokens, started, result.tokenization_ns, result.queue_ns, result.inference_ns
        )
        return pb.EmbedResponse(embeddings=vector.tolist(), metadata=meta)

    async def _embed_all(self, request: Any) -> pb.EmbedAllResponse:
        started = time.perf_counter_ns()
        request = _parsed(request)
        text, prompt, direction = await self._prepared(request)
        full = self.spec.prompt_text(prompt) + text
        ids, types = await asyncio.to_thread(self.tokenizer.encode, full, request.truncate, direction)
        tokenized = time.perf_counter_ns()
        bundle = self.runtime.edge.bundle
        graph = bundle.directory / bundle.manifest.onnx_fp32
        hidden = await asyncio.to_thread(self.token_vectors.compute, graph, ids, types)
        meta = self._metadata(
            request.inputs, len(ids), started, tokenized - started, 0, time.perf_counter_ns() - tokenized
        )
        rows = [pb.TokenEmbedding(embeddings=row.tolist()) for row in np.asarray(hidden)]
        return pb.EmbedAllResponse(token_embeddings=rows, metadata=meta)

    async def _embed_sparse(self, request: Any) -> pb.EmbedSparseResponse:
        _parsed(request)
        raise PreconditionFailed(NOT_SPLADE)  # TEI checks the model type before the input

    async def Embed(self, request: Any, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        return await self._unary(self._embed, request, context, headers=True)

    async def EmbedAll(self, request: Any, context: grpc.aio.ServicerContext) -> pb.EmbedAllResponse:
        return await self._unary(self._embed_all, request, context, headers=True)

    async def EmbedSparse(self, request: Any, context: grpc.aio.ServicerContext) -> pb.EmbedSparseResponse:
        return await self._unary(self._embed_sparse, request, context)

    def EmbedStream(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        return self._stream(functools.partial(self._embed, wait=True), requests, context)

    def EmbedAllStream(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        return self._stream(self._embed_all, requests, context)

    def EmbedSparseStream(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        return self._stream(self._embed_sparse, requests, context)

    # --- Predict and Rerank: classifier and reranker models only -------------------------------

    async def _predict(self, request: Any) -> pb.PredictResponse:
        _parsed(request)
        raise PreconditionFailed(NOT_CLASSIFIER)

    async def _predict_pair(self, request: Any) -> pb.PredictResponse:
        request = _parsed(request)
        if len(request.inputs) not in (1, 2):  # TEI validates the pair before the model type
            raise InvalidArgument(
                f"`inputs` must have a single or two elements. Given: {len(request.inputs)}", field="inputs"
            )
        raise PreconditionFailed(NOT_CLASSIFIER)

    async def Predict(self, request: Any, context: grpc.aio.ServicerContext) -> pb.PredictResponse:
        return await self._unary(self._predict, request, context)

    async def PredictPair(self, request: Any, context: grpc.aio.ServicerContext) -> pb.PredictResponse:
        return await self._unary(self._predict_pair, request, context)

    def PredictStream(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        return self._stream(self._predict, requests, context)

    def PredictPairStream(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        return self._stream(self._predict_pair, requests, context)

    async def _rerank(self, request: Any) -> pb.RerankResponse:
        request = _parsed(request)
        if not request.texts:
            raise empty_input("texts")
        raise PreconditionFailed(NOT_RERANKER)

    async def Rerank(self, request: Any, context: grpc.aio.ServicerContext) -> pb.RerankResponse:
        return await self._unary(self._rerank, request, context)

    async def RerankStream(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> pb.RerankResponse:
        # TEI checks the model type before it reads the stream.
        await abort(context, PreconditionFailed(NOT_RERANKER))
        raise AssertionError("unreachable: abort raises")

    # --- Tokenize --------------------------------------------------------------------------------

    async def _tokenize(self, request: Any) -> pb.EncodeResponse:
        request = _parsed(request)
        if not request.inputs:
            raise empty_input()
        check_text(request.inputs, "inputs")
        text = self.tokenizer.limit_chars(request.inputs, truncate=False)
        full = self.spec.prompt_text(self._prompt(request)) + text
        tokens = await asyncio.to_thread(self.tokenizer.tokenize, full, request.add_special_tokens)
        return pb.EncodeResponse(
            tokens=[
                pb.SimpleToken(id=t.id, text=t.text, special=t.special, start=t.start, stop=t.stop)
                for t in tokens
            ]
        )

    async def _decode(self, request: Any) -> pb.DecodeResponse:
        request = _parsed(request)
        ids = list(request.ids)
        # Tokenize answers at most about TEI's character limit of tokens (plus a prompt and
        # special tokens); the limit keeps the decoded text well inside a reply.
        limit = self.tokenizer.char_limit + self.spec.max_tokens
        check_count(ids, "ids", limit=limit, required=False, note="max_input_length * 251")
        text = await asyncio.to_thread(self.tokenizer.decode, ids, request.skip_special_tokens)
        return pb.DecodeResponse(text=text)

    async def Tokenize(self, request: Any, context: grpc.aio.ServicerContext) -> pb.EncodeResponse:
        return await self._unary(self._tokenize, request, context)

    async def Decode(self, request: Any, context: grpc.aio.ServicerContext) -> pb.DecodeResponse:
        return await self._unary(self._decode, request, context)

    def TokenizeStream(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        return self._stream(self._tokenize, requests, context)

    def DecodeStream(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        return self._stream(self._decode, requests, context)

    # --- Info ------------------------------------------------------------------------------------

    async def Info(self, request: Any, context: grpc.aio.ServicerContext) -> pb.InfoResponse:
        settings = self.runtime.settings
        return pb.InfoResponse(
            version=__version__,
            model_id=self.spec.model_id,
            model_sha=self.spec.fingerprint.rsplit("@", 1)[-1],
            model_dtype=self.runtime.embedder.describe().dtype,
            model_type=pb.MODEL_TYPE_EMBEDDING,
            max_concurrent_requests=settings.max_queue_items,
            max_input_length=self.spec.max_tokens,
            max_batch_tokens=settings.max_batch_tokens,
            max_client_batch_size=settings.max_client_batch_size,
            tokenization_workers=1,
        )

    # --- call shapes -----------------------------------------------------------------------------

    async def _unary(
        self,
        handle: Callable[[Any], Coroutine[Any, Any, R]],
        request: Any,
        context: grpc.aio.ServicerContext,
        *,
        headers: bool = False,
    ) -> R:
        try:
            response = await handle(request)
        except Exception as exc:
            await abort(context, exc)
            raise
        if headers:
            await context.send_initial_metadata(_headers(response.metadata, self.compute_type))  # type: ignore[attr-defined]
        return response

    async def _stream(
        self,
        handle: Callable[[Any], Coroutine[Any, Any, R]],
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[R]:
        """One response per request, in order; the first error ends the stream with its status,
        as TEI's streams do."""
        try:
            settings = self.runtime.settings
            async for response in ordered_pipeline(
                requests, handle, settings.max_stream_in_flight, max_bytes=settings.max_stream_bytes
            ):
                yield response
        except Exception as exc:
            await abort(context, exc)
