"""Interactive work reaches a model within a bounded time whatever bulk work is queued.

Scheduler logic with the deterministic fake encoder; the interactive lane with the real pool
(real model, real worker process, real ONNX Runtime); one end-to-end check through gRPC that an
interactive vector matches what Ingest stored for the same text.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator

import numpy as np

from server.batching import Scheduler
from server.embedder import Priority
from tests._collections import ingest, scifact_docs, scifact_queries, search
from tests.fake_encoder import make_item


async def test_interactive_goes_first_and_bulk_batches_shrink_while_interactive_work_is_about() -> None:
    sched = Scheduler(max_batch_tokens=64, max_wait_ms=0, max_queue_items=100, contended_batch_tokens=16)
    bulk = [make_item(8, Priority.BULK) for _ in range(20)]  # width 16 each
    sched.submit(bulk)
    first = await sched.next_batch()
    assert first is not None and len(first) == 4  # no interactive work yet: the whole budget
    query = make_item(5, Priority.INTERACTIVE)
    sched.submit([query])
    second = await sched.next_batch()
    assert second == [query]  # before the 16 bulk items still queued
    third = await sched.next_batch()
    assert third is not None and third[0].priority is Priority.BULK
    assert len(third) == 1  # cut to contended_batch_tokens: the next query waits one small batch
    assert sched.depth(Priority.BULK) == 15


async def test_an_interactive_item_leaves_at_once_while_bulk_waits_to_fill() -> None:
    sched = Scheduler(max_batch_tokens=10_000, max_wait_ms=600_000, max_queue_items=100)
    query = make_item(5, Priority.INTERACTIVE)
    sched.submit([query])
    # max_wait is 10 minutes: only "interactive never waits to fill" lets this return.
    assert await asyncio.wait_for(sched.next_batch(), timeout=60) == [query]


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The process is frozen (SIGSTOP) inside the block: whatever it holds stays in flight."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_the_lane_answers_queries_while_every_worker_is_stuck_in_bulk_work(spec) -> None:  # type: ignore[no-untyped-def]
    from server.pool import EncoderPool
    from server.settings import Settings

    pool = EncoderPool(Settings.from_env(workers=1, compile="off", interactive_lane="auto"), spec)
    await pool.start()
    try:
        assert pool.lane is not None  # CPU workers: the lane is on and agreed with them at start-up
        queries = scifact_queries(6)
        docs = [text for _, text, _ in scifact_docs(40)]
        worker_pid = pool.workers[0].pid
        assert worker_pid is not None
        with stopped(worker_pid):
            bulk = asyncio.create_task(pool.encode(docs, priority=Priority.BULK))
            # The only worker is frozen with bulk work queued or in flight: without the lane this
            # call would wait for it (the timeout only keeps a regression from hanging the suite).
            fast = await asyncio.wait_for(pool.encode(queries, priority=Priority.INTERACTIVE), timeout=60)
            assert not bulk.done()
        assert fast.vectors.shape == (len(queries), spec.dimension)
        assert fast.inference_ns > 0 and fast.queue_ns >= 0
        assert len((await bulk).vectors) == len(docs)
        # The workers' vectors for the same texts (BULK never takes the lane): cosine >= 0.999.
        stored = (await pool.encode(queries, priority=Priority.BULK)).vectors
        assert float((fast.vectors * stored).sum(axis=1).min()) >= 0.999
        # A client's bulk request (CLIENT_BULK) goes to the workers, not the lane: with the worker
        # frozen it waits while a query still passes; then it has the workers' vectors, as stored.
        with stopped(worker_pid):
            deep = asyncio.create_task(pool.encode(queries, priority=Priority.CLIENT_BULK, wait=True))
            await asyncio.wait_for(pool.encode(queries[:1], priority=Priority.INTERACTIVE), timeout=60)
            assert not deep.done()
        assert float(((await deep).vectors * stored).sum(axis=1).min()) >= 0.99999
    finally:
        await pool.close()


def test_search_query_vectors_match_the_stored_ones(live_server) -> None:  # type: ignore[no-untyped-def]
    """Ingest stores the workers' vectors; a Search query (interactive) is embedded by the lane:
    the exact score of a document searched by its own text is their cosine."""
    collection = "latency-lane-cosine"
    docs = scifact_docs(5, skip=500)
    acks = ingest(live_server.address, collection, docs)
    assert not any(a.HasField("error") for a in acks)
    for doc_id, text, _ in docs:
        hit = search(live_server.address, collection, text, k=1, exact=True, prompt_name="").hits[0]
        assert hit.id == doc_id and hit.score >= 0.999


async def test_the_lane_runs_its_one_thread_session_unless_a_query_is_its_only_work() -> None:
    """With bulk work running the wide session's spinning threads would take the workers' CPU,
    and with items queued behind a run the runners already fill the cores (README Interactive
    latency): the lane's runs go to its one-thread session then."""
    import asyncio as aio

    import numpy as np

    from server.batching import Item
    from server.pool.lane import InteractiveLane

    class Recorder:
        def __init__(self) -> None:
            self.calls = 0

        def raw(self, ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
            self.calls += 1
            return np.zeros((len(ids), 4), dtype=np.float32)

    wide, narrow, bulk = Recorder(), Recorder(), [False]
    lane = InteractiveLane(
        wide,  # type: ignore[arg-type]
        0,
        max_tokens=256,
        threads=1,
        max_queue_items=8,
        op_threads=2,
        narrow=narrow,  # type: ignore[arg-type]
        contended=lambda: bulk[0],
    )
    row = (np.ones((1, 3), dtype=np.int64),) * 3
    lane._forward(*row)
    assert (wide.calls, narrow.calls) == (1, 0)
    bulk[0] = True
    lane._forward(*row)
    assert (wide.calls, narrow.calls) == (1, 1)
    bulk[0] = False
    waiting = Item(ids=np.ones(3, dtype=np.int64), priority=Priority.INTERACTIVE, future=aio.Future())
    lane.scheduler.submit([waiting])
    lane._forward(*row)
    assert (wide.calls, narrow.calls) == (1, 2)
