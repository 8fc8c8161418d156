"""OpenAI's embeddings API: ``POST /v1/embeddings`` and ``GET /v1/models``.

Request (https://platform.openai.com/docs/api-reference/embeddings/create): ``input`` a string,
an array of strings, an array of token ids or an array of token-id arrays (the model's own
tokenizer's ids: decoded, then embedded as text, :func:`server.embeddings.decode_token_ids`);
``model`` (required by OpenAI; with one served model any name is accepted and the response names
it, as TEI does, so clients configured with another model name keep working; with several, a
served model's name picks it and another name is 404 naming the served ones); ``dimensions``
(Matryoshka truncation, then L2 normalization: the same vector as gRPC ``Embed`` with
``options.dimensions``); ``encoding_format`` ``float`` (default) or ``base64`` (the vector's
little-endian float32 bytes, base64: what the ``openai`` client asks for and decodes); ``user``
(accepted, unused). Response: ``{"object": "list", "data": [{"object": "embedding", "index": i,
"embedding": [...] | "base64"}], "model", "usage": {"prompt_tokens", "total_tokens"}}``, tokens
being what the model reads (special tokens included, after truncation; cached inputs count too).
Errors: OpenAI's shape (server.http.errors): 400 bad input, 401 token, 413 too large (too many
inputs, an input over --max-input-chars, the body over its limit), 429 encoder queue full, 503
starting or a worker restarting.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Annotated, Literal, cast

import numpy as np
import orjson
from fastapi import APIRouter, Depends
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from server.embeddings import decode_token_ids, embed
from server.http.gate import json_response, runtime
from server.runtime import Runtime
from server.served_models import ServedModel
from server.vectors import VectorOptions, check_truncate_dim

router = APIRouter(prefix="/v1")

# Token ids decoded on the event loop up to this many (a few milliseconds); more off it.
_INLINE_DECODE_IDS = 4096
_STARTED = int(time.time())  # "created" of the model entry: when this process loaded the module


class EmbeddingsRequest(BaseModel):
    """OpenAI's CreateEmbeddingRequest; unknown fields are ignored, as OpenAI does."""

    model_config = ConfigDict(extra="ignore", strict=True)  # JSON types as sent (serde)

    input: str | list[str] | list[int] | list[list[int]]
    model: str
    dimensions: Annotated[int, Field(strict=True)] | None = None
    encoding_format: Literal["float", "base64"] | None = "float"  # null: float, as unset
    user: str | None = None


def _texts(value: str | list[str] | list[int] | list[list[int]], rt: Runtime) -> list[str]:
    """Blocking for long token-id inputs: ``input`` as a list of texts."""
    if isinstance(value, str):
        return [value]
    if not value or isinstance(value[0], str):
        return cast(list[str], value)
    ids = [value] if isinstance(value[0], int) else value
    return decode_token_ids(rt.tokens, ids, "input")


@router.post("/embeddings")
async def create_embeddings(request: EmbeddingsRequest, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    """Embed ``input``; see the module docstring for the shapes and errors."""
    value = request.input
    size = sum(len(v) if isinstance(v, list) else 1 for v in value) if isinstance(value, list) else 0
    if size > _INLINE_DECODE_IDS:  # many token ids: decoded off the event loop
        texts = await asyncio.to_thread(_texts, value, rt)
    else:
        texts = _texts(value, rt)
    served = _served(rt, request.model)
    spec = served.spec
    dims = (
        spec.dimension
        if request.dimensions is None
        else check_truncate_dim(request.dimensions, spec, "dimensions")
    )
    options = VectorOptions(truncate_dim=dims)
    embedded = await embed(
        served.embedder, texts, options, max_inputs=rt.settings.max_client_batch_size, field="input"
    )
    vectors = np.ascontiguousarray(embedded.vectors, dtype="<f4")
    if request.encoding_format == "base64":  # None and "float": JSON numbers
        data: list[dict[str, object]] = [
            {"object": "embedding", "index": i, "embedding": base64.b64encode(row.tobytes()).decode("ascii")}
            for i, row in enumerate(vectors)
        ]
    else:
        data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(vectors)]
    tokens = embedded.result.tokens_read
    body = {
        "object": "list",
        "data": data,
        "model": spec.model_id if len(rt.models) == 1 else served.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return json_response(200, orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY))


def _served(rt: Runtime, name: str) -> ServedModel:
    """The model ``name`` asks for. A server with one model takes any name (as TEI does); one
    with several takes a served model's name (or the default's id) and refuses others with
    NotFound naming the served ones."""
    models = rt.models
    if len(models) == 1 or name == models.default.spec.model_id:
        return models.default
    return models.get(name, "model")


@router.get("/models")
async def list_models(rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    """OpenAI's model list: the served models (``id``: what /v1/embeddings reports; the default
    first, by its id when it is the only one)."""
    ids = [rt.spec.model_id] if len(rt.models) == 1 else [m.name for m in rt.models]
    body = {
        "object": "list",
        "data": [{"id": i, "object": "model", "created": _STARTED, "owned_by": "embedstream"} for i in ids],
    }
    return json_response(200, orjson.dumps(body))
