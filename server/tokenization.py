"""The model's tokens of request texts, with the checks every path shares.

- :class:`TextTokenizer`: what the encoder reads of each input (Embed, EmbedStream, tei.v1,
  Search queries, Ingest documents): the prompt prepended, truncated on the requested side,
  tokenized only as far as needed (:class:`embedcore.ModelTokenizer`). Inputs longer than
  ``--max-input-chars``, inputs with no content token and (with truncate=false) inputs longer
  than the model reads are InvalidArgument naming the field.
- :class:`TokenInspector`: the Tokenize RPCs' domain: every token of a text with offsets,
  without truncation, refused (InvalidArgument) as soon as the reply would pass the message
  limit, so a 10 MB text is never tokenized whole just to fail at sending.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Encoding

from embedcore import ModelTokenizer, Tokens, TruncationSide, no_content_message, tokens_before_cut
from server.embedder import FieldNames
from server.errors import InvalidArgument, ServiceError, TooLarge
from server.model import ModelSpec


def field_names(field: FieldNames, count: int) -> list[str]:
    """The request field of each of ``count`` texts, for error messages."""
    if isinstance(field, str):
        return [f"{field}[{i}]" for i in range(count)]
    names = list(field)
    if len(names) != count:
        raise ValueError(f"{len(names)} field names for {count} texts")
    return names


def check_sizes(
    texts: Sequence[str], names: Sequence[str], max_chars: int, option: str = "--max-input-chars"
) -> None:
    """TooLarge (an InvalidArgument) for the first text longer than ``max_chars`` characters,
    naming the ``option`` that sets the limit: cheap, so it runs before any tokenization."""
    for text, name in zip(texts, names, strict=True):
        if len(text) > max_chars:
            raise TooLarge(
                f"{name} has {len(text)} characters, more than the limit of {max_chars} "
                f"({option}); send a shorter text",
                field=name,
            )


class TextTokenizer:
    """Request texts -> the token ids the encoder runs (blocking; thread-safe)."""

    def __init__(self, spec: ModelSpec, max_input_chars: int) -> None:
        self.spec = spec
        self.max_input_chars = max_input_chars
        self.model = ModelTokenizer(spec.path / "tokenizer.json", max_tokens=spec.max_tokens)
        # Content tokens of each prompt alone: a text adds none of its own when its tokens
        # hold no more than the prompt's (a zero-width text after "query: ").
        self._prompt_content = {
            name: self.model.encode(text).content for name, text in spec.prompts.items() if text
        }

    def prefix(self, prompt_name: str) -> str:
        """The prompt's text; InvalidArgument naming ``prompt_name`` for an unknown one."""
        try:
            return self.spec.prompt_text(prompt_name)
        except KeyError as exc:
            raise InvalidArgument(str(exc.args[0]), field="prompt_name") from exc

    def tokenize(
        self,
        texts: Sequence[str],
        names: Sequence[str],
        *,
        prompt_name: str = "",
        truncate: bool = True,
        side: TruncationSide = "right",
    ) -> list[Tokens]:
        """Tokens of each ``prompt + text``; InvalidArgument naming the text's field for a text
        over ``--max-input-chars``, one with no content token, or (``truncate`` False) one
        longer than the model's maximum."""
        check_sizes(texts, names, self.max_input_chars)
        prefix = self.prefix(prompt_name)
        prompt_content = self._prompt_content.get(prompt_name, 0) if prompt_name else 0
        out = self.model.encode_batch([prefix + t for t in texts], side)
        limit = self.spec.max_tokens
        for tokens, name in zip(out, names, strict=True):
            if tokens.total is not None and tokens.content <= prompt_content:
                raise InvalidArgument(no_content_message(name), field=name)
            if not truncate and (tokens.total is None or tokens.total > limit):
                count = f"{tokens.total}" if tokens.total is not None else f"more than {tokens.at_least - 1}"
                raise TooLarge(
                    f"{name} has {count} tokens, more than the model's maximum of {limit}; "
                    "shorten it or set truncate=true",
                    field=name,
                )
        return out

    def validate(
        self,
        texts: Sequence[str],
        names: Sequence[str],
        *,
        prompt_name: str = "",
        truncate: bool = True,
        side: TruncationSide = "right",
    ) -> list[ServiceError | None]:
        """Per text, the error :meth:`tokenize` raises for it alone, or None."""
        out: list[ServiceError | None] = []
        for text, name in zip(texts, names, strict=True):
            try:
                self.tokenize([text], [name], prompt_name=prompt_name, truncate=truncate, side=side)
            except ServiceError as exc:
                out.append(exc)
            else:
                out.append(None)
        return out


# --- Tokenize -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    id: int
    text: str
    special: bool
    start: int  # character offsets into the tokenized text (any prompt prepended)
    stop: int


@dataclass(frozen=True)
class Tokenized:
    tokens: list[Token]
    exceeds_max: bool  # longer than the model's maximum input (would be truncated)


def _varint_bytes(values: np.ndarray) -> np.ndarray:
    """Bytes of each value as a protobuf varint (values < 2**35)."""
    v = values.astype(np.int64)
    return np.asarray(1 + (v >= 1 << 7) + (v >= 1 << 14) + (v >= 1 << 21) + (v >= 1 << 28), dtype=np.int64)


# Room kept for the reply's envelope (status, headers) and each item's wrapper.
_REPLY_SLACK = 1024
_ITEM_BYTES = 16
_FIRST_PIECE = 1 << 16  # characters tokenized first when checking a long text against the limit


class TokenInspector:
    """An untruncated, unpadded copy of the model's tokenizer (never the encoder's own)."""

    def __init__(self, spec: ModelSpec, *, max_reply_bytes: int, max_input_chars: int) -> None:
        self.spec = spec
        self.max_reply_bytes = max_reply_bytes
        self.max_input_chars = max_input_chars
        self.model = ModelTokenizer(spec.path / "tokenizer.json", max_tokens=spec.max_tokens)
        self.tokenizer = self.model.counter
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        self._token_bytes = np.zeros(max(vocab.values(), default=0) + 1, dtype=np.int64)
        for token, index in vocab.items():
            self._token_bytes[index] = len(token.encode("utf-8"))

    def reply_bytes(self, ids: Sequence[int], text_chars: int) -> int:
        """An upper bound of the bytes ``ids`` take in a Tokenize reply (embedding.v1 Token or
        tei.v1 SimpleToken: id, text, special, start, stop; wire format in
        https://protobuf.dev/programming-guides/encoding/), offsets at most ``text_chars``."""
        if not len(ids):
            return 0
        array = np.asarray(ids, dtype=np.int64)
        text = self._token_bytes[np.clip(array, 0, len(self._token_bytes) - 1)]
        offset = 2 * (1 + int(_varint_bytes(np.asarray([text_chars]))[0]))
        body = (1 + _varint_bytes(array)) + (1 + _varint_bytes(text) + text) + 2 + offset
        return int((1 + _varint_bytes(body) + body).sum())

    def tokenize(
        self, texts: Sequence[str], prefix: str, specials: bool, names: Sequence[str] | None = None
    ) -> list[Tokenized]:
        """Blocking: each text's tokens (``prefix + text``); ``specials``: add [CLS]/[SEP]-like
        tokens. exceeds_max counts special tokens as the model would. InvalidArgument naming
        the field for a text over ``--max-input-chars`` or a reply over the message limit."""
        names = list(names) if names is not None else field_names("inputs", len(texts))
        check_sizes(texts, names, self.max_input_chars)
        budget = self.max_reply_bytes - _REPLY_SLACK
        out = []
        for text, name in zip(texts, names, strict=True):
            full = prefix + text
            encoding = self._within(full, budget, name)
            content = len(encoding.ids)
            if specials:
                encoding = self.tokenizer.post_process(encoding, add_special_tokens=True)
            budget -= self._check_reply(encoding.ids, len(full), budget, name) + _ITEM_BYTES
            tokens = [
                Token(i, t, bool(s), a, b)
                for i, t, s, (a, b) in zip(
                    encoding.ids, encoding.tokens, encoding.special_tokens_mask, encoding.offsets, strict=True
                )
            ]
            out.append(Tokenized(tokens, content + self.model.specials > self.spec.max_tokens))
        return out

    def _within(self, full: str, budget: int, name: str) -> Encoding:
        """The untruncated encoding (no special tokens) of ``full``, tokenizing growing prefixes
        first: InvalidArgument as soon as the tokens known so far would not fit ``budget``."""
        size = _FIRST_PIECE
        while True:
            whole = size >= len(full)
            (encoding,) = self.tokenizer.encode_batch(
                [full if whole else full[:size]], add_special_tokens=False
            )
            known = len(encoding.ids) if whole else tokens_before_cut(encoding, "right")
            used = self._check_reply(encoding.ids[:known], len(full), budget, name)
            if whole:
                return encoding
            # Jump to about where the reply would reach the limit (uniform text), at least 2x.
            size = max(size * 2, int(size * budget / max(used, 1) * 1.25))

    def _check_reply(self, ids: Sequence[int], text_chars: int, budget: int, name: str) -> int:
        used = self.reply_bytes(ids, text_chars)
        if used > budget:
            raise TooLarge(
                f"{name} has at least {len(ids)} tokens: the Tokenize reply would be larger than "
                f"the message limit of {self.max_reply_bytes} bytes (--max-message-bytes); "
                "send a shorter text",
                field=name,
            )
        return used
