"""Every field of every request, malformed, through the real server: the right status (or the
item's ItemError on a stream that goes on) with a message naming the field and the limit.

One table, field by field, in the order of protos/embedding/v1/embedding.proto and
protos/tei/v1/tei.proto. Invalid UTF-8 is covered for every string field by
tests/test_invalid_utf8.py; random input by tests/test_fuzz_rpcs.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.message import Message

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1 import embedding_pb2_grpc as pb_grpc
from protos.tei.v1 import tei_pb2
from server.errors import InvalidArgument
from server.validation import MAX_METADATA_BYTES, MAX_METADATA_DEPTH, check_metadata

INVALID = grpc.StatusCode.INVALID_ARGUMENT
COLLECTION = "validation-table"
LONG = "x" * 257  # one byte over the name rule's 256
FINGERPRINT = "<the server's edge bundle fingerprint>"  # filled in per call


@dataclass(frozen=True)
class Case:
    label: str
    method: str  # /package.Service/Method
    request: Message | bytes
    field: str  # named in the message (and ItemError.field in a stream)
    code: grpc.StatusCode = INVALID
    limit: str = ""  # also in the message, when the field has a numeric limit


def _nested(levels: int) -> struct_pb2.Struct:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    out = struct_pb2.Struct()
    out.update(value)
    return out


def _length_prefixed(data: bytes) -> bytes:
    out = bytearray()
    n = len(data)
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out) + data


def _deep_metadata_request(levels: int) -> bytes:
    """An IngestRequest whose metadata nests ``levels`` objects: too deep for protobuf itself to
    build or parse past ~33, so written as wire bytes (Struct -> map entry -> Value -> Struct)."""
    struct = b""
    for _ in range(levels):
        value = b"\x2a" + _length_prefixed(struct)  # Value.struct_value = 5
        entry = b"\x0a\x01a" + b"\x12" + _length_prefixed(value)  # key = 1, value = 2
        struct = b"\x0a" + _length_prefixed(entry)  # Struct.fields = 1
    head = pb.IngestRequest(collection=COLLECTION, id="deep", text="a document").SerializeToString()
    return head + b"\x22" + _length_prefixed(struct)  # IngestRequest.metadata = 4


def _ingest(label: str, field: str, limit: str = "", **fields: Any) -> Case:
    values = {"collection": COLLECTION, "id": "doc", "text": "a document", **fields}
    return Case(
        label, "/embedding.v1.CollectionService/Ingest", pb.IngestRequest(**values), field, limit=limit
    )


def _search(label: str, field: str, limit: str = "", **fields: Any) -> Case:
    values = {"collection": COLLECTION, "query": "a query", **fields}
    return Case(
        label, "/embedding.v1.CollectionService/Search", pb.SearchRequest(**values), field, limit=limit
    )


def _sync(label: str, field: str, limit: str = "", **fields: Any) -> Case:
    values = {"collection": COLLECTION, "bundle_fingerprint": FINGERPRINT, **fields}
    request = pb.SyncVectorsRequest(**values)
    return Case(label, "/embedding.v1.CollectionService/SyncVectors", request, field, limit=limit)


def _embed(label: str, field: str, limit: str = "", inputs: tuple[str, ...] = ("a",), **options: Any) -> Case:
    request = pb.EmbedRequest(inputs=inputs, options=pb.EmbedOptions(**options))
    return Case(label, "/embedding.v1.EmbeddingService/Embed", request, field, limit=limit)


def _stream(label: str, field: str, limit: str = "", **fields: Any) -> Case:
    values = {"id": "item", "input": "a sentence", **fields}
    request = pb.EmbedStreamRequest(**values)
    return Case(label, "/embedding.v1.EmbeddingService/EmbedStream", request, field, limit=limit)


def _delete(label: str, field: str, limit: str = "", **fields: Any) -> Case:
    request = pb.DeleteRequest(**{"collection": COLLECTION, **fields})
    return Case(label, "/embedding.v1.CollectionService/Delete", request, field, limit=limit)


def _files(label: str, field: str, files: list[str], limit: str = "") -> Case:
    request = pb.GetEdgeBundleRequest(files=files)
    return Case(label, "/embedding.v1.EdgeService/GetEdgeBundle", request, field, limit=limit)


def _tei(method: str, request: Message, field: str, label: str, limit: str = "") -> Case:
    return Case(label, f"/tei.v1.{method}", request, field, limit=limit)


def _tei_embed(**fields: Any) -> tei_pb2.EmbedRequest:
    return tei_pb2.EmbedRequest(inputs="a", **fields)


CASES = [
    # --- EmbeddingService.Embed: EmbedRequest and EmbedOptions
    _embed("inputs empty", "inputs", inputs=()),
    _embed("inputs too many", "inputs", "512", inputs=("a",) * 513),
    _embed("inputs[i] empty", "inputs[1]", inputs=("a", "")),
    _embed("inputs[i] NUL", "inputs[1]", inputs=("a", "b\x00")),
    _embed("dimensions 0", "options.dimensions", "384", dimensions=0),
    _embed("dimensions 2^32-1", "options.dimensions", "384", dimensions=2**32 - 1),
    _embed("precision unknown", "options.precision", precision=99),
    _embed("direction unknown", "options.truncation_direction", truncation_direction=99),
    _embed("prompt_name unknown", "options.prompt_name", prompt_name="nope"),
    _embed("prompt_name too long", "options.prompt_name", "256", prompt_name=LONG),
    _embed("prompt_name NUL", "options.prompt_name", prompt_name="q\x00"),
    Case(
        "options not EmbedOptions",
        "/embedding.v1.EmbeddingService/Embed",
        pb.EmbedRequest(inputs=["a"]).SerializeToString() + b"\x12\x02\x08\x80",
        "options",
    ),
    Case("not protobuf at all", "/embedding.v1.EmbeddingService/Embed", b"\xff\xff", "request"),
    # --- EmbedStream (ItemError)
    _stream("stream id too long", "id", "256", id=LONG),
    _stream("stream id NUL", "id", id="a\x00"),
    _stream("stream input empty", "input", input=""),
    _stream("stream input NUL", "input", input="a\x00"),
    _stream(
        "stream precision unknown", "options.precision", options=pb.EmbedOptions(precision=cast(Any, 99))
    ),
    # --- Tokenize
    Case("tokenize inputs empty", "/embedding.v1.EmbeddingService/Tokenize", pb.TokenizeRequest(), "inputs"),
    Case(
        "tokenize inputs NUL",
        "/embedding.v1.EmbeddingService/Tokenize",
        pb.TokenizeRequest(inputs=["\x00"]),
        "inputs[0]",
    ),
    Case(
        "tokenize prompt_name too long",
        "/embedding.v1.EmbeddingService/Tokenize",
        pb.TokenizeRequest(inputs=["a"], prompt_name=LONG),
        "prompt_name",
        limit="256",
    ),
    # --- CollectionService.Ingest (ItemError)
    _ingest("collection empty", "collection", collection=""),
    _ingest("collection too long", "collection", "128", collection="c" * 129),
    _ingest("collection NUL", "collection", collection="c\x00"),
    _ingest("id empty", "id", id=""),
    _ingest("id too long", "id", "256", id=LONG),
    _ingest("id NUL", "id", id="d\x00"),
    _ingest("text empty", "text", text=""),
    _ingest("text blank", "text", text="  \n"),
    _ingest("text NUL", "text", text="a\x00b"),
    _ingest("metadata NaN", "metadata", metadata={"x": math.nan}),
    _ingest("metadata Infinity", "metadata", metadata={"x": [1, math.inf]}),
    _ingest("metadata -Infinity", "metadata", metadata={"x": {"y": -math.inf}}),
    _ingest(
        "metadata too deep", "metadata", str(MAX_METADATA_DEPTH), metadata=_nested(MAX_METADATA_DEPTH + 1)
    ),
    _ingest(
        "metadata too large", "metadata", f"{MAX_METADATA_BYTES:,}", metadata={"x": "v" * MAX_METADATA_BYTES}
    ),
    Case(
        "metadata 150 levels",
        "/embedding.v1.CollectionService/Ingest",
        _deep_metadata_request(150),
        "metadata",
        limit=str(MAX_METADATA_DEPTH),
    ),
    Case(
        "metadata not a Struct",
        "/embedding.v1.CollectionService/Ingest",
        pb.IngestRequest(collection=COLLECTION, id="m", text="a document").SerializeToString()
        + b"\x22\x02\x08\x80",  # metadata: a varint cut short
        "metadata",
    ),
    # --- Search
    _search("search collection empty", "collection", collection=""),
    _search("search collection NUL", "collection", collection="c\x00"),
    _search("search query empty", "query", query=""),
    _search("search query NUL", "query", query="a\x00"),
    _search("search k too large", "k", "1000", k=1001),
    _search("search k 2^32-1", "k", "1000", k=2**32 - 1),
    _search("search dimensions 0", "dimensions", "384", dimensions=0),
    _search("search dimensions too large", "dimensions", "384", dimensions=385),
    _search("search precision FLOAT16", "precision", precision=pb.PRECISION_FLOAT16),
    _search("search precision unknown", "precision", precision=99),
    _search("search rescore too large", "rescore_multiplier", "100", rescore_multiplier=101),
    _search("search rescore 2^32-1", "rescore_multiplier", "100", rescore_multiplier=2**32 - 1),
    _search("search prompt_name unknown", "prompt_name", prompt_name="nope"),
    _search("search prompt_name too long", "prompt_name", "256", prompt_name=LONG),
    # --- Delete
    _delete("delete collection empty", "collection", collection="", ids=["a"]),
    _delete("delete ids empty", "ids"),
    _delete("delete ids too many", "ids", "10,000", ids=[str(i) for i in range(10_001)]),
    _delete("delete id NUL", "ids[1]", ids=["a", "b\x00"]),
    _delete("delete id too long", "ids[0]", "256", ids=[LONG]),
    _delete("delete ids duplicate", "ids[2]", ids=["a", "b", "a"]),
    # --- SyncVectors
    _sync("sync collection empty", "collection", collection=""),
    _sync("sync fingerprint too long", "bundle_fingerprint", "256", bundle_fingerprint=LONG),
    Case(
        "sync fingerprint wrong",
        "/embedding.v1.CollectionService/SyncVectors",
        pb.SyncVectorsRequest(collection=COLLECTION, bundle_fingerprint="edge-0"),
        "bundle_fingerprint",
        code=grpc.StatusCode.FAILED_PRECONDITION,
    ),
    _sync("sync dimensions 2^32-1", "dimensions", "384", dimensions=2**32 - 1),
    _sync("sync incarnation too long", "incarnation", "256", incarnation=LONG),
    _sync("sync incarnation NUL", "incarnation", incarnation="\x00"),
    # --- EdgeService.GetEdgeBundle
    _files("files[i] empty", "files[0]", [""]),
    _files("files[i] NUL", "files[0]", ["model.onnx\x00"]),
    _files("files duplicate", "files[1]", ["tokenizer.json", "tokenizer.json"]),
    _files("files too many", "files", [str(i) for i in range(65)], limit="64"),
    Case(
        "files unknown",
        "/embedding.v1.EdgeService/GetEdgeBundle",
        pb.GetEdgeBundleRequest(files=["nope.bin"]),
        "nope.bin",
        code=grpc.StatusCode.NOT_FOUND,
    ),
    # --- tei.v1
    _tei("Embed/Embed", tei_pb2.EmbedRequest(), "inputs", "tei inputs empty"),
    _tei("Embed/Embed", tei_pb2.EmbedRequest(inputs="a\x00"), "inputs", "tei inputs NUL"),
    _tei("Embed/Embed", _tei_embed(truncation_direction=99), "truncation_direction", "tei dir"),
    _tei("Embed/Embed", _tei_embed(prompt_name="nope"), "prompt_name", "tei prompt unknown"),
    _tei("Embed/Embed", _tei_embed(prompt_name=LONG), "prompt_name", "tei prompt long", "256"),
    _tei("Embed/Embed", _tei_embed(dimensions=0), "dimensions", "tei dimensions 0", "384"),
    _tei("Embed/EmbedAll", tei_pb2.EmbedAllRequest(inputs="a\x00"), "inputs", "tei EmbedAll NUL"),
    _tei("Tokenize/Tokenize", tei_pb2.EncodeRequest(inputs="a\x00"), "inputs", "tei Tokenize NUL"),
    _tei("Tokenize/Decode", tei_pb2.DecodeRequest(), "input_ids", "tei Decode ids empty"),
    _tei("Tokenize/Decode", tei_pb2.DecodeRequest(ids=[1] * 64_257), "ids", "tei Decode many", "64,256"),
    _tei("Predict/PredictPair", tei_pb2.PredictPairRequest(inputs=["a"] * 3), "inputs", "tei pair of 3"),
]

_STREAMS = {"/embedding.v1.CollectionService/Ingest", "/embedding.v1.EmbeddingService/EmbedStream"}


@pytest.fixture(scope="module")
def channel(live_server: Any) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(live_server.address) as ch:
        yield ch


@pytest.fixture
def fingerprint(channel: grpc.Channel) -> str:
    # Read per test: the shared live server refits its edge bundle once its store has grown
    # enough and a client fetches the bundle (server/edge_builder.py), which other modules do.
    stub = pb_grpc.EmbeddingServiceStub(channel)
    return str(stub.Info(pb.InfoRequest(), timeout=60).edge_bundle_fingerprint)


def _bytes(request: Message | bytes, fingerprint: str) -> bytes:
    if isinstance(request, bytes):
        return request
    if isinstance(request, pb.SyncVectorsRequest) and request.bundle_fingerprint == FINGERPRINT:
        request = pb.SyncVectorsRequest.FromString(request.SerializeToString())
        request.bundle_fingerprint = fingerprint
    return request.SerializeToString()


def test_cases_cover_every_request_type() -> None:
    methods = {case.method.rsplit("/", 1)[0] for case in CASES}
    assert {"/embedding.v1.EmbeddingService", "/embedding.v1.CollectionService", "/embedding.v1.EdgeService",
            "/tei.v1.Embed", "/tei.v1.Tokenize", "/tei.v1.Predict"} <= methods  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_malformed_field_is_named(channel: grpc.Channel, fingerprint: str, case: Case) -> None:
    data = _bytes(case.request, fingerprint)
    if case.method in _STREAMS:
        # Good, bad, good: one answer each, in order; only the bad one has an ItemError.
        good = (
            pb.IngestRequest(collection=COLLECTION, id="good", text="a good document")
            if "Ingest" in case.method
            else pb.EmbedStreamRequest(id="good", input="a good sentence")
        ).SerializeToString()
        stream = channel.stream_stream(case.method, request_serializer=bytes, response_deserializer=bytes)
        replies = list(stream(iter([good, data, good]), timeout=120))
        parse = pb.IngestAck.FromString if "Ingest" in case.method else pb.EmbedStreamResponse.FromString
        first, bad, last = (parse(r) for r in replies)
        assert not first.HasField("error") and not last.HasField("error")
        assert bad.HasField("error"), bad
        assert bad.error.code == case.code.value[0], bad.error
        assert bad.error.field == case.field
        assert case.field in bad.error.message and case.limit in bad.error.message, bad.error.message
        return
    unary = channel.unary_unary(case.method, request_serializer=bytes, response_deserializer=bytes)
    streaming = channel.unary_stream(case.method, request_serializer=bytes, response_deserializer=bytes)
    with pytest.raises(grpc.RpcError) as err:
        if case.method.endswith(("/SyncVectors", "/GetEdgeBundle")):
            list(streaming(data, timeout=60))
        else:
            unary(data, timeout=60)
    details = err.value.details() or ""
    assert err.value.code() == case.code, details
    assert case.field in details and case.limit in details, details


def test_since_sequence_beyond_the_head_is_a_reset(channel: grpc.Channel, fingerprint: str) -> None:
    """since_sequence 2^64-1 is valid (proto comment): a checkpoint of no incarnation, so reset."""
    stub = pb_grpc.CollectionServiceStub(channel)
    acks = list(
        stub.Ingest(iter([pb.IngestRequest(collection=COLLECTION, id="s", text="kept")]), timeout=120)
    )
    assert not acks[0].HasField("error")
    request = pb.SyncVectorsRequest(
        collection=COLLECTION, since_sequence=2**64 - 1, bundle_fingerprint=fingerprint
    )
    pages = list(stub.SyncVectors(request, timeout=60))
    assert pages[0].reset
    assert "s" in {c.id for page in pages for c in page.changes}


def test_a_message_quoting_the_request_is_cut_to_fit(channel: grpc.Channel) -> None:
    """64 unknown file names of 243 bytes: the NOT_FOUND message names them, cut to 1,000
    UTF-8 bytes so that it fits the status trailer (gRPC's header limit is 8 KiB, and it
    percent-encodes non-ASCII bytes)."""
    names = [f"{i:03d}" + "\u00e9" * 120 for i in range(64)]  # 243 bytes each
    stream = channel.unary_stream(
        "/embedding.v1.EdgeService/GetEdgeBundle", request_serializer=bytes, response_deserializer=bytes
    )
    with pytest.raises(grpc.RpcError) as err:
        list(stream(pb.GetEdgeBundleRequest(files=names).SerializeToString(), timeout=60))
    details = err.value.details() or ""
    assert err.value.code() == grpc.StatusCode.NOT_FOUND, details
    assert details.startswith("not in the bundle: 000\u00e9\u00e9") and len(details.encode()) <= 1000


def test_an_oversized_id_is_not_echoed_and_the_stream_goes_on(live_server: Any) -> None:
    """A 17 MiB id (the request fits the receive limit, 4x --max-document-bytes) used to be
    echoed in its ack, which passed the 16 MiB send limit and ended the whole stream."""
    big = 17 << 20
    options = [("grpc.max_send_message_length", 2 * big), ("grpc.max_receive_message_length", 2 * big)]
    items = [
        pb.IngestRequest(collection=COLLECTION, id="before", text="a document before"),
        pb.IngestRequest(collection=COLLECTION, id="x" * big, text="a document"),
        pb.IngestRequest(collection=COLLECTION, id="after", text="a document after"),
    ]
    with grpc.insecure_channel(live_server.address, options=options) as ch:
        acks = list(pb_grpc.CollectionServiceStub(ch).Ingest(iter(items), timeout=120))
    assert [a.id for a in acks] == ["before", "", "after"]
    assert acks[1].error.field == "id" and "256" in acks[1].error.message
    assert not acks[0].HasField("error") and not acks[2].HasField("error")


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ([1, 2], "must be a JSON object, got an array"),
        ("text", "must be a JSON object, got a string"),
        (None, "must be a JSON object, got null"),
        ({"a": [1.0, {"b": math.nan}]}, "NaN"),
        ({"a": -math.inf}, "finite"),
        ({1: "a"}, "keys must be strings"),
        ({"a": {1, 2}}, "not JSON"),
    ],
)
def test_metadata_rules_on_plain_values(value: object, needle: str) -> None:
    """The rules an HTTP API applies to parsed JSON too (server.validation takes plain values)."""
    with pytest.raises(InvalidArgument) as err:
        check_metadata(value)
    assert err.value.field == "metadata" and needle in err.value.message


def test_metadata_limits_are_inclusive() -> None:
    deepest: dict[str, Any] = {}
    for _ in range(MAX_METADATA_DEPTH - 1):
        deepest = {"a": deepest}
    assert check_metadata(deepest) is deepest  # MAX_METADATA_DEPTH levels: accepted
    with pytest.raises(InvalidArgument, match="nested more than"):
        check_metadata({"a": deepest})
    largest = {"x": "v" * (MAX_METADATA_BYTES - len('{"x":""}'))}
    assert check_metadata(largest) is largest
    with pytest.raises(InvalidArgument, match="more than the limit"):
        check_metadata({"x": largest["x"] + "v"})
