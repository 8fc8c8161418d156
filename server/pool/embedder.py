"""PoolEmbedder: the production :class:`~server.embedder.Embedder` over worker processes.

Tokenizes in this process (the batcher needs real token counts), queues one item per input in
the :class:`~server.batching.Scheduler`, and runs one dispatcher task per worker that takes a
batch, hands it to its worker and resolves the items' futures. A dead or hung worker fails the
items of its batch with WorkerFailed (UNAVAILABLE, retryable) and is restarted; queued items
wait for the restart instead of failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from edge_client._tokenizer import load_tokenizer
from server import metrics
from server.batching import Item, Scheduler, pad_batch
from server.embedder import EncodeResult, Priority
from server.errors import InvalidArgument, NotReady, WorkerFailed
from server.model import ModelSpec
from server.pool.backends import BackendConfig, usable_cores
from server.pool.worker import WorkerHandle
from server.settings import Settings

log = logging.getLogger(__name__)

# Inputs shorter than this (characters, all texts of a call) are tokenized on the event loop:
# a thread hop costs more than the tokenizer does for a sentence.
_INLINE_TOKENIZE_CHARS = 4096


def worker_devices(settings: Settings) -> list[str]:
    """One entry per worker process: every CUDA device, or the CPU workers (cpu_worker_count)."""
    if settings.device == "cpu":
        return ["cpu"] * cpu_worker_count(settings)
    if settings.device.startswith("cuda:"):
        return [settings.device]
    if settings.device == "auto" and not Path("/proc/driver/nvidia/gpus").is_dir():
        return ["cpu"] * cpu_worker_count(settings)  # no NVIDIA driver: skip importing torch here
    import torch  # only to count GPUs

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if settings.device == "cuda" and count == 0:
        raise RuntimeError("--device cuda but no CUDA device is visible")
    if count:
        return [f"cuda:{i}" for i in range(count)]
    return ["cpu"] * cpu_worker_count(settings)


def cpu_worker_count(settings: Settings) -> int:
    """``--workers``, or auto: one single-threaded worker per core (at most 4).

    Measured here (2 cores, bf16, compiled): 2 processes x 1 thread ran 2.4x faster than
    1 process x 2 threads; single-threaded workers never wait on each other's OpenMP barriers.
    """
    return settings.workers or max(1, min(usable_cores(), 4))


def _onnx_cache(settings: Settings) -> Path | None:
    """The edge service's ONNX cache: both backends run the very same exported graph."""
    if settings.backend != "onnx":
        return None
    from server.servicers.edge import onnx_cache_dir

    return onnx_cache_dir(settings)


def _compile_enabled(settings: Settings, device: str) -> bool:
    if settings.backend != "torch" or settings.compile == "off":
        return False
    return settings.compile == "on" or device == "cpu"


def load_pad_id(spec: ModelSpec, tokenizer: Tokenizer) -> int:
    path = spec.path / "tokenizer_config.json"
    token = "[PAD]"
    if path.is_file():
        token = str(json.loads(path.read_text(encoding="utf-8")).get("pad_token") or token)
    found = tokenizer.token_to_id(token)
    return 0 if found is None else int(found)


class PoolEmbedder:
    def __init__(self, settings: Settings, spec: ModelSpec) -> None:
        self.spec = spec
        self.settings = settings
        self.tokenizer = load_tokenizer(spec.path / "tokenizer.json", max_tokens=spec.max_tokens)
        self.pad_id = load_pad_id(spec, self.tokenizer)
        # Untruncated twin: token counts for error messages and Tokenize (never mutate the other:
        # it is used from several threads).
        self.counter = Tokenizer.from_file(str(spec.path / "tokenizer.json"))
        self.counter.no_truncation()
        self.counter.no_padding()
        self.scheduler = Scheduler(
            max_batch_tokens=settings.max_batch_tokens,
            max_wait_ms=settings.max_wait_ms,
            max_queue_items=settings.max_queue_items,
        )
        devices = worker_devices(settings)
        cpu_workers = sum(d == "cpu" for d in devices)
        threads = settings.threads_per_worker or max(1, usable_cores() // max(cpu_workers, 1))
        self.workers = [
            WorkerHandle(
                i,
                settings.model,
                BackendConfig(
                    kind=settings.backend,
                    device=device,
                    dtype=settings.dtype,
                    threads=threads if device == "cpu" else 0,
                    onnx_dir=_onnx_cache(settings),
                    compile=_compile_enabled(settings, device),
                ),
                start_timeout=settings.worker_start_timeout_s,
                trim_tokens=settings.worker_trim_tokens,
            )
            for i, device in enumerate(devices)
        ]
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def device(self) -> str:
        return ",".join(dict.fromkeys(w.device for w in self.workers))

    @property
    def dtype(self) -> str:
        return self.workers[0].dtype

    async def start(self) -> None:
        """Start every worker and wait until each has loaded and warmed up the model."""
        if self._started:
            return
        await asyncio.gather(
            *(asyncio.get_running_loop().run_in_executor(w.io, w.start_blocking) for w in self.workers)
        )
        self._report_ready()
        self._tasks = [
            asyncio.create_task(self._dispatch(w), name=f"dispatch-{w.index}") for w in self.workers
        ]
        self._started = True

    def _report_ready(self) -> None:
        metrics.WORKERS_READY.set(sum(w.ready for w in self.workers))

    async def close(self) -> None:
        self.scheduler.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(w.io, w.stop_blocking) for w in self.workers))
        for worker in self.workers:
            worker.io.shutdown(wait=False)

    async def _restart(self, worker: WorkerHandle) -> None:
        loop = asyncio.get_running_loop()
        delay = 1.0
        while True:
            metrics.WORKER_RESTARTS.inc()
            await loop.run_in_executor(worker.io, worker.kill)
            try:
                await loop.run_in_executor(worker.io, worker.start_blocking)
                self._report_ready()
                return
            except WorkerFailed as exc:
                log.error("%s; retrying in %.0fs", exc, delay)
                await asyncio.sleep(delay)  # backoff between restart attempts, not a readiness wait
                delay = min(delay * 2, 30.0)

    async def _dispatch(self, worker: WorkerHandle) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.settings.batch_timeout_s
        while True:
            if not worker.alive():  # restart before taking work, so the other workers keep going
                log.warning("worker %d is not running; restarting it", worker.index)
                await self._restart(worker)
            batch = await self.scheduler.next_batch()
            if batch is None:
                return
            if not worker.alive():  # died while idle: these items were never sent; give them back
                self.scheduler.requeue(batch)
                continue
            batch = [item for item in batch if not item.future.done()]  # calls may have ended
            if not batch:
                continue
            metrics.QUEUE_DEPTH.set(self.scheduler.depth())
            ids, mask, types = pad_batch(batch, self.pad_id)
            metrics.BATCH_SIZE.observe(len(batch))
            metrics.BATCH_TOKENS.observe(int(ids.size))
            started = time.perf_counter_ns()
            try:
                out = await loop.run_in_executor(worker.io, worker.run_blocking, ids, mask, types, timeout)
            except WorkerFailed as exc:
                log.error("%s", exc.message)
                self._report_ready()
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(WorkerFailed(exc.message))
                continue
            metrics.ITEMS.labels(batch[0].priority.name.lower()).inc(len(batch))
            for row, item in enumerate(batch):
                if not item.future.done():
                    item.future.set_result((out.vectors[row], started - item.enqueued_ns, out.inference_ns))

    # --- encoding --------------------------------------------------------------------------

    def _tokenize(self, texts: list[str], truncate: bool) -> tuple[list[np.ndarray], list[int]]:
        """Truncated ids per text, and the indexes of texts longer than the model's maximum."""
        encodings = self.tokenizer.encode_batch(texts)
        over = [i for i, e in enumerate(encodings) if e.overflowing] if not truncate else []
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings], over

    def full_length(self, text: str) -> int:
        """Tokens of ``text`` without truncation (for messages and Tokenize)."""
        return len(self.counter.encode(text).ids)

    async def encode(
        self,
        texts: Sequence[str],
        *,
        prompt_name: str = "",
        truncate: bool = True,
        priority: Priority = Priority.INTERACTIVE,
    ) -> EncodeResult:
        if not self._started:
            raise NotReady("the encoder pool is still starting")
        try:
            prefix = self.spec.prompt_text(prompt_name)
        except KeyError as exc:
            raise InvalidArgument(str(exc.args[0]), field="prompt_name") from exc
        full = [prefix + t for t in texts]
        t0 = time.perf_counter_ns()
        if sum(map(len, full)) <= _INLINE_TOKENIZE_CHARS:
            ids, over = self._tokenize(full, truncate)
        else:
            ids, over = await asyncio.to_thread(self._tokenize, full, truncate)
        if over:
            i = over[0]
            raise InvalidArgument(
                f"input {i} has {self.full_length(full[i])} tokens, more than the model's maximum of "
                f"{self.spec.max_tokens}; "
                "shorten it or set truncate=true",
                field=f"inputs[{i}]",
            )
        t1 = time.perf_counter_ns()
        loop = asyncio.get_running_loop()
        items = [Item(ids=row, priority=priority, future=loop.create_future()) for row in ids]
        self.scheduler.submit(items)
        metrics.QUEUE_DEPTH.set(self.scheduler.depth())
        try:
            results = await asyncio.gather(*(item.future for item in items))
        except BaseException:
            for item in items:  # the call is over (error, deadline, cancel): drop its queued work
                item.future.cancel()
            raise
        vectors = (
            np.stack([r[0] for r in results]) if results else np.zeros((0, self.spec.dimensions), np.float32)
        )
        return EncodeResult(
            vectors=np.asarray(vectors, dtype=np.float32),
            token_counts=tuple(len(r) for r in ids),
            queue_ns=max((int(r[1]) for r in results), default=0),
            tokenization_ns=t1 - t0,
            inference_ns=sum({(id(r[0].base), int(r[2])): int(r[2]) for r in results}.values()),
        )

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.settings.backend,
            "device": self.device,
            "dtype": self.dtype,
            "workers": len(self.workers),
        }
