"""Per-request post-processing: Matryoshka dims, normalization, precisions, fixed int8 ranges."""

from __future__ import annotations

import numpy as np
import pytest

from protos.embedding.v1 import embedding_pb2 as pb
from server.calibration import Calibration
from server.errors import InvalidArgument
from server.model import ModelSpec
from server.servicers._convert import to_protos, vector_options
from server.vectors import Precision, VectorOptions

RNG = np.random.default_rng(42)


def unit_rows(n: int, dims: int = 384) -> np.ndarray:
    x = RNG.standard_normal((n, dims)).astype(np.float32)
    return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def test_defaults_are_full_dims_float32_normalized(spec: ModelSpec) -> None:
    opts = vector_options(pb.EmbedOptions(), spec)
    assert opts == VectorOptions(truncate_dim=384, normalize=True, precision=Precision.FLOAT32, truncate=True)


@pytest.mark.parametrize("dims", [0, 385, 10_000])
def test_dimensions_out_of_range_is_invalid_argument(spec: ModelSpec, dims: int) -> None:
    with pytest.raises(InvalidArgument, match="between 1 and the model's 384") as err:
        vector_options(pb.EmbedOptions(dimensions=dims), spec)
    assert err.value.field == "options.dimensions"


def test_unknown_precision_and_prompt_are_invalid_argument(spec: ModelSpec) -> None:
    with pytest.raises(InvalidArgument) as err:
        vector_options(pb.EmbedOptions(precision=99), spec)  # type: ignore[arg-type]
    assert err.value.field == "options.precision"
    with pytest.raises(InvalidArgument, match=r"unknown options\.prompt_name 'query'") as err:
        vector_options(pb.EmbedOptions(prompt_name="query"), spec)
    assert err.value.field == "options.prompt_name"


def test_matryoshka_truncates_then_renormalizes() -> None:
    x = unit_rows(3)
    (v, *_) = to_protos(x, VectorOptions(truncate_dim=64))
    got = np.frombuffer(v.data, "<f4")
    assert v.dims == 64 and got.shape == (64,)
    np.testing.assert_allclose(got, x[0, :64] / np.linalg.norm(x[0, :64]), rtol=1e-6)
    (raw, *_) = to_protos(x, VectorOptions(truncate_dim=64, normalize=False))
    np.testing.assert_allclose(np.frombuffer(raw.data, "<f4"), x[0, :64], rtol=1e-6)


def test_byte_lengths_per_precision() -> None:
    x = unit_rows(2)
    cal = Calibration(unit_rows(50))
    for precision, wire, size in (
        (Precision.FLOAT32, pb.PRECISION_FLOAT32, 100 * 4),
        (Precision.FLOAT16, pb.PRECISION_FLOAT16, 100 * 2),
        (Precision.INT8, pb.PRECISION_INT8, 100),
        (Precision.UBINARY, pb.PRECISION_UBINARY, 13),
    ):
        opts = VectorOptions(truncate_dim=100, precision=precision)
        (v, _) = to_protos(x, opts, cal.ranges(True, 100))
        assert len(v.data) == size and v.precision == wire


def test_ubinary_is_numpy_packbits_of_positive_components() -> None:
    x = unit_rows(1)
    (v,) = to_protos(x, VectorOptions(truncate_dim=384, precision=Precision.UBINARY))
    assert v.data == np.packbits(x[0] > 0).tobytes()


def test_int8_of_one_vector_equals_its_row_in_any_batch() -> None:
    cal = Calibration(unit_rows(64))
    batch = unit_rows(20)
    opts = VectorOptions(truncate_dim=384, precision=Precision.INT8)
    ranges = cal.ranges(True, 384)
    together = [v.data for v in to_protos(batch, opts, ranges)]
    alone = [to_protos(batch[i : i + 1], opts, ranges)[0].data for i in range(20)]
    assert together == alone
    q = np.frombuffer(together[0], np.int8).astype(np.float32)
    lo, hi = ranges
    approx = (q + 128) / 255 * (hi - lo) + lo
    assert np.corrcoef(approx, np.clip(batch[0], lo, hi))[0, 1] > 0.99
