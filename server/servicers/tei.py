"""tei.v1 (Info, Embed, Predict, Rerank, Tokenize): wire- and behaviour-compatible with
text-embeddings-inference 1.9 serving an embedding model.

Differences from embedding.v1 that TEI clients rely on: one input per request, vectors as
``repeated float``, ``truncate`` a plain bool (false = reject over-long input), ``normalize``
unset = true, TEI's validation order and messages (server.tei), an error status ends a stream,
and unary embedding responses carry x-* headers (milliseconds). What an embedding model cannot
serve answers as TEI does: EmbedSparse (SPLADE only), Predict and Rerank (classifiers and
rerankers) are FAILED_PRECONDITION with TEI's messages, after TEI's own input checks. The
API's domain is :class:`server.tei.TeiEngine` (shared with the HTTP routes); this module only
converts protobuf to its calls.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import grpc
import numpy as np

from protos.tei.v1 import tei_pb2 as pb
from server.errors import InvalidArgument, PreconditionFailed
from server.runtime import Runtime
from server.servicers._rpc import UnparsedRequest, abort, ordered_pipeline
from server.tei import Direction, TeiMetadata, empty_input
from server.validation import choice

R = TypeVar("R")

DIRECTIONS: dict[int, Direction] = {
    pb.TRUNCATION_DIRECTION_RIGHT: "right",
    pb.TRUNCATION_DIRECTION_LEFT: "left",
}
# TEI's answers for what only other model types serve (core/src/infer.rs, router/src/grpc/server.rs).
NOT_SPLADE = "Model is not an embedding model with SPLADE pooling"
NOT_CLASSIFIER = "Model is not a classifier model"
NOT_RERANKER = "model is not a classifier model"  # TEI's gRPC Rerank says this for embedding models


def _parsed(request: Any) -> Any:
    if isinstance(request, UnparsedRequest):
        raise request.error()
    return request


def _metadata(meta: TeiMetadata) -> pb.Metadata:
    return pb.Metadata(
        compute_chars=meta.compute_chars,
        compute_tokens=meta.compute_tokens,
        total_time_ns=meta.total_time_ns,
        tokenization_time_ns=meta.tokenization_time_ns,
        queue_time_ns=meta.queue_time_ns,
        inference_time_ns=meta.inference_time_ns,
    )


def _direction(value: int) -> Direction:
    return choice(
        value,
        DIRECTIONS,
        "truncation_direction",
        "TRUNCATION_DIRECTION_RIGHT (0) or TRUNCATION_DIRECTION_LEFT (1)",
    )


def _prompt_name(request: Any) -> str | None:
    return str(request.prompt_name) if request.HasField("prompt_name") else None


class TeiServicer:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.spec = runtime.spec
        self.engine = runtime.tei
        self.compute_type = self.engine.compute_type

    # --- Embed -----------------------------------------------------------------------------------

    async def _embed(self, request: Any, *, wait: bool = False) -> pb.EmbedResponse:
        """``wait``: a stream's request waits for queue room; a unary call fails fast."""
        request = _parsed(request)
        if not request.inputs:  # TEI: the empty input before the enum
            raise empty_input()
        found = await self.engine.embed(
            [request.inputs],
            truncate=request.truncate,
            normalize=request.normalize if request.HasField("normalize") else True,
            direction=_direction(request.truncation_direction),
            prompt_name=_prompt_name(request),
            dimensions=request.dimensions if request.HasField("dimensions") else None,
            wait=wait,
            field=["inputs"],  # TEI's request has one input, named without an index
        )
        return pb.EmbedResponse(embeddings=found.vectors[0].tolist(), metadata=_metadata(found.metadata))

    async def _embed_all(self, request: Any) -> pb.EmbedAllResponse:
        request = _parsed(request)
        if not request.inputs:
            raise empty_input()
        found = await self.engine.embed_all(
            request.inputs,
            truncate=request.truncate,
            direction=_direction(request.truncation_direction),
            prompt_name=_prompt_name(request),
        )
        rows = [pb.TokenEmbedding(embeddings=row.tolist()) for row in np.asarray(found.hidden)]
        return pb.EmbedAllResponse(token_embeddings=rows, metadata=_metadata(found.metadata))

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
        tokens = await self.engine.tokenize(
            request.inputs, add_special_tokens=request.add_special_tokens, prompt_name=_prompt_name(request)
        )
        return pb.EncodeResponse(
            tokens=[
                pb.SimpleToken(id=t.id, text=t.text, special=t.special, start=t.start, stop=t.stop)
                for t in tokens
            ]
        )

    async def _decode(self, request: Any) -> pb.DecodeResponse:
        request = _parsed(request)
        text = await self.engine.decode(list(request.ids), request.skip_special_tokens)
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
        info = self.engine.info()
        return pb.InfoResponse(
            version=info.version,
            model_id=info.model_id,
            model_sha=info.model_sha,
            model_dtype=info.model_dtype,
            model_type=pb.MODEL_TYPE_EMBEDDING,
            max_concurrent_requests=info.max_concurrent_requests,
            max_input_length=info.max_input_length,
            max_batch_tokens=info.max_batch_tokens,
            max_client_batch_size=info.max_client_batch_size,
            tokenization_workers=info.tokenization_workers,
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
            sent: Any = response  # an EmbedResponse or EmbedAllResponse: both carry metadata
            meta = sent.metadata
            pairs = TeiMetadata(
                meta.compute_chars,
                meta.compute_tokens,
                meta.total_time_ns,
                meta.tokenization_time_ns,
                meta.queue_time_ns,
                meta.inference_time_ns,
            ).headers(self.compute_type)
            await context.send_initial_metadata(pairs)
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
