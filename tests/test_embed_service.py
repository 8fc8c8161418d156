"""embedding.v1.EmbeddingService against the real server and model (shared live_server)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1 import embedding_pb2_grpc as pb_grpc
from tests.server_harness import ServerProcess

FOOD = "A man is eating food."
BREAD = "A man is eating a piece of bread."
MOVIE = "The new movie is awesome."
LONG = "word " * 400  # ~400 tokens: more than the model's 256


@pytest.fixture(scope="module")
def channel(live_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(live_server.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.EmbeddingServiceStub:
    return pb_grpc.EmbeddingServiceStub(channel)


def f32(vector: pb.Vector) -> np.ndarray:
    return np.frombuffer(vector.data, "<f4")


def invalid(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()  # type: ignore[operator]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    return err.value


def test_reference_similarity_of_the_default_model(stub: pb_grpc.EmbeddingServiceStub) -> None:
    reply = stub.Embed(pb.EmbedRequest(inputs=[FOOD, BREAD, MOVIE]), timeout=60)
    a, b, c = (f32(v) for v in reply.embeddings)
    assert float(a @ b) == pytest.approx(0.755, abs=0.002)
    assert float(a @ c) == pytest.approx(-0.046, abs=0.01)
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)
    assert reply.model_fingerprint.startswith("all-MiniLM-L6-v2@")
    # Other tests on the shared server may have cached these sentences: count tokens on a text
    # nobody sent before.
    fresh = f"{uuid.uuid4().hex} {FOOD}"
    counted = stub.Embed(pb.EmbedRequest(inputs=[fresh]), timeout=60).timing
    assert counted.cache_hits == 0 and counted.tokens > 0 and counted.characters == len(fresh)


def test_info_describes_model_and_compute(stub: pb_grpc.EmbeddingServiceStub) -> None:
    info = stub.Info(pb.InfoRequest(), timeout=10)
    assert (info.dimensions, info.max_input_tokens, info.pooling, info.normalizes) == (384, 256, "mean", True)
    assert info.backend == "torch" and info.workers >= 1 and info.dtype in ("float32", "bfloat16", "float16")
    assert len(info.int8_calibration.min) == 384 and all(
        lo < hi for lo, hi in zip(info.int8_calibration.min, info.int8_calibration.max, strict=True)
    )


def test_dims_and_precisions_agree_with_float32(stub: pb_grpc.EmbeddingServiceStub) -> None:
    full = f32(stub.Embed(pb.EmbedRequest(inputs=[FOOD]), timeout=30).embeddings[0])
    opts = pb.EmbedOptions(dimensions=128, precision=pb.PRECISION_FLOAT16)
    half = stub.Embed(pb.EmbedRequest(inputs=[FOOD], options=opts), timeout=30).embeddings[0]
    got = np.frombuffer(half.data, "<f2").astype(np.float32)
    np.testing.assert_allclose(got, full[:128] / np.linalg.norm(full[:128]), atol=1e-3)
    bits = stub.Embed(
        pb.EmbedRequest(inputs=[FOOD], options=pb.EmbedOptions(precision=pb.PRECISION_UBINARY)), timeout=30
    ).embeddings[0]
    assert bits.data == np.packbits(full > 0).tobytes() and bits.dims == 384


def test_int8_alone_equals_int8_in_a_batch(stub: pb_grpc.EmbeddingServiceStub) -> None:
    opts = pb.EmbedOptions(precision=pb.PRECISION_INT8)
    batch = stub.Embed(pb.EmbedRequest(inputs=[MOVIE, FOOD, BREAD], options=opts), timeout=30)
    alone = stub.Embed(pb.EmbedRequest(inputs=[FOOD], options=opts), timeout=30)
    assert batch.embeddings[1].data == alone.embeddings[0].data
    assert len(alone.embeddings[0].data) == 384


def test_repeated_query_is_a_cache_hit(stub: pb_grpc.EmbeddingServiceStub) -> None:
    first = stub.Embed(pb.EmbedRequest(inputs=["unique cache probe 81723"]), timeout=30)
    again = stub.Embed(pb.EmbedRequest(inputs=["  unique   cache probe 81723 "]), timeout=30)
    assert first.timing.cache_hits == 0 and again.timing.cache_hits == 1
    assert first.embeddings[0].data == again.embeddings[0].data


def test_truncate_true_cuts_and_false_rejects(stub: pb_grpc.EmbeddingServiceStub) -> None:
    # A first word nobody sent before: the cut ids are new to the query cache (a shared server).
    reply = stub.Embed(pb.EmbedRequest(inputs=[f"{uuid.uuid4().hex} {LONG}"]), timeout=60)
    assert reply.timing.cache_hits == 0 and reply.timing.tokens == 256
    err = invalid(
        lambda: stub.Embed(pb.EmbedRequest(inputs=[FOOD, LONG], options=pb.EmbedOptions(truncate=False)))
    )
    assert "inputs[1] has 402 tokens" in err.details() and "256" in err.details()


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (pb.EmbedRequest(inputs=[]), "inputs is empty"),
        (pb.EmbedRequest(inputs=["ok", ""]), "inputs[1] is empty"),
        (pb.EmbedRequest(inputs=["x"] * 513), "more than the limit of 512"),
        (pb.EmbedRequest(inputs=["a\x00b"]), "inputs[0] contains a NUL"),
        (pb.EmbedRequest(inputs=["x"], options=pb.EmbedOptions(dimensions=0)), "options.dimensions"),
        (pb.EmbedRequest(inputs=["x"], options=pb.EmbedOptions(dimensions=385)), "384"),
        (pb.EmbedRequest(inputs=["x"], options=pb.EmbedOptions(precision=42)), "options.precision"),  # type: ignore[arg-type]
        (pb.EmbedRequest(inputs=["x"], options=pb.EmbedOptions(prompt_name="query")), "options.prompt_name"),
    ],
)
def test_bad_requests_are_invalid_argument_naming_the_field(
    stub: pb_grpc.EmbeddingServiceStub, request_: pb.EmbedRequest, needle: str
) -> None:
    err = invalid(lambda: stub.Embed(request_, timeout=30))
    assert needle in err.details()


@pytest.mark.parametrize("bad", [b"\xff\xfe", b"\xed\xa0\x80"], ids=["invalid-utf8", "lone-surrogate"])
def test_invalid_utf8_from_a_raw_client_is_invalid_argument(channel: grpc.Channel, bad: bytes) -> None:
    raw = channel.unary_unary(
        "/embedding.v1.EmbeddingService/Embed", request_serializer=None, response_deserializer=None
    )
    body = b"\x0a" + bytes([len(bad)]) + bad  # field 1 (inputs), length-delimited
    err = invalid(lambda: raw(body, timeout=10))
    assert "UTF-8" in err.details()


def test_oversized_message_is_resource_exhausted(stub: pb_grpc.EmbeddingServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        # Over the receive limit (Settings.max_receive_bytes: 4 x --max-document-bytes + 1 MiB = 33 MiB).
        stub.Embed(pb.EmbedRequest(inputs=["x" * (34 * 1024 * 1024)]), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_stream_keeps_order_and_ids_and_reports_item_errors_in_band(
    stub: pb_grpc.EmbeddingServiceStub,
) -> None:
    def requests() -> Iterator[pb.EmbedStreamRequest]:
        yield pb.EmbedStreamRequest(id="a", input=FOOD, options=pb.EmbedOptions(dimensions=64))
        yield pb.EmbedStreamRequest(id="b", input="")  # bad item
        yield pb.EmbedStreamRequest(id="c", input=LONG, options=pb.EmbedOptions(truncate=False))
        yield pb.EmbedStreamRequest(id="d", input=BREAD)  # options stick: truncate=False, 384 dims
        yield pb.EmbedStreamRequest(id="e", input="x", options=pb.EmbedOptions(dimensions=0))
        yield pb.EmbedStreamRequest(id="f", input="nul\x00")
        yield pb.EmbedStreamRequest(id="g", input=MOVIE)

    replies = list(stub.EmbedStream(requests(), timeout=60))
    assert [r.id for r in replies] == list("abcdefg")
    kinds = [r.WhichOneof("result") for r in replies]
    assert kinds == ["embedding", "error", "error", "embedding", "error", "error", "embedding"]
    assert replies[0].embedding.dims == 64 and replies[3].embedding.dims == 384
    assert all(
        r.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] for r in replies if r.HasField("error")
    )
    assert replies[1].error.field == "input" and replies[4].error.field == "options.dimensions"
    assert "256" in replies[2].error.message


def test_eight_concurrent_streams_of_500_lose_nothing(stub: pb_grpc.EmbeddingServiceStub) -> None:
    results: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    def one_stream(n: int) -> None:
        try:
            reqs = (
                pb.EmbedStreamRequest(id=f"{n}-{i}", input=f"stream {n} sentence number {i}")
                for i in range(500)
            )
            results[n] = [r.id for r in stub.EmbedStream(reqs, timeout=600) if r.HasField("embedding")]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one_stream, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for n in range(8):
        assert results[n] == [f"{n}-{i}" for i in range(500)]


def test_tokenize_reports_tokens_offsets_and_overflow(stub: pb_grpc.EmbeddingServiceStub) -> None:
    reply = stub.Tokenize(pb.TokenizeRequest(inputs=["Hello world", LONG]), timeout=10)
    first = reply.items[0]
    assert [t.text for t in first.tokens] == ["[CLS]", "hello", "world", "[SEP]"]
    assert [t.special for t in first.tokens] == [True, False, False, True]
    assert (first.tokens[2].start, first.tokens[2].stop) == (6, 11)
    assert not first.exceeds_max and reply.items[1].exceeds_max
    bare = stub.Tokenize(pb.TokenizeRequest(inputs=["Hello world"], add_special_tokens=False), timeout=10)
    assert [t.text for t in bare.items[0].tokens] == ["hello", "world"]
