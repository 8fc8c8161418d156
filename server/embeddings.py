"""Interactive embedding of request texts: the one domain function behind every Embed API.

embedding.v1 ``Embed``/``EmbedStream`` (gRPC) and OpenAI's ``POST /v1/embeddings`` (HTTP) call
:func:`embed` (or :func:`encode` for one stream item), so an input gets the same vector, the
same checks and the same errors from each: inputs counted against --max-client-batch-size
(:class:`~server.errors.EmptyInput`, :class:`~server.errors.TooLarge`), each text non-empty and
without NUL characters, then the encoder's own checks (:meth:`server.embedder.Embedder.encode`),
then Matryoshka truncation and normalization (:func:`server.vectors.postprocess`). Precision
(float16, int8, ubinary) is the transport's business: gRPC packs bytes, HTTP sends float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from server.embedder import Embedder, EncodeResult, FieldNames, Priority
from server.errors import InvalidArgument
from server.tokenization import TokenInspector
from server.validation import check_count, check_text
from server.vectors import VectorOptions, postprocess


@dataclass(frozen=True)
class Embedded:
    """``vectors``: float32 (n, options.truncate_dim), one row per input in input order,
    truncated and (when asked) L2-normalized; ``result``: the encoder's timings and counts."""

    vectors: np.ndarray
    result: EncodeResult


def check_inputs(inputs: Sequence[str], limit: int, field: str = "inputs") -> None:
    """At least one and at most ``limit`` inputs (--max-client-batch-size), each non-empty and
    without NUL: EmptyInput, TooLarge or InvalidArgument naming ``field[i]``."""
    check_count(inputs, field, limit=limit, note="--max-client-batch-size")
    for i, text in enumerate(inputs):
        check_text(text, f"{field}[{i}]")


def priority_of(options: VectorOptions) -> Priority:
    """CLIENT_BULK for a request with ``EmbedOptions.bulk`` (the workers, as Ingest: throughput),
    else INTERACTIVE (the lane while it is on). A route is chosen by the request, never by load,
    so a text's vector depends only on its options (tests/test_tei_compat.py: a stream's vectors
    are the unary ones to 1e-6)."""
    return Priority.CLIENT_BULK if options.bulk else Priority.INTERACTIVE


async def encode(
    embedder: Embedder,
    texts: Sequence[str],
    options: VectorOptions,
    *,
    wait: bool = False,
    field: FieldNames = "inputs",
) -> EncodeResult:
    """The model's vectors of ``texts`` with the request's prompt and truncation (before
    per-request truncation to dimensions), on the interactive route, or the workers' at
    CLIENT_BULK priority for ``options.bulk`` (:func:`priority_of`). ``wait``: wait for room in a
    full encoder queue (streams) instead of Overloaded (unary calls); ``field`` names the texts in
    errors (see :meth:`server.embedder.Embedder.encode`)."""
    return await embedder.encode(
        texts,
        prompt_name=options.prompt_name,
        truncate=options.truncate,
        truncation_direction=options.truncation_direction,
        priority=priority_of(options),
        wait=wait,
        field=field,
    )


async def embed(
    embedder: Embedder,
    inputs: Sequence[str],
    options: VectorOptions,
    *,
    max_inputs: int,
    field: str = "inputs",
) -> Embedded:
    """One unary Embed call: :func:`check_inputs`, :func:`encode` (failing fast with Overloaded
    when the encoder queue is full), then truncation to ``options.truncate_dim`` and the
    requested normalization; errors name ``field[i]``. NotReady / WorkerFailed for capacity
    and worker problems."""
    check_inputs(inputs, max_inputs, field)
    result = await encode(embedder, inputs, options, field=field)
    return Embedded(postprocess(result.vectors, options.normalize, options.truncate_dim), result)


def decode_token_ids(inspector: TokenInspector, inputs: Sequence[Sequence[int]], field: str) -> list[str]:
    """Blocking: the text of each list of the model's token ids (special tokens dropped), for
    APIs that accept pre-tokenized input (OpenAI's ``input`` as token ids). The text is then
    embedded like any other, so it goes through the same checks, cache and truncation; for a
    WordPiece model the ids of a tokenized text decode to text that tokenizes back to them
    (lowercased, spacing normalized). InvalidArgument naming ``field[i]`` for an id outside the
    vocabulary; EmptyInput for an empty list (checked by the caller's :func:`check_inputs`)."""
    tokenizer = inspector.tokenizer
    size = int(tokenizer.get_vocab_size(with_added_tokens=True))
    texts = []
    for i, ids in enumerate(inputs):
        bad = next((t for t in ids if not 0 <= t < size), None)
        if bad is not None:
            raise InvalidArgument(
                f"{field}[{i}] holds token id {bad}, outside the model's vocabulary of {size}",
                field=f"{field}[{i}]",
            )
        texts.append(str(tokenizer.decode(list(ids), skip_special_tokens=True)) if ids else "")
    return texts
