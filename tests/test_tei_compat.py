"""tei.v1: a client generated from TEI's proto gets TEI 1.9's answers, statuses and messages for
every field of every RPC (an embedding model: all-MiniLM-L6-v2, no prompts; prompt_name with a
model that has prompts is in tests/test_model_heads.py). Vectors are compared with what
embedding.v1 Embed gives for the text TEI would embed."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1 import embedding_pb2_grpc as pb_grpc
from protos.tei.v1 import tei_pb2 as tei
from protos.tei.v1 import tei_pb2_grpc as tei_grpc
from tests.server_harness import ServerProcess

FOOD = "A man is eating food."
BREAD = "A man is eating a piece of bread."
HEADERS = ("x-compute-type", "x-compute-time", "x-compute-characters", "x-compute-tokens", "x-total-time",
           "x-tokenization-time", "x-queue-time", "x-inference-time")  # fmt: skip
WORDS = ("apple", "river", "green", "house", "music", "table", "light", "stone", "water", "paper")


@pytest.fixture(scope="module")
def channel(live_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(live_server.address) as ch:
        yield ch


def _ours(channel: grpc.Channel, text: str, **options: object) -> np.ndarray:
    """embedding.v1's vector of ``text`` (the reference every TEI vector is compared with)."""
    request = pb.EmbedRequest(inputs=[text], options=pb.EmbedOptions(**options))  # type: ignore[arg-type]
    reply = pb_grpc.EmbeddingServiceStub(channel).Embed(request, timeout=60)
    return np.frombuffer(reply.embeddings[0].data, "<f4")


def _error(call: object, *args: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = call(*args, timeout=60)  # type: ignore[operator]
        if hasattr(result, "__next__"):  # a response stream: read it to the end
            list(result)
    return info.value


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_embed_vector_metadata_and_headers(channel: grpc.Channel) -> None:
    embed = tei_grpc.EmbedStub(channel)
    reply, call = embed.Embed.with_call(tei.EmbedRequest(inputs=FOOD), timeout=60)
    vector = np.array(reply.embeddings, dtype=np.float32)
    np.testing.assert_allclose(vector, _ours(channel, FOOD), atol=1e-6)  # normalize unset = true
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    bread = np.array(embed.Embed(tei.EmbedRequest(inputs=BREAD), timeout=60).embeddings)
    assert float(vector @ bread) == pytest.approx(0.755, abs=0.002)
    headers = dict(call.initial_metadata())
    assert all(headers[key].isdigit() for key in HEADERS if key != "x-compute-type"), headers
    assert headers["x-compute-type"] == "cpu"
    assert headers["x-compute-characters"] == str(len(FOOD)) == str(reply.metadata.compute_chars)
    assert headers["x-compute-time"] == headers["x-total-time"]  # TEI: both the total time
    # [CLS] a man is eating food . [SEP]: 8 tokens, counted on a query-cache hit too.
    assert (reply.metadata.compute_tokens, headers["x-compute-tokens"]) == (8, "8")
    again = embed.Embed(tei.EmbedRequest(inputs=FOOD), timeout=60)
    assert again.metadata.compute_tokens == 8


def test_normalize_false_returns_the_raw_pooled_vector(channel: grpc.Channel) -> None:
    """TEI never applies the model's Normalize module: normalize=false is the mean-pooled vector."""
    embed = tei_grpc.EmbedStub(channel)
    text = "tei raw vector of a normalizing model"
    raw = np.array(embed.Embed(tei.EmbedRequest(inputs=text, normalize=False), timeout=60).embeddings)
    unit = _ours(channel, text)
    assert np.linalg.norm(raw) > 1.5  # MiniLM's mean-pooled vectors are far from unit length
    np.testing.assert_allclose(raw / np.linalg.norm(raw), unit, atol=1e-5)
    explicit = np.array(embed.Embed(tei.EmbedRequest(inputs=text, normalize=True), timeout=60).embeddings)
    np.testing.assert_allclose(explicit, unit, atol=1e-6)


def test_dimensions(channel: grpc.Channel) -> None:
    embed = tei_grpc.EmbedStub(channel)
    text = "tei matryoshka dimensions"
    short = np.array(embed.Embed(tei.EmbedRequest(inputs=text, dimensions=32), timeout=60).embeddings)
    np.testing.assert_allclose(short, _ours(channel, text, dimensions=32), atol=1e-6)
    assert short.shape == (32,) and np.linalg.norm(short) == pytest.approx(1.0, abs=1e-5)
    raw = np.array(embed.Embed(tei.EmbedRequest(inputs=text, normalize=False), timeout=60).embeddings)
    cut = embed.Embed(tei.EmbedRequest(inputs=text, normalize=False, dimensions=32), timeout=60)
    np.testing.assert_allclose(cut.embeddings, raw[:32], atol=1e-6)  # truncated, not renormalized
    for dims in (0, 385):
        error = _error(embed.Embed, tei.EmbedRequest(inputs=text, dimensions=dims))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "dimensions" in error.details() and "384" in error.details()


def test_truncation_left_keeps_the_end(channel: grpc.Channel) -> None:
    """Needs the pool's truncation_direction="left" (another branch); RIGHT keeps the start."""
    embed = tei_grpc.EmbedStub(channel)
    # One token each, 402 with [CLS]/[SEP]; the first and the second half use different words.
    words = [WORDS[i % 5] for i in range(200)] + [WORDS[5 + i % 5] for i in range(200)]
    text = " ".join(words)
    left = tei.EmbedRequest(inputs=text, truncate=True, truncation_direction=tei.TRUNCATION_DIRECTION_LEFT)
    right = tei.EmbedRequest(inputs=text, truncate=True)
    left_vector = np.array(embed.Embed(left, timeout=60).embeddings)
    right_vector = np.array(embed.Embed(right, timeout=60).embeddings)
    assert _cos(left_vector, _ours(channel, " ".join(words[-254:]))) >= 0.9999
    assert _cos(right_vector, _ours(channel, " ".join(words[:254]))) >= 0.9999
    assert _cos(left_vector, right_vector) < 0.99
    # The same option of embedding.v1 (EmbedOptions.truncation_direction) is not ignored either.
    left_v1 = _ours(channel, text, truncation_direction=pb.TRUNCATION_DIRECTION_LEFT)
    np.testing.assert_allclose(left_v1, left_vector, atol=1e-6)
    unknown = tei.EmbedRequest(inputs=text, truncate=True)
    unknown.truncation_direction = 7  # type: ignore[assignment]  # a newer client's value
    bad = _error(embed.Embed, unknown)
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and "truncation_direction 7" in bad.details()


def test_truncate_false_over_long_and_over_the_character_limit(channel: grpc.Channel) -> None:
    embed = tei_grpc.EmbedStub(channel)
    long_text = " ".join(WORDS[i % len(WORDS)] for i in range(400))  # one token each: 402 in all
    error = _error(embed.Embed, tei.EmbedRequest(inputs=long_text))  # truncate unset = false
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "`inputs` must have less than 256 tokens. Given: 402"
    ok = embed.Embed(tei.EmbedRequest(inputs=long_text, truncate=True), timeout=60)
    assert ok.metadata.compute_tokens == 256 and ok.metadata.compute_chars == len(long_text)
    huge = "a" * 64_001  # above max_input_length * 250 characters
    error = _error(embed.Embed, tei.EmbedRequest(inputs=huge))
    assert error.details() == "`inputs` must have less than 64000 characters. Given: 64001"
    error = _error(tei_grpc.TokenizeStub(channel).Tokenize, tei.EncodeRequest(inputs=huge))
    assert error.details() == "`inputs` must have less than 64000 characters. Given: 64001"


def test_empty_inputs_are_invalid_with_teis_messages(channel: grpc.Channel) -> None:
    embed, tokenize = tei_grpc.EmbedStub(channel), tei_grpc.TokenizeStub(channel)
    for call, request, message in (
        (embed.Embed, tei.EmbedRequest(inputs=""), "`inputs` cannot be empty"),
        (embed.EmbedAll, tei.EmbedAllRequest(inputs=""), "`inputs` cannot be empty"),
        (tokenize.Tokenize, tei.EncodeRequest(inputs=""), "`inputs` cannot be empty"),
        (tokenize.Decode, tei.DecodeRequest(ids=[]), "`input_ids` cannot be empty"),
        (tei_grpc.RerankStub(channel).Rerank, tei.RerankRequest(query="q"), "`texts` cannot be empty"),
    ):
        error = _error(call, request)
        assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    error = _error(embed.Embed, tei.EmbedRequest(inputs="nul\x00inside"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "NUL" in error.details()


def test_prompt_name_unknown_to_the_model_is_invalid(channel: grpc.Channel) -> None:
    for request in (
        tei.EmbedRequest(inputs=FOOD, prompt_name="query"),
        tei.EmbedRequest(inputs=FOOD, prompt_name=""),
    ):
        error = _error(tei_grpc.EmbedStub(channel).Embed, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "prompt_name" in error.details()
    error = _error(
        tei_grpc.TokenizeStub(channel).Tokenize, tei.EncodeRequest(inputs=FOOD, prompt_name="query")
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_stream_in_order_and_an_error_ends_it(channel: grpc.Channel) -> None:
    embed = tei_grpc.EmbedStub(channel)
    texts = [f"tei stream sentence {i}" for i in range(40)]
    replies = list(embed.EmbedStream((tei.EmbedRequest(inputs=t) for t in texts), timeout=120))
    unary = [embed.Embed(tei.EmbedRequest(inputs=t), timeout=60).embeddings for t in (texts[0], texts[39])]
    np.testing.assert_allclose(replies[0].embeddings, unary[0], atol=1e-6)
    np.testing.assert_allclose(replies[39].embeddings, unary[1], atol=1e-6)
    bad = [tei.EmbedRequest(inputs="fine"), tei.EmbedRequest(inputs=""), tei.EmbedRequest(inputs="never")]
    got = []
    with pytest.raises(grpc.RpcError) as err:
        for reply in embed.EmbedStream(iter(bad), timeout=60):
            got.append(reply)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(got) <= 1


def test_embed_all_gives_every_token_vector(channel: grpc.Channel) -> None:
    embed = tei_grpc.EmbedStub(channel)
    reply, call = embed.EmbedAll.with_call(tei.EmbedAllRequest(inputs=FOOD), timeout=60)
    tokens = np.array([list(t.embeddings) for t in reply.token_embeddings])
    assert tokens.shape == (8, 384) and reply.metadata.compute_tokens == 8
    assert dict(call.initial_metadata())["x-compute-tokens"] == "8"
    # The model mean-pools these token vectors: their mean is embedding.v1's vector (the live
    # server may run bf16 torch, the token vectors come from the fp32 graph).
    assert _cos(tokens.mean(axis=0), _ours(channel, FOOD)) >= 0.999
    long_text = " ".join(WORDS[i % len(WORDS)] for i in range(400))
    cut = embed.EmbedAll(tei.EmbedAllRequest(inputs=long_text, truncate=True), timeout=60)
    assert len(cut.token_embeddings) == 256
    assert _error(embed.EmbedAll, tei.EmbedAllRequest(inputs=long_text)).details() == (
        "`inputs` must have less than 256 tokens. Given: 402"
    )
    left = embed.EmbedAll(
        tei.EmbedAllRequest(
            inputs=long_text, truncate=True, truncation_direction=tei.TRUNCATION_DIRECTION_LEFT
        ),
        timeout=60,
    )
    words = long_text.split()
    end = np.array([list(t.embeddings) for t in left.token_embeddings]).mean(axis=0)
    assert _cos(end, _ours(channel, " ".join(words[-254:]))) >= 0.999
    streamed = list(embed.EmbedAllStream(iter([tei.EmbedAllRequest(inputs=FOOD)] * 2), timeout=60))
    np.testing.assert_allclose(streamed[1].token_embeddings[3].embeddings, tokens[3], atol=1e-5)


def test_what_an_embedding_model_cannot_serve(channel: grpc.Channel) -> None:
    embed, predict, rerank = (tei_grpc.EmbedStub(channel), tei_grpc.PredictStub(channel),
                              tei_grpc.RerankStub(channel))  # fmt: skip
    precondition = (
        (
            embed.EmbedSparse,
            tei.EmbedSparseRequest(inputs=FOOD),
            "Model is not an embedding model with SPLADE pooling",
        ),
        (embed.EmbedSparseStream, iter([tei.EmbedSparseRequest(inputs=FOOD)]), "with SPLADE pooling"),
        (predict.Predict, tei.PredictRequest(inputs=FOOD), "Model is not a classifier model"),
        (predict.PredictStream, iter([tei.PredictRequest(inputs=FOOD)]), "Model is not a classifier model"),
        (
            predict.PredictPair,
            tei.PredictPairRequest(inputs=[FOOD, BREAD]),
            "Model is not a classifier model",
        ),
        (predict.PredictPairStream, iter([tei.PredictPairRequest(inputs=[FOOD])]), "not a classifier model"),
        (rerank.Rerank, tei.RerankRequest(query=FOOD, texts=[BREAD]), "model is not a classifier model"),
        (rerank.RerankStream, iter([tei.RerankStreamRequest(query=FOOD, text=BREAD)]), "not a classifier"),
    )
    for call, request, message in precondition:
        error = _error(call, request)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and message in error.details(), call
    error = _error(predict.PredictPair, tei.PredictPairRequest(inputs=["a", "b", "c"]))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "`inputs` must have a single or two elements. Given: 3",
    )
    health = health_pb2_grpc.HealthStub(channel)
    status = {
        name: health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
        for name in ("tei.v1.Embed", "tei.v1.Info", "tei.v1.Tokenize", "tei.v1.Predict", "tei.v1.Rerank")
    }
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert status == {"tei.v1.Embed": serving, "tei.v1.Info": serving, "tei.v1.Tokenize": serving,
                      "tei.v1.Predict": not_serving, "tei.v1.Rerank": not_serving}  # fmt: skip


def test_tokenize_offsets_and_special_tokens(channel: grpc.Channel) -> None:
    tokenize = tei_grpc.TokenizeStub(channel)
    reply = tokenize.Tokenize(tei.EncodeRequest(inputs="Hello world", add_special_tokens=True), timeout=30)
    got = [(t.id, t.text, t.special, t.HasField("start"), t.start, t.stop) for t in reply.tokens]
    assert got == [
        (101, "[CLS]", True, False, 0, 0),  # special: its vocabulary string, no offsets
        (7592, "Hello", False, True, 0, 5),  # the span of the input, case kept (the token is "hello")
        (2088, "world", False, True, 6, 11),
        (102, "[SEP]", True, False, 0, 0),
    ]
    plain = tokenize.Tokenize(
        tei.EncodeRequest(inputs="café au lait"), timeout=30
    )  # add_special_tokens unset
    assert [(t.text, t.special, t.start, t.stop) for t in plain.tokens] == [
        ("café", False, 0, 5),  # UTF-8 byte offsets: é is two bytes
        ("au", False, 6, 8),
        ("lai", False, 9, 12),
        ("t", False, 12, 13),
    ]
    streamed = list(
        tokenize.TokenizeStream(iter([tei.EncodeRequest(inputs=t) for t in ("one", "two")]), timeout=30)
    )
    assert [[t.text for t in r.tokens] for r in streamed] == [["one"], ["two"]]


def test_decode(channel: grpc.Channel) -> None:
    tokenize = tei_grpc.TokenizeStub(channel)
    ids = [101, 7592, 2088, 102]
    assert (
        tokenize.Decode(tei.DecodeRequest(ids=ids, skip_special_tokens=True), timeout=30).text
        == "hello world"
    )
    assert tokenize.Decode(tei.DecodeRequest(ids=ids), timeout=30).text == "[CLS] hello world [SEP]"
    streamed = tokenize.DecodeStream(
        iter([tei.DecodeRequest(ids=[7592]), tei.DecodeRequest(ids=[2088])]), timeout=30
    )
    assert [r.text for r in streamed] == ["hello", "world"]


def test_info(channel: grpc.Channel) -> None:
    info = tei_grpc.InfoStub(channel).Info(tei.InfoRequest(), timeout=10)
    assert info.model_type == tei.MODEL_TYPE_EMBEDDING
    assert info.max_input_length == 256 and info.max_client_batch_size > 0
    assert info.model_id == "all-MiniLM-L6-v2" and info.model_dtype and info.version
