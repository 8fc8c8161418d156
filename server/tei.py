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
Blocking methods (tokenization, ONNX) are called off the event loop by the servicer.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tokenizers import Tokenizer

from embedcore import OnnxModel
from server.errors import InvalidArgument
from server.model import ModelSpec

MAX_CHAR_MULTIPLIER = 250  # TEI's character limit per input, in multiples of max_input_length

Direction = Literal["right", "left"]


@dataclass(frozen=True)
class TeiToken:
    id: int
    text: str
    special: bool
    start: int | None  # UTF-8 byte offsets into the prompted input; None for special tokens
    stop: int | None


def empty_input(field: str = "inputs") -> InvalidArgument:
    return InvalidArgument(f"`{field}` cannot be empty", field=field)


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
            raise InvalidArgument(
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
            raise InvalidArgument(
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
