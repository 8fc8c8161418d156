"""Dynamic batching: items (one tokenized input each) in, model batches out.

- Three priority classes: a worker always takes INTERACTIVE items (Embed, EmbedStream, Search
  queries) before CLIENT_BULK ones (requests with ``EmbedOptions.bulk``) and those before BULK
  ones (ingestion), so queries never wait behind a bulk backlog.
- Batch composition never changes a vector: an item is always computed at the same padded
  width, its length rounded up to :data:`PAD_MULTIPLE` tokens, and a batch holds items of one
  width only. Measured here (torch bfloat16, AVX2 CPU), the same row gave different vectors at
  different padded widths (4 tokens at width 4 vs 8: cosine 0.99994, int8 codes 2 steps apart;
  200 tokens at width 208 vs 256: 3 sign bits flipped), and identical ones at one width
  whatever the number of rows (1 to 16).
- A batch is bounded by a padded-token budget (rows x width <= max_batch_tokens): the oldest
  item of a queue and the next oldest of its width (little padding, and the oldest item is
  always taken: no starvation).
- A CLIENT_BULK or BULK batch leaves when it fills the budget or its oldest item has waited
  max_wait_ms; an INTERACTIVE one leaves as soon as a worker asks (waiting to fill a batch only
  adds latency: while every worker is busy, interactive items gather by themselves).
- While interactive work is in the queue or was submitted within the last
  :data:`CONTENDED_WINDOW_S`, a BULK batch holds at most ``contended_batch_tokens``: a worker
  that took bulk work comes back for the next query after a small batch, not a whole
  ``max_batch_tokens`` one (measured here: ~2 s for 4,096 tokens on a loaded 2-core host).
- The queue is bounded (max_queue_items). :meth:`Scheduler.submit` fails fast with Overloaded
  naming the limit (unary calls); :meth:`Scheduler.submit_waiting` waits for room instead
  (streams and bulk work: the caller stops reading, flow control holds its client). Room goes
  to waiting INTERACTIVE submissions first, then BULK, first come first served.
- Items whose call is gone (deadline, client cancel, client died) leave the queue at once
  (:meth:`Scheduler.discard`), so the depth reported to ``on_depth`` is always the live work.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.embedder import Priority
from server.errors import NotReady, Overloaded


@dataclass(eq=False)
class Item:
    """One input waiting to be embedded; its future gets (vector row, queue_ns, inference_ns)."""

    ids: np.ndarray  # token ids, truncated, special tokens included
    priority: Priority
    future: asyncio.Future[Any]
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)
    queued: bool = False  # counted in the scheduler's depth (between submit and take/discard)

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])

    @property
    def width(self) -> int:
        """The padded width this item is always computed at."""
        return padded_width(self.length)


# Interactive calls arrive one after another (a client waits for each answer): a gap shorter
# than this between two of them still counts as contended, so no full-size bulk batch slips in.
CONTENDED_WINDOW_S = 1.0

# 16: one AVX-512 register of float32; every width a multiple of it keeps kernels on their
# vector paths. At most 15 padded tokens per row.
PAD_MULTIPLE = 16


def padded_width(length: int) -> int:
    return -(-length // PAD_MULTIPLE) * PAD_MULTIPLE


def padded_cost(lengths: list[int]) -> int:
    return padded_width(max(lengths, default=0)) * len(lengths)


def pick_batch(window: list[Item], budget: int) -> list[Item]:
    """window[0] (the oldest) and the next oldest items of its width, as many as fit ``budget``
    padded tokens (window[0] alone when even it does not)."""
    width = window[0].width
    return [item for item in window if item.width == width][: max(1, budget // width)]


@dataclass(eq=False)
class _Waiter:
    items: list[Item]
    admitted: asyncio.Future[None]


class Scheduler:
    def __init__(
        self,
        *,
        max_batch_tokens: int,
        max_wait_ms: float,
        max_queue_items: int,
        window_items: int = 1024,
        on_depth: Callable[[int, int], None] | None = None,
        contended_batch_tokens: int | None = None,
    ) -> None:
        self.max_batch_tokens = max_batch_tokens
        self.contended_batch_tokens = min(contended_batch_tokens or max_batch_tokens, max_batch_tokens)
        self._last_interactive_ns = -(1 << 62)  # never
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue_items = max_queue_items
        self.window_items = window_items
        self._on_depth = on_depth
        # Discarded items stay in the deques until they reach the head (removing from the middle
        # of a deque is O(n)); the counts below cover queued items only.
        self._queues: dict[Priority, deque[Item]] = {p: deque() for p in Priority}
        self._live: dict[Priority, int] = {p: 0 for p in Priority}
        self._tokens: dict[Priority, int] = {p: 0 for p in Priority}
        self._waiters: dict[Priority, deque[_Waiter]] = {p: deque() for p in Priority}
        self._changed = asyncio.Event()
        self._closed = False

    # --- depth ---------------------------------------------------------------------------------

    def depth(self, priority: Priority | None = None) -> int:
        """Items waiting for a worker (discarded ones excluded)."""
        if priority is not None:
            return self._live[priority]
        return sum(self._live.values())

    def waiting(self) -> int:
        """Items waiting for room in the queue (:meth:`submit_waiting`)."""
        return sum(
            len(w.items) for waiters in self._waiters.values() for w in waiters if not w.admitted.done()
        )

    def contended(self) -> bool:
        """Interactive work is queued or was submitted within :data:`CONTENDED_WINDOW_S`."""
        recent = time.perf_counter_ns() - self._last_interactive_ns < CONTENDED_WINDOW_S * 1e9
        return self._live[Priority.INTERACTIVE] > 0 or recent

    def bulk_budget(self) -> int:
        """Padded-token budget of the next BULK batch."""
        return self.contended_batch_tokens if self.contended() else self.max_batch_tokens

    def _report(self) -> None:
        """Tell ``on_depth`` (queued items, items waiting for room) after every change."""
        if self._on_depth is not None:
            self._on_depth(self.depth(), self.waiting())

    def _enqueue(self, items: Sequence[Item]) -> None:
        if any(item.priority is Priority.INTERACTIVE for item in items):
            self._last_interactive_ns = time.perf_counter_ns()
        for item in items:
            item.queued = True
            self._queues[item.priority].append(item)
            self._live[item.priority] += 1
            self._tokens[item.priority] += item.length
        self._changed.set()

    def _unqueue(self, item: Item) -> bool:
        """Stop counting ``item``; False if it was not counted."""
        if not item.queued:
            return False
        item.queued = False
        self._live[item.priority] -= 1
        self._tokens[item.priority] -= item.length
        return True

    # --- submitting ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise NotReady("the server is shutting down")

    def _check_size(self, items: Sequence[Item]) -> None:
        if len(items) > self.max_queue_items:
            raise Overloaded(
                f"{len(items)} inputs at once can never fit the encoder queue (limit "
                f"--max-queue-items={self.max_queue_items}); send fewer inputs per call"
            )

    def submit(self, items: list[Item]) -> None:
        """Queue ``items`` now (all or none); Overloaded naming the limit when they do not fit."""
        self._check_open()
        self._check_size(items)
        if self.depth() + len(items) > self.max_queue_items:
            raise Overloaded(
                f"encoder queue is full: {self.depth()} items waiting, limit --max-queue-items="
                f"{self.max_queue_items}; retry later or send fewer inputs"
            )
        self._enqueue(items)
        self._report()

    async def submit_waiting(self, items: list[Item]) -> None:
        """Queue ``items`` (all or none) as soon as they fit, after earlier waiting submissions
        of the same or a higher priority. Cancelling the wait queues nothing."""
        self._check_open()
        self._check_size(items)
        if not items:
            return
        priority = items[0].priority
        ahead = any(self._waiters[p] for p in Priority if p <= priority)
        if not ahead and self.depth() + len(items) <= self.max_queue_items:
            self._enqueue(items)
            self._report()
            return
        waiter = _Waiter(items, asyncio.get_running_loop().create_future())
        self._waiters[priority].append(waiter)
        self._report()
        try:
            await waiter.admitted
        except BaseException:
            if not waiter.admitted.done():
                waiter.admitted.cancel()
            with contextlib.suppress(ValueError):
                self._waiters[priority].remove(waiter)
            self._admit_waiters()  # a big waiter leaving may let smaller ones in
            self._report()
            raise

    def _admit_waiters(self) -> None:
        """Queue waiting submissions while the first in line (by priority) fits."""
        admitted = False
        for priority in Priority:
            waiters = self._waiters[priority]
            while waiters:
                head = waiters[0]
                if head.admitted.done():  # its caller gave up
                    waiters.popleft()
                    continue
                if self.depth() + len(head.items) > self.max_queue_items:
                    if admitted:
                        self._report()
                    return  # nobody passes the first in line
                waiters.popleft()
                self._enqueue(head.items)
                head.admitted.set_result(None)
                admitted = True
        if admitted:
            self._report()

    def discard(self, items: Sequence[Item]) -> None:
        """The call of ``items`` is over (error, deadline, cancel): drop those still queued."""
        dropped = sum(self._unqueue(item) for item in items)
        if dropped:
            self._admit_waiters()
            self._report()

    def requeue(self, items: list[Item]) -> None:
        """Put items taken for a batch that could not be sent back at the front of their queue."""
        for item in reversed(items):
            if not item.future.done():
                item.queued = True
                self._queues[item.priority].appendleft(item)
                self._live[item.priority] += 1
                self._tokens[item.priority] += item.length
        self._changed.set()
        self._report()

    def close(self) -> None:
        """Stop: waiting submissions fail with NotReady; workers drain what is queued."""
        self._closed = True
        for waiters in self._waiters.values():
            while waiters:
                waiter = waiters.popleft()
                if not waiter.admitted.done():
                    waiter.admitted.set_exception(NotReady("the server is shutting down"))
        self._changed.set()

    # --- taking ----------------------------------------------------------------------------------

    def _drop_dead_head(self, priority: Priority) -> None:
        queue = self._queues[priority]
        while queue and (not queue[0].queued or queue[0].future.done()):
            self._unqueue(queue.popleft())

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
            budget = self.max_batch_tokens if priority is not Priority.BULK else self.bulk_budget()
            full = priority is Priority.INTERACTIVE or self._tokens[priority] >= budget
            if not full and waited < self.max_wait_s and not self._closed:
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), self.max_wait_s - waited)
                continue
            batch = self._take(priority, budget)
            self._admit_waiters()
            self._report()
            return batch

    def _take(self, priority: Priority, budget: int) -> list[Item]:
        queue = self._queues[priority]
        window: list[Item] = []
        while queue and len(window) < self.window_items:
            item = queue.popleft()
            if self._unqueue(item) and not item.future.done():  # finished calls' items are dropped
                window.append(item)
        batch = pick_batch(window, budget)
        chosen = set(map(id, batch))
        kept = [item for item in window if id(item) not in chosen]
        for item in reversed(kept):  # back to the front, in their original order
            item.queued = True
            queue.appendleft(item)
            self._live[priority] += 1
            self._tokens[priority] += item.length
        return batch


def pad_batch(
    items: list[Item], pad_id: int, *, multiple: int = PAD_MULTIPLE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """input_ids, attention_mask, token_type_ids (int64), right-padded to the longest item's
    length rounded up to ``multiple`` (1: no rounding, so one item is not padded at all)."""
    width = -(-max(item.length for item in items) // multiple) * multiple
    ids = np.full((len(items), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(items), width), dtype=np.int64)
    for row, item in enumerate(items):
        ids[row, : item.length] = item.ids
        mask[row, : item.length] = 1
    return ids, mask, np.zeros_like(ids)
