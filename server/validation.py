"""Rules for request fields that every API edge shares (the gRPC servicers, an HTTP API).

Plain Python values in (no protobuf), the checked value out, or
:class:`~server.errors.InvalidArgument` naming the field and the limit. The domain keeps the
checks it needs for its own callers too (collection names and ids in :mod:`server.ingest`, ``k``
in :mod:`server.search`); these are the rest, so each field is checked once. The limits are
written in the proto comments (protos/embedding/v1/embedding.proto).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from server.errors import EmptyInput, InvalidArgument, TooLarge

T = TypeVar("T")

# Short strings that name something (stream item ids, prompt names, fingerprints, incarnations,
# bundle file paths): long enough for any real one, short enough to echo in an error message.
MAX_NAME_BYTES = 256
MAX_METADATA_BYTES = 64 * 1024  # as compact JSON
# JSON nesting of metadata (an object holding an object is 2). protobuf itself refuses messages
# nested more than 100 deep, and each JSON level is 3 messages of google.protobuf.Struct.
MAX_METADATA_DEPTH = 20
MAX_DELETE_IDS = 10_000  # ids per Delete: one store transaction
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(text: str, field: str) -> None:
    """Inputs must be non-empty and free of NUL characters (they are almost always a client bug:
    C strings, binary data sent as text) and of lone surrogates (:func:`check_characters`)."""
    if not text:
        raise EmptyInput(f"{field} is empty; send at least one character", field=field)
    check_characters(text, field)


def check_characters(text: str, field: str) -> None:
    """No NUL character and no lone surrogate (U+D800-U+DFFF). protobuf refuses a surrogate
    before a servicer sees it, but JSON's ``\\ud800`` escape decodes to one, and the tokenizer
    cannot take it: one check here covers every API."""
    if "\x00" in text:
        raise InvalidArgument(
            f"{field} contains a NUL character (U+0000), which is not accepted", field=field
        )
    if not text.isascii() and (found := _SURROGATE.search(text)) is not None:
        raise InvalidArgument(
            f"{field} contains a lone surrogate (U+{ord(found.group()):04X} at character "
            f"{found.start()}), which is not a Unicode character; send UTF-8 text",
            field=field,
        )


def check_name(value: str, field: str, *, required: bool = False, max_bytes: int = MAX_NAME_BYTES) -> str:
    """A short identifying string: at most ``max_bytes`` UTF-8 bytes, no NUL; non-empty when
    ``required``."""
    if not value:
        if required:
            raise InvalidArgument(f"{field} is empty; it is required", field=field)
        return value
    if len(value) > max_bytes or len(value.encode("utf-8")) > max_bytes:
        raise InvalidArgument(
            f"{field} is {len(value.encode('utf-8')):,} UTF-8 bytes, more than the limit of {max_bytes}",
            field=field,
        )
    check_characters(value, field)
    return value


def check_prompt_name(name: str, prompts: Mapping[str, str], field: str) -> str:
    """``name`` if it is one of the model's ``prompts`` (name -> text) or "" (none); checked
    against the name rule first, so the message can quote it."""
    if check_name(name, field) and name not in prompts:
        known = ", ".join(sorted(prompts)) or "none"
        raise InvalidArgument(f"unknown {field} {name!r}; this model has: {known}", field=field)
    return name


def check_count(
    values: Sequence[Any], field: str, *, limit: int, required: bool = True, note: str = ""
) -> None:
    """``values`` has at least one item (when ``required``) and at most ``limit``; ``note`` names
    where the limit comes from (a flag)."""
    if required and not values:
        raise EmptyInput(f"{field} is empty; send at least one item", field=field)
    if len(values) > limit:
        where = f" ({note})" if note else ""
        raise TooLarge(
            f"{field} has {len(values):,} items, more than the limit of {limit:,}{where}", field=field
        )


def check_unique(values: Sequence[str], field: str) -> None:
    """No value twice: a repeated id is a client bug whose effect would be ambiguous."""
    first: dict[str, int] = {}
    for i, value in enumerate(values):
        if value in first:
            raise InvalidArgument(
                f"{field}[{i}] repeats {field}[{first[value]}]; each value may appear once",
                field=f"{field}[{i}]",
            )
        first[value] = i


def choice(value: int, allowed: Mapping[int, T], field: str, names: str) -> T:
    """The meaning of enum number ``value``; an unknown number is refused, never taken as the
    default. ``names``: the accepted names, for the message."""
    try:
        return allowed[value]
    except KeyError:
        raise InvalidArgument(f"{field} {value} is unknown; use {names}", field=field) from None


def check_metadata(value: object, field: str = "metadata") -> dict[str, Any]:
    """A document's metadata: a JSON object whose numbers are finite, nested at most
    :data:`MAX_METADATA_DEPTH` levels, at most :data:`MAX_METADATA_BYTES` as compact JSON."""
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field} must be a JSON object, got {_json_kind(value)}", field=field)
    _check_json(value, field, 1)
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise InvalidArgument(
            f"{field} is {size:,} bytes as JSON, more than the limit of {MAX_METADATA_BYTES:,}", field=field
        )
    return value


def _check_json(value: object, field: str, depth: int) -> None:
    if isinstance(value, dict | list):
        if depth > MAX_METADATA_DEPTH:
            raise InvalidArgument(
                f"{field} is nested more than {MAX_METADATA_DEPTH} levels deep (the limit)", field=field
            )
        children = value.values() if isinstance(value, dict) else value
        if isinstance(value, dict) and not all(isinstance(k, str) for k in value):
            raise InvalidArgument(f"{field} keys must be strings", field=field)
        for child in children:
            _check_json(child, field, depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgument(
            f"{field} holds the number {value!r}; JSON numbers must be finite (no NaN or Infinity)",
            field=field,
        )
    elif not (value is None or isinstance(value, str | bool | int | float)):
        raise InvalidArgument(f"{field} holds {_json_kind(value)}, which is not JSON", field=field)


def _json_kind(value: object) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    if value is None:
        return "null"
    return names.get(type(value), "a value of another kind")
