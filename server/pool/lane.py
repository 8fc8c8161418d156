"""The interactive lane: interactive inputs computed in the server process, beside the workers.

Why: a query handed to a worker waits for the batch that worker is computing (up to
--max-batch-tokens of bulk work: ~0.5-2 s during an ingest on a loaded 2-core host) and pays
the queue wait, a thread hop, pickling and two pipe messages. The lane runs ONNX Runtime on
the ONNX export of the same model in this process (``--interactive-lane-threads`` runners, one
``session.run`` at a time each; ORT releases the GIL), so an interactive input reaches a model
as soon as a runner is free, whatever bulk work is queued; the OS shares the cores between the
lane and the workers. One run may use ``--interactive-lane-op-threads`` threads (ORT's intra-op
pool, which spins between operators as ORT does by default): an idle server answers a single
query on every core (measured, README Interactive latency: inference 3.8 ms on one thread,
2.2 ms on two). While other items wait in the lane's queue, or bulk work runs (queued or on a
worker), runs go to a second, one-thread session of the same graph: the runners then already
fill the cores (wide runs halved a bulk EmbedStream's docs/s), and the wide session's spinning
threads took an ingest down to 0.76 of its docs/s with queries at 10/s (one thread: 1.10).
A lane batch is padded to its longest input only (one input: no padding), not to the
workers' multiple of 16.

What it computes with (:func:`lane_graph`): the workers' own graph for ``--backend onnx`` (the
same vectors), the fp32 graph for ``--backend torch`` (cosine 0.9999998 to torch fp32 measured
on STS-B sentences). :meth:`InteractiveLane.agreement` measures the agreement with the workers
at start-up; the pool keeps the lane only at cosine >= :data:`MIN_COSINE`.

While the lane is on, every interactive input goes to it and bulk work to the workers, so an
input gets the same vector from Embed, EmbedStream or TEI, alone or in any batch (the lane's ORT
fp32 and the workers' torch fp32 differ by ~1e-5 per element, which a mixed route would show).
A request that asks for throughput (``EmbedOptions.bulk``) goes to the workers instead, by
its own choice, never by load (cosine >= :data:`MIN_COSINE` to the lane's vectors). Its queue has the
workers' bounds and rules (``--max-queue-items``: unary calls fail fast, streams wait for room).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from embedcore import OnnxModel, Tokens, l2_normalize
from server import metrics
from server.batching import Scheduler, pad_batch
from server.model import ModelSpec
from server.onnx_export import FP32_NAME, INT8_NAME

log = logging.getLogger(__name__)

# The cosine the brief asks of interactive vectors against stored ones (same text).
MIN_COSINE = 0.999

# Sentences of several lengths (one to three padded widths) for the start-up agreement check.
PROBES = (
    "A man is playing a guitar.",
    "what is the boiling point of water at high altitude",
    "Vitamin D deficiency is associated with an increased risk of respiratory infections in "
    "adults, according to a meta-analysis of randomized controlled trials published in 2017.",
)


def lane_graph(backend: str, dtype: str, export_dir: Path) -> Path:
    """The ONNX graph the lane runs: the onnx workers' own (int8 where they run int8), else fp32."""
    int8 = backend == "onnx" and (dtype == "int8" or dtype == "auto")
    return export_dir / (INT8_NAME if int8 else FP32_NAME)


class InteractiveLane:
    """A :class:`~server.batching.Scheduler` of its own drained by ``threads`` ORT runners.

    Items are :class:`~server.batching.Item`; each future gets (raw vector row, queue_ns,
    inference_ns), as from a worker. ``max_tokens``: the padded-token budget of one lane batch.
    """

    def __init__(
        self,
        model: OnnxModel,
        pad_id: int,
        *,
        max_tokens: int,
        threads: int,
        max_queue_items: int,
        op_threads: int = 1,
        narrow: OnnxModel | None = None,
        contended: Callable[[], bool] | None = None,
    ) -> None:
        self.model = model
        # The same graph on one thread, run while other items wait in the lane's queue or
        # ``contended()`` (the workers have bulk work): see :meth:`_forward`.
        self.narrow = narrow
        self.contended = contended
        self.pad_id = pad_id
        self.threads = threads
        self.op_threads = op_threads
        # Interactive batches never wait to fill (see server.batching): max_wait is not used.
        self.scheduler = Scheduler(
            max_batch_tokens=max_tokens, max_wait_ms=0, max_queue_items=max_queue_items
        )
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="interactive-lane")
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name=f"interactive-lane-{i}") for i in range(self.threads)
        ]

    async def close(self) -> None:
        self.scheduler.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._executor.shutdown(wait=False)

    def _forward(self, ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> tuple[np.ndarray, int]:
        t0 = time.perf_counter_ns()
        # One thread per run unless this is the only work: with items queued behind this batch
        # the runners already fill the cores (wide runs would oversubscribe them), and while bulk
        # work runs the wide session's spinning threads take the workers' CPU.
        narrow = self.scheduler.depth() > 0 or (self.contended is not None and self.contended())
        out = (self.narrow if narrow and self.narrow is not None else self.model).raw(ids, mask, types)
        return out, time.perf_counter_ns() - t0

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while (batch := await self.scheduler.next_batch()) is not None:
            batch = [item for item in batch if not item.future.done()]
            if not batch:
                continue
            started = time.perf_counter_ns()
            try:
                out, inference_ns = await loop.run_in_executor(
                    self._executor, self._forward, *pad_batch(batch, self.pad_id, multiple=1)
                )
            except Exception as exc:  # ORT failed on this batch: its calls fail, the lane goes on
                log.exception("interactive lane failed on a batch")
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            metrics.LANE_ITEMS.inc(len(batch))
            for row, item in enumerate(batch):
                if not item.future.done():
                    item.future.set_result((out[row], started - item.enqueued_ns, inference_ns))

    def compute(self, tokens: Sequence[Tokens]) -> np.ndarray:
        """(n, dims) float32 raw vectors of ``tokens``, one row at a time, blocking (start-up check)."""
        rows = []
        for t in tokens:
            ids = np.asarray(t.ids, dtype=np.int64)[None, :]  # alone and unpadded, as _run does
            rows.append(self.model.raw(ids, np.ones_like(ids), np.zeros_like(ids))[0])
        return np.stack(rows)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest row-wise cosine of two (n, dims) arrays."""
    return float((l2_normalize(a) * l2_normalize(b)).sum(axis=1).min())


def load_lane(
    spec: ModelSpec,
    graph: Path,
    pad_id: int,
    *,
    max_tokens: int,
    threads: int,
    max_queue_items: int,
    op_threads: int = 1,
    contended: Callable[[], bool] | None = None,
) -> InteractiveLane:
    """Open ``graph`` with runs of up to ``op_threads`` threads, and on one thread while other
    items wait in the lane's queue or ``contended()`` (blocking: call it off the event loop);
    ``threads`` runners take batches from the lane's queue."""
    model = OnnxModel(graph, pooling=spec.pooling, normalize=spec.normalize, threads=op_threads)
    narrow = None
    if op_threads > 1 and contended is not None:
        narrow = OnnxModel(graph, pooling=spec.pooling, normalize=spec.normalize, threads=1)
    return InteractiveLane(
        model,
        pad_id,
        max_tokens=max_tokens,
        threads=threads,
        max_queue_items=max_queue_items,
        op_threads=op_threads,
        narrow=narrow,
        contended=contended,
    )
