"""text-embeddings-inference's HTTP routes, over :class:`server.tei.TeiEngine` (shared with the
tei.v1 gRPC servicer, so both answer alike).

- ``POST /embed``: ``{"inputs": str | [str], "normalize": true, "truncate": false,
  "truncation_direction": "right" | "left", "prompt_name": null, "dimensions": null}`` ->
  ``[[float, ...], ...]`` (one vector per input, a batch even for one string), with TEI's
  ``x-compute-*`` headers (milliseconds, characters, tokens);
- ``POST /embed_all``: the same inputs -> ``[[[float]]]``, every token's vector per input;
- ``POST /tokenize``: ``{"inputs", "add_special_tokens": true, "prompt_name"}`` ->
  ``[[{"id", "text", "special", "start", "stop"}]]`` (UTF-8 byte offsets, null for special tokens);
- ``POST /decode``: ``{"ids": [int] | [[int]], "skip_special_tokens": true}`` -> ``[str]``;
- ``GET /info``: the model and the limits; ``GET /health``: 200 while serving, else 503;
  ``GET /metrics``: the process's Prometheus registry (gRPC's and HTTP's counters).
Errors: ``{"error", "error_type"}``: 400 ``empty``, 413 ``validation`` (batch size, characters,
tokens with truncate=false, body bytes), 422 ``validation`` (other bad input), 424 ``backend``
(an encoder worker failed), 429 ``overloaded``, 503 ``unhealthy`` (server.http.errors).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict

from server.errors import NotReady
from server.http.errors import Dialect, error_body
from server.http.gate import Gate, json_response, runtime
from server.runtime import Runtime
from server.tei import Direction, TeiEngine

router = APIRouter()

# TEI's enum is serialized as "Left"/"Right"; its documentation writes "left"/"right": both taken.
DirectionName = Literal["right", "left", "Right", "Left"]


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # JSON types as sent (serde)

    inputs: str | list[str]
    truncate: bool | None = None
    normalize: bool = True
    truncation_direction: DirectionName = "right"
    prompt_name: str | None = None
    dimensions: int | None = None


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # JSON types as sent (serde)

    inputs: str | list[str]
    add_special_tokens: bool = True
    prompt_name: str | None = None


class DecodeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # JSON types as sent (serde)

    ids: list[int] | list[list[int]]
    skip_special_tokens: bool = True


def _engine(rt: Runtime) -> TeiEngine:
    return rt.tei


def _batch(engine: TeiEngine, inputs: str | list[str]) -> list[str]:
    texts = [inputs] if isinstance(inputs, str) else inputs
    engine.check_batch(texts)
    return texts


def _direction(name: DirectionName) -> Direction:
    return "left" if name.lower() == "left" else "right"


@router.post("/embed")
async def embed(request: EmbedRequest, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    engine = _engine(rt)
    texts = _batch(engine, request.inputs)
    found = await engine.embed(
        texts,
        truncate=bool(request.truncate),
        normalize=request.normalize,
        direction=_direction(request.truncation_direction),
        prompt_name=request.prompt_name,
        dimensions=request.dimensions,
        field="inputs" if len(texts) > 1 else ["inputs"],
    )
    headers = dict(found.metadata.headers(engine.compute_type))
    return json_response(200, orjson.dumps(found.vectors, option=orjson.OPT_SERIALIZE_NUMPY), headers)


@router.post("/embed_all")
async def embed_all(request: EmbedRequest, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    engine = _engine(rt)
    texts = _batch(engine, request.inputs)
    found = await asyncio.gather(
        *(
            engine.embed_all(
                text,
                truncate=bool(request.truncate),
                direction=_direction(request.truncation_direction),
                prompt_name=request.prompt_name,
            )
            for text in texts
        )
    )
    body = orjson.dumps([item.hidden for item in found], option=orjson.OPT_SERIALIZE_NUMPY)
    return json_response(200, body)


@router.post("/tokenize")
async def tokenize(request: TokenizeRequest, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    engine = _engine(rt)
    texts = _batch(engine, request.inputs)
    out = []
    for text in texts:
        tokens = await engine.tokenize(
            text, add_special_tokens=request.add_special_tokens, prompt_name=request.prompt_name
        )
        out.append(
            [
                {"id": t.id, "text": t.text, "special": t.special, "start": t.start, "stop": t.stop}
                for t in tokens
            ]
        )
    return json_response(200, orjson.dumps(out))


@router.post("/decode")
async def decode(request: DecodeRequest, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    engine = _engine(rt)
    batch: list[list[int]] = (
        [request.ids] if not request.ids or isinstance(request.ids[0], int) else request.ids  # type: ignore[list-item]
    )
    engine.check_batch(batch)
    texts = [await engine.decode(ids, request.skip_special_tokens) for ids in batch]
    return json_response(200, orjson.dumps(texts))


@router.get("/info")
async def info(rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    found = _engine(rt).info()
    body: dict[str, Any] = {
        "model_id": found.model_id,
        "model_sha": found.model_sha,
        "model_dtype": found.model_dtype,
        "model_type": {"embedding": {"pooling": found.model_pooling}},
        "prompts": dict(rt.spec.prompts) or None,
        "max_concurrent_requests": found.max_concurrent_requests,
        "max_input_length": found.max_input_length,
        "max_batch_tokens": found.max_batch_tokens,
        "max_batch_requests": None,
        "max_client_batch_size": found.max_client_batch_size,
        "auto_truncate": False,
        "tokenization_workers": found.tokenization_workers,
        "version": found.version,
        "sha": None,
        "docker_label": None,
    }
    return json_response(200, orjson.dumps(body))


@router.get("/health")
async def health(request: Request) -> Response:
    """200 (empty body) while the server reports SERVING, as grpc.health.v1 does; 503 while
    starting or draining."""
    gate: Gate = request.app.state.gate
    if gate.serving and gate.runtime is not None:
        return Response(status_code=200)
    reason = f"starting ({gate.phase})" if gate.runtime is None else "draining"
    # An answer, not a failed request: not logged (probes poll it through every start-up).
    return json_response(*error_body(NotReady(f"the server is not serving: {reason}"), Dialect.TEI))


@router.get("/metrics")
async def prometheus() -> Response:
    """Prometheus text format of the process's default registry (the same collectors as
    --metrics-port)."""
    return Response(content=generate_latest(), media_type=CONTENT_TYPE_LATEST)
