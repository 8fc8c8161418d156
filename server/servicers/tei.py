"""tei.v1 Info, Embed (+EmbedStream), Tokenize: wire-compatible with text-embeddings-inference.

Differences from embedding.v1 that TEI clients rely on: one input per EmbedRequest, vectors as
``repeated float``, ``truncate`` is a plain bool (false = reject over-long input), an error
status ends a stream, and unary responses carry x-* timing headers in milliseconds.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from protos.tei.v1 import tei_pb2 as pb
from server import __version__
from server.embedder import EncodeResult
from server.runtime import Runtime
from server.servicers._rpc import UnparsedRequest, abort, check_text, ordered_pipeline
from server.servicers.embedding import encode
from server.vectors import VectorOptions, check_prompt, check_truncate_dim, postprocess


def _metadata(result: EncodeResult, text: str, started_ns: int) -> pb.Metadata:
    return pb.Metadata(
        compute_chars=len(text),
        compute_tokens=sum(result.token_counts),
        total_time_ns=time.perf_counter_ns() - started_ns,
        tokenization_time_ns=result.tokenization_ns,
        queue_time_ns=result.queue_ns,
        inference_time_ns=result.inference_ns,
    )


def _headers(meta: pb.Metadata) -> tuple[tuple[str, str], ...]:
    def ms(ns: int) -> str:
        return str(ns // 1_000_000)

    return (
        ("x-compute-time", ms(meta.tokenization_time_ns + meta.queue_time_ns + meta.inference_time_ns)),
        ("x-compute-characters", str(meta.compute_chars)),
        ("x-compute-tokens", str(meta.compute_tokens)),
        ("x-total-time", ms(meta.total_time_ns)),
        ("x-tokenization-time", ms(meta.tokenization_time_ns)),
        ("x-queue-time", ms(meta.queue_time_ns)),
        ("x-inference-time", ms(meta.inference_time_ns)),
    )


class TeiServicer:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.spec = runtime.spec

    def _options(self, request: Any) -> VectorOptions:
        spec = self.spec
        return VectorOptions(
            normalize=request.normalize if request.HasField("normalize") else True,
            truncate_dim=check_truncate_dim(request.dimensions, spec, "dimensions")
            if request.HasField("dimensions")
            else spec.dimension,
            prompt_name=check_prompt(request.prompt_name, spec, "prompt_name"),
            truncate=request.truncate,
        )

    async def _embed(self, request: Any, *, wait: bool = False) -> pb.EmbedResponse:
        started = time.perf_counter_ns()
        if isinstance(request, UnparsedRequest):
            raise request.error()
        check_text(request.inputs, "inputs")
        options = self._options(request)
        result = await encode(self.runtime, [request.inputs], options, wait=wait, field=["inputs"])
        vector = postprocess(result.vectors, options.normalize, options.truncate_dim)[0]
        return pb.EmbedResponse(
            embeddings=vector.tolist(), metadata=_metadata(result, request.inputs, started)
        )

    async def Info(self, request: Any, context: grpc.aio.ServicerContext) -> pb.InfoResponse:
        settings = self.runtime.settings
        dtype = self.runtime.embedder.describe().dtype
        return pb.InfoResponse(
            version=__version__,
            model_id=self.spec.model_id,
            model_sha=self.spec.fingerprint.rsplit("@", 1)[-1],
            model_dtype=dtype,
            model_type=pb.MODEL_TYPE_EMBEDDING,
            max_concurrent_requests=settings.max_queue_items,
            max_input_length=self.spec.max_tokens,
            max_batch_tokens=settings.max_batch_tokens,
            max_client_batch_size=settings.max_client_batch_size,
            tokenization_workers=1,
        )

    async def Embed(self, request: Any, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        try:
            response = await self._embed(request)
        except Exception as exc:
            await abort(context, exc)
            raise
        await context.send_initial_metadata(_headers(response.metadata))
        return response

    async def EmbedStream(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EmbedResponse]:
        try:  # TEI semantics: the first error ends the stream with its status
            async for response in ordered_pipeline(
                requests,
                functools.partial(self._embed, wait=True),
                self.runtime.settings.max_stream_in_flight,
            ):
                yield response
        except Exception as exc:
            await abort(context, exc)

    async def Tokenize(self, request: Any, context: grpc.aio.ServicerContext) -> pb.EncodeResponse:
        try:
            if isinstance(request, UnparsedRequest):
                raise request.error()
            check_text(request.inputs, "inputs")
            prompt = check_prompt(request.prompt_name, self.spec, "prompt_name")
            prefix = self.spec.prompt_text(prompt)
            # Tokenizing and building the reply (up to the message limit) off the event loop.
            return await asyncio.to_thread(self._tokenize, request.inputs, prefix, request.add_special_tokens)
        except Exception as exc:
            await abort(context, exc)
            raise

    def _tokenize(self, text: str, prefix: str, specials: bool) -> pb.EncodeResponse:
        (item,) = self.runtime.tokens.tokenize([text], prefix, specials, ["inputs"])
        return pb.EncodeResponse(
            tokens=[
                pb.SimpleToken(id=t.id, text=t.text, special=t.special, start=t.start, stop=t.stop)
                for t in item.tokens
            ]
        )
