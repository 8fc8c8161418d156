"""embedding.v1.EmbeddingService: Info, Embed, EmbedStream, Tokenize.

Bad input never reaches the encoder: options are resolved once
(:func:`server.servicers._convert.vector_options`), then the domain function
:func:`server.embeddings.embed` (shared with the HTTP API) checks the inputs (empty inputs and
NUL characters are INVALID_ARGUMENT naming ``inputs[i]``), the encoder's tokenization checks
size, content and length (:mod:`server.tokenization`), and truncation and normalization run
after the pool returns the model's vectors; precision is applied here. Embed fails fast with
RESOURCE_EXHAUSTED when the encoder queue is full; EmbedStream items wait for room (the stream
stops reading, flow control holds the client). ``EmbedOptions.bulk`` sends a request's inputs
to the workers instead of the interactive lane (:func:`server.embeddings.priority_of`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from protos.embedding.v1 import embedding_pb2 as pb
from server import __version__
from server.chunking import Chunker, ChunkSpan, chunker_for, embed_chunks
from server.embedder import EncodeResult
from server.embeddings import check_inputs, embed, encode, priority_of
from server.errors import InvalidArgument, ServiceError
from server.runtime import Runtime
from server.served_models import ServedModel
from server.servicers._convert import int8_ranges, item_error, pack, timing, to_protos, vector_options
from server.servicers._rpc import UnparsedRequest, abort, ordered_pipeline, request_bytes
from server.validation import check_name, check_prompt_name, check_text
from server.vectors import VectorOptions

log = logging.getLogger(__name__)


# Chunks one Embed request may have with options.chunking, per input it may have.
CHUNKS_PER_INPUT = 8


def _chunking(options: pb.EmbedOptions) -> bool:
    return options.HasField("chunking") and options.chunking


def _chunked(spans: list[ChunkSpan], vectors: list[pb.Vector]) -> pb.ChunkedEmbedding:
    return pb.ChunkedEmbedding(
        chunks=[
            pb.ChunkEmbedding(embedding=vector, start=span.start, stop=span.stop)
            for span, vector in zip(spans, vectors, strict=True)
        ]
    )


@dataclass
class _StreamItem:
    request: pb.EmbedStreamRequest | UnparsedRequest
    options: VectorOptions | ServiceError
    chunking: bool = False
    model: ServedModel | None = None  # None: the default model


class EmbeddingServicer:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.spec = runtime.spec
        self._chunkers: dict[tuple[str, str], Chunker] = {}

    def _chunker(self, prompt_name: str, model: ServedModel | None = None) -> Chunker:
        """The chunker for inputs with ``prompt_name`` (made on first use; the prompt is valid)."""
        model = model or self.runtime.models.default
        found = self._chunkers.get((model.name, prompt_name))
        if found is None:
            settings = self.runtime.settings
            found = chunker_for(
                model.spec,
                window=settings.chunk_tokens,
                overlap=settings.chunk_overlap_tokens,
                prompt_name=prompt_name,
            )
            self._chunkers[(model.name, prompt_name)] = found
        return found

    async def _embed_chunks(
        self,
        texts: list[str],
        names: list[str],
        options: VectorOptions,
        *,
        wait: bool,
        model: ServedModel | None = None,
    ) -> tuple[list[pb.ChunkedEmbedding], EncodeResult]:
        """Each text's chunks with their vectors as ``options`` ask (EmbedOptions.chunking)."""
        model = model or self.runtime.models.default
        ranges = int8_ranges(model.calibration, options)
        spans, vectors, result = await embed_chunks(
            model.embedder,
            self._chunker(options.prompt_name, model),
            texts,
            names,
            prompt_name=options.prompt_name,
            max_chunks=CHUNKS_PER_INPUT * self.runtime.settings.max_client_batch_size,
            max_chars=self.runtime.settings.chunk_max_chars,
            wait=wait,
            priority=priority_of(options),
        )
        chunked = [_chunked(s, to_protos(v, options, ranges)) for s, v in zip(spans, vectors, strict=True)]
        return chunked, result

    async def Info(self, request: Any, context: grpc.aio.ServicerContext) -> pb.InfoResponse:
        runtime, spec, settings = self.runtime, self.spec, self.runtime.settings
        compute = runtime.embedder.describe()
        response = pb.InfoResponse(
            version=__version__,
            model_id=spec.model_id,
            model_fingerprint=spec.fingerprint,
            dimensions=spec.dimension,
            max_input_tokens=spec.max_tokens,
            pooling=spec.pooling,
            normalizes=spec.normalize,
            prompts=dict(spec.prompts),
            query_prompt_name=spec.query_prompt_name,
            document_prompt_name=spec.document_prompt_name,
            matryoshka_dims=list(spec.matryoshka_dims),
            backend=compute.backend,
            device=compute.device,
            dtype=compute.dtype,
            workers=compute.workers,
            compiled=compute.compiled,
            max_batch_tokens=settings.max_batch_tokens,
            max_client_batch_size=settings.max_client_batch_size,
            edge_bundle_fingerprint=runtime.edge.fingerprint,
        )
        for model in runtime.models:
            response.models.add(
                name=model.name,
                model_id=model.spec.model_id,
                fingerprint=model.spec.fingerprint,
                dimensions=model.spec.dimension,
                is_default=model.default,
                workers=model.workers,
                edge_bundle_fingerprint=getattr(
                    runtime.router.by_name(model.name), "edge", runtime.edge
                ).fingerprint,
            )
        lo, hi = runtime.calibration.ranges(True, spec.dimension)
        response.int8_calibration.min.extend(lo.tolist())
        response.int8_calibration.max.extend(hi.tolist())
        for row in await asyncio.to_thread(runtime.store.collection_rows, spec.fingerprint):
            response.collections.add(
                name=row.name,
                documents=row.documents,
                sequence=row.sequence,
                model_fingerprint=row.model_fingerprint,
                stale=row.stale and runtime.models.by_fingerprint(row.model_fingerprint) is None,
                incarnation=row.incarnation,
                model=getattr(runtime.models.by_fingerprint(row.model_fingerprint), "name", ""),
            )
        return response

    async def Embed(self, request: Any, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        started = time.perf_counter_ns()
        try:
            if isinstance(request, UnparsedRequest):
                raise request.error()
            inputs = list(request.inputs)
            model = self.runtime.models.get(request.options.model, "options.model")
            options = vector_options(request.options, model.spec)
            if _chunking(request.options):
                check_inputs(inputs, self.runtime.settings.max_client_batch_size)
                names = [f"inputs[{i}]" for i in range(len(inputs))]
                chunked, result = await self._embed_chunks(inputs, names, options, wait=False, model=model)
                return pb.EmbedResponse(
                    chunked=chunked,
                    timing=timing(result, sum(map(len, inputs)), started),
                    model_fingerprint=model.spec.fingerprint,
                )
            ranges = int8_ranges(model.calibration, options)
            embedded = await embed(
                model.embedder, inputs, options, max_inputs=self.runtime.settings.max_client_batch_size
            )
            return pb.EmbedResponse(
                embeddings=pack(embedded.vectors, options, ranges),
                timing=timing(embedded.result, sum(map(len, inputs)), started),
                model_fingerprint=model.spec.fingerprint,
            )
        except Exception as exc:
            await abort(context, exc)
            raise  # unreachable: abort raises

    def _with_options(self, requests: AsyncIterator[Any]) -> AsyncIterator[_StreamItem]:
        """Resolve each item's options in request order (unset options stick from the last set)."""
        models = self.runtime.models

        async def gen() -> AsyncIterator[_StreamItem]:
            model = models.default
            current: VectorOptions = vector_options(pb.EmbedOptions(), model.spec)
            chunking = False
            async for request in requests:
                if isinstance(request, UnparsedRequest) or not request.HasField("options"):
                    yield _StreamItem(request, current, chunking, model)
                    continue
                try:
                    model = models.get(request.options.model, "options.model")
                    current = vector_options(request.options, model.spec)
                    chunking = _chunking(request.options)
                except ServiceError as exc:
                    yield _StreamItem(request, exc)
                    continue
                yield _StreamItem(request, current, chunking, model)

        return gen()

    async def _stream_item(self, item: _StreamItem) -> pb.EmbedStreamResponse:
        started = time.perf_counter_ns()
        request = item.request
        if isinstance(request, UnparsedRequest):
            request_id = request.partial.id if request.partial is not None else ""
        else:
            request_id = request.id
        try:
            try:
                check_name(request_id, "id")
            except InvalidArgument:
                request_id = ""  # not echoed: the response must stay small
                raise
            if isinstance(request, UnparsedRequest):
                raise request.error()
            if isinstance(item.options, ServiceError):
                raise item.options
            check_text(request.input, "input")
            if item.chunking:
                options = item.options
                (chunked,), result = await self._embed_chunks(
                    [request.input], ["input"], options, wait=True, model=item.model
                )
                return pb.EmbedStreamResponse(
                    id=request_id, chunks=chunked, timing=timing(result, len(request.input), started)
                )
            model = item.model or self.runtime.models.default
            ranges = int8_ranges(model.calibration, item.options)
            result = await encode(
                model.embedder,
                [request.input],
                item.options,
                wait=True,
                field=["input"],
            )
            (vector,) = to_protos(result.vectors, item.options, ranges)
            return pb.EmbedStreamResponse(
                id=request_id, embedding=vector, timing=timing(result, len(request.input), started)
            )
        except Exception as exc:  # in-band: this item failed, the stream goes on
            if not isinstance(exc, ServiceError):
                log.exception("internal error on a stream item")
            return pb.EmbedStreamResponse(id=request_id, error=item_error(exc))

    async def EmbedStream(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EmbedStreamResponse]:
        settings = self.runtime.settings
        async for response in ordered_pipeline(
            self._with_options(requests),
            self._stream_item,
            settings.max_stream_in_flight,
            max_bytes=settings.max_stream_bytes,
            size=lambda item: request_bytes(item.request),
        ):
            yield response

    async def Tokenize(self, request: Any, context: grpc.aio.ServicerContext) -> pb.TokenizeResponse:
        try:
            if isinstance(request, UnparsedRequest):
                raise request.error()
            inputs = list(request.inputs)
            check_inputs(inputs, self.runtime.settings.max_client_batch_size)
            prompt = check_prompt_name(request.prompt_name, self.spec.prompts, "prompt_name")
            specials = request.add_special_tokens if request.HasField("add_special_tokens") else True
            prefix = self.spec.prompt_text(prompt)
            # Tokenizing and building the reply (up to the message limit) off the event loop.
            return await asyncio.to_thread(self._tokenize, inputs, prefix, specials)
        except Exception as exc:
            await abort(context, exc)
            raise

    def _tokenize(self, inputs: list[str], prefix: str, specials: bool) -> pb.TokenizeResponse:
        found = self.runtime.tokens.tokenize(inputs, prefix, specials)
        return pb.TokenizeResponse(
            items=[
                pb.Tokenization(
                    tokens=[
                        pb.Token(id=t.id, text=t.text, special=t.special, start=t.start, stop=t.stop)
                        for t in item.tokens
                    ],
                    exceeds_max=item.exceeds_max,
                )
                for item in found
            ]
        )
