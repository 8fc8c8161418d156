"""EncoderPool: the production :class:`~server.embedder.Embedder` over worker processes.

Tokenizes in this process (the batcher needs real token counts; :mod:`server.tokenization`
checks every input), queues one item per input in the :class:`~server.batching.Scheduler`, and
runs one dispatcher task per worker that takes a batch, hands it to its worker and resolves the
items' futures. A dead or hung worker fails the items of its batch with WorkerFailed
(UNAVAILABLE, retryable) and is restarted, also when it dies idle (its process sentinel is
watched on the event loop, so ``embed_workers_ready`` drops at once); queued items wait for
the restart instead of failing.

Interactive calls go to the :mod:`~server.pool.lane` (ONNX Runtime in this process) while it is
on, else to the workers' queue ahead of bulk work (see :mod:`server.batching`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import multiprocessing as mp
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from embedcore import l2_normalize, pad_token_id
from server import metrics
from server.batching import Item, Scheduler, pad_batch
from server.embedder import ComputeInfo, EncodeResult, FieldNames, Prepared, Priority, TruncationDirection
from server.errors import NotReady, ServiceError, WorkerFailed
from server.hardware import usable_cores
from server.model import ModelSpec
from server.onnx_export import FP32_NAME, INT8_NAME, ensure_onnx, exporter_version, onnx_cache_dir
from server.pool.backends import BackendConfig
from server.pool.lane import MIN_COSINE, PROBES, InteractiveLane, lane_graph, load_lane, min_cosine
from server.pool.worker import WorkerHandle
from server.settings import Settings
from server.tokenization import TextTokenizer, field_names

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
    """The edge bundle's ONNX cache: both backends run the very same exported graph."""
    return onnx_cache_dir(settings) if settings.backend == "onnx" else None


def _compile_enabled(settings: Settings, device: str) -> bool:
    if settings.backend != "torch" or settings.compile == "off":
        return False
    return settings.compile == "on" or device == "cpu"


def _report_depth(queued: int, waiting: int) -> None:
    metrics.QUEUE_DEPTH.set(queued)
    metrics.QUEUE_WAITING.set(waiting)


def _export_in_child(spec: ModelSpec, cache: Path, int8: bool) -> Path:
    """(Blocking) :func:`ensure_onnx` in a spawned child process, so torch stays out of this one."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as export:
        return export.submit(functools.partial(ensure_onnx, spec, cache, int8=int8)).result()


def load_pad_id(spec: ModelSpec, tokenizer: Tokenizer) -> int:
    """The pad token named in the model's tokenizer_config.json (default [PAD])."""
    path = spec.path / "tokenizer_config.json"
    token = "[PAD]"
    if path.is_file():
        token = str(json.loads(path.read_text(encoding="utf-8")).get("pad_token") or token)
    return pad_token_id(tokenizer, token)


class EncoderPool:
    def __init__(self, settings: Settings, spec: ModelSpec) -> None:
        self.spec = spec
        self.settings = settings
        self.texts = TextTokenizer(spec, settings.max_input_chars)
        self.pad_id = load_pad_id(spec, self.texts.model.tokenizer())
        self.scheduler = Scheduler(
            max_batch_tokens=settings.max_batch_tokens,
            max_wait_ms=settings.max_wait_ms,
            max_queue_items=settings.max_queue_items,
            on_depth=_report_depth,
            contended_batch_tokens=settings.contended_batch_tokens,
        )
        self.lane: InteractiveLane | None = None
        self._computing = 0  # workers running a batch now
        devices = worker_devices(settings)
        cpu_workers = sum(d == "cpu" for d in devices)
        threads = settings.threads_per_worker or max(1, usable_cores() // max(cpu_workers, 1))
        self.workers = [
            WorkerHandle(
                i,
                spec.model_id,  # this pool's model (a server may run several: not settings.model)
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
        self._died = {w.index: asyncio.Event() for w in self.workers}
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._closed = False

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
        for worker in self.workers:
            self._watch(worker)
        self._report_ready()
        self._tasks = [
            asyncio.create_task(self._dispatch(w), name=f"dispatch-{w.index}") for w in self.workers
        ]
        self._started = True
        if self.settings.interactive_lane == "on" or (
            self.settings.interactive_lane == "auto" and all(w.device == "cpu" for w in self.workers)
        ):
            self.lane = await self._start_lane()

    async def _start_lane(self) -> InteractiveLane | None:
        """Open the lane's graph (exporting it once, in a child process: torch stays out of this
        one) and keep the lane if its vectors agree with the workers' (cosine >= MIN_COSINE)."""
        settings = self.settings
        cache = onnx_cache_dir(settings)
        int8 = settings.backend == "onnx"
        # ensure_onnx's own directory name: when the graphs are there it only checks them; an
        # export imports torch, so it runs in a child process (torch stays out of this one).
        key = f"{self.spec.fingerprint}-{exporter_version()}".replace("/", "_").replace("@", "-")
        names = [FP32_NAME, *([INT8_NAME] if int8 else [])]
        if all((cache / key / name).is_file() for name in names):
            directory = await asyncio.to_thread(ensure_onnx, self.spec, cache, int8=int8)
        else:  # the child's start and exit off the event loop too (torch's exit takes seconds)
            directory = await asyncio.to_thread(_export_in_child, self.spec, cache, int8)
        graph = lane_graph(settings.backend, settings.dtype, directory)
        lane = await asyncio.to_thread(
            load_lane,
            self.spec,
            graph,
            self.pad_id,
            max_tokens=settings.interactive_lane_tokens,
            threads=settings.interactive_lane_threads or cpu_worker_count(settings),
            op_threads=settings.interactive_lane_op_threads or usable_cores(),
            max_queue_items=settings.max_queue_items,
            contended=self._bulk_running,
        )
        probes = await self.tokenize(list(PROBES))
        mine = await asyncio.to_thread(lane.compute, probes.tokens)
        workers = (await self.encode_tokens(probes, priority=Priority.INTERACTIVE)).vectors
        agreement = min_cosine(mine, workers)
        if agreement < MIN_COSINE:
            message = (
                f"interactive lane off: {graph.name} agrees with the workers' vectors only to cosine "
                f"{agreement:.5f} (< {MIN_COSINE})"
            )
            if settings.interactive_lane == "on":
                raise RuntimeError(f"{message}; use --interactive-lane auto or off")
            log.warning("%s", message)
            return None
        lane.start()
        log.info(
            "interactive lane on: %s, %d runner(s) of up to %d thread(s), cosine to the workers >= %.6f",
            graph.name,
            lane.threads,
            lane.op_threads,
            agreement,
        )
        return lane

    def _bulk_running(self) -> bool:
        """Work is queued for the workers or a worker is computing (called from lane threads:
        reads only). While the lane is on the workers' queue holds only ingestion's and clients'
        bulk work."""
        return self._computing > 0 or self.scheduler.depth() > 0

    def _report_ready(self) -> None:
        metrics.WORKERS_READY.set(sum(w.ready for w in self.workers))

    def _watch(self, worker: WorkerHandle) -> None:
        """Notice the worker's exit the moment it happens, busy or idle (its process sentinel
        becomes readable), so the gauge and the restart do not wait for the next batch."""
        sentinel = worker.sentinel
        if sentinel is None:
            return
        self._died[worker.index].clear()
        loop = asyncio.get_running_loop()

        def exited() -> None:
            loop.remove_reader(sentinel)
            worker.ready = False
            self._report_ready()
            self._died[worker.index].set()

        loop.add_reader(sentinel, exited)

    def _unwatch(self, worker: WorkerHandle) -> None:
        if worker.sentinel is not None:
            asyncio.get_running_loop().remove_reader(worker.sentinel)

    async def close(self) -> None:
        """Stop the dispatchers and the workers (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.scheduler.close()
        if self.lane is not None:
            await self.lane.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for worker in self.workers:
            self._unwatch(worker)
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(w.io, w.stop_blocking) for w in self.workers))
        self._report_ready()
        for worker in self.workers:
            worker.io.shutdown(wait=False)

    async def _restart(self, worker: WorkerHandle) -> None:
        loop = asyncio.get_running_loop()
        delay = 1.0
        self._unwatch(worker)
        while True:
            metrics.WORKER_RESTARTS.inc()
            await loop.run_in_executor(worker.io, worker.kill)
            self._report_ready()
            try:
                await loop.run_in_executor(worker.io, worker.start_blocking)
                self._watch(worker)
                self._report_ready()
                return
            except WorkerFailed as exc:
                log.error("%s; retrying in %.0fs", exc, delay)
                await asyncio.sleep(delay)  # backoff between restart attempts, not a readiness wait
                delay = min(delay * 2, 30.0)

    async def _next_batch(self, worker: WorkerHandle) -> list[Item] | None:
        """The next batch, or [] when the worker died while waiting for one (None: closed)."""
        died = self._died[worker.index]
        if died.is_set():
            return []
        take = asyncio.ensure_future(self.scheduler.next_batch())
        death = asyncio.ensure_future(died.wait())
        try:
            await asyncio.wait({take, death}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            death.cancel()
            if not take.done():
                take.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await take
        if take.cancelled():
            return []
        return take.result()

    async def _dispatch(self, worker: WorkerHandle) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.settings.batch_timeout_s
        while True:
            if not worker.alive():  # restart before taking work, so the other workers keep going
                log.warning("worker %d is not running; restarting it", worker.index)
                await self._restart(worker)
            batch = await self._next_batch(worker)
            if batch is None:
                return
            if not worker.alive():  # died while idle: these items were never sent; give them back
                self.scheduler.requeue(batch)
                continue
            batch = [item for item in batch if not item.future.done()]  # calls may have ended
            if not batch:
                continue
            ids, mask, types = pad_batch(batch, self.pad_id)
            metrics.BATCH_SIZE.observe(len(batch))
            metrics.BATCH_TOKENS.observe(int(ids.size))
            started = time.perf_counter_ns()
            self._computing += 1
            try:
                out = await loop.run_in_executor(worker.io, worker.run_blocking, ids, mask, types, timeout)
            except WorkerFailed as exc:
                log.error("%s", exc.message)
                self._report_ready()
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(WorkerFailed(exc.message))
                continue
            finally:
                self._computing -= 1
            metrics.ITEMS.labels(batch[0].priority.name.lower()).inc(len(batch))
            for row, item in enumerate(batch):
                if not item.future.done():
                    item.future.set_result((out.vectors[row], started - item.enqueued_ns, out.inference_ns))

    # --- encoding --------------------------------------------------------------------------

    async def tokenize(
        self,
        texts: Sequence[str],
        *,
        prompt_name: str = "",
        truncate: bool = True,
        truncation_direction: TruncationDirection = "right",
        field: FieldNames = "inputs",
    ) -> Prepared:
        """What the model reads of each text, checked (see :meth:`encode`); off the event loop
        unless the texts are short."""
        names = field_names(field, len(texts))
        work = functools.partial(
            self.texts.tokenize,
            texts,
            names,
            prompt_name=prompt_name,
            truncate=truncate,
            side=truncation_direction,
        )
        t0 = time.perf_counter_ns()
        if sum(map(len, texts)) <= _INLINE_TOKENIZE_CHARS:
            tokens = work()
        else:
            tokens = await asyncio.to_thread(work)
        return Prepared(tokens, time.perf_counter_ns() - t0)

    async def validate(
        self,
        texts: Sequence[str],
        *,
        prompt_name: str = "",
        truncate: bool = True,
        truncation_direction: TruncationDirection = "right",
        field: FieldNames = "inputs",
    ) -> list[ServiceError | None]:
        check = functools.partial(
            self.texts.validate,
            texts,
            field_names(field, len(texts)),
            prompt_name=prompt_name,
            truncate=truncate,
            side=truncation_direction,
        )
        return await asyncio.to_thread(check)

    async def encode_tokens(
        self, prepared: Prepared, *, priority: Priority = Priority.INTERACTIVE, wait: bool | None = None
    ) -> EncodeResult:
        """Run the model on tokenized texts. ``wait``: see :meth:`encode`."""
        if not self._started:
            raise NotReady("the encoder pool is still starting")
        loop = asyncio.get_running_loop()
        items = [Item(ids=t.ids, priority=priority, future=loop.create_future()) for t in prepared.tokens]
        # One route per kind of work (server.pool.lane): interactive to the lane while it is on;
        # a client's bulk request (CLIENT_BULK) and ingestion's work to the workers.
        lane = self.lane
        scheduler = (
            lane.scheduler if lane is not None and priority is Priority.INTERACTIVE else self.scheduler
        )
        try:
            if wait if wait is not None else priority is Priority.BULK:
                step = scheduler.max_queue_items  # a bigger bulk call is queued in parts
                for start in range(0, len(items), step):
                    await scheduler.submit_waiting(items[start : start + step])
            else:
                scheduler.submit(items)
            results = await asyncio.gather(*(item.future for item in items))
        except BaseException:
            for item in items:  # the call is over (error, deadline, cancel): drop its queued work
                item.future.cancel()
            scheduler.discard(items)
            raise
        raw = np.asarray(
            np.stack([r[0] for r in results]) if results else np.zeros((0, self.spec.dimension)), np.float32
        )
        # Backends return the pipeline before its final Normalize; normalized here, lengths kept.
        norms = np.linalg.norm(raw, axis=1).astype(np.float32) if self.spec.normalize else None
        return EncodeResult(
            vectors=l2_normalize(raw) if self.spec.normalize else raw,
            raw_norms=norms,
            token_counts=tuple(t.length for t in prepared.tokens),
            queue_ns=max((int(r[1]) for r in results), default=0),
            tokenization_ns=prepared.tokenization_ns,
            inference_ns=sum({(id(r[0].base), int(r[2])): int(r[2]) for r in results}.values()),
        )

    async def encode(
        self,
        texts: Sequence[str],
        *,
        prompt_name: str = "",
        truncate: bool = True,
        truncation_direction: TruncationDirection = "right",
        priority: Priority = Priority.INTERACTIVE,
        wait: bool | None = None,
        field: FieldNames = "inputs",
    ) -> EncodeResult:
        if not self._started:
            raise NotReady("the encoder pool is still starting")
        prepared = await self.tokenize(
            texts,
            prompt_name=prompt_name,
            truncate=truncate,
            truncation_direction=truncation_direction,
            field=field,
        )
        return await self.encode_tokens(prepared, priority=priority, wait=wait)

    def describe(self) -> ComputeInfo:
        return ComputeInfo(
            backend=self.settings.backend,
            device=self.device,
            dtype=self.dtype,
            workers=len(self.workers),
            compiled=bool(self.workers) and all(w.compiled for w in self.workers),
        )
