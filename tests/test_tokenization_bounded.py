"""Tokenizing only as much of a text as the model reads gives exactly the ids of tokenizing the
whole text and then truncating (both sides, long words at the cut); the Tokenize reply bound
holds; the edge encoder refuses content-free texts and computes the same vector alone or in a
batch."""

from __future__ import annotations

import numpy as np
import pytest

from embedcore import EdgeBundle, ModelTokenizer, NoContentError, TruncationSide, load_tokenizer
from protos.embedding.v1 import embedding_pb2 as pb
from protos.tei.v1 import tei_pb2 as tei
from server.errors import InvalidArgument
from server.model import ModelSpec
from server.tokenization import TextTokenizer, TokenInspector

LONG_WORD = "y" * 101  # longer than WordPiece's 100 characters: one [UNK] for the whole word
TEXTS = {
    # ~26 000 characters before the 254th token: the first prefix is grown twice
    "long-words": " ".join([LONG_WORD] * 300),
    # the first prefix (4064 characters) ends inside a 150-character word: cut, it would be
    # word pieces; whole, it is one [UNK]
    "cut-in-a-long-word": "ab " * 1354 + "z" * 150 + " tail" * 300,
    "words-of-pieces": " ".join(["supercalifragilisticexpialidocious"] * 120),
    "no-space-at-all": "x" * 30_000,
    "cjk": "北京大学的学生" * 200,
    "accents-at-the-cut": "cafe\u0301 " * 900,
    "punctuation": "foo.bar,baz! " * 400,
    "short": "A man is eating food.",
}


@pytest.fixture(scope="module")
def model(spec: ModelSpec) -> ModelTokenizer:
    return ModelTokenizer(spec.path / "tokenizer.json", max_tokens=spec.max_tokens)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("name", sorted(TEXTS))
def test_bounded_ids_equal_whole_then_truncated(
    model: ModelTokenizer, spec: ModelSpec, name: str, side: TruncationSide
) -> None:
    text = TEXTS[name]
    whole = load_tokenizer(spec.path / "tokenizer.json", max_tokens=spec.max_tokens, direction=side)
    expected = whole.encode(text)
    got = model.encode(text, side)
    assert got.ids.tolist() == expected.ids
    assert got.type_ids.tolist() == expected.type_ids
    length = len(model.counter.encode(text).ids)
    if got.total is not None:
        assert got.total == length
    else:  # cut before the end: only a lower bound is known, and it is past the maximum
        assert spec.max_tokens < got.at_least <= length


def test_left_keeps_the_end_and_right_the_beginning(model: ModelTokenizer) -> None:
    text = " ".join(f"w{i}" for i in range(600))
    right, left = model.encode(text, "right"), model.encode(text, "left")
    words = model.counter.encode(text, add_special_tokens=False).ids
    assert right.ids[1:-1].tolist() == words[:254] and left.ids[1:-1].tolist() == words[-254:]


def test_content_free_texts_are_refused_naming_the_field(spec: ModelSpec) -> None:
    texts = TextTokenizer(spec, max_input_chars=1000)
    for bad in ("\u200b\u200b", "\u200b \u200b", "\ufeff", "\x1f\x85"):
        with pytest.raises(InvalidArgument, match=r"inputs\[1\] has no content") as err:
            texts.tokenize(["fine", bad], ["inputs[0]", "inputs[1]"])
        assert err.value.field == "inputs[1]"
    with pytest.raises(
        InvalidArgument, match=r"1001 characters, more than the limit of 1000 \(--max-input-chars\)"
    ):
        texts.tokenize(["x" * 1001], ["query"])
    assert texts.tokenize(["🙂"], ["inputs[0]"])[0].content == 1  # [UNK] is content


def test_tokenize_reply_bound_holds_and_is_enforced(spec: ModelSpec) -> None:
    inspector = TokenInspector(spec, max_reply_bytes=1 << 20, max_input_chars=1 << 24)
    texts = ["Hello world", "naïve café 北京 🙂 " * 50, "word " * 3000]
    for specials in (True, False):
        found = inspector.tokenize(texts, "", specials)
        reply = pb.TokenizeResponse(
            items=[
                pb.Tokenization(
                    tokens=[
                        pb.Token(id=t.id, text=t.text, special=t.special, start=t.start, stop=t.stop)
                        for t in item.tokens
                    ],
                    exceeds_max=item.exceeds_max,
                )
                for item in found
            ]
        )
        bound = sum(
            inspector.reply_bytes([t.id for t in item.tokens], len(text))
            for item, text in zip(found, texts, strict=True)
        )
        assert reply.ByteSize() <= bound + 16 * len(texts)
        tei_reply = tei.EncodeResponse(
            tokens=[
                tei.SimpleToken(id=t.id, text=t.text, special=t.special, start=t.start, stop=t.stop)
                for t in found[1].tokens
            ]
        )
        assert tei_reply.ByteSize() <= inspector.reply_bytes([t.id for t in found[1].tokens], len(texts[1]))
    assert [item.exceeds_max for item in found] == [False, False, True]
    # "word " * 400 000: about 6 MB of reply, past a 1 MiB limit
    with pytest.raises(
        InvalidArgument, match=r"inputs\[0\] has at least \d+ tokens.*1048576 bytes \(--max-message-bytes\)"
    ):
        inspector.tokenize(["word " * 400_000], "", True)


def test_edge_encoder_refuses_content_free_texts(edge_bundle: EdgeBundle) -> None:
    for kind in ("query", "document"):
        with pytest.raises(NoContentError, match=r"texts\[1\] has no content") as err:
            edge_bundle.embed(["a fine text", "\u200b\ufeff"], 64, kind=kind)
        assert err.value.index == 1


@pytest.mark.parametrize("int8", [True, False], ids=["int8", "fp32"])
def test_edge_vectors_are_the_same_alone_and_in_a_batch(edge_bundle: EdgeBundle, int8: bool) -> None:
    texts = ["x", "A man is eating food.", "word " * 400, "The quick brown fox. " * 9, "b c", TEXTS["cjk"]]
    encoder = edge_bundle.encoder(int8=int8)
    batch = encoder.encode(texts)
    alone = np.concatenate([encoder.encode([t]) for t in texts])
    assert float((batch * alone).sum(axis=1).min()) >= 0.9999
    if int8:  # rows run alone in the dynamically quantized graph: identical, not just close
        np.testing.assert_array_equal(batch, alone)
