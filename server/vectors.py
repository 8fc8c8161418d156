"""Per-request post-processing of pooled vectors: normalize, Matryoshka dims, precision, packing.

Order (same for every precision): take the model's vectors (L2-normalized when the model's own
pipeline normalizes), keep the first ``dimensions`` components, then L2-normalize when the caller
asked for normalized vectors (the default). With ``normalize=false`` the truncated components are
returned as the model made them.

int8 uses per-dimension ranges fixed per model (see :mod:`server.calibration`), never derived
from the batch, so a vector quantizes the same alone or in any batch:
q = round((x - min) / (max - min) * 255) - 128, clipped to [-128, 127].
ubinary: one bit per dimension (x > 0), numpy.packbits order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedcore import truncate_dims
from protos.embedding.v1 import embedding_pb2 as pb
from server.errors import InvalidArgument
from server.model import ModelSpec

PRECISIONS = {
    pb.PRECISION_UNSPECIFIED: pb.PRECISION_FLOAT32,
    pb.PRECISION_FLOAT32: pb.PRECISION_FLOAT32,
    pb.PRECISION_FLOAT16: pb.PRECISION_FLOAT16,
    pb.PRECISION_INT8: pb.PRECISION_INT8,
    pb.PRECISION_UBINARY: pb.PRECISION_UBINARY,
}


@dataclass(frozen=True)
class VectorOptions:
    """Validated options of one request (or stream item)."""

    normalize: bool = True
    dimensions: int = 0  # resolved: never 0 after :func:`resolve_options`
    precision: int = pb.PRECISION_FLOAT32
    prompt_name: str = ""
    truncate: bool = True


def check_dimensions(dimensions: int, spec: ModelSpec, field: str = "options.dimensions") -> int:
    if dimensions <= 0 or dimensions > spec.dimensions:
        raise InvalidArgument(
            f"{field} must be between 1 and the model's {spec.dimensions} dimensions, got {dimensions}",
            field=field,
        )
    return dimensions


def check_prompt(prompt_name: str, spec: ModelSpec, field: str = "options.prompt_name") -> str:
    try:
        spec.prompt_text(prompt_name)
    except KeyError as exc:
        raise InvalidArgument(str(exc.args[0]), field=field) from exc
    return prompt_name


def resolve_options(options: pb.EmbedOptions, spec: ModelSpec) -> VectorOptions:
    """EmbedOptions -> VectorOptions with the documented defaults; InvalidArgument naming the field."""
    if options.precision not in PRECISIONS:
        raise InvalidArgument(
            f"options.precision {options.precision} is unknown; use FLOAT32, FLOAT16, INT8 or UBINARY",
            field="options.precision",
        )
    dims = check_dimensions(options.dimensions, spec) if options.HasField("dimensions") else spec.dimensions
    return VectorOptions(
        normalize=options.normalize if options.HasField("normalize") else True,
        dimensions=dims,
        precision=PRECISIONS[options.precision],
        prompt_name=check_prompt(options.prompt_name, spec),
        truncate=options.truncate if options.HasField("truncate") else True,
    )


def shape(vectors: np.ndarray, normalize: bool, dimensions: int) -> np.ndarray:
    """Matryoshka truncation and the caller's normalization, float32."""
    if normalize:
        return truncate_dims(vectors, dimensions)
    return np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)[:, :dimensions])


def quantize_int8(vectors: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    scale = np.where(hi > lo, hi - lo, 1.0).astype(np.float32)
    q = np.round((vectors - lo) / scale * 255.0) - 128.0
    return np.asarray(np.clip(q, -128, 127), dtype=np.int8)


def encode_bytes(
    vectors: np.ndarray, precision: int, ranges: tuple[np.ndarray, np.ndarray] | None = None
) -> list[bytes]:
    """One little-endian byte string per row in ``precision``."""
    if precision == pb.PRECISION_FLOAT16:
        data = vectors.astype("<f2")
    elif precision == pb.PRECISION_INT8:
        if ranges is None:
            raise ValueError("int8 needs calibration ranges")
        data = quantize_int8(vectors, *ranges)
    elif precision == pb.PRECISION_UBINARY:
        data = np.packbits(vectors > 0, axis=-1)
    else:
        data = vectors.astype("<f4")
    return [bytes(row.tobytes()) for row in data]


def to_protos(
    vectors: np.ndarray, options: VectorOptions, ranges: tuple[np.ndarray, np.ndarray] | None = None
) -> list[pb.Vector]:
    """Model vectors -> one ``Vector`` message per row, as ``options`` ask."""
    shaped = shape(vectors, options.normalize, options.dimensions)
    return [
        pb.Vector(data=data, dims=options.dimensions, precision=options.precision)  # type: ignore[arg-type]
        for data in encode_bytes(shaped, options.precision, ranges)
    ]
