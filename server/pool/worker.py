"""One encoder worker process: the entry point (runs in the child) and its handle (in the parent).

Protocol over a duplex Pipe, one batch at a time:
    parent -> child   ("encode", batch_id, input_ids, attention_mask, token_type_ids) | None (stop)
    child  -> parent  ("ready", device, dtype, compiled) | ("fatal", message)
                      ("result", batch_id, vectors, inference_ns) | ("error", batch_id, message)

Because a worker holds at most one batch, the parent always knows which items a dead or hung
worker took with it. The entry point is a module-level function, so the spawn start method can
import it without running anyone's ``__main__``.

A worker hands the C heap's free pages back to the OS every ``trim_tokens`` padded tokens it
computes and whenever it has waited ``_IDLE_TRIM_S`` for work (:class:`HeapTrimmer`); without
that its RSS grows with every new batch shape.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from server.errors import WorkerFailed
from server.memory import find_malloc_trim
from server.pool.backends import BackendConfig

log = logging.getLogger(__name__)

_IDLE_TRIM_S = 1.0  # no batch for this long: trim now rather than after the next batches


class HeapTrimmer:
    """Calls ``malloc_trim(0)`` once every ``every_tokens`` padded tokens computed (0 = never).

    Why: glibc raises its mmap threshold to the size of the largest block freed so far (up to
    32 MiB), so after the first batches the activations of a batch come from the main heap
    instead of mmap. Each new (batch, seq) shape frees blocks of new sizes there; the holes stay
    resident, and RSS climbs with the number of distinct shapes seen (~0.6 MiB per new small
    shape, +30 to +100 MiB per 1,000 SciFact docs here). ``malloc_trim`` releases the free pages
    of the whole heap, holes included: RSS stayed flat. One call took ~4 ms on a loaded 2-core
    host, against ~2 s of compute for a 4096-token batch (benchmarks/bench_worker_rss.py).
    """

    def __init__(self, every_tokens: int, trim: Callable[[int], int] | None = None) -> None:
        self.every_tokens = every_tokens
        self._trim = (trim or find_malloc_trim()) if every_tokens > 0 else None
        self._since = 0

    @property
    def owed(self) -> bool:
        """Tokens were computed since the last trim (and trimming is on)."""
        return self._trim is not None and self._since > 0

    def trim(self) -> None:
        if self._trim is not None:
            self._trim(0)
        self._since = 0

    def computed(self, tokens: int) -> bool:
        """Count a batch's padded tokens; trims (and returns True) once enough have passed."""
        if self._trim is None:
            return False
        self._since += tokens
        if self._since < self.every_tokens:
            return False
        self.trim()
        return True


def worker_main(model: str, config: BackendConfig, conn: Connection, trim_tokens: int = 0) -> None:
    """Child process: load the model once, warm it up, then serve batches until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop (drain)
    try:
        from server.model import load_spec
        from server.pool.backends import load_backend

        spec = load_spec(model)
        backend = load_backend(spec, config)
        ones = np.ones((1, 4), dtype=np.int64)
        backend.forward(ones * 100, ones, np.zeros_like(ones))  # warm-up: first call allocates
    except Exception as exc:  # report why we cannot serve, then exit
        conn.send(("fatal", f"{type(exc).__name__}: {exc}"))
        return
    heap = HeapTrimmer(trim_tokens)
    heap.trim()  # what loading and compiling freed
    conn.send(("ready", backend.device, backend.dtype, backend.compiled))
    while True:
        try:
            if heap.owed and not conn.poll(_IDLE_TRIM_S):
                heap.trim()  # idle: give back what the last batches left before waiting on
            message = conn.recv()
        except (EOFError, OSError):  # parent went away
            return
        if message is None:
            return
        _, batch_id, ids, mask, types = message
        t0 = time.perf_counter_ns()
        try:
            vectors = backend.forward(ids, mask, types)
        except Exception as exc:  # one bad batch must not kill the worker
            conn.send(("error", batch_id, f"{type(exc).__name__}: {exc}"))
            continue
        conn.send(("result", batch_id, vectors, time.perf_counter_ns() - t0))
        heap.computed(int(ids.size))  # after the reply: off the caller's latency


@dataclass
class BatchOutput:
    vectors: np.ndarray
    inference_ns: int


class WorkerHandle:
    """Parent side of one worker: start, run one batch with a deadline, stop, restart."""

    def __init__(
        self, index: int, model: str, config: BackendConfig, *, start_timeout: float, trim_tokens: int = 0
    ) -> None:
        self.index = index
        self.model = model
        self.config = config
        self.start_timeout = start_timeout
        self.trim_tokens = trim_tokens
        self.device = config.device
        self.dtype = config.dtype
        self.process: Any = None
        self._conn: Connection | None = None
        # One thread per worker for the blocking pipe I/O: never the event loop, never a shared pool.
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"worker{index}-io")
        self._next_batch = 0
        self.ready = False  # loaded, warmed up and not known to have failed since
        self.compiled = False  # the worker runs a torch.compile'd model (not the eager fallback)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else int(self.process.pid)

    @property
    def sentinel(self) -> int | None:
        """A file descriptor that becomes readable when the process exits (None before start)."""
        return None if self.process is None else int(self.process.sentinel)

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def start_blocking(self) -> None:
        """Spawn the process and wait until it has loaded and warmed up the model."""
        ctx = mp.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=worker_main,
            args=(self.model, self.config, child_conn, self.trim_tokens),
            name=f"embed-worker-{self.index}",
            daemon=True,
        )
        self.process.start()
        child_conn.close()
        self._conn = parent_conn
        ready = wait([parent_conn, self.process.sentinel], timeout=self.start_timeout)
        if parent_conn not in ready:
            self.kill()
            raise WorkerFailed(f"encoder worker {self.index} did not start within {self.start_timeout:.0f}s")
        message = parent_conn.recv()
        if message[0] != "ready":
            self.kill()
            raise WorkerFailed(f"encoder worker {self.index} could not load the model: {message[1]}")
        _, self.device, self.dtype, self.compiled = message
        self.ready = True
        log.info(
            "worker %d ready (pid %s, %s, %s%s)",
            self.index,
            self.pid,
            self.device,
            self.dtype,
            ", compiled" if self.compiled else "",
        )

    def run_blocking(
        self, ids: np.ndarray, mask: np.ndarray, types: np.ndarray, timeout: float
    ) -> BatchOutput:
        """Send one batch and wait for its vectors; WorkerFailed if the worker dies or hangs."""
        conn = self._conn
        if conn is None or not self.alive():
            raise WorkerFailed(f"encoder worker {self.index} is not running")
        self._next_batch += 1
        batch_id = self._next_batch
        try:
            conn.send(("encode", batch_id, ids, mask, types))
            ready = wait([conn, self.process.sentinel], timeout=timeout)
            if conn in ready:
                message = conn.recv()
            elif ready:  # only the sentinel: the process exited
                self.ready = False
                raise WorkerFailed(self._death_message())
            else:
                self.kill()
                raise WorkerFailed(
                    f"encoder worker {self.index} did not answer within {timeout:.0f}s "
                    "(--batch-timeout-s); it was restarted, retry the request"
                )
        except (EOFError, OSError) as exc:
            self.ready = False
            raise WorkerFailed(self._death_message()) from exc
        kind, got_id = message[0], message[1]
        if got_id != batch_id:  # cannot happen with one batch in flight; never mix results up
            self.kill()
            raise WorkerFailed(f"encoder worker {self.index} answered batch {got_id}, expected {batch_id}")
        if kind == "error":
            raise WorkerFailed(f"encoder worker {self.index} failed on this batch: {message[2]}")
        return BatchOutput(vectors=message[2], inference_ns=int(message[3]))

    def _death_message(self) -> str:
        if self.process is not None:
            self.process.join(timeout=1)
        code = None if self.process is None else self.process.exitcode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return (
            f"encoder worker {self.index} died ({how}) while embedding this request; "
            "it is being restarted, retry the request"
        )

    def kill(self) -> None:
        self.ready = False
        if self.process is not None and self.process.is_alive():
            self.process.kill()
        if self.process is not None:
            self.process.join(timeout=5)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def stop_blocking(self, timeout: float = 10) -> None:
        """Ask the worker to exit after its current batch; kill it if it does not."""
        if self._conn is not None and self.alive():
            with contextlib.suppress(OSError):
                self._conn.send(None)
            self.process.join(timeout=timeout)
        self.kill()

    @property
    def io(self) -> ThreadPoolExecutor:
        return self._io
