"""embedding.v1.EmbeddingService: Info, Embed, EmbedStream, Tokenize (issue 3).

Bad input never reaches the encoder: requests are validated here (empty inputs and NUL
characters are INVALID_ARGUMENT naming ``inputs[i]``, see ``_rpc.check_text``), options are
resolved once (:func:`server.vectors.resolve_options`), and per-request post-processing (dims,
precision) runs after the pool returns the model's vectors. The compute helpers at the top are
shared with the TEI servicer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from tokenizers import Tokenizer

from protos.embedding.v1 import embedding_pb2 as pb
from server import __version__, vectors
from server.app import Runtime
from server.embedder import EncodeResult, Priority
from server.errors import InvalidArgument, NotReady, ServiceError, status_for
from server.servicers._rpc import BadRequest, abort, check_text, ordered_pipeline, register
from server.vectors import VectorOptions

log = logging.getLogger(__name__)


def make_timing(result: EncodeResult, texts: list[str], started_ns: int) -> pb.Timing:
    return pb.Timing(
        queue_ns=result.queue_ns,
        tokenization_ns=result.tokenization_ns,
        inference_ns=result.inference_ns,
        total_ns=time.perf_counter_ns() - started_ns,
        tokens=sum(result.token_counts),
        characters=sum(len(t) for t in texts),
        cache_hits=result.cache_hits,
    )


def int8_ranges(runtime: Runtime, options: VectorOptions) -> tuple[np.ndarray, np.ndarray] | None:
    if options.precision != pb.PRECISION_INT8:
        return None
    if runtime.calibration is None:
        raise NotReady("int8 calibration is not loaded yet")
    ranges: tuple[np.ndarray, np.ndarray] = runtime.calibration.ranges(options.normalize, options.dimensions)
    return ranges


async def encode(runtime: Runtime, texts: list[str], options: VectorOptions) -> EncodeResult:
    return await runtime.embedder.encode(
        texts, prompt_name=options.prompt_name, truncate=options.truncate, priority=Priority.INTERACTIVE
    )


def check_inputs(inputs: list[str], limit: int, field: str = "inputs") -> None:
    if not inputs:
        raise InvalidArgument(f"{field} is empty; send at least one input", field=field)
    if len(inputs) > limit:
        raise InvalidArgument(
            f"{field} has {len(inputs)} items, more than the limit of {limit} (--max-client-batch-size)",
            field=field,
        )
    for i, text in enumerate(inputs):
        check_text(text, f"{field}[{i}]")


def item_error(exc: BaseException) -> pb.ItemError:
    code, message = status_for(exc)
    return pb.ItemError(code=code.value[0], message=message, field=getattr(exc, "field", ""))


@dataclass
class _StreamItem:
    request: pb.EmbedStreamRequest | BadRequest
    options: VectorOptions | ServiceError


class EmbeddingServicer:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.spec = runtime.spec
        # Untruncated tokenizer for Tokenize (reports exceeds_max instead of cutting).
        self.tokenizer = Tokenizer.from_file(str(runtime.spec.path / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()

    async def Info(self, request: Any, context: grpc.aio.ServicerContext) -> pb.InfoResponse:
        runtime, spec, settings = self.runtime, self.spec, self.runtime.settings
        describe = getattr(runtime.embedder, "describe", None)
        compute: dict[str, Any] = describe() if describe else {}
        response = pb.InfoResponse(
            version=__version__,
            model_id=spec.model_id,
            model_fingerprint=spec.fingerprint,
            dimensions=spec.dimensions,
            max_input_tokens=spec.max_tokens,
            pooling=spec.pooling,
            normalizes=spec.normalize,
            prompts=dict(spec.prompts),
            query_prompt_name=spec.query_prompt_name,
            document_prompt_name=spec.document_prompt_name,
            matryoshka_dims=list(spec.matryoshka_dims),
            backend=str(compute.get("backend", settings.backend)),
            device=str(compute.get("device", "cpu")),
            dtype=str(compute.get("dtype", "float32")),
            workers=int(compute.get("workers", 1)),
            max_batch_tokens=settings.max_batch_tokens,
            max_client_batch_size=settings.max_client_batch_size,
        )
        if runtime.calibration is not None:
            lo, hi = runtime.calibration.ranges(True, spec.dimensions)
            response.int8_calibration.min.extend(lo.tolist())
            response.int8_calibration.max.extend(hi.tolist())
        rows = getattr(runtime.store, "collection_rows", None)
        if rows is not None:
            for row in rows(spec.fingerprint):
                response.collections.add(
                    name=row.name,
                    documents=row.documents,
                    sequence=row.sequence,
                    model_fingerprint=row.model_fingerprint,
                    stale=row.stale,
                )
        if runtime.edge_projection is not None:
            response.edge_bundle_fingerprint = runtime.edge_projection.fingerprint
        return response

    async def Embed(self, request: Any, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        started = time.perf_counter_ns()
        try:
            if isinstance(request, BadRequest):
                raise request.error()
            inputs = list(request.inputs)
            check_inputs(inputs, self.runtime.settings.max_client_batch_size)
            options = vectors.resolve_options(request.options, self.spec)
            ranges = int8_ranges(self.runtime, options)
            result = await encode(self.runtime, inputs, options)
            return pb.EmbedResponse(
                embeddings=vectors.to_protos(result.vectors, options, ranges),
                timing=make_timing(result, inputs, started),
                model_fingerprint=self.spec.fingerprint,
            )
        except Exception as exc:
            await abort(context, exc)
            raise  # unreachable: abort raises

    def _with_options(self, requests: AsyncIterator[Any]) -> AsyncIterator[_StreamItem]:
        """Resolve each item's options in request order (unset options stick from the last set)."""
        spec = self.spec

        async def gen() -> AsyncIterator[_StreamItem]:
            current: VectorOptions = vectors.resolve_options(pb.EmbedOptions(), spec)
            async for request in requests:
                if isinstance(request, BadRequest) or not request.HasField("options"):
                    yield _StreamItem(request, current)
                    continue
                try:
                    current = vectors.resolve_options(request.options, spec)
                except ServiceError as exc:
                    yield _StreamItem(request, exc)
                    continue
                yield _StreamItem(request, current)

        return gen()

    async def _stream_item(self, item: _StreamItem) -> pb.EmbedStreamResponse:
        started = time.perf_counter_ns()
        request_id = "" if isinstance(item.request, BadRequest) else item.request.id
        try:
            if isinstance(item.request, BadRequest):
                raise item.request.error()
            if isinstance(item.options, ServiceError):
                raise item.options
            check_text(item.request.input, "input")
            ranges = int8_ranges(self.runtime, item.options)
            result = await encode(self.runtime, [item.request.input], item.options)
            (vector,) = vectors.to_protos(result.vectors, item.options, ranges)
            return pb.EmbedStreamResponse(
                id=request_id, embedding=vector, timing=make_timing(result, [item.request.input], started)
            )
        except Exception as exc:  # in-band: this item failed, the stream goes on
            if not isinstance(exc, ServiceError):
                log.exception("internal error on a stream item")
            return pb.EmbedStreamResponse(id=request_id, error=item_error(exc))

    async def EmbedStream(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EmbedStreamResponse]:
        async for response in ordered_pipeline(
            self._with_options(requests), self._stream_item, self.runtime.settings.max_stream_in_flight
        ):
            yield response

    async def Tokenize(self, request: Any, context: grpc.aio.ServicerContext) -> pb.TokenizeResponse:
        try:
            if isinstance(request, BadRequest):
                raise request.error()
            inputs = list(request.inputs)
            check_inputs(inputs, self.runtime.settings.max_client_batch_size)
            prompt = vectors.check_prompt(request.prompt_name, self.spec, field="prompt_name")
            specials = request.add_special_tokens if request.HasField("add_special_tokens") else True
            prefix = self.spec.prompt_text(prompt)
            return pb.TokenizeResponse(items=list(self._tokenize(inputs, prefix, specials)))
        except Exception as exc:
            await abort(context, exc)
            raise

    def _tokenize(self, inputs: list[str], prefix: str, specials: bool) -> Iterator[pb.Tokenization]:
        for text in inputs:
            full = prefix + text
            encoding = self.tokenizer.encode(full, add_special_tokens=specials)
            length = len(encoding.ids) if specials else len(self.tokenizer.encode(full).ids)
            yield pb.Tokenization(
                tokens=[
                    pb.Token(id=i, text=t, special=bool(s), start=a, stop=b)
                    for i, t, s, (a, b) in zip(
                        encoding.ids,
                        encoding.tokens,
                        encoding.special_tokens_mask,
                        encoding.offsets,
                        strict=True,
                    )
                ],
                exceeds_max=length > self.spec.max_tokens,
            )


async def attach(server: grpc.aio.Server, runtime: Runtime) -> list[str]:
    return [register(server, pb.DESCRIPTOR.services_by_name["EmbeddingService"], EmbeddingServicer(runtime))]
