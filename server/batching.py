"""Dynamic batching: items (one tokenized input each) in, model batches out.

- Two priority classes: a worker always takes INTERACTIVE items (Embed, EmbedStream, Search
  queries) before BULK ones (ingestion), so queries never wait behind a bulk backlog.
- A batch is bounded by a padded-token budget (rows x longest row <= max_batch_tokens).
- Within a window at the head of a queue, items are sorted by length and the batch is the run of
  similar lengths around the oldest item: little padding, and the oldest item is always taken
  (no starvation).
- A batch leaves when it fills the budget or its oldest item has waited max_wait_ms.
- The queue is bounded: :meth:`Scheduler.submit` raises Overloaded naming the limit.
- Items whose call is gone (future cancelled: deadline, client cancel) are dropped, not computed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.embedder import Priority
from server.errors import Overloaded


@dataclass(eq=False)
class Item:
    """One input waiting to be embedded; its future gets (vector row, queue_ns, inference_ns)."""

    ids: np.ndarray  # token ids, truncated, special tokens included
    priority: Priority
    future: asyncio.Future[Any]
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])


def padded_cost(lengths: list[int]) -> int:
    return max(lengths, default=0) * len(lengths)


def pick_batch(window: list[Item], budget: int) -> list[Item]:
    """The run of similar lengths around window[0] (the oldest) that fits ``budget`` padded tokens."""
    order = sorted(range(len(window)), key=lambda i: (window[i].length, i))
    pos = order.index(0)
    lo = hi = pos  # inclusive run [lo, hi] in sorted order; its max length is the length at hi
    while True:
        longest = window[order[hi]].length
        count = hi - lo + 1
        if lo > 0 and longest * (count + 1) <= budget:
            lo -= 1  # a shorter neighbour: padding cost unchanged
        elif hi + 1 < len(order) and window[order[hi + 1]].length * (count + 1) <= budget:
            hi += 1
        else:
            break
    return [window[i] for i in order[lo : hi + 1]]


class Scheduler:
    def __init__(
        self, *, max_batch_tokens: int, max_wait_ms: float, max_queue_items: int, window_items: int = 1024
    ) -> None:
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue_items = max_queue_items
        self.window_items = window_items
        self._queues: dict[Priority, deque[Item]] = {p: deque() for p in Priority}
        self._tokens: dict[Priority, int] = {p: 0 for p in Priority}
        self._changed = asyncio.Event()
        self._closed = False

    def depth(self, priority: Priority | None = None) -> int:
        if priority is not None:
            return len(self._queues[priority])
        return sum(len(q) for q in self._queues.values())

    def submit(self, items: list[Item]) -> None:
        """Queue ``items`` (all or none); Overloaded when the global queue limit would be passed."""
        if self._closed:
            from server.errors import NotReady

            raise NotReady("the server is shutting down")
        if self.depth() + len(items) > self.max_queue_items:
            raise Overloaded(
                f"encoder queue is full: {self.depth()} items waiting, limit --max-queue-items="
                f"{self.max_queue_items}; retry later or send fewer inputs"
            )
        for item in items:
            self._queues[item.priority].append(item)
            self._tokens[item.priority] += item.length
        self._changed.set()

    def requeue(self, items: list[Item]) -> None:
        """Put items taken for a batch that could not be sent back at the front of their queue."""
        for item in reversed(items):
            if not item.future.done():
                self._queues[item.priority].appendleft(item)
                self._tokens[item.priority] += item.length
        self._changed.set()

    def close(self) -> None:
        self._closed = True
        self._changed.set()

    def _drop_dead_head(self, priority: Priority) -> None:
        queue = self._queues[priority]
        while queue and queue[0].future.done():
            self._tokens[priority] -= queue.popleft().length

    def _ready_queue(self) -> Priority | None:
        for priority in Priority:  # INTERACTIVE first
            self._drop_dead_head(priority)
            if self._queues[priority]:
                return priority
        return None

    async def next_batch(self) -> list[Item] | None:
        """Wait for work; return one batch (never empty), or None once closed and empty."""
        while True:
            priority = self._ready_queue()
            if priority is None:
                if self._closed:
                    return None
                self._changed.clear()
                await self._changed.wait()
                continue
            head = self._queues[priority][0]
            waited = (time.perf_counter_ns() - head.enqueued_ns) / 1e9
            full = self._tokens[priority] >= self.max_batch_tokens
            if not full and waited < self.max_wait_s and not self._closed:
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), self.max_wait_s - waited)
                continue
            return self._take(priority)

    def _take(self, priority: Priority) -> list[Item]:
        queue = self._queues[priority]
        window: list[Item] = []
        kept: list[Item] = []
        while queue and len(window) < self.window_items:
            item = queue.popleft()
            self._tokens[priority] -= item.length
            if not item.future.done():  # a finished call's items are dropped here
                window.append(item)
        batch = pick_batch(window, self.max_batch_tokens)
        chosen = set(map(id, batch))
        kept = [item for item in window if id(item) not in chosen]
        for item in reversed(kept):  # back to the front, in their original order
            queue.appendleft(item)
            self._tokens[priority] += item.length
        return batch


def pad_batch(items: list[Item], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """input_ids, attention_mask, token_type_ids (int64, right-padded to the longest item)."""
    width = max(item.length for item in items)
    ids = np.full((len(items), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(items), width), dtype=np.int64)
    for row, item in enumerate(items):
        ids[row, : item.length] = item.ids
        mask[row, : item.length] = 1
    return ids, mask, np.zeros_like(ids)
