"""Upper bounds of protobuf encodings, so responses are cut to the message limit in domain code.

gRPC refuses to send a message over ``--max-message-bytes`` and fails the whole call (a Search
with k=200 over 100 KB texts: "Sent message larger than max (20409076 vs. 16777216)"). Search
and SyncVectors therefore size what they return by bytes. Domain code does not build protobuf,
so sizes come from the wire format (https://protobuf.dev/programming-guides/encoding/):
a length-delimited field is tag + varint length + payload; tags of field numbers below 16 are
one byte. The functions return bounds (never less than the encoding), tested against protobuf's
own ``ByteSize`` in tests/test_message_size.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Bytes of a response outside its repeated items (timing, sequences, fingerprint, incarnation),
# with room to spare: items are packed into max_message_bytes minus this.
RESPONSE_OVERHEAD = 4096
FLAG = 2  # a bool field set to true
FIXED64 = 11  # a uint64 / int64 / double field, at most (tag + 10-byte varint)


def varint(value: int) -> int:
    """Bytes of ``value`` as a protobuf varint."""
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


def field(payload: int) -> int:
    """A length-delimited field (string, bytes, sub-message) of ``payload`` bytes."""
    return 1 + varint(payload) + payload


def text(value: str) -> int:
    return field(len(value.encode("utf-8")))


def struct(data: Mapping[str, Any] | None) -> int:
    """A ``google.protobuf.Struct`` field holding ``data`` (JSON values), present even if empty."""
    return field(_struct_body(data or {}))


def _struct_body(data: Mapping[str, Any]) -> int:
    # map<string, Value> fields = 1: each entry is a message {1: key, 2: Value}
    return sum(field(text(str(key)) + field(_value(value))) for key, value in data.items())


def _value(value: Any) -> int:
    """Body of a ``google.protobuf.Value`` (a oneof: exactly one field is written)."""
    if value is None or isinstance(value, bool):
        return FLAG
    if isinstance(value, int | float):
        return 9  # double: tag + 8 bytes
    if isinstance(value, str):
        return text(value)
    if isinstance(value, Mapping):
        return field(_struct_body(value))
    if isinstance(value, list | tuple):
        return field(sum(field(_value(item)) for item in value))
    return text(str(value))


def cut_utf8(value: str, max_bytes: int) -> str:
    """The longest prefix of ``value`` of at most ``max_bytes`` UTF-8 bytes (whole characters)."""
    raw = value.encode("utf-8")
    if len(raw) <= max_bytes:
        return value
    return raw[: max(0, max_bytes)].decode("utf-8", errors="ignore")
