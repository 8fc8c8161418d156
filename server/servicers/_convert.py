"""Protobuf <-> domain values shared by the servicers (the only layer that sees both)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from google.protobuf import struct_pb2

from protos.embedding.v1 import embedding_pb2 as pb
from server.calibration import Calibration
from server.embedder import EncodeResult, TruncationDirection
from server.model import ModelSpec
from server.servicers._status import status_for
from server.validation import check_prompt_name, choice
from server.vectors import Precision, VectorOptions, check_truncate_dim, postprocess, to_bytes

PRECISION_IN: dict[int, Precision] = {
    pb.PRECISION_UNSPECIFIED: Precision.FLOAT32,
    pb.PRECISION_FLOAT32: Precision.FLOAT32,
    pb.PRECISION_FLOAT16: Precision.FLOAT16,
    pb.PRECISION_INT8: Precision.INT8,
    pb.PRECISION_UBINARY: Precision.UBINARY,
}
PRECISION_OUT: dict[Precision, pb.Precision] = {
    Precision.FLOAT32: pb.PRECISION_FLOAT32,
    Precision.FLOAT16: pb.PRECISION_FLOAT16,
    Precision.INT8: pb.PRECISION_INT8,
    Precision.UBINARY: pb.PRECISION_UBINARY,
}


def precision_of(value: int, field: str) -> Precision:
    """The Precision enum value, or InvalidArgument naming the field (unknown numbers are not
    silently taken as the default)."""
    return choice(value, PRECISION_IN, field, "FLOAT32, FLOAT16, INT8 or UBINARY")


def vector_options(options: pb.EmbedOptions, spec: ModelSpec) -> VectorOptions:
    """EmbedOptions -> VectorOptions with the documented defaults; InvalidArgument naming the field."""
    return VectorOptions(
        truncate_dim=(
            check_truncate_dim(options.dimensions, spec, "options.dimensions")
            if options.HasField("dimensions")
            else spec.dimension
        ),
        normalize=options.normalize if options.HasField("normalize") else True,
        precision=precision_of(options.precision, "options.precision"),
        prompt_name=check_prompt_name(options.prompt_name, spec.prompts, "options.prompt_name"),
        truncate=options.truncate if options.HasField("truncate") else True,
        truncation_direction=direction_of(options.truncation_direction, "options.truncation_direction"),
        bulk=options.bulk,
    )


_DIRECTIONS: dict[int, TruncationDirection] = {
    pb.TRUNCATION_DIRECTION_UNSPECIFIED: "right",
    pb.TRUNCATION_DIRECTION_RIGHT: "right",
    pb.TRUNCATION_DIRECTION_LEFT: "left",
}


def direction_of(value: int, field: str) -> TruncationDirection:
    """The TruncationDirection enum value; an unknown number is refused, never taken as RIGHT."""
    return choice(value, _DIRECTIONS, field, "RIGHT (1) or LEFT (2)")


def int8_ranges(calibration: Calibration, options: VectorOptions) -> tuple[np.ndarray, np.ndarray] | None:
    if options.precision is not Precision.INT8:
        return None
    return calibration.ranges(options.normalize, options.truncate_dim)


def to_protos(
    vectors: np.ndarray, options: VectorOptions, ranges: tuple[np.ndarray, np.ndarray] | None = None
) -> list[pb.Vector]:
    """Model vectors -> one ``Vector`` message per row, as ``options`` ask."""
    return pack(postprocess(vectors, options.normalize, options.truncate_dim), options, ranges)


def pack(
    shaped: np.ndarray, options: VectorOptions, ranges: tuple[np.ndarray, np.ndarray] | None = None
) -> list[pb.Vector]:
    """Already truncated and normalized float32 (n, truncate_dim) vectors -> one ``Vector``
    message per row in ``options.precision``."""
    precision = PRECISION_OUT[options.precision]
    return [
        pb.Vector(data=data, dims=options.truncate_dim, precision=precision)
        for data in to_bytes(shaped, options.precision, ranges)
    ]


def timing(result: EncodeResult, characters: int, started_ns: int) -> pb.Timing:
    return pb.Timing(
        queue_ns=result.queue_ns,
        tokenization_ns=result.tokenization_ns,
        inference_ns=result.inference_ns,
        total_ns=time.perf_counter_ns() - started_ns,
        tokens=sum(result.token_counts),
        characters=characters,
        cache_hits=result.cache_hits,
    )


def plain_struct(message: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain Python values, NaN and Infinity included (json_format refuses those
    with a ValueError): checking them is server.validation.check_metadata's job."""
    return {key: _plain_value(value) for key, value in message.fields.items()}


def _plain_value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return plain_struct(value.struct_value)
    if kind == "list_value":
        return [_plain_value(v) for v in value.list_value.values]
    if kind in ("number_value", "string_value", "bool_value"):
        return getattr(value, kind)
    return None  # null_value, or no kind set


def struct(data: dict[str, Any] | None) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    if data:
        out.update(data)
    return out


def item_error(exc: BaseException) -> pb.ItemError:
    """An in-band error: the status the item would have ended a unary call with."""
    code, message = status_for(exc)
    return pb.ItemError(code=code.value[0], message=message, field=getattr(exc, "field", ""))
