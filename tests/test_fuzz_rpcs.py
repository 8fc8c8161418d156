"""Property-based fuzzing of every RPC the server registers (server.servicers.SERVICES):
random bytes, mutated valid messages, and random messages built from the request descriptors.

Whatever arrives, the answer is never INTERNAL or UNKNOWN, no status or in-band error message
carries Python internals (a traceback, a class, an exception name, a file path), the server logs
no traceback, and health still answers SERVING afterwards. Bounded and reproducible:
derandomized, a few hundred examples in all.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any, cast

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos.embedding.v1 import embedding_pb2 as pb
from protos.tei.v1 import tei_pb2
from server.servicers import SERVICES

METHODS: list[MethodDescriptor] = [m for service in SERVICES for m in service.methods]
# A traceback, a class or exception name, a source file or an absolute path on the server.
LEAKS = re.compile(
    r"Traceback|<class|Exception|\.py\b|File \"|site-packages|/(?:usr|work|tmp|home|root|opt)/"
)
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
RESPONSES_READ = 3  # of a server stream: errors come first; a whole edge bundle is ~100 MB
FUZZ = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# Valid requests to mutate (others start from the empty message).
SEEDS: dict[str, Message] = {
    "embedding.v1.EmbedRequest": pb.EmbedRequest(
        inputs=["a sentence"], options=pb.EmbedOptions(dimensions=64, precision=pb.PRECISION_INT8)
    ),
    "embedding.v1.EmbedStreamRequest": pb.EmbedStreamRequest(id="1", input="a sentence"),
    "embedding.v1.TokenizeRequest": pb.TokenizeRequest(inputs=["a sentence"]),
    "embedding.v1.IngestRequest": pb.IngestRequest(
        collection="fuzz-seed", id="d", text="a document", metadata={"k": [1, "v", {"n": None}]}
    ),
    "embedding.v1.SearchRequest": pb.SearchRequest(collection="fuzz-seed", query="a query", k=3),
    "embedding.v1.DeleteRequest": pb.DeleteRequest(collection="fuzz-seed", ids=["d"]),
    "embedding.v1.SearchBatchRequest": pb.SearchBatchRequest(
        requests=[
            pb.SearchRequest(collection="fuzz-seed", query="a query", k=3, filter='{"k": {"in": [1, "v"]}}'),
            pb.SearchRequest(collection="fuzz-seed", vector=[0.5] * 384, k=2),
        ]
    ),
    "embedding.v1.GetDocumentsRequest": pb.GetDocumentsRequest(collection="fuzz-seed", ids=["d", "e"]),
    "embedding.v1.DropCollectionRequest": pb.DropCollectionRequest(collection="fuzz-dropped"),
    "embedding.v1.SyncVectorsRequest": pb.SyncVectorsRequest(collection="fuzz-seed", since_sequence=1),
    "embedding.v1.GetEdgeBundleRequest": pb.GetEdgeBundleRequest(files=["tokenizer.json"]),
    "tei.v1.EmbedRequest": tei_pb2.EmbedRequest(inputs="a sentence", dimensions=8),
    "tei.v1.EmbedAllRequest": tei_pb2.EmbedAllRequest(inputs="a sentence"),
    "tei.v1.EncodeRequest": tei_pb2.EncodeRequest(inputs="a sentence"),
    "tei.v1.DecodeRequest": tei_pb2.DecodeRequest(ids=[101, 2023, 102]),
    "tei.v1.RerankRequest": tei_pb2.RerankRequest(query="q", texts=["a", "b"]),
}

# --- strategies built from the descriptors ----------------------------------------------------

_STRINGS = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=12),  # surrogates: test_invalid_utf8
    st.sampled_from(["", "\x00", "a\x00b", " ", "x" * 300, "query", "document", "fuzz-seed", "d"]),
)
_UINT32 = [0, 1, 2, 8, 383, 384, 385, 1000, 1001, 2**31 - 1, 2**32 - 1]
_UINT64 = [*_UINT32, 2**63 - 1, 2**64 - 1]


def _ints(kind: int) -> st.SearchStrategy[int]:
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.sampled_from(_UINT32) | st.integers(0, 2**32 - 1)
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.sampled_from(_UINT64) | st.integers(0, 2**64 - 1)
    if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return st.sampled_from([0, -1, 2**63 - 1, -(2**63)]) | st.integers(-(2**63), 2**63 - 1)
    return st.sampled_from([0, -1, 2**31 - 1, -(2**31)]) | st.integers(-(2**31), 2**31 - 1)


_JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.sampled_from([math.nan, math.inf]) | _STRINGS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_STRINGS, inner, max_size=3),
    max_leaves=8,
)


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    kind = field.type
    if field.message_type is not None:
        if field.message_type.full_name == "google.protobuf.Struct":
            return st.dictionaries(_STRINGS, _JSON, max_size=3)
        return _message(field.message_type, depth + 1)
    if kind == FieldDescriptor.TYPE_STRING:
        return _STRINGS
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=16)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.floats(width=32 if kind == FieldDescriptor.TYPE_FLOAT else 64)
    if field.enum_type is not None:
        known = [v.number for v in field.enum_type.values]
        return st.sampled_from(known) | st.integers(-3, 100)
    return _ints(kind)


def _message(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(descriptor)
    if depth > 2:
        return st.just(cls())
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        value = _value(field, depth)
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if is_map:
            optional[field.name] = st.dictionaries(_STRINGS, _STRINGS, max_size=2)
        elif field.is_repeated:
            optional[field.name] = st.lists(value, max_size=3)
        else:
            optional[field.name] = value
    return st.fixed_dictionaries({}, optional=optional).map(lambda values: _build(cls, values))


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        target = getattr(message, name)
        if isinstance(value, Message):
            target.CopyFrom(value)
        elif isinstance(value, dict) and hasattr(target, "update"):
            target.update(value)
        elif isinstance(value, list):
            if value and isinstance(value[0], Message):
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        else:
            setattr(message, name, value)
    return message


def _mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    """Byte-level mutations: (kind, position, byte)."""
    out = bytearray(data)
    for kind, pos, byte in ops:
        i = pos % (len(out) + 1)
        if kind == 0 and out:
            out[i % len(out)] ^= byte or 1
        elif kind == 1:
            out.insert(i, byte)
        elif kind == 2:
            del out[i : i + byte % 8 + 1]
        elif kind == 3:
            out[i:i] = out[i : i + byte % 16]  # repeat a slice (a field twice, a length off)
        else:
            out = out[:i]
    return bytes(out)


_OPS = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=4
)


def _seed(method: MethodDescriptor) -> bytes:
    seed = SEEDS.get(method.input_type.full_name)
    return seed.SerializeToString() if seed is not None else b""


# --- calling -----------------------------------------------------------------------------------


def _check_text(text: str, where: str) -> None:
    assert not LEAKS.search(text), f"{where} leaks internals: {text!r}"


def _check_item_errors(response: Message, where: str) -> None:
    """In-band errors (EmbedStream, Ingest) follow the same rules as statuses."""
    if "error" not in response.DESCRIPTOR.fields_by_name or not response.HasField("error"):
        return
    error: Any = cast(Any, response).error
    bad = (grpc.StatusCode.INTERNAL.value[0], grpc.StatusCode.UNKNOWN.value[0])
    assert error.code not in bad, f"{where}: in-band {error}"
    _check_text(error.message, where)


def call(channel: grpc.Channel, method: MethodDescriptor, items: list[bytes]) -> None:
    """Send ``items`` (raw bytes: one for a unary request) and check whatever comes back."""
    name = f"/{method.containing_service.full_name}/{method.name}"
    parse = message_factory.GetMessageClass(method.output_type).FromString
    kinds = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }
    stub = kinds[(method.client_streaming, method.server_streaming)](
        name, request_serializer=bytes, response_deserializer=parse
    )
    request: Any = iter(items) if method.client_streaming else items[0]
    try:
        result = stub(request, timeout=60)
        if method.server_streaming:
            for n, response in enumerate(result):
                _check_item_errors(response, name)
                if n + 1 >= RESPONSES_READ:
                    result.cancel()
                    break
        else:
            _check_item_errors(result, name)
    except grpc.RpcError as err:
        code = err.code()
        if code == grpc.StatusCode.CANCELLED:
            return  # our own cancel above
        assert code not in BAD_CODES, f"{name}: {code.name} {err.details()!r}"
        _check_text(err.details() or "", name)


_TRACEBACKS_BEFORE: list[int] = []


@pytest.fixture(scope="module")
def channel(live_server: Any) -> Iterator[grpc.Channel]:
    options = [("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(live_server.address, options=options) as ch:
        _TRACEBACKS_BEFORE.append(live_server.log().count("Traceback"))
        yield ch


_METHOD = st.sampled_from(METHODS)


@FUZZ
@given(method=_METHOD, items=st.lists(st.binary(max_size=64), min_size=1, max_size=3))
def test_random_bytes(channel: grpc.Channel, method: MethodDescriptor, items: list[bytes]) -> None:
    call(channel, method, items)


@FUZZ
@given(data=st.data(), method=_METHOD)
def test_mutated_valid_messages(channel: grpc.Channel, data: st.DataObject, method: MethodDescriptor) -> None:
    built = _message(method.input_type).map(lambda m: m.SerializeToString())
    base = data.draw(st.just(_seed(method)) | built)
    items = [_mutate(base, data.draw(_OPS)) for _ in range(data.draw(st.integers(1, 3)))]
    call(channel, method, items)


@FUZZ
@given(data=st.data(), method=_METHOD)
def test_structured_messages(channel: grpc.Channel, data: st.DataObject, method: MethodDescriptor) -> None:
    count = data.draw(st.integers(1, 3)) if method.client_streaming else 1
    items = [data.draw(_message(method.input_type)).SerializeToString() for _ in range(count)]
    call(channel, method, items)


def test_server_still_serving_and_logged_no_traceback(channel: grpc.Channel, live_server: Any) -> None:
    """Runs after the fuzzing above (pytest keeps the order of a module)."""
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert live_server.log().count("Traceback") == _TRACEBACKS_BEFORE[0], live_server.log()[-4000:]
