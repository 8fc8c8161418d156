"""The model's tokenizer, set up to match sentence-transformers exactly (torch-free).

Shipped ``tokenizer.json`` files often bake in truncation and fixed padding (all-MiniLM-L6-v2's
truncates and pads to 128). sentence-transformers truncates to the model's max_seq_length (256
here) and pads to the longest input of the batch; anything else changes the vectors. The server's
batching and ONNX backend and the edge encoder all tokenize through this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer


@dataclass(frozen=True)
class TokenBatch:
    """Model inputs for one batch, padded to the longest sequence in it."""

    input_ids: np.ndarray  # int64 (batch, seq)
    attention_mask: np.ndarray  # int64 (batch, seq)
    token_type_ids: np.ndarray  # int64 (batch, seq), zeros for single-segment input
    lengths: tuple[int, ...]  # real tokens per row (after truncation)


def load_tokenizer(tokenizer_json: Path, *, max_tokens: int) -> Tokenizer:
    """Load ``tokenizer.json`` with truncation at ``max_tokens`` and no padding (done per batch)."""
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_tokens)
    return tokenizer


def pad_token_id(tokenizer: Tokenizer, pad_token: str = "[PAD]") -> int:
    """The id of ``pad_token`` in the vocabulary, or 0 when it has none. Padded positions are
    masked out of attention and pooling, so the id only has to be a valid one."""
    found = tokenizer.token_to_id(pad_token)
    return 0 if found is None else int(found)


def tokenize_batch(tokenizer: Tokenizer, texts: Sequence[str], *, pad_id: int = 0) -> TokenBatch:
    """Tokenize ``texts`` (truncated as configured) and pad to the longest with ``pad_id``."""
    encodings = tokenizer.encode_batch(list(texts))
    lengths = tuple(len(e.ids) for e in encodings)
    width = max(lengths, default=0)
    ids = np.full((len(encodings), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    types = np.zeros((len(encodings), width), dtype=np.int64)
    for row, encoding in enumerate(encodings):
        n = lengths[row]
        ids[row, :n] = encoding.ids
        mask[row, :n] = 1
        types[row, :n] = encoding.type_ids
    return TokenBatch(ids, mask, types, lengths)
