"""The ordered, bounded stream pipeline behind EmbedStream and TEI's EmbedStream (in-process)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from server.servicers._rpc import ordered_pipeline


async def test_reads_at_most_max_in_flight_ahead_and_keeps_order() -> None:
    read: list[int] = []
    release = asyncio.Event()

    async def requests() -> AsyncIterator[int]:
        for i in range(100):
            read.append(i)
            yield i

    async def handle(i: int) -> int:
        if i == 0:
            await release.wait()  # the first item is slow: the window fills behind it
        else:
            await asyncio.sleep(0)
        return i * 10

    out = ordered_pipeline(requests(), handle, max_in_flight=8)

    async def next_result() -> int:
        return await anext(out)

    first = asyncio.create_task(next_result())
    for _ in range(50):  # let the reader run as far as it can
        await asyncio.sleep(0)
    assert len(read) == 9  # 8 in flight + 1 read and waiting for a slot: the client's send blocks
    release.set()
    results = [await first] + [r async for r in out]
    assert results == [i * 10 for i in range(100)]


async def test_an_error_propagates_and_cancels_the_rest() -> None:
    started: list[int] = []

    async def requests() -> AsyncIterator[int]:
        for i in range(10):
            yield i

    async def handle(i: int) -> int:
        started.append(i)
        if i == 2:
            raise ValueError("bad item")
        await asyncio.sleep(0)
        return i

    got = []
    with pytest.raises(ValueError, match="bad item"):
        async for r in ordered_pipeline(requests(), handle, max_in_flight=4):
            got.append(r)
    assert got == [0, 1]


async def test_reads_at_most_max_bytes_ahead_and_lets_one_large_item_in_alone() -> None:
    """256 items of 10 MB would be 2.5 GB in flight: the window is bounded in bytes too."""
    sizes = [4, 4, 4, 20, 4, 4]  # the 20-byte item is over the whole budget of 10
    read: list[int] = []
    release = asyncio.Event()

    async def requests() -> AsyncIterator[int]:
        for i in range(len(sizes)):
            read.append(i)
            yield i

    async def handle(i: int) -> int:
        if i == 0:
            await release.wait()
        return i

    out = ordered_pipeline(requests(), handle, max_in_flight=100, max_bytes=10, size=lambda i: sizes[i])

    async def next_result() -> int:
        return await anext(out)

    first = asyncio.create_task(next_result())
    for _ in range(50):
        await asyncio.sleep(0)
    assert read == [0, 1, 2]  # 4 + 4 in flight; the third (4 more) waits for room
    release.set()
    assert [await first] + [r async for r in out] == list(range(len(sizes)))
