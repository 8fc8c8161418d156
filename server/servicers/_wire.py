"""Find the string field that made a protobuf message unparseable, from its wire bytes.

protobuf refuses a whole message when one ``string`` field is not valid UTF-8, and says neither
which field nor where. This walks the wire format (https://protobuf.dev/programming-guides/encoding/)
with the message's descriptor, recursing into sub-messages (maps are repeated entry messages),
and returns the path of the first invalid string field together with the message's bytes with
every invalid string field left out, so the rest can still be parsed.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


# protobuf (upb) refuses messages nested deeper than 100; a field nested deeper than this is
# named as the culprit (the top-level field holding it) and left out of the cleaned bytes.
MAX_DEPTH = 90


class _Malformed(Exception):
    """The bytes are not protobuf wire format at all."""


class _TooDeep(Exception):
    """Messages nested deeper than MAX_DEPTH."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Malformed
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _walk(descriptor: Descriptor, data: bytes, prefix: str, depth: int = 0) -> tuple[str, bytes, str]:
    """(first invalid field path or "", the bytes without invalid string fields, the first
    top-level field nested too deeply or "")."""
    if depth > MAX_DEPTH:
        raise _TooDeep
    fields = {f.number: f for f in descriptor.fields}
    nested: list[str] = []
    seen: dict[int, int] = {}
    first = ""
    out = bytearray()
    pos = 0
    while pos < len(data):
        start = pos
        tag, pos = _varint(data, pos)
        tag_end = pos
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            _, pos = _varint(data, pos)
        elif wire == _FIXED64:
            pos += 8
        elif wire == _FIXED32:
            pos += 4
        elif wire == _LENGTH:
            length, body_start = _varint(data, pos)
            pos = body_start + length
            if pos > len(data):
                raise _Malformed
            field = fields.get(number)
            if field is not None:
                index = seen.get(number, 0)
                seen[number] = index + 1
                repeated = field.is_repeated
                path = f"{prefix}{field.name}" + (f"[{index}]" if repeated else "")
                body = data[body_start:pos]
                if field.type == FieldDescriptor.TYPE_STRING:
                    try:
                        body.decode("utf-8")
                    except UnicodeDecodeError:
                        first = first or path
                        continue  # left out of the cleaned bytes
                elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
                    try:
                        inner_first, cleaned, _ = _walk(field.message_type, body, path + ".", depth + 1)
                    except _TooDeep:
                        if depth:
                            raise
                        nested.append(path)  # the top-level field holding it
                        continue
                    if inner_first:
                        first = first or inner_first
                        out += data[start:tag_end] + _encode_varint(len(cleaned)) + cleaned
                        continue
        else:
            raise _Malformed  # groups (3, 4) and unknown wire types
        if pos > len(data):
            raise _Malformed
        out += data[start:pos]
    return first, bytes(out), (nested[0] if nested else "")


@dataclass(frozen=True)
class Fault:
    """Why a message did not parse: the first string field that is not UTF-8 (``field``), else
    the top-level field nesting messages deeper than :data:`MAX_DEPTH` (``too_deep``), else the
    top-level message field whose bytes are not its message (``broken``, with its type);
    ``cleaned`` is the message without invalid string fields (None when the bytes are not
    protobuf wire format)."""

    field: str
    too_deep: str
    cleaned: bytes | None
    broken: str = ""
    broken_type: str = ""


def find_fault(descriptor: Descriptor, data: bytes) -> Fault:
    try:
        first, cleaned, nested = _walk(descriptor, data, "")
    except (_Malformed, _TooDeep):
        first, cleaned, nested = "", None, ""
    if first or nested:
        return Fault(first, nested, cleaned)
    name, kind, rest = _broken_field(descriptor, data)
    return Fault("", "", rest, name, kind)


def _broken_field(descriptor: Descriptor, data: bytes) -> tuple[str, str, bytes | None]:
    """(name, message type, the bytes without it) of the first top-level message field that
    does not parse alone, or ("", "", None) when none can be told (the bytes around the fields
    are broken)."""
    fields = {f.number: f for f in descriptor.fields}
    pos = 0
    try:
        while pos < len(data):
            field_start = pos
            tag, pos = _varint(data, pos)
            number, wire = tag >> 3, tag & 7
            if wire == _VARINT:
                _, pos = _varint(data, pos)
            elif wire in (_FIXED64, _FIXED32):
                pos += 8 if wire == _FIXED64 else 4
            elif wire == _LENGTH:
                length, start = _varint(data, pos)
                pos = start + length
                field = fields.get(number)
                if pos > len(data) or field is None or field.message_type is None:
                    continue
                try:
                    message_factory.GetMessageClass(field.message_type).FromString(data[start:pos])
                except (DecodeError, UnicodeDecodeError, ValueError, RuntimeError):
                    return field.name, str(field.message_type.full_name), data[:field_start] + data[pos:]
            else:
                break
    except _Malformed:
        pass
    return "", "", None


def invalid_string_field(descriptor: Descriptor, data: bytes) -> tuple[str, bytes | None]:
    """(path of the first string field that is not UTF-8, or "" when none is; the message's
    bytes without such fields, or None when ``data`` is not protobuf wire format)."""
    fault = find_fault(descriptor, data)
    return fault.field, fault.cleaned
