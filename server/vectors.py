"""Per-request post-processing of pooled vectors: normalize, Matryoshka truncation, precision.

Order (same for every precision): take the model's vectors (L2-normalized when the model's own
pipeline normalizes), keep the first ``truncate_dim`` components, then L2-normalize when the
caller asked for normalized vectors (the default). With ``normalize=false`` the truncated
components are returned as the model made them.

int8 uses per-dimension ranges fixed per model (see :mod:`server.calibration`), never derived
from the batch, so a vector quantizes the same alone or in any batch:
q = round((x - min) / (max - min) * 255) - 128, clipped to [-128, 127].
ubinary: one bit per dimension (x > 0), numpy.packbits order.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from embedcore import truncate_dims
from server.embedder import TruncationDirection
from server.errors import InvalidArgument
from server.model import ModelSpec


class Precision(enum.Enum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    INT8 = "int8"
    UBINARY = "ubinary"


@dataclass(frozen=True)
class VectorOptions:
    """Validated options of one request (or stream item)."""

    truncate_dim: int  # Matryoshka target; the model's dimension means no truncation
    normalize: bool = True
    precision: Precision = Precision.FLOAT32
    prompt_name: str = ""
    truncate: bool = True  # cut over-long inputs (False: reject them)
    truncation_direction: TruncationDirection = "right"  # "left" keeps the end of an over-long input
    bulk: bool = False  # EmbedOptions.bulk: the workers' route (Priority.CLIENT_BULK)


def check_truncate_dim(value: int, spec: ModelSpec, field: str) -> int:
    """``value`` if it is a usable Matryoshka target for ``spec``'s model; else InvalidArgument."""
    if not 0 < value <= spec.dimension:
        raise InvalidArgument(
            f"{field} must be between 1 and the model's {spec.dimension} dimensions, got {value}",
            field=field,
        )
    return value


def check_prompt(prompt_name: str, spec: ModelSpec, field: str) -> str:
    """``prompt_name`` if the model has that prompt (or it is empty); else InvalidArgument."""
    try:
        spec.prompt_text(prompt_name)
    except KeyError as exc:
        raise InvalidArgument(str(exc.args[0]), field=field) from exc
    return prompt_name


def postprocess(vectors: np.ndarray, normalize: bool, truncate_dim: int) -> np.ndarray:
    """(n, dimension) model vectors -> (n, truncate_dim) float32: Matryoshka truncation, then
    the caller's normalization."""
    if normalize:
        return truncate_dims(vectors, truncate_dim)
    return np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)[:, :truncate_dim])


def quantize_int8(vectors: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    scale = np.where(hi > lo, hi - lo, 1.0).astype(np.float32)
    q = np.round((vectors - lo) / scale * 255.0) - 128.0
    return np.asarray(np.clip(q, -128, 127), dtype=np.int8)


def to_bytes(
    vectors: np.ndarray, precision: Precision, ranges: tuple[np.ndarray, np.ndarray] | None = None
) -> list[bytes]:
    """One little-endian byte string per row in ``precision`` (int8 needs calibration ranges)."""
    if precision is Precision.FLOAT16:
        data = vectors.astype("<f2")
    elif precision is Precision.INT8:
        if ranges is None:
            raise ValueError("int8 needs calibration ranges")
        data = quantize_int8(vectors, *ranges)
    elif precision is Precision.UBINARY:
        data = np.packbits(vectors > 0, axis=-1)
    else:
        data = vectors.astype("<f4")
    return [bytes(row.tobytes()) for row in data]
