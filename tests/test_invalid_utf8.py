"""Invalid UTF-8 in any string field of any RPC of every service is INVALID_ARGUMENT naming the
field, or an in-band ItemError on a stream that then goes on (TEI's stream ends, as TEI's does).

The RPCs and their string fields come from the service descriptors the server registers, so a
new RPC or field is covered without editing this file. A raw client sends the bytes: protobuf's
own serializer would refuse to produce them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from protos.embedding.v1 import embedding_pb2 as pb
from protos.tei.v1 import tei_pb2
from server.servicers import SERVICES

MARK = "QQMARKQQ"
BAD = b"\xed\xa0\x80" + b"\xff" * 5  # a UTF-8-encoded lone surrogate, then bytes no UTF-8 has

# Valid items for the streams that carry many independent requests: the test sends good, bad,
# good and expects three answers (every client-streaming RPC must have one here).
GOOD_ITEMS: dict[str, Message] = {
    "embedding.v1.IngestRequest": pb.IngestRequest(
        collection="utf8-stream", id="good", text="a valid document"
    ),
    "embedding.v1.EmbedStreamRequest": pb.EmbedStreamRequest(id="good", input="a valid sentence"),
    "tei.v1.EmbedRequest": tei_pb2.EmbedRequest(inputs="a valid sentence"),
    "tei.v1.EmbedAllRequest": tei_pb2.EmbedAllRequest(inputs="a valid sentence"),
    "tei.v1.EncodeRequest": tei_pb2.EncodeRequest(inputs="a valid sentence"),
}
# Streams of RPCs an embedding model cannot serve have no valid item (each is FAILED_PRECONDITION):
# the bad item goes alone. TEI's RerankStream refuses before it reads the stream at all.
REFUSED_STREAMS = {"tei.v1.EmbedSparseRequest", "tei.v1.PredictRequest", "tei.v1.PredictPairRequest"}
REFUSED_UNREAD = {"tei.v1.RerankStreamRequest"}


def _string_fields(
    descriptor: Descriptor, prefix: str = "", depth: int = 0
) -> Iterator[tuple[str, list[str]]]:
    """(wire path the server names, attribute path to set) of every string field, nested ones
    included; Struct metadata is reached through one string value."""
    for field in descriptor.fields:
        path = prefix + field.name + ("[0]" if field.is_repeated else "")
        if field.type == FieldDescriptor.TYPE_STRING:
            yield path, [field.name]
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
            if field.message_type.full_name == "google.protobuf.Struct":
                yield path + ".fields[0].value.string_value", [field.name, "<struct>"]
            elif depth < 2 and not field.is_repeated and not field.message_type.GetOptions().map_entry:
                for inner, attrs in _string_fields(field.message_type, path + ".", depth + 1):
                    yield inner, [field.name, *attrs]


def _with_mark(cls: type[Message], attrs: list[str]) -> bytes:
    message = cls()
    target: Any = message
    for attr in attrs[:-1]:
        target = getattr(target, attr)
    last = attrs[-1]
    if last == "<struct>":
        target.update({"key": MARK})
    elif isinstance(getattr(target, last), str):
        setattr(target, last, MARK)
    else:
        getattr(target, last).append(MARK)
    data = message.SerializeToString()
    assert MARK.encode() in data
    return data.replace(MARK.encode(), BAD)


def _cases() -> Iterator[tuple[str, MethodDescriptor, str, list[str]]]:
    for service in SERVICES:
        for method in service.methods:
            for wire_path, attrs in _string_fields(method.input_type):
                yield f"{service.full_name}/{method.name}:{wire_path}", method, wire_path, attrs


CASES = list(_cases())


def test_every_service_and_string_field_is_covered() -> None:
    services = {case[0].split("/")[0] for case in CASES}
    assert services == {"embedding.v1.EmbeddingService", "embedding.v1.CollectionService",
                        "embedding.v1.EdgeService", "tei.v1.Embed", "tei.v1.Predict", "tei.v1.Rerank",
                        "tei.v1.Tokenize"}  # fmt: skip
    assert len(CASES) >= 20
    streaming_inputs = {m.input_type.full_name for _, m, _, _ in CASES if m.client_streaming}
    assert streaming_inputs <= set(GOOD_ITEMS) | REFUSED_STREAMS | REFUSED_UNREAD


@pytest.fixture(scope="module")
def channel(live_server: Any) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(live_server.address) as ch:
        yield ch


def _parse(method: MethodDescriptor) -> Any:
    return message_factory.GetMessageClass(method.output_type).FromString


@pytest.mark.parametrize(("label", "method", "wire_path", "attrs"), CASES, ids=[c[0] for c in CASES])
def test_invalid_utf8_is_invalid_argument_naming_the_field(
    channel: grpc.Channel, label: str, method: MethodDescriptor, wire_path: str, attrs: list[str]
) -> None:
    name = f"/{method.containing_service.full_name}/{method.name}"
    cls = message_factory.GetMessageClass(method.input_type)
    bad = _with_mark(cls, attrs)
    identity = bytes  # the raw bytes go on the wire as they are
    if not method.client_streaming:
        call: Any = (
            channel.unary_stream(name, request_serializer=identity, response_deserializer=_parse(method))
            if method.server_streaming
            else channel.unary_unary(name, request_serializer=identity, response_deserializer=_parse(method))
        )
        with pytest.raises(grpc.RpcError) as err:
            result = call(bad, timeout=60)
            if method.server_streaming:
                list(result)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert wire_path in (err.value.details() or "")
        return
    kind = method.input_type.full_name
    if kind in REFUSED_UNREAD:
        refused = channel.stream_unary(
            name, request_serializer=identity, response_deserializer=_parse(method)
        )
        with pytest.raises(grpc.RpcError) as err:
            refused(iter([bad]), timeout=60)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        return
    stream = channel.stream_stream(name, request_serializer=identity, response_deserializer=_parse(method))
    if method.containing_service.full_name.startswith("tei."):  # TEI: an error status ends the stream
        items = [bad] if kind in REFUSED_STREAMS else [GOOD_ITEMS[kind].SerializeToString(), bad]
        with pytest.raises(grpc.RpcError) as err:
            list(stream(iter([*items, *items]), timeout=120))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert wire_path in (err.value.details() or "")
        return
    good = GOOD_ITEMS[kind].SerializeToString()
    replies = list(stream(iter([good, bad, good]), timeout=120))
    assert len(replies) == 3  # the stream went on after the bad item
    assert not replies[0].HasField("error") and not replies[2].HasField("error")
    error = replies[1].error
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert error.field == wire_path and wire_path in error.message
