"""tei.v1: a client generated from the TEI-compatible proto gets TEI's answers and statuses."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1 import embedding_pb2_grpc as pb_grpc
from protos.tei.v1 import tei_pb2 as tei
from protos.tei.v1 import tei_pb2_grpc as tei_grpc
from tests.server_harness import ServerProcess

FOOD = "A man is eating food."
BREAD = "A man is eating a piece of bread."


@pytest.fixture(scope="module")
def channel(live_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(live_server.address) as ch:
        yield ch


def test_embed_gives_the_same_vector_as_embedding_v1(channel: grpc.Channel) -> None:
    embed = tei_grpc.EmbedStub(channel)
    reply, call = embed.Embed.with_call(tei.EmbedRequest(inputs=FOOD), timeout=30)
    ours = pb_grpc.EmbeddingServiceStub(channel).Embed(pb.EmbedRequest(inputs=[FOOD]), timeout=30)
    np.testing.assert_allclose(reply.embeddings, np.frombuffer(ours.embeddings[0].data, "<f4"), atol=1e-6)
    bread = np.array(embed.Embed(tei.EmbedRequest(inputs=BREAD), timeout=30).embeddings)
    assert float(np.array(reply.embeddings) @ bread) == pytest.approx(0.755, abs=0.002)
    headers = dict(call.initial_metadata())
    for key in ("x-compute-time", "x-compute-characters", "x-compute-tokens", "x-total-time",
                "x-tokenization-time", "x-queue-time", "x-inference-time"):  # fmt: skip
        assert headers[key].isdigit(), key
    assert headers["x-compute-characters"] == str(len(FOOD))
    assert reply.metadata.compute_chars == len(FOOD)


def test_dimensions_and_normalize(channel: grpc.Channel) -> None:
    embed = tei_grpc.EmbedStub(channel)
    short = np.array(embed.Embed(tei.EmbedRequest(inputs=FOOD, dimensions=32), timeout=30).embeddings)
    assert short.shape == (32,) and np.linalg.norm(short) == pytest.approx(1.0, abs=1e-5)
    for dims in (0, 385):
        with pytest.raises(grpc.RpcError) as err:
            embed.Embed(tei.EmbedRequest(inputs=FOOD, dimensions=dims), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_truncate_false_rejects_long_input_and_empty_input_is_invalid(channel: grpc.Channel) -> None:
    embed = tei_grpc.EmbedStub(channel)
    long_text = "tei " * 400  # unique to this test: a query-cache hit would report 0 tokens
    for request in (tei.EmbedRequest(inputs=long_text), tei.EmbedRequest(inputs="")):
        with pytest.raises(grpc.RpcError) as err:
            embed.Embed(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    ok = embed.Embed(tei.EmbedRequest(inputs=long_text, truncate=True), timeout=30)
    assert ok.metadata.compute_tokens == 256


def test_stream_in_order_and_an_error_ends_it(channel: grpc.Channel) -> None:
    embed = tei_grpc.EmbedStub(channel)
    texts = [f"tei stream sentence {i}" for i in range(40)]
    replies = list(embed.EmbedStream((tei.EmbedRequest(inputs=t) for t in texts), timeout=120))
    unary = [embed.Embed(tei.EmbedRequest(inputs=t), timeout=30).embeddings for t in (texts[0], texts[39])]
    np.testing.assert_allclose(replies[0].embeddings, unary[0], atol=1e-6)
    np.testing.assert_allclose(replies[39].embeddings, unary[1], atol=1e-6)
    bad = [tei.EmbedRequest(inputs="fine"), tei.EmbedRequest(inputs=""), tei.EmbedRequest(inputs="never")]
    got = []
    with pytest.raises(grpc.RpcError) as err:
        for reply in embed.EmbedStream(iter(bad), timeout=60):
            got.append(reply)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(got) <= 1


def test_info_and_tokenize(channel: grpc.Channel) -> None:
    info = tei_grpc.InfoStub(channel).Info(tei.InfoRequest(), timeout=10)
    assert info.model_type == tei.MODEL_TYPE_EMBEDDING
    assert info.max_input_length == 256 and info.max_client_batch_size > 0 and info.model_id
    tokens = tei_grpc.TokenizeStub(channel).Tokenize(
        tei.EncodeRequest(inputs="Hello world", add_special_tokens=True), timeout=10
    )
    assert [t.text for t in tokens.tokens] == ["[CLS]", "hello", "world", "[SEP]"]
    assert tokens.tokens[1].HasField("start") and tokens.tokens[2].start == 6
