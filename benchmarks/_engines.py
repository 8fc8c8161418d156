"""The engines bench_throughput.py and bench_ablation.py measure, each started once and then
measured once per round on the round's texts.

- :class:`InProcess`: ``SentenceTransformer.encode`` in this process (a peer);
- :class:`Infinity`: infinity-emb's torch engine serving the same model directory over HTTP, in
  its own venv outside the repo (a peer), at one ``--dtype`` / ``--compile`` setting;
- :class:`OurServer`: our server started through its CLI, measured through the gRPC API only
  (``EmbedStream``, ``Ingest`` first and again), with the CPU seconds its parent process and its
  encoder workers spent (``/proc``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _common import OFFLINE_ENV, cpu_delta, process_cpu, server_process

from server.launch import free_port

INFINITY_VERSION = "0.0.78"
INFINITY_PINS = ("torch==2.13.0", f"infinity-emb[server,torch]=={INFINITY_VERSION}")

Part = list[tuple[int, str]]


@dataclass
class Row:
    """One measured line of a round: docs/s, plus what else the engine observed."""

    name: str
    docs_per_s: float
    group: str  # "in-process", "infinity", "ours", "ours-cached"
    extra: dict[str, Any] = field(default_factory=dict)


def split(texts: Sequence[str], parts: int) -> list[Part]:
    indexed = list(enumerate(texts))
    return [indexed[i::parts] for i in range(parts)]


def timed_parallel(texts: Sequence[str], concurrency: int, work: Callable[[Part], int]) -> float:
    """Run ``work`` on ``concurrency`` slices at once; docs/s over the wall time of all of them."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        done = sum(pool.map(work, split(texts, concurrency)))
    seconds = time.perf_counter() - start
    if done != len(texts):
        raise RuntimeError(f"{done} of {len(texts)} items came back")
    return len(texts) / seconds


class Engine:
    """Something that embeds texts; ``measure`` returns one :class:`Row` per thing it timed.
    ``vectors`` holds the last round's vectors by text index when the engine returns them."""

    name = "engine"
    vectors: dict[int, np.ndarray]

    def measure(self, texts: list[str], concurrency: int) -> list[Row]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class InProcess(Engine):
    """``SentenceTransformer.encode`` in this process (batch ``batch_size``, normalized), with
    the transformer's weights loaded in ``dtype``."""

    def __init__(self, model_path: Path, max_tokens: int, device: str, dtype: str, batch_size: int) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        kwargs: dict[str, Any] = {}
        if dtype != "float32":
            kwargs["model_kwargs"] = {"torch_dtype": getattr(torch, dtype)}
        self.model = SentenceTransformer(str(model_path), device=device, **kwargs)
        self.model.max_seq_length = max_tokens
        self.batch_size, self.dtype = batch_size, dtype
        self.name = f"in-process sentence-transformers {dtype}"
        self.model.encode(["warm-up"] * batch_size, batch_size=batch_size)
        self.vectors = {}

    def measure(self, texts: list[str], concurrency: int) -> list[Row]:
        start = time.perf_counter()
        out = self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        rate = len(texts) / (time.perf_counter() - start)
        self.vectors = {i: np.asarray(v, dtype=np.float32) for i, v in enumerate(out)}
        return [Row(self.name, rate, "in-process")]


# --- Infinity -----------------------------------------------------------------------------------
def ensure_infinity(venv: Path) -> Path:
    """The venv's ``infinity_emb`` executable, creating the venv when missing."""
    exe = venv / "bin" / "infinity_emb"
    if exe.is_file():
        return exe
    print(f"creating the Infinity venv at {venv} (several minutes) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    for pin in INFINITY_PINS:  # torch first: the pin keeps pip from resolving a CUDA build
        subprocess.run([*pip, pin], check=True)
    if not exe.is_file():
        raise RuntimeError(f"{exe} missing after install")
    return exe


def parse_infinity_setting(setting: str) -> tuple[str, bool]:
    """``DTYPE[+compile]`` (e.g. ``bfloat16+compile``) -> (Infinity ``--dtype``, compile)."""
    dtype, _, rest = setting.partition("+")
    if dtype not in ("float32", "bfloat16", "float16", "int8", "auto") or rest not in ("", "compile"):
        raise ValueError(f"Infinity setting {setting!r}: expected DTYPE[+compile], DTYPE one of "
                         "float32, bfloat16, float16, int8, auto")  # fmt: skip
    return dtype, rest == "compile"


class Infinity(Engine):
    """Infinity's torch engine on CPU serving the same model directory over HTTP at one setting
    (``--dtype``, ``--compile``), posting ``batch`` texts per request from each client."""

    def __init__(self, model_path: Path, venv: Path, batch: int, setting: str, device: str = "cpu") -> None:
        dtype, compile_ = parse_infinity_setting(setting)
        exe = ensure_infinity(venv)
        port = free_port()
        self.url, self.batch, self.setting = f"http://127.0.0.1:{port}", batch, setting
        self.name = f"Infinity {INFINITY_VERSION} torch {setting}"
        command = [
            str(exe), "v2", "--model-id", str(model_path), "--served-model-name", "bench",
            "--engine", "torch", "--device", device, "--host", "127.0.0.1", "--port", str(port),
            "--no-vector-disk-cache", "--batch-size", str(batch), "--dtype", dtype,
            "--compile" if compile_ else "--no-compile", "--no-bettertransformer",
        ]  # fmt: skip
        self.log = Path(tempfile.gettempdir()) / f"infinity-{port}.log"
        with self.log.open("wb") as handle:
            self.process = subprocess.Popen(
                command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **OFFLINE_ENV}
            )
        try:
            deadline = time.monotonic() + 900
            while True:  # Infinity has no readiness stream: poll its /health
                if self.process.poll() is not None:
                    raise RuntimeError(f"infinity exited: {self.log.read_text()[-1500:]}")
                try:
                    with urllib.request.urlopen(f"{self.url}/health", timeout=5) as reply:
                        if reply.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("infinity did not become healthy in 900 s")
                time.sleep(0.5)
            for size in (1, 8, batch):  # compiled graphs: warm the shapes a round will use
                self._post(["warm-up sentence"] * size)
        except BaseException:
            self.close()
            raise
        self.vectors = {}

    def _post(self, inputs: list[str]) -> list[np.ndarray]:
        body = json.dumps({"model": "bench", "input": inputs}).encode()
        request = urllib.request.Request(f"{self.url}/embeddings", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=900) as reply:
            data = json.loads(reply.read())["data"]
        return [np.asarray(d["embedding"], dtype=np.float32) for d in sorted(data, key=lambda d: d["index"])]

    def measure(self, texts: list[str], concurrency: int) -> list[Row]:
        vectors: dict[int, np.ndarray] = {}

        def work(part: Part) -> int:
            for s in range(0, len(part), self.batch):
                chunk = part[s : s + self.batch]
                vectors.update(zip([i for i, _ in chunk], self._post([t for _, t in chunk]), strict=True))
            return len(part)

        rate = timed_parallel(texts, concurrency, work)
        self.vectors = vectors
        return [Row(self.name, rate, "infinity")]

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- our server ---------------------------------------------------------------------------------
class OurServer(Engine):
    """Our server (``embed-server serve`` with ``args``, its own store, query cache off),
    measured through the gRPC API: EmbedStream (plain, then with ``EmbedOptions.bulk``), then
    Ingest of the same texts into a fresh collection (everything embedded), then the same Ingest
    again (all content-hash hits).

    ``stream_only`` skips the two Ingests (the ablation measures the compute path alone). Each
    timed step also records the CPU seconds of the server's parent process (gRPC, tokenization,
    batching, LMDB) and of its encoder workers; ``worker_cpu_share`` = workers' CPU-s / (wall x
    workers): on a quiet machine the share of the wall time the workers computed (the rest they
    waited for work), on a loaded one also how little CPU they were given."""

    def __init__(
        self, label: str, args: Sequence[str], stack: contextlib.ExitStack, *, stream_only: bool = False
    ) -> None:
        import grpc

        from protos.embedding.v1 import embedding_pb2 as pb
        from protos.embedding.v1 import embedding_pb2_grpc as pb_grpc

        self.pb, self.stream_only, self.args = pb, stream_only, list(args)
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-server-"))
        flags = ["--query-cache-size", "0", "--log-level", "WARNING", *args]
        self.server = stack.enter_context(server_process(Path(tmp) / "data", *flags))
        self.channel = grpc.insecure_channel(
            self.server.address, options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        stack.callback(self.channel.close)
        self.embedding = pb_grpc.EmbeddingServiceStub(self.channel)
        self.collections = pb_grpc.CollectionServiceStub(self.channel)
        info = self.embedding.Info(pb.InfoRequest(), timeout=60)
        self.info = {
            "backend": info.backend,
            "dtype": info.dtype,
            "workers": info.workers,
            "compiled": info.compiled,
            "device": info.device,
            "max_batch_tokens": info.max_batch_tokens,
            "flags": flags,
        }
        self.workers = max(1, info.workers)
        self.label = label
        self.name = f"ours {label}"
        for size in (1, 8, 64):  # both compiled graphs and a full batch, before any round
            self.embedding.Embed(
                pb.EmbedRequest(inputs=[f"warm-up sentence {i}" for i in range(size)]), timeout=600
            )
        self.round = 0
        self.vectors = {}

    def _stream(self, vectors: dict[int, np.ndarray], *, bulk: bool = False) -> Callable[[Part], int]:
        pb = self.pb
        options = pb.EmbedOptions(precision=pb.PRECISION_FLOAT32, bulk=bulk)

        def work(part: Part) -> int:
            requests = (
                pb.EmbedStreamRequest(id=str(i), input=text, options=options if n == 0 else None)
                for n, (i, text) in enumerate(part)
            )
            count = 0
            for reply in self.embedding.EmbedStream(requests, timeout=3600):
                if reply.HasField("error"):
                    raise RuntimeError(f"EmbedStream item {reply.id}: {reply.error.message}")
                vectors[int(reply.id)] = np.frombuffer(reply.embedding.data, "<f4")
                count += 1
            return count

        return work

    def _ingest(self, collection: str, cached: list[int]) -> Callable[[Part], int]:
        def work(part: Part) -> int:
            requests = (self.pb.IngestRequest(collection=collection, id=f"d{i}", text=t) for i, t in part)
            count = hits = 0
            for ack in self.collections.Ingest(requests, timeout=3600):
                if ack.HasField("error") and ack.error.code:
                    raise RuntimeError(f"Ingest {ack.id}: {ack.error.message}")
                count += 1
                hits += ack.cached
            cached.append(hits)
            return count

        return work

    def _timed(
        self, texts: list[str], concurrency: int, work: Callable[[Part], int]
    ) -> tuple[float, dict[str, Any]]:
        before, start = process_cpu(self.server.pid), time.perf_counter()
        rate = timed_parallel(texts, concurrency, work)
        wall = time.perf_counter() - start
        parent, children = cpu_delta(before, process_cpu(self.server.pid))
        workers = children[: self.workers]  # the busiest children are the encoder workers
        return rate, {
            "wall_s": wall,
            "parent_cpu_s": parent,
            "parent_cpu_s_per_100_docs": 100 * parent / len(texts),
            "worker_cpu_s": workers,
            "worker_cpu_share": sum(workers) / (wall * self.workers),
        }

    def measure(self, texts: list[str], concurrency: int) -> list[Row]:
        self.round += 1
        vectors: dict[int, np.ndarray] = {}
        rate, cpu = self._timed(texts, concurrency, self._stream(vectors))
        self.vectors = vectors
        rows = [Row(f"ours EmbedStream {self.label}", rate, "ours", cpu)]
        if self.stream_only:
            return rows
        # EmbedOptions.bulk: the same stream computed by the workers (as Ingest), not the lane.
        rate, cpu = self._timed(texts, concurrency, self._stream({}, bulk=True))
        rows.append(Row(f"ours EmbedStream bulk {self.label}", rate, "ours", cpu))
        collection = f"round{self.round}"
        first_cached: list[int] = []
        rate, cpu = self._timed(texts, concurrency, self._ingest(collection, first_cached))
        rows.append(
            Row(f"ours Ingest first {self.label}", rate, "ours", {**cpu, "cached": sum(first_cached)})
        )
        again_cached: list[int] = []
        rate, cpu = self._timed(texts, concurrency, self._ingest(collection, again_cached))
        rows.append(
            Row(
                f"ours Ingest again (cached) {self.label}",
                rate,
                "ours-cached",
                {**cpu, "cached": sum(again_cached)},
            )
        )
        return rows


def mean_cosine(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> float | None:
    """Mean cosine between two engines' vectors of the same texts (None if either has none)."""
    keys = sorted(set(a) & set(b))
    if not keys:
        return None
    x = np.stack([a[k] for k in keys])
    y = np.stack([b[k] for k in keys])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return float(np.mean(np.sum(x * y, axis=1)))
