"""The compute path through the shared real server: the query cache keys on what the model
reads, content-free inputs are refused on every path, truncation direction, documents and
queries agree, and a 10 MB input never stalls the server."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1 import embedding_pb2_grpc as pb_grpc
from protos.tei.v1 import tei_pb2 as tei
from protos.tei.v1 import tei_pb2_grpc as tei_grpc
from tests._collections import ingest, search
from tests.server_harness import ServerProcess

CONTENT_FREE = ["\u200b\u200b", "\u200b \u200b", "\ufeff"]
TEN_MB = 10_000_000


@pytest.fixture(scope="module")
def channel(live_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(live_server.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.EmbeddingServiceStub:
    return pb_grpc.EmbeddingServiceStub(channel)


def tag() -> str:
    """A word no other test sends, so cache hits and misses are this test's own."""
    return "q" + uuid.uuid4().hex[:10]


def embed(stub: pb_grpc.EmbeddingServiceStub, text: str, **options: object) -> tuple[np.ndarray, pb.Timing]:
    reply = stub.Embed(pb.EmbedRequest(inputs=[text], options=pb.EmbedOptions(**options)), timeout=60)  # type: ignore[arg-type]
    return np.frombuffer(reply.embeddings[0].data, "<f4"), reply.timing


def rpc_error(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()  # type: ignore[operator]
    return err.value


# --- 1. the query cache -----------------------------------------------------------------------


def test_inputs_the_model_tells_apart_never_share_a_cache_entry(stub: pb_grpc.EmbeddingServiceStub) -> None:
    t = tag()
    plain, first = embed(stub, f"alpha beta {t}")
    unit_sep, second = embed(stub, f"alpha\x1fbeta {t}")  # the model reads "alphabet ##a"
    assert (first.cache_hits, second.cache_hits) == (0, 0)
    assert float(plain @ unit_sep) < 0.9
    nel, third = embed(stub, f"alpha\x85beta {t}")  # U+0085: also "alphabet ##a", a true hit
    assert third.cache_hits == 1 and nel.tobytes() == unit_sep.tobytes()
    spaced, fourth = embed(stub, f"  Alpha   beta {t} ")  # uncased model, same tokens: a hit
    assert fourth.cache_hits == 1 and spaced.tobytes() == plain.tobytes()


def test_a_search_does_not_poison_the_cache_for_another_client(live_server: ServerProcess) -> None:
    t = tag()
    collection = f"cache-{t}"
    ingest(live_server.address, collection, [("d", f"sunflower fields {t}", {})])
    search(live_server.address, collection, f"sun\x1fflower {t}", k=1)  # "sun ##flower"
    with grpc.insecure_channel(live_server.address) as other:
        reply = pb_grpc.EmbeddingServiceStub(other).Embed(
            pb.EmbedRequest(inputs=[f"sun flower {t}"]), timeout=60
        )
    assert reply.timing.cache_hits == 0


def test_a_cache_hit_equals_a_fresh_computation_of_the_same_input(
    live_server: ServerProcess, stub: pb_grpc.EmbeddingServiceStub
) -> None:
    """The cached vector of one spelling is served for another; Ingest (bulk work, never cached)
    computes each spelling afresh, and Search scores the hit against it."""
    t = tag()
    embed(stub, f"alpha beta {t}")
    embed(stub, f"alpha\x1fbeta {t}")
    spellings = [f"  Alpha   beta {t} ", f"alpha\x85beta {t}", f"ALPHA BETA {t}"]
    collection = f"fresh-{t}"
    acks = ingest(live_server.address, collection, [(f"d{i}", s, {}) for i, s in enumerate(spellings)])
    assert not any(a.cached for a in acks)  # computed now, not taken from the store
    for i, spelling in enumerate(spellings):
        reply = search(live_server.address, collection, spelling, k=3, exact=True)
        assert reply.timing.tokens == 0  # the query was a cache hit
        score = {h.id: h.score for h in reply.hits}[f"d{i}"]
        assert score >= 0.999, (spelling, score)


# --- 2. content-free inputs -------------------------------------------------------------------


@pytest.mark.parametrize("bad", CONTENT_FREE, ids=["zwsp", "zwsp-space-zwsp", "bom"])
def test_content_free_input_is_refused_on_every_path(
    live_server: ServerProcess, channel: grpc.Channel, stub: pb_grpc.EmbeddingServiceStub, bad: str
) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    err = rpc_error(lambda: stub.Embed(pb.EmbedRequest(inputs=["fine", bad]), timeout=30))
    assert err.code() == invalid and "inputs[1] has no content" in str(err.details())
    (reply,) = stub.EmbedStream(iter([pb.EmbedStreamRequest(id="z", input=bad)]), timeout=30)
    assert reply.error.code == invalid.value[0] and reply.error.field == "input"
    embed_tei = tei_grpc.EmbedStub(channel)
    err = rpc_error(lambda: embed_tei.Embed(tei.EmbedRequest(inputs=bad, truncate=True), timeout=30))
    assert err.code() == invalid and "inputs has no content" in str(err.details())
    err = rpc_error(lambda: list(embed_tei.EmbedStream(iter([tei.EmbedRequest(inputs=bad)]), timeout=30)))
    assert err.code() == invalid
    collection = f"empty-{tag()}"
    acks = ingest(live_server.address, collection, [("bad", bad, {}), ("ok", "a real document", {})])
    assert acks[0].error.code == invalid.value[0] and acks[0].error.field == "text"
    assert not acks[1].HasField("error")
    assert [h.id for h in search(live_server.address, collection, "document", k=5).hits] == ["ok"]
    err = rpc_error(lambda: search(live_server.address, collection, bad))
    assert err.code() == invalid and "query has no content" in str(err.details())


# --- 4. truncation direction ------------------------------------------------------------------


def test_left_truncation_keeps_the_end_and_right_the_beginning(stub: pb_grpc.EmbeddingServiceStub) -> None:
    rng = random.Random(uuid.uuid4().int)
    head_words, tail_words = (
        ["cat", "dog", "horse", "bird", "fish"],
        ["red", "blue", "green", "black", "white"],
    )
    head = " ".join(rng.choice(head_words) for _ in range(254))  # one token per word
    tail = " ".join(rng.choice(tail_words) for _ in range(254))
    text = f"{head} {' '.join(rng.choice(head_words + tail_words) for _ in range(100))} {tail}"
    left_option = pb.TRUNCATION_DIRECTION_LEFT
    tail_vector, tail_timing = embed(stub, tail)  # computed now
    left, left_timing = embed(stub, text, truncation_direction=left_option)
    assert tail_timing.tokens == 256 and left_timing.cache_hits == 1  # the model reads the same ids
    assert left.tobytes() == tail_vector.tobytes()
    right, right_timing = embed(stub, text, truncation_direction=pb.TRUNCATION_DIRECTION_RIGHT)
    head_vector, head_timing = embed(stub, head)
    assert right_timing.cache_hits == 0 and head_timing.cache_hits == 1
    assert head_vector.tobytes() == right.tobytes() and float(left @ right) < 0.9
    stream = stub.EmbedStream(
        iter(
            [
                pb.EmbedStreamRequest(
                    id="l", input=text, options=pb.EmbedOptions(truncation_direction=left_option)
                )
            ]
        ),
        timeout=60,
    )
    assert next(iter(stream)).embedding.data == left.tobytes()
    err = rpc_error(lambda: embed(stub, "x", truncation_direction=7))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "options.truncation_direction" in str(
        err.details()
    )


# --- 3. documents and queries agree -----------------------------------------------------------


def test_documents_embedded_in_batches_equal_queries_embedded_alone(
    live_server: ServerProcess, stub: pb_grpc.EmbeddingServiceStub
) -> None:
    t = tag()
    texts = [
        f"x {t}",
        f"A man is eating food. {t}",
        f"{t} " + "word " * 400,  # truncated to 256 tokens
        f"The quick brown fox jumps over the lazy dog. {t} " * 8,
        f"b c {t}",
        f"Photosynthesis turns sunlight, water and carbon dioxide into sugar. {t} " * 3,
    ]
    collection = f"batch-{t}"
    acks = ingest(live_server.address, collection, [(f"d{i}", text, {}) for i, text in enumerate(texts)])
    assert not any(a.cached or a.HasField("error") for a in acks)  # one batch of mixed lengths
    for i, text in enumerate(texts):
        _, timing = embed(stub, text)  # alone: a query of one input
        assert timing.cache_hits == 0
        best = search(live_server.address, collection, text, k=1, exact=True).hits[0]
        assert best.id == f"d{i}" and best.score >= 0.999, (i, best.score)


# --- 7. a huge input never stalls the server --------------------------------------------------


def test_health_answers_within_a_second_while_10mb_inputs_are_refused_or_truncated(
    live_server: ServerProcess, channel: grpc.Channel, stub: pb_grpc.EmbeddingServiceStub
) -> None:
    huge = f"{tag()} " + "word " * (TEN_MB // 5)
    tokenize = tei_grpc.TokenizeStub(channel)
    calls = [
        stub.Embed.future(
            pb.EmbedRequest(inputs=[huge], options=pb.EmbedOptions(truncate=False)), timeout=300
        ),
        tokenize.Tokenize.future(tei.EncodeRequest(inputs=huge), timeout=300),
        stub.Tokenize.future(pb.TokenizeRequest(inputs=[huge]), timeout=300),
        stub.Embed.future(pb.EmbedRequest(inputs=[huge]), timeout=300),  # truncate=true (default)
    ]
    ended = threading.Event()
    for call in calls:
        call.add_done_callback(lambda _: ended.set())
    checks = 0
    with grpc.insecure_channel(live_server.address) as probe:
        health = health_pb2_grpc.HealthStub(probe)
        while not all(call.done() for call in calls) or checks == 0:
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            checks += 1
            ended.wait(0.05)  # the next probe when a call ends, or 50 ms on
            ended.clear()
    refused_long, refused_tei, refused_v1, truncated = (call.exception() for call in calls)
    assert refused_long is not None and refused_long.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[0] has more than" in str(refused_long.details()) and "256" in str(refused_long.details())
    for refused in (refused_tei, refused_v1):
        assert refused is not None and refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    # TEI refuses an input over its character limit (max_input_length * 250) before tokenizing.
    assert "`inputs` must have less than 64000 characters" in str(refused_tei.details())
    assert "--max-message-bytes" in str(refused_v1.details())
    assert truncated is None and calls[3].result().timing.tokens == 256


def test_inputs_over_the_size_limit_are_refused_naming_it(stub: pb_grpc.EmbeddingServiceStub) -> None:
    over = "x" * (10 * 1024 * 1024 + 1)
    err = rpc_error(lambda: stub.Embed(pb.EmbedRequest(inputs=["ok", over]), timeout=120))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[1] has 10485761 characters" in str(err.details()) and "--max-input-chars" in str(
        err.details()
    )
