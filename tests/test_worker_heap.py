"""Encoder workers hand freed heap memory back to the OS every --worker-trim-tokens tokens."""

from __future__ import annotations

import pytest

from server.memory import find_malloc_trim
from server.pool.worker import HeapTrimmer
from server.settings import Settings


class FakeTrim:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, pad: int) -> int:
        self.calls.append(pad)
        return 1


def test_trims_once_per_budget_of_padded_tokens() -> None:
    fake = FakeTrim()
    calls = fake.calls
    heap = HeapTrimmer(1000, trim=fake)
    assert [heap.computed(400) for _ in range(6)] == [False, False, True, False, False, True]
    assert calls == [0, 0]
    heap.trim()  # explicit trims (after warm-up) restart the count
    assert not heap.computed(999)
    assert heap.computed(1)
    assert calls == [0, 0, 0, 0]  # 2 counted, 1 explicit, 1 counted
    assert not heap.owed
    heap.computed(5)
    assert heap.owed  # the worker trims this when it goes idle


def test_zero_never_trims() -> None:
    fake = FakeTrim()
    calls = fake.calls
    heap = HeapTrimmer(0, trim=fake)
    heap.trim()
    assert not heap.computed(10**9)
    assert not heap.owed
    assert calls == []


def test_glibc_malloc_trim_is_found() -> None:  # the server runs on glibc Linux (deploy/)
    trim = find_malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1)


def test_setting_default_and_validation() -> None:
    assert Settings().worker_trim_tokens > 0
    assert Settings.from_env({"EMBED_WORKER_TRIM_TOKENS": "0"}).worker_trim_tokens == 0
    with pytest.raises(ValueError, match="--worker-trim-tokens"):
        Settings.from_env({}, worker_trim_tokens=-1)
