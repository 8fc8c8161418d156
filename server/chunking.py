"""Chunking on the server: the chunker for a served model (:func:`chunker_for`) and
:func:`embed_chunks`. The chunker itself (how texts are cut, torch-free, shared with the edge
client) is :mod:`embedcore.chunking`."""

from __future__ import annotations

import asyncio

import numpy as np

from embedcore.chunking import CHUNK_OVERLAP, Chunker, ChunkSpan, load_chunker
from server.embedder import Embedder, EncodeResult, Priority
from server.errors import InvalidArgument
from server.model import ModelSpec
from server.tokenization import check_sizes

__all__ = ["ChunkSpan", "Chunker", "chunker_for", "embed_chunks"]


def chunker_for(
    spec: ModelSpec, *, window: int = 0, overlap: int = CHUNK_OVERLAP, prompt_name: str | None = None
) -> Chunker:
    """The chunker for inputs of ``spec``'s model with prompt ``prompt_name`` (None: the
    document prompt): its budget is what the model reads of such an input (max_tokens minus
    special tokens minus the prompt's tokens). KeyError for a prompt the model lacks."""
    prompt = spec.prompt_text(spec.document_prompt_name if prompt_name is None else prompt_name)
    return load_chunker(
        spec.path / "tokenizer.json",
        max_tokens=spec.max_tokens,
        prompt=prompt,
        window=window,
        overlap=overlap,
    )


async def embed_chunks(
    embedder: Embedder,
    chunker: Chunker,
    texts: list[str],
    names: list[str],
    *,
    prompt_name: str = "",
    max_chunks: int,
    max_chars: int,
    wait: bool = False,
    priority: Priority = Priority.INTERACTIVE,
) -> tuple[list[list[ChunkSpan]], list[np.ndarray], EncodeResult]:
    """Cut each of ``texts`` into chunks and embed every chunk (at ``priority``): (chunks
    per text, their vectors per text: float32 (chunks, dims), the encoder's result for all of
    them). ``names``: each text's request field, for errors. InvalidArgument naming the text at
    which the chunks pass ``max_chunks``, TooLarge for a text over ``max_chars`` characters
    (checked first: cutting tokenizes the whole text); the encoder's errors otherwise."""
    check_sizes(texts, names, max_chars, "--chunk-max-chars")
    spans = await asyncio.to_thread(lambda: [chunker.split(text) for text in texts])
    total = 0
    for text_spans, name in zip(spans, names, strict=True):
        total += len(text_spans)
        if total > max_chunks:
            raise InvalidArgument(
                f"{name} brings the request to {total} chunks, more than the {max_chunks} one request "
                "may have; send fewer or shorter inputs",
                field=name,
            )
    pairs = list(zip(texts, spans, strict=True))
    pieces = [text[s.start : s.stop] for text, text_spans in pairs for s in text_spans]
    fields = [name for name, text_spans in zip(names, spans, strict=True) for _ in text_spans]
    result = await embedder.encode(
        pieces, prompt_name=prompt_name, priority=priority, wait=wait, field=fields
    )
    vectors, at = [], 0
    for text_spans in spans:
        vectors.append(result.vectors[at : at + len(text_spans)])
        at += len(text_spans)
    return spans, vectors, result
