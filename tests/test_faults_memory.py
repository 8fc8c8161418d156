"""Memory of the server's parent process under streams of large documents (issue: resources, 1).

One server with small byte bounds: a stream of 2 MB documents keeps the parent's anonymous
memory under a bound derived from the settings, a cancelled stream gives its memory back, and
SIGTERM during such a stream drains, closes everything and exits 0 with every acknowledged
document in the store.

Anonymous memory (RssAnon) is measured, not RSS: LMDB's file pages count in RSS but are page
cache the kernel reclaims, not memory the process holds.
"""

from __future__ import annotations

import random
import signal
import string
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1.embedding_pb2_grpc import CollectionServiceStub
from server.store import open_store
from tests._small_fs import encoder_workers
from tests.server_harness import running_server

MIB = 1 << 20
PENDING_BYTES = 4 * MIB  # --ingest-max-pending-bytes
COMMIT_BYTES = 2 * MIB  # --ingest-commit-bytes
DOC_CHARS = 2 * MIB  # ASCII: 2 MiB as a Python str and on the wire
DOCS = 60  # 120 MiB per stream: what an unbounded read-ahead would hold
# The bound: each byte of read-ahead and of the commit batch held at most ~twice (the parsed
# request while it is converted, the str; the batch's tokenizer input), plus one document in
# flight in gRPC's receive buffer, plus 32 MiB of slack for gRPC's and the allocator's own
# buffers. Measured growth: ~30 MiB (1 MB documents, same bounds); before the byte bound the
# read-ahead held every document the client sent (+180 MiB for 150 MB sent).
BOUND = 2 * (PENDING_BYTES + COMMIT_BYTES) + 2 * DOC_CHARS + 32 * MIB
GRACE_S = 5.0


def _anon(pid: int) -> int:
    """The process's resident anonymous memory, bytes (/proc/PID/status RssAnon)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/PID/status")


class Sampler:
    """Samples a process's anonymous memory in a thread until stopped; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _anon(self.pid))
            self._stop.wait(0.02)  # the sampling period

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _text() -> str:
    rng = random.Random(7)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(3000)]
    return " ".join(rng.choices(words, k=DOC_CHARS // 5))[:DOC_CHARS]


def _requests(prefix: str, base: str, sent: list[int]) -> Iterator[pb.IngestRequest]:
    for i in range(DOCS):
        sent.append(i)
        # distinct texts: each is embedded, so the server is slower than the client sends
        yield pb.IngestRequest(collection="large", id=f"{prefix}{i}", text=f"{prefix} {i} {base}")


def _stub(address: str) -> tuple[grpc.Channel, CollectionServiceStub]:
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 * MIB)])
    return channel, CollectionServiceStub(channel)


def _ingest_until(address: str, prefix: str, base: str, acks_wanted: int, then: threading.Event) -> list[str]:
    """Stream the documents; once ``acks_wanted`` acks arrived, set ``then`` and keep reading
    until the stream ends (cancelled by the caller or the server); returns the acked ids."""
    acked: list[str] = []
    channel, service = _stub(address)
    with channel:
        call = service.Ingest(_requests(prefix, base, []), timeout=600)
        then.call = call  # type: ignore[attr-defined]
        try:
            for ack in call:
                assert not ack.HasField("error"), ack.error
                # Chunked (the default): 2 MiB documents are cut to --chunk-max-chars, many chunks.
                assert ack.chunks_embedded + ack.chunks_cached > 1 and ack.unembedded_chars > 0, ack
                acked.append(ack.id)
                if len(acked) == acks_wanted:
                    then.set()
        except grpc.RpcError:
            pass
    then.set()
    return acked


def test_large_document_streams_bounded_memory_cancel_and_sigterm(tmp_path: Path) -> None:
    base = _text()
    with running_server(
        tmp_path / "data",
        "--ingest-max-pending-bytes",
        str(PENDING_BYTES),
        "--ingest-commit-bytes",
        str(COMMIT_BYTES),
        "--grace-seconds",
        str(GRACE_S),
        # Chunking on (the default) with a smaller cut: these random words tokenize to 417 chunks
        # per 64 Ki characters (minutes of embedding per document on 2 cores); 8 Ki is ~52. The
        # chunker's own memory at 64 Ki (+0.65 MiB) is in README "Long documents".
        "--chunk-max-chars",
        "8192",
    ) as server:
        pid = server.process.pid
        # Warm-up: the first commit builds the index and starts the store's threads.
        warm = threading.Event()
        _ingest_until(server.address, "w", base[: MIB // 4], 1, warm)
        baseline = _anon(pid)

        # 1. A stream cancelled after a few acks: while it runs the parent stays under BOUND;
        # once cancelled, its memory comes back.
        sampler = Sampler(pid)
        acked_enough = threading.Event()
        stream: list[list[str]] = []
        runner = threading.Thread(
            target=lambda: stream.append(_ingest_until(server.address, "a", base, 4, acked_enough))
        )
        runner.start()
        assert acked_enough.wait(300)
        acked_enough.call.cancel()  # type: ignore[attr-defined]
        runner.join()
        peak = sampler.stop() - baseline
        print(f"parent anonymous memory peak: +{peak / MIB:.1f} MiB (bound {BOUND / MIB:.0f})")
        assert peak <= BOUND, (
            f"parent grew by {peak / MIB:.0f} MiB during the stream, bound {BOUND / MIB:.0f}"
        )
        # Released: polled, because the server notices the cancel asynchronously.
        released = threading.Event()
        for _ in range(300):
            if _anon(pid) <= baseline + 16 * MIB:
                released.set()
                break
            released.wait(0.1)
        assert released.is_set(), f"after the cancel: +{(_anon(pid) - baseline) / MIB:.0f} MiB"

        # 2. SIGTERM in the middle of such a stream: drains within the grace period, every
        # step of the shutdown runs (workers gone), exit code 0.
        workers = encoder_workers(pid)
        assert workers
        mid = threading.Event()
        second: list[list[str]] = []
        runner = threading.Thread(
            target=lambda: second.append(_ingest_until(server.address, "b", base, 2, mid))
        )
        runner.start()
        assert mid.wait(300)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(GRACE_S + 60) == 0, server.log()[-3000:]
        runner.join()
        assert "stopped" in server.log()
        assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]

    # nothing acknowledged was lost
    store = open_store(tmp_path / "data")
    try:
        acked = stream[0] + second[0]
        assert len(second[0]) >= 2
        assert all(doc is not None for doc in store.documents("large", acked))
    finally:
        store.close()
