"""The model's tokenizer, set up to match sentence-transformers exactly (torch-free).

Shipped ``tokenizer.json`` files often bake in truncation and fixed padding (all-MiniLM-L6-v2's
truncates and pads to 128). sentence-transformers truncates to the model's max_seq_length (256
here) and pads to the longest input of the batch; anything else changes the vectors. The server's
batching and ONNX backend and the edge encoder all tokenize through this module.

:class:`ModelTokenizer` gives the ids the model reads without tokenizing more of a text than
needed: a 10 MB text is cut to 256 tokens, so only a prefix (or, truncating on the left, a
suffix) is tokenized, grown until it holds more tokens than the model reads. The ids equal those
of tokenizing the whole text and then truncating, because tokenization is local to a word
(normalization works per character, the pre-tokenizer splits words at whitespace and
punctuation, the model tokenizes each word alone); only the word at the cut may differ, and its
tokens are never counted as known. A tokenizer without a pre-tokenizer has one word: it is
tokenized whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tokenizers import Encoding, Tokenizer

TruncationSide = Literal["right", "left"]  # "right" keeps the beginning, "left" keeps the end

# Characters tokenized first when a text is longer: 16 per token the model reads covers
# English (about 4-5 characters a token) with room to spare; grown 4x per round when not.
_CHARS_PER_TOKEN = 16
_GROWTH = 4


class NoContentError(ValueError):
    """A text whose tokenization holds no content token, only the model's special tokens: for
    example zero-width spaces (U+200B), a byte-order mark (U+FEFF) or control characters, which
    the tokenizer drops. Every such text would get the same vector ([CLS] [SEP]), so it is
    refused. ``index`` is the text's position in the call."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


def no_content_message(name: str) -> str:
    return (
        f"{name} has no content the model can read: its characters (e.g. zero-width spaces, "
        "byte-order marks, control characters) all tokenize to nothing"
    )


@dataclass(frozen=True)
class TokenBatch:
    """Model inputs for one batch, padded to the longest sequence in it."""

    input_ids: np.ndarray  # int64 (batch, seq)
    attention_mask: np.ndarray  # int64 (batch, seq)
    token_type_ids: np.ndarray  # int64 (batch, seq), zeros for single-segment input
    lengths: tuple[int, ...]  # real tokens per row (after truncation)


@dataclass(frozen=True)
class Tokens:
    """What the model reads of one text.

    ``ids``/``type_ids``: int64 (length,), truncated to the model's maximum, special tokens
    included. ``content``: tokens of the text among them (0: nothing but special tokens).
    ``total``: tokens of the whole text, special tokens included, when the whole text was
    tokenized; else None and ``at_least`` is a lower bound (always > max_tokens then).
    """

    ids: np.ndarray
    type_ids: np.ndarray
    content: int
    total: int | None
    at_least: int

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])


def load_tokenizer(
    tokenizer_json: Path, *, max_tokens: int, direction: TruncationSide = "right"
) -> Tokenizer:
    """Load ``tokenizer.json`` with truncation at ``max_tokens`` (cutting on the ``direction``
    side) and no padding (done per batch)."""
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_padding()
    if direction == "right":  # the library default: the saved edge tokenizer stays byte-identical
        tokenizer.enable_truncation(max_length=max_tokens)
    else:
        tokenizer.enable_truncation(max_length=max_tokens, direction=direction)
    return tokenizer


def pad_token_id(tokenizer: Tokenizer, pad_token: str = "[PAD]") -> int:
    """The id of ``pad_token`` in the vocabulary, or 0 when it has none. Padded positions are
    masked out of attention and pooling, so the id only has to be a valid one."""
    found = tokenizer.token_to_id(pad_token)
    return 0 if found is None else int(found)


class ModelTokenizer:
    """Texts -> the ids the model reads (see the module docstring). Thread-safe: nothing is
    mutated after construction. Tokenization runs through ``encode_batch``, which releases the
    GIL (``Tokenizer.encode`` holds it for the whole text: 22 s for 2 MB measured here)."""

    def __init__(self, tokenizer_json: Path, *, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.counter = Tokenizer.from_file(str(tokenizer_json))
        self.counter.no_truncation()
        self.counter.no_padding()
        self._truncating = {
            side: load_tokenizer(tokenizer_json, max_tokens=max_tokens, direction=side)
            for side in ("right", "left")
        }
        self.specials = self.counter.num_special_tokens_to_add(False)
        self.budget = max(max_tokens - self.specials, 1)  # content tokens the model reads

    def tokenizer(self, side: TruncationSide = "right") -> Tokenizer:
        """The underlying truncating tokenizer (what the edge bundle ships, for ``right``)."""
        return self._truncating[side]

    def encode(self, text: str, side: TruncationSide = "right") -> Tokens:
        """What the model reads of ``text``, truncated on ``side``; tokenizes only as much of
        ``text`` as needed. Blocking (CPU): call it off the event loop for long texts."""
        size = max(self.budget * _CHARS_PER_TOKEN, 256)
        while True:
            whole = size >= len(text)
            piece = text if whole else (text[:size] if side == "right" else text[-size:])
            (encoding,) = self.counter.encode_batch([piece], add_special_tokens=False)
            known = len(encoding.ids) if whole else tokens_before_cut(encoding, side)
            if whole or known > self.budget:
                break
            size *= _GROWTH
        final = self._truncating[side].post_process(encoding)
        mask = np.asarray(final.special_tokens_mask, dtype=np.int64)
        return Tokens(
            ids=np.asarray(final.ids, dtype=np.int64),
            type_ids=np.asarray(final.type_ids, dtype=np.int64),
            content=int((mask == 0).sum()),
            total=len(encoding.ids) + self.specials if whole else None,
            at_least=known + self.specials,
        )

    def encode_batch(self, texts: Sequence[str], side: TruncationSide = "right") -> list[Tokens]:
        return [self.encode(text, side) for text in texts]


def tokens_before_cut(encoding: Encoding, side: TruncationSide) -> int:
    """Tokens of a cut piece (a prefix for ``right``, a suffix for ``left``) that the whole
    text has too: all but those of the word at the cut
    (the last word of a prefix, the first of a suffix), which the cut may have changed."""
    words = [w for w in encoding.word_ids if w is not None]
    if not words:
        return 0
    cut_word = words[-1] if side == "right" else words[0]
    return sum(w != cut_word for w in words)


def check_content(tokens: Sequence[Tokens], names: Sequence[str]) -> None:
    """NoContentError for the first text whose tokens are all special tokens."""
    for i, (item, name) in enumerate(zip(tokens, names, strict=True)):
        if item.content == 0:
            raise NoContentError(i, no_content_message(name))


def pad_tokens(tokens: Sequence[Tokens], *, pad_id: int = 0, multiple: int = 1) -> TokenBatch:
    """Right-pad ``tokens`` to the longest (rounded up to ``multiple``) with ``pad_id``."""
    lengths = tuple(t.length for t in tokens)
    width = max(lengths, default=0)
    width = -(-width // multiple) * multiple
    ids = np.full((len(tokens), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(tokens), width), dtype=np.int64)
    types = np.zeros((len(tokens), width), dtype=np.int64)
    for row, item in enumerate(tokens):
        n = lengths[row]
        ids[row, :n] = item.ids
        mask[row, :n] = 1
        types[row, :n] = item.type_ids
    return TokenBatch(ids, mask, types, lengths)


def tokenize_batch(
    tokenizer: ModelTokenizer, texts: Sequence[str], *, pad_id: int = 0, side: TruncationSide = "right"
) -> TokenBatch:
    """Tokenize ``texts`` (truncated on ``side``) and pad to the longest with ``pad_id``.
    NoContentError (naming ``texts[i]``) for a text with no content token."""
    tokens = tokenizer.encode_batch(texts, side)
    check_content(tokens, [f"texts[{i}]" for i in range(len(tokens))])
    return pad_tokens(tokens, pad_id=pad_id)
