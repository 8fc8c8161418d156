"""Long documents into token windows (chunks), cut where the content says, so an edit moves
only the chunks around it.

A text whose tokens fit the model (at most ``budget`` content tokens: the model's maximum minus
its special tokens and the document prompt's) is one chunk, the whole text, embedded as before.
A longer one's first chunk is its beginning, as many whole words as fit a window (what
truncation embedded); the rest is cut into segments of at most ``window - overlap`` tokens, each
chunk being its segment plus up to ``overlap`` tokens of the text before it (at least
``window // 2`` tokens in all when the text has them), so a chunk never holds more than
``window`` tokens.

Cuts are content-defined, as in rsync's or restic's chunkers, not every N tokens: a segment
ends at the first *anchor* at least a quarter of a segment after its start. Anchors are line
breaks and about one sentence start in five (chosen by a hash of the next tokens' ids, so the
same words give the same anchors wherever they sit). Anchors are sparse and the minimum short,
so where a segment ends rarely depends on where it started (dense anchors with a long minimum
let two versions of a text keep cutting at alternate anchors: up to 9 of 18 chunks changed).
With fixed windows, one sentence added on page 1 would shift every window after it and
re-embed the whole document; with anchors, the cuts after the edit fall where they fell
before as soon as one segment ends on the same anchor (usually the next one), so an edited
paragraph re-embeds one or two chunks (1.44 of 24 on average, at most 3, over 200 documents of
benchmarks/build_long_scifact.py with benchmarks/bench_long_docs.py's edits). Without an anchor
in reach, the same rule runs on ever denser candidates: every other sentence start (by hash),
every sentence start, one word start in eight (by hash), every word start; a word of more
pieces than a window (not possible with BERT's WordPiece, which maps a word of over 100
characters to [UNK]) is cut between its pieces.

Every cut is at the start of a word (tokenizer ``word_ids``), never inside one and never inside
a word piece; a chunk's span is characters ``[start, stop)`` of the text (tokenizer offsets:
Python string indices), from its first token's first character to its last token's last.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

# The most characters of one text that chunking embeds (the server's --chunk-max-chars default;
# the edge client's bound): the rest is stored, not embedded (see :func:`embedded_part`).
CHUNK_MAX_CHARS = 65_536
CHUNK_OVERLAP = 32  # tokens of the text before a chunk repeated at its start (the default)

# Sentence starts that are anchors: 1 in this many (by hash). Measured on 60 texts of 8 SciFact
# abstracts with one paragraph edited: 1 in 5 with a quarter-segment minimum changed 1.28-1.40
# chunks per edit (at most 3) of 18-20; 1 in 2 with a half-segment minimum 1.68-1.90 (up to 9).
_SENTENCE_ANCHOR_MOD = 5
_WORD_ANCHOR_MOD = 8  # word starts that are anchors where a stretch has no sentence start
_SENTENCE_ENDS = (".", "!", "?")
_SLICE_CHARS = 8192  # characters tokenized at once (Chunker._tokenize)
_WHITESPACE = (" ", "\n", "\t", "\r")
_NEXT_WHITESPACE = re.compile(r"[ \n\t\r]")


@dataclass(frozen=True)
class ChunkSpan:
    """One chunk of a text: characters ``[start, stop)`` and the tokens it holds."""

    start: int
    stop: int
    tokens: int


class Chunker:
    """Cuts texts into chunks (see the module docstring). Thread-safe (nothing is mutated after
    construction); blocking (CPU), call it off the event loop.

    ``budget``: content tokens the model reads of one input (its maximum minus special tokens
    and the prompt's tokens). ``window``: most tokens of a chunk (0 or more than ``budget``:
    ``budget``). ``overlap``: tokens of the text before a chunk repeated at its start; less than
    half of the window (ValueError otherwise)."""

    def __init__(
        self, tokenizer: Tokenizer, *, budget: int, window: int = 0, overlap: int = CHUNK_OVERLAP
    ) -> None:
        if budget < 2:
            raise ValueError(f"budget must be at least 2 tokens, got {budget}")
        self.tokenizer = tokenizer
        self.budget = budget
        self.window = budget if window <= 0 or window > budget else window
        if overlap < 0 or 2 * overlap >= self.window:
            raise ValueError(
                f"chunk overlap must be at least 0 and less than half of the {self.window}-token "
                f"window, got {overlap}"
            )
        self.overlap = overlap
        self.stride = self.window - overlap  # most new tokens per chunk
        self.min_segment = max(1, self.stride // 4)
        ends = [tokenizer.token_to_id(t) for t in _SENTENCE_ENDS]
        self._sentence_end_ids = np.asarray([i for i in ends if i is not None], dtype=np.int64)

    def split(self, text: str) -> list[ChunkSpan]:
        """The chunks of ``text``, in order; one chunk ``[0, len(text))`` when its tokens fit
        the budget (also for a text with no token at all)."""
        ids, offsets, word_start = self._tokenize(text)
        n = len(ids)
        if n <= self.budget:
            return [ChunkSpan(0, len(text), n)]
        word_start[0] = False  # never a cut
        after_break = _after_line_break(text, offsets)
        sentence_start = word_start & np.concatenate(([False], np.isin(ids[:-1], self._sentence_end_ids)))
        sentence_start |= word_start & after_break
        hashed = _hash(ids)
        # Cut candidates, most preferred first: a segment ends at the first candidate of the
        # first level that has one in reach (see the module docstring).
        levels = [
            np.flatnonzero(after_break | (sentence_start & (hashed % np.uint64(_SENTENCE_ANCHOR_MOD) == 0))),
            np.flatnonzero(sentence_start & (hashed % np.uint64(2) == 0)),
            np.flatnonzero(sentence_start),
            np.flatnonzero(word_start & (hashed % np.uint64(_WORD_ANCHOR_MOD) == 0)),
            np.flatnonzero(word_start),
        ]
        word_at = levels[-1]

        # The first chunk is what truncation embedded: the longest run of whole words from the
        # start that fits the window. A search by the document's own text (cut to the model's
        # maximum like every query) finds it at a score of about 1, as before chunking.
        first_end = _last_in(word_at, 0, self.window) or self.window
        segments: list[tuple[int, int]] = [(0, first_end)]
        start = first_end
        while n - start > self.stride:
            low, high = start + self.min_segment, start + self.stride
            cut = high  # no word start in reach (a word of more pieces than a window): between pieces
            for positions in levels:
                found = positions[np.searchsorted(positions, low) :]
                if len(found) and found[0] <= high:
                    cut = int(found[0])
                    break
            segments.append((start, cut))
            start = cut
        segments.append((start, n))

        spans = []
        for first, end in segments:
            # Overlap: up to `overlap` tokens before the segment, more for a short segment (the
            # last one) so that a chunk has about half a window of context when the text has it.
            reach = max(self.overlap, self.window // 2 - (end - first))
            begin = first
            if first - reach <= 0:
                begin = 0
            elif first > 0:  # the first word start at or after first - reach (first is one)
                begin = int(word_at[np.searchsorted(word_at, first - reach)])
            spans.append(ChunkSpan(int(offsets[begin, 0]), int(offsets[end - 1, 1]), end - begin))
        return spans

    def _tokenize(self, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token ids (n,), character offsets (n, 2) and word starts (n,) of ``text``, tokenized
        in slices of about :data:`_SLICE_CHARS` cut at whitespace. Why: the tokenizer's Encoding
        of a whole long text holds ~200 bytes per token in Rust (measured: +15 MiB of the
        process's anonymous memory for 64 Ki characters of short random words, 56 k tokens);
        a slice's is freed before the next. BERT's normalizer works per character and its
        pre-tokenizer splits at whitespace, so the tokens are those of the whole text
        (tests/test_chunking.py checks)."""
        ids, offsets, starts = [], [], []
        at = 0
        while at < len(text):
            end = _slice_end(text, at)
            (encoding,) = self.tokenizer.encode_batch([text[at:end]], add_special_tokens=False)
            n = len(encoding.ids)
            ids.append(np.asarray(encoding.ids, dtype=np.int64))
            offsets.append(np.asarray(encoding.offsets, dtype=np.int64).reshape(n, 2) + at)
            words = np.asarray([-1 if w is None else w for w in encoding.word_ids], dtype=np.int64)
            word_start = np.ones(n, dtype=bool)  # a slice starts at whitespace: a word start
            word_start[1:] = words[1:] != words[:-1]
            starts.append(word_start)
            del encoding
            at = end
        if not ids:
            return np.zeros(0, np.int64), np.zeros((0, 2), np.int64), np.zeros(0, bool)
        return np.concatenate(ids), np.concatenate(offsets), np.concatenate(starts)


def _slice_end(text: str, at: int) -> int:
    """Where the tokenizer's slice of ``text`` that starts at ``at`` ends: the end of the text
    within :data:`_SLICE_CHARS`, else the last whitespace in reach (it starts the next slice),
    else the next whitespace after it (a longer slice rather than a cut inside a word)."""
    if len(text) - at <= _SLICE_CHARS:
        return len(text)
    reach = at + _SLICE_CHARS
    end = max(text.rfind(c, at + 1, reach) for c in _WHITESPACE)
    if end > at:
        return end
    found = _NEXT_WHITESPACE.search(text, reach)
    return found.start() if found else len(text)


def _last_in(positions: np.ndarray, after: int, up_to: int) -> int | None:
    """The largest of the sorted ``positions`` in ``(after, up_to]``, or None."""
    i = int(np.searchsorted(positions, up_to, side="right")) - 1
    if i >= 0 and positions[i] > after:
        return int(positions[i])
    return None


def _after_line_break(text: str, offsets: np.ndarray) -> np.ndarray:
    """Per token: a line break lies between the previous token's end and its start."""
    breaks = np.asarray([m.start() for m in re.finditer("\n", text)], dtype=np.int64)
    out = np.zeros(len(offsets), dtype=bool)
    if len(breaks) == 0 or len(offsets) < 2:
        return out
    before = np.searchsorted(breaks, offsets[1:, 0])
    after_prev = np.searchsorted(breaks, offsets[:-1, 1])
    out[1:] = before > after_prev
    return out


def _hash(ids: np.ndarray) -> np.ndarray:
    """Per token: a hash (uint64) of its id and the next two ids (deterministic: the same
    tokens anchor the same everywhere)."""
    padded = np.concatenate((ids, np.zeros(2, dtype=np.int64))).astype(np.uint64)
    mixed = (
        padded[:-2] * np.uint64(0x9E3779B97F4A7C15)
        ^ padded[1:-1] * np.uint64(0xC2B2AE3D27D4EB4F)
        ^ padded[2:] * np.uint64(0x165667B19E3779F9)
    )
    return np.asarray(mixed >> np.uint64(29), dtype=np.uint64)


def content_budget(tokenizer: Tokenizer, *, max_tokens: int, prompt: str) -> int:
    """Content tokens the model reads of one input with ``prompt`` before it: ``max_tokens``
    minus the tokenizer's special tokens minus the prompt's tokens (the server's and the edge
    client's chunk budget)."""
    prompt_tokens = len(tokenizer.encode(prompt, add_special_tokens=False).ids) if prompt else 0
    return max_tokens - tokenizer.num_special_tokens_to_add(False) - prompt_tokens


def load_chunker(
    tokenizer_json: Path, *, max_tokens: int, prompt: str, window: int = 0, overlap: int = CHUNK_OVERLAP
) -> Chunker:
    """The chunker for inputs of a model reading ``max_tokens`` tokens (its ``tokenizer.json``),
    with ``prompt`` before each: its budget is :func:`content_budget`. The file's own truncation
    and padding settings are ignored (the chunker reads whole texts)."""
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    budget = content_budget(tokenizer, max_tokens=max_tokens, prompt=prompt)
    return Chunker(tokenizer, budget=budget, window=window, overlap=overlap)


def embedded_part(text: str, max_chars: int | None) -> str:
    """The beginning of ``text`` that chunking embeds: at most ``max_chars`` characters, cut
    after the last whitespace in reach (a word is never cut), the whole text when it is shorter
    (or ``max_chars`` is None)."""
    if max_chars is None or len(text) <= max_chars:
        return text
    cut = max(text.rfind(" ", 0, max_chars), text.rfind("\n", 0, max_chars))
    return text[: cut if cut > 0 else max_chars]
