"""The Tokenize RPCs' domain: the model's tokens of a text with offsets, without truncation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

from server.model import ModelSpec


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


class TokenInspector:
    """An untruncated, unpadded copy of the model's tokenizer (never the encoder's own)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.tokenizer = Tokenizer.from_file(str(spec.path / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()

    def tokenize(self, texts: Sequence[str], prefix: str, specials: bool) -> list[Tokenized]:
        """Blocking: each text's tokens (``prefix + text``); ``specials``: add [CLS]/[SEP]-like
        tokens. exceeds_max counts special tokens as the model would."""
        out = []
        for text in texts:
            full = prefix + text
            encoding = self.tokenizer.encode(full, add_special_tokens=specials)
            length = len(encoding.ids) if specials else len(self.tokenizer.encode(full).ids)
            tokens = [
                Token(i, t, bool(s), a, b)
                for i, t, s, (a, b) in zip(
                    encoding.ids, encoding.tokens, encoding.special_tokens_mask, encoding.offsets, strict=True
                )
            ]
            out.append(Tokenized(tokens, length > self.spec.max_tokens))
        return out
