"""Scheduler logic with a deterministic fake encoder: budget, length sorting, priorities,
max-wait, the bounded queue and dropping the work of finished calls."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from server.batching import Scheduler, pad_batch, pick_batch
from server.embedder import Priority
from server.errors import Overloaded
from tests.fake_encoder import FakeEncoder, fake_vector, make_item


def scheduler(**kwargs: float) -> Scheduler:
    params = {"max_batch_tokens": 64, "max_wait_ms": 1.0, "max_queue_items": 100, **kwargs}
    return Scheduler(**params)  # type: ignore[arg-type]


async def test_batches_respect_the_padded_token_budget_and_group_similar_lengths() -> None:
    sched = scheduler(max_batch_tokens=64)
    lengths = [30, 4, 31, 5, 6, 29, 4, 32]
    items = [make_item(n) for n in lengths]
    sched.submit(items)
    fake = FakeEncoder(sched)
    runner = asyncio.create_task(fake.run())
    results = await asyncio.gather(*(i.future for i in items))
    sched.close()
    await runner
    for batch in fake.batches:
        assert max(i.length for i in batch) * len(batch) <= 64
    # short ones together, long ones together: no batch mixes a <=6 with a >=29 item
    for batch in fake.batches:
        assert len({i.length <= 6 for i in batch}) == 1
    for item, (vector, _, _) in zip(items, results, strict=True):
        np.testing.assert_array_equal(vector, fake_vector(item.ids))


def test_pick_batch_always_contains_the_oldest_item() -> None:
    async def run() -> None:
        window = [make_item(n) for n in (50, 3, 3, 3, 3, 3, 60)]
        batch = pick_batch(window, budget=100)
        assert window[0] in batch
        assert max(i.length for i in batch) * len(batch) <= 100

    asyncio.run(run())


async def test_interactive_items_go_before_queued_bulk_items() -> None:
    sched = scheduler(max_batch_tokens=32)  # two rows of width 16
    bulk = [make_item(8, Priority.BULK) for _ in range(6)]
    sched.submit(bulk)
    interactive = [make_item(8, Priority.INTERACTIVE) for _ in range(2)]
    sched.submit(interactive)
    fake = FakeEncoder(sched)
    runner = asyncio.create_task(fake.run())
    await asyncio.gather(*(i.future for i in bulk + interactive))
    sched.close()
    await runner
    assert fake.priorities()[0] == Priority.INTERACTIVE
    assert fake.priorities().count(Priority.INTERACTIVE) == 1  # both interactive items in one batch


async def test_client_bulk_items_go_after_interactive_ones_before_ingestions_and_wait_to_fill() -> None:
    sched = Scheduler(max_batch_tokens=32, max_wait_ms=600_000, max_queue_items=100)
    bulk = [make_item(16, Priority.BULK) for _ in range(2)]
    client = [make_item(16, Priority.CLIENT_BULK) for _ in range(3)]
    query = make_item(16, Priority.INTERACTIVE)
    sched.submit(bulk)
    sched.submit(client)
    sched.submit([query])
    assert await asyncio.wait_for(sched.next_batch(), timeout=60) == [query]
    # CLIENT_BULK before BULK, in full batches (budget 32 = two rows of 16 tokens): throughput work.
    assert await asyncio.wait_for(sched.next_batch(), timeout=60) == client[:2]
    # One CLIENT_BULK item left, short of the budget: with max_wait 10 minutes it waits to fill
    # (an interactive item would leave at once), and the bulk batch behind it waits too.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sched.next_batch(), timeout=0.3)
    sched.close()  # closing lets partial batches go: CLIENT_BULK's first
    assert await sched.next_batch() == client[2:]
    assert await sched.next_batch() == bulk


async def test_a_lone_item_leaves_after_max_wait() -> None:
    sched = scheduler(max_batch_tokens=10_000, max_wait_ms=20)
    item = make_item(5)
    sched.submit([item])
    fake = FakeEncoder(sched)
    runner = asyncio.create_task(fake.run())
    await asyncio.wait_for(item.future, timeout=5)
    sched.close()
    await runner
    assert len(fake.batches) == 1


async def test_queue_limit_raises_overloaded_naming_the_limit() -> None:
    sched = scheduler(max_queue_items=5)
    sched.submit([make_item(4) for _ in range(4)])
    with pytest.raises(Overloaded, match="max-queue-items=5"):
        sched.submit([make_item(4) for _ in range(2)])
    assert sched.depth() == 4  # all-or-nothing


async def test_items_of_finished_calls_are_dropped_not_computed() -> None:
    sched = scheduler(max_batch_tokens=8, max_wait_ms=0)
    gate = asyncio.Event()
    fake = FakeEncoder(sched, gate=gate)
    first = make_item(8)
    sched.submit([first])
    runner = asyncio.create_task(fake.run())
    abandoned = [make_item(8) for _ in range(10)]
    sched.submit(abandoned)
    while not fake.batches:  # the first batch is now held in flight by the gate
        await asyncio.sleep(0)
    for item in abandoned:
        item.future.cancel()  # what PoolEmbedder does when the call's deadline passes
    last = make_item(8)
    sched.submit([last])
    gate.set()
    await asyncio.wait_for(last.future, timeout=5)
    sched.close()
    await runner
    computed = [item for batch in fake.batches for item in batch]
    assert computed == [first, last]


def test_pad_batch_right_pads_with_the_pad_id() -> None:
    async def run() -> None:
        items = [make_item(3, token=5), make_item(1, token=9)]
        ids, mask, types = pad_batch(items, pad_id=0)
        assert ids.tolist() == [[5, 5, 5] + [0] * 13, [9] + [0] * 15]  # width: a multiple of 16
        assert mask.tolist() == [[1, 1, 1] + [0] * 13, [1] + [0] * 15]
        assert not types.any()

    asyncio.run(run())


async def test_requeued_items_go_back_to_the_front_in_order() -> None:
    sched = scheduler(max_batch_tokens=32, max_wait_ms=0)
    items = [make_item(8, token=t) for t in (1, 2, 3, 4)]
    sched.submit(items)
    first = await sched.next_batch()
    assert first == items[:2]
    first[1].future.cancel()  # its call ended meanwhile: not given back
    sched.requeue(first)
    assert await sched.next_batch() == [items[0], items[2]]


async def test_a_waiting_submission_is_queued_when_room_frees() -> None:
    depths: list[int] = []
    sched = Scheduler(
        max_batch_tokens=32,
        max_wait_ms=0,
        max_queue_items=4,
        on_depth=lambda queued, _: depths.append(queued),
    )
    first = [make_item(8) for _ in range(4)]
    sched.submit(first)
    waiting = [make_item(8, Priority.BULK) for _ in range(3)]
    admitted = asyncio.create_task(sched.submit_waiting(waiting))
    await asyncio.sleep(0)  # let it reach its wait
    assert not admitted.done() and sched.waiting() == 3
    with pytest.raises(Overloaded, match="max-queue-items=4"):
        sched.submit([make_item(8)])  # unary calls still fail fast
    assert await sched.next_batch() == first[:2]  # two leave: room for 2 of the 3, not enough
    assert not admitted.done()
    assert await sched.next_batch() == first[2:]
    await asyncio.wait_for(admitted, timeout=5)
    assert sched.depth() == 3 and depths[-1] == 3


async def test_waiting_interactive_submissions_go_before_waiting_bulk_ones() -> None:
    sched = scheduler(max_batch_tokens=8, max_wait_ms=0, max_queue_items=1)
    sched.submit([make_item(8)])
    bulk = make_item(8, Priority.BULK)
    interactive = make_item(8)
    bulk_wait = asyncio.create_task(sched.submit_waiting([bulk]))
    await asyncio.sleep(0)
    interactive_wait = asyncio.create_task(sched.submit_waiting([interactive]))
    await asyncio.sleep(0)
    await sched.next_batch()
    await asyncio.wait_for(interactive_wait, timeout=5)
    assert not bulk_wait.done() and await sched.next_batch() == [interactive]
    await asyncio.wait_for(bulk_wait, timeout=5)


async def test_discarded_items_leave_the_depth_at_once() -> None:
    depths: list[int] = []
    sched = Scheduler(
        max_batch_tokens=64,
        max_wait_ms=0,
        max_queue_items=100,
        on_depth=lambda queued, _: depths.append(queued),
    )
    kept, dropped = [make_item(4) for _ in range(3)], [make_item(4) for _ in range(5)]
    sched.submit(kept)
    sched.submit(dropped)
    assert depths[-1] == 8
    for item in dropped:
        item.future.cancel()
    sched.discard(dropped)
    assert sched.depth() == 3 and depths[-1] == 3  # without waiting for a worker to take anything
    assert await sched.next_batch() == kept


async def test_a_cancelled_wait_queues_nothing() -> None:
    sched = scheduler(max_queue_items=1)
    sched.submit([make_item(4)])
    wait = asyncio.create_task(sched.submit_waiting([make_item(4)]))
    await asyncio.sleep(0)
    wait.cancel()
    with pytest.raises(asyncio.CancelledError):
        await wait
    assert sched.depth() == 1 and sched.waiting() == 0


def test_an_item_is_always_computed_at_its_own_padded_width() -> None:
    """Batch composition never changes the width a row is computed at (see server.batching)."""

    async def run() -> None:
        window = [make_item(n) for n in (20, 3, 30, 17, 40, 32, 16)]
        assert pick_batch(window, budget=1000) == [window[0], window[2], window[3], window[5]]
        assert pick_batch(window[1:], budget=1000) == [window[1], window[6]]
        assert pick_batch(window, budget=64) == [window[0], window[2]]  # 2 rows of width 32
        ids, mask, _ = pad_batch(pick_batch(window, budget=1000), pad_id=0)
        assert ids.shape == (4, 32) and int(mask.sum()) == 20 + 30 + 17 + 32

    asyncio.run(run())
