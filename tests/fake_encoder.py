"""A deterministic stand-in for the encoder workers, ONLY for unit tests of the batching logic.

It drains a :class:`server.batching.Scheduler` like a pool dispatcher does and answers each item
with a vector computed from its token ids, recording every batch it saw. End-to-end tests use
the real model.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from server.batching import Item, Scheduler
from server.embedder import Priority


def fake_vector(ids: np.ndarray) -> np.ndarray:
    return np.array([float(ids.sum()), float(ids.shape[0]), 1.0], dtype=np.float32)


@dataclass
class FakeEncoder:
    scheduler: Scheduler
    batches: list[list[Item]] = field(default_factory=list)
    gate: asyncio.Event | None = None  # when set, each batch waits for it (to hold work in flight)

    async def run(self) -> None:
        while (batch := await self.scheduler.next_batch()) is not None:
            self.batches.append(batch)
            if self.gate is not None:
                await self.gate.wait()
            for item in batch:
                if not item.future.done():
                    item.future.set_result((fake_vector(item.ids), 0, 0))

    def priorities(self) -> list[Priority]:
        return [batch[0].priority for batch in self.batches]


def make_item(length: int, priority: Priority = Priority.INTERACTIVE, token: int = 7) -> Item:
    future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    return Item(ids=np.full(length, token, dtype=np.int64), priority=priority, future=future)
