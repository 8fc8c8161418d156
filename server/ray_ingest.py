"""Bulk ingestion on Ray Data: ``embed-server ingest FILE --collection NAME --ray``.

Ray Data reads the corpus (JSONL with BEIR's ``_id``/``title``/``text``, ``.jsonl.gz``, or
Parquet with the same columns) in blocks and streams them through a pool of sender actors
(``map_batches`` with a callable class on an actor pool of ``--ray-senders`` actors). Each actor holds
one :class:`embedcore.router.Router` (channels to every shard) and, per batch of
``--ray-batch`` documents, partitions the batch by the router's placement and streams each
part to its shard's ``Ingest`` (every replica of it) at once, then returns one row per
document: its ack (id, shard, cached, sequence, error, attempts).

- **Bounded in flight**: at most senders x batch documents are being sent at any time; Ray
  Data's streaming executor holds the reading back while the actors are busy.
- **Retries**: a batch whose stream fails (a shard restarting: UNAVAILABLE; a deadline; an
  overloaded server) is sent again whole, up to ``--ray-attempts`` times with backoff.
  Re-sending is idempotent: an upsert by (collection, id), and a document already acknowledged
  comes back a content-hash cache hit (nothing embedded twice). Only the acks of the attempt
  that succeeded are returned, so every document is acknowledged exactly once in the output;
  a batch that never succeeds comes back as per-document errors (the command exits 1).
- Runs on a local Ray (``ray.init()`` on this machine, what the tests do) or on a cluster
  unchanged (``--ray-address`` / ``RAY_ADDRESS``; the actors need this package importable
  there: install it in the cluster's image or pass a ``runtime_env``).

The vectors are computed by the shards (their GPUs); the actors need no GPU. The variant in
which GPU actors compute vectors and servers only store them is not built: ``Ingest`` has no
field for a vector (deploy/README.md, "Bulk ingestion past one machine").
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedcore.router import Router, RouterError
from embedcore.shardmap import ShardMap
from embedcore.transport import ClientCredentials

log = logging.getLogger(__name__)

__all__ = ["RayIngestReport", "ingest_with_ray"]

# Failures worth sending the batch again for; the others (a bad request) would fail again.
RETRYABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL"})


@dataclass
class RayIngestReport:
    """What came back: counts, seconds, and every document's ack row (for checks)."""

    collection: str
    embedded: int = 0
    cached: int = 0
    failed: int = 0
    chunks_embedded: int = 0
    chunks_cached: int = 0
    chunked: int = 0
    resent_documents: int = 0  # documents whose batch had to be sent more than once
    seconds: float = 0.0
    per_shard: Counter[str] = field(default_factory=Counter)
    acks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def documents(self) -> int:
        return self.embedded + self.cached + self.failed


class _Sender:
    """The Ray Data actor: one Router, batches in, one ack row per document out."""

    def __init__(
        self,
        shard_map: dict[str, Any],
        source: str,
        credentials: ClientCredentials,
        collection: str,
        attempts: int,
        store_text: bool,
        chunking: bool | None,
        timeout: float,
    ) -> None:
        self.router = Router(ShardMap.parse(shard_map, source), credentials=credentials, timeout=timeout)
        self.collection, self.attempts = collection, attempts
        self.store_text, self.chunking = store_text, chunking

    def _requests(self, batch: dict[str, Any]) -> list[Any]:
        from protos.embedding.v1 import embedding_pb2 as pb

        out = []
        titles = batch.get("title")
        for i, (doc_id, text) in enumerate(zip(batch["_id"], batch["text"], strict=True)):
            title = str(titles[i] or "") if titles is not None else ""
            request = pb.IngestRequest(
                collection=self.collection, id=str(doc_id), text=f"{title} {text or ''}".strip()
            )
            if title:
                request.metadata.update({"title": title})
            if not self.store_text:
                request.store_text = False
            if self.chunking is not None:
                request.chunking = self.chunking
            out.append(request)
        return out

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        requests = self._requests(batch)
        shards = [self.router.map.shard_for_document(r.collection, r.id).name for r in requests]
        error = ""
        for attempt in range(1, self.attempts + 1):
            try:
                acks = self.router.ingest_batch(requests)
            except RouterError as exc:
                error = f"{exc.code}: {exc}"
                if exc.code not in RETRYABLE or attempt == self.attempts:
                    break
                log.warning(
                    "batch of %d failed (attempt %d): %s; sending it again", len(requests), attempt, exc
                )
                time.sleep(min(0.2 * 2**attempt, 5.0))  # backoff between whole-batch retries
                continue
            return {
                "id": [a.id for a in acks],
                "shard": shards,
                "cached": [bool(a.cached) for a in acks],
                "sequence": [int(a.sequence) for a in acks],
                "error": [a.error.message if a.HasField("error") else "" for a in acks],
                "chunks_embedded": [int(a.chunks_embedded) for a in acks],
                "chunks_cached": [int(a.chunks_cached) for a in acks],
                "attempts": [attempt] * len(acks),
            }
        n = len(requests)
        return {
            "id": [r.id for r in requests],
            "shard": shards,
            "cached": [False] * n,
            "sequence": [0] * n,
            "error": [error or "failed"] * n,
            "chunks_embedded": [0] * n,
            "chunks_cached": [0] * n,
            "attempts": [self.attempts] * n,
        }


def _read(paths: Sequence[str], limit: int) -> Any:
    import ray.data

    if all(p.endswith(".parquet") for p in paths):
        ds = ray.data.read_parquet(list(paths), columns=None)
    elif any(p.endswith(".parquet") for p in paths):
        raise ValueError("give either JSONL or Parquet files, not both")
    else:
        gz = [p.endswith(".gz") for p in paths]
        if any(gz) and not all(gz):
            raise ValueError("give either .jsonl.gz or .jsonl files, not both")
        open_args = {"compression": "gzip"} if all(gz) else {}
        ds = ray.data.read_json(list(paths), lines=True, arrow_open_stream_args=open_args)
    missing = {"_id", "text"} - set(ds.schema().names)
    if missing:
        raise ValueError(f"the corpus has no column(s) {sorted(missing)} (BEIR: _id, title, text)")
    return ds.limit(limit) if limit else ds


def ingest_with_ray(
    paths: Sequence[str | Path],
    *,
    collection: str,
    shard_map: ShardMap,
    credentials: ClientCredentials | None = None,
    senders: int = 2,
    batch: int = 64,
    attempts: int = 5,
    limit: int = 0,
    store_text: bool = True,
    chunking: bool | None = None,
    timeout: float = 600.0,
    ray_address: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> RayIngestReport:
    """Ingest the corpus at ``paths`` into ``collection`` over the shards of ``shard_map``
    (module docstring). Starts (or joins, ``ray_address``) Ray when it is not running yet, and
    leaves it running. ``progress(n)`` gets each batch's document count. ValueError: unusable
    input (mixed formats, no ``_id``/``text`` column)."""
    import ray
    import ray.data

    if senders < 1 or batch < 1 or attempts < 1:
        raise ValueError("senders, batch and attempts must be >= 1")
    if not ray.is_initialized():
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter()
    ds = _read([str(p) for p in paths], limit)
    acks = ds.map_batches(
        _Sender,
        fn_constructor_kwargs={
            "shard_map": shard_map.to_json(),
            "source": shard_map.source,
            "credentials": credentials or ClientCredentials(),
            "collection": collection,
            "attempts": attempts,
            "store_text": store_text,
            "chunking": chunking,
            "timeout": timeout,
        },
        batch_size=batch,
        batch_format="numpy",
        # 1 to `senders` actors (Ray Data grows the pool with the input), each sending one batch
        # at a time (Ray Data queues a few more per actor)
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=senders),
        # The actors wait on the network; the shards do the computing.
        num_cpus=0.25,
    )
    report = RayIngestReport(collection)
    for out in acks.iter_batches(batch_size=None, batch_format="numpy"):
        rows = [dict(zip(out.keys(), values, strict=True)) for values in zip(*out.values(), strict=True)]
        for row in rows:
            row = {k: v.item() if hasattr(v, "item") else v for k, v in row.items()}
            report.acks.append(row)
            report.per_shard[str(row["shard"])] += 1
            if row["error"]:
                report.failed += 1
            elif row["cached"]:
                report.cached += 1
            else:
                report.embedded += 1
            report.chunks_embedded += int(row["chunks_embedded"])
            report.chunks_cached += int(row["chunks_cached"])
            report.chunked += int(row["chunks_embedded"]) + int(row["chunks_cached"]) > 1
            report.resent_documents += int(row["attempts"]) > 1
        if progress is not None:
            progress(len(rows))
    report.seconds = time.perf_counter() - started
    return report
