"""Router: one client over N sharded (and replicated) servers, torch-free.

Used by ``embed-server search`` / ``ingest`` / ``eval`` (``--shard-map``), the edge client's
server fallback and sync, and the Ray bulk ingestion. Placement is :mod:`embedcore.shardmap`'s.

- **Search** of a whole collection goes to its shard. Of a **split** collection it goes to
  every shard (in parallel), each asked for ``k``; the hits are merged by score, ties broken by
  document id (UTF-8 byte order, the order a server's exact search breaks ties in: its matrix
  rows are in id order), and the first ``k`` kept. Every document lives on exactly one shard
  and each shard returns its own best ``k``, so the merged list is the one a single server
  holding every document would return (exactly so for ``exact`` searches; approximate ones
  are as good as each shard's index). The shards must answer with the same
  ``model_fingerprint`` (else :class:`ShardMismatch`). LEXICAL and HYBRID searches of a split
  collection are refused (:class:`RouterError`, INVALID_ARGUMENT): BM25 statistics are per
  shard, so their scores do not compare. A shard that has no documents of a split collection
  (NOT_FOUND) adds nothing; NOT_FOUND from all of them is NOT_FOUND.
- **Reads** (Search, SyncVectors, Info) go to one replica of a shard, round-robin, and move
  to the next replica on UNAVAILABLE (a replica down or going away mid-call); only when every
  replica is UNAVAILABLE does the call fail (:class:`ShardUnavailable`).
- **Writes** (Ingest) go to *every* replica of the shard (the servers have no replication of
  their own), in parallel; a document is acknowledged when every replica acknowledged it.
  Re-sending a batch after a failure is safe: an upsert by (collection, id), and an unchanged
  text is a content-hash hit on the replicas that already have it.
- :meth:`Router.check` calls ``Info`` on every replica at start: all must serve the same model
  (fingerprint, dimensions), each shard needs a reachable replica; it reports collections found
  on a shard the map does not place them on, and replicas that disagree on a collection's size.

Errors (all :class:`RouterError`, with ``code``, a gRPC status name, and ``shard``):
``ShardUnavailable`` (UNAVAILABLE), ``ShardMismatch`` (FAILED_PRECONDITION), and
``ShardCallError`` for a call a shard refused (its own code and message).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from embedcore.shardmap import Shard, ShardMap
from embedcore.transport import ClientCredentials, open_channel
from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1 import embedding_pb2_grpc as rpc

__all__ = [
    "ClusterInfo",
    "Router",
    "RouterError",
    "ShardCallError",
    "ShardMismatch",
    "ShardUnavailable",
    "merge_hits",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

MESSAGE_BYTES = 64 << 20
_OPTIONS: list[tuple[str, str | int]] = [
    ("grpc.max_receive_message_length", MESSAGE_BYTES),
    ("grpc.max_send_message_length", MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # No transparent retries to the same address: the router moves to another replica instead.
    ("grpc.enable_retries", 0),
]
_NOT_COMPARABLE = (pb.SEARCH_MODE_LEXICAL, pb.SEARCH_MODE_HYBRID)


class RouterError(Exception):
    """A routed call failed. ``code``: gRPC status name; ``shard``: the shard, when one."""

    def __init__(self, message: str, *, code: str = "UNKNOWN", shard: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.shard = shard


class ShardUnavailable(RouterError):
    """Every replica of a shard was unreachable (UNAVAILABLE)."""


class ShardMismatch(RouterError):
    """Servers that must agree do not (model fingerprint, dimensions, answers' fingerprints)."""


class ShardCallError(RouterError):
    """A shard refused a call with a status other than UNAVAILABLE (its code and message)."""


@dataclass(frozen=True)
class ClusterInfo:
    """What :meth:`Router.check` found: the model every server serves, each replica's Info
    (by address), and warnings (unreachable replicas, misplaced collections, replicas that
    disagree on a collection's document count)."""

    model_fingerprint: str
    dimensions: int
    infos: dict[str, pb.InfoResponse]
    warnings: list[str] = field(default_factory=list)


def merge_hits(responses: Sequence[pb.SearchResponse], k: int) -> list[pb.SearchHit]:
    """The best ``k`` hits of all ``responses``: score descending, then id ascending (UTF-8
    bytes), the order one server's exact search ranks the same documents in."""
    hits = [hit for response in responses for hit in response.hits]
    hits.sort(key=lambda h: (-h.score, h.id.encode("utf-8")))
    return hits[:k]


class Router:
    """A client over the servers of a :class:`ShardMap`; see the module docstring.

    Thread-safe. ``credentials`` (TLS, bearer token) apply to every server; ``timeout`` is the
    default deadline of one call in seconds. Close it (or use ``with``) to close the channels.
    """

    def __init__(
        self,
        shard_map: ShardMap,
        *,
        credentials: ClientCredentials | None = None,
        timeout: float = 60.0,
        max_workers: int = 0,
    ) -> None:
        self.map = shard_map
        self.credentials = credentials or ClientCredentials()
        self.timeout = timeout
        self._metadata = self.credentials.metadata()
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()
        self._turn = {s.name: itertools.count() for s in shard_map.shards}
        replicas = sum(len(s.replicas) for s in shard_map.shards)
        self._pool = ThreadPoolExecutor(
            max_workers=max_workers or max(4, 2 * replicas), thread_name_prefix="router"
        )
        self._fingerprint = ""

    # --- plumbing ----------------------------------------------------------------------------
    def channel(self, address: str) -> grpc.Channel:
        """The (shared, lazily opened) channel to one replica."""
        with self._lock:
            ch = self._channels.get(address)
            if ch is None:
                ch = self._channels[address] = open_channel(address, self.credentials, _OPTIONS)
            return ch

    def collections_stub(self, address: str) -> rpc.CollectionServiceStub:
        return rpc.CollectionServiceStub(self.channel(address))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for ch in self._channels.values():
                ch.close()
            self._channels.clear()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def _order(self, shard: Shard) -> list[str]:
        """The shard's replicas, starting at the next in round-robin."""
        start = next(self._turn[shard.name]) % len(shard.replicas)
        return [*shard.replicas[start:], *shard.replicas[:start]]

    def read(self, shard: Shard, call: Callable[[str], T], what: str) -> T:
        """``call(address)`` on one replica of ``shard``, the next one on UNAVAILABLE.
        ShardUnavailable when every replica is; ShardCallError for another failure."""
        tried: list[str] = []
        for address in self._order(shard):
            try:
                return call(address)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise _call_error(exc, shard, address, what) from exc
                log.info("%s: replica %s of %s unavailable, trying the next", what, address, shard.name)
                tried.append(f"{address} ({exc.details()})")
        raise ShardUnavailable(
            f"{what}: every replica of shard {shard.name} is unreachable: {'; '.join(tried)}",
            code="UNAVAILABLE",
            shard=shard.name,
        )

    # --- Info --------------------------------------------------------------------------------
    def check(self, *, timeout: float = 10.0) -> ClusterInfo:
        """Info from every replica, checked against the map and each other (module docstring).
        ShardUnavailable: a shard with no reachable replica; ShardMismatch: servers that serve
        different models (fingerprint or dimensions)."""
        futures = {
            (shard.name, address): self._pool.submit(
                lambda a: rpc.EmbeddingServiceStub(self.channel(a)).Info(
                    pb.InfoRequest(), timeout=timeout, metadata=self._metadata
                ),
                address,
            )
            for shard in self.map.shards
            for address in shard.replicas
        }
        infos: dict[str, pb.InfoResponse] = {}
        warnings: list[str] = []
        for shard in self.map.shards:
            failures = []
            for address in shard.replicas:
                try:
                    infos[address] = futures[shard.name, address].result()
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise _call_error(exc, shard, address, "Info") from exc
                    failures.append(f"{address} ({exc.details()})")
            if len(failures) == len(shard.replicas):
                raise ShardUnavailable(
                    f"shard map {self.map.source}: shard {shard.name} has no reachable replica: "
                    + "; ".join(failures),
                    code="UNAVAILABLE",
                    shard=shard.name,
                )
            warnings += [f"replica {f} of shard {shard.name} is unreachable" for f in failures]
        models = {(i.model_fingerprint, i.dimensions) for i in infos.values()}
        if len(models) > 1:
            by_model = {
                f"{fp} ({dims} dims)": sorted(
                    a for a, i in infos.items() if (i.model_fingerprint, i.dimensions) == (fp, dims)
                )
                for fp, dims in models
            }
            raise ShardMismatch(
                f"shard map {self.map.source}: the servers serve different models, so their vectors "
                f"and scores do not compare: {by_model}; start every shard with the same --model",
                code="FAILED_PRECONDITION",
            )
        fingerprint, dims = models.pop()
        self._fingerprint = fingerprint
        warnings += self._placement_warnings(infos)
        for warning in warnings:
            log.warning("%s", warning)
        return ClusterInfo(fingerprint, int(dims), infos, warnings)

    def _placement_warnings(self, infos: dict[str, pb.InfoResponse]) -> list[str]:
        out = []
        for shard in self.map.shards:
            counts: dict[str, dict[str, int]] = {}
            for address in shard.replicas:
                info = infos.get(address)
                if info is None:
                    continue
                for c in info.collections:
                    counts.setdefault(c.name, {})[address] = int(c.documents)
                    if not self.map.is_split(c.name) and self.map.shard_for_collection(c.name) != shard:
                        out.append(
                            f"collection {c.name!r} is on {address} (shard {shard.name}) but the map places "
                            f"it on {self.map.shard_for_collection(c.name).name}: moved, or an old copy"
                        )
            out += [
                f"replicas of shard {shard.name} disagree on collection {name!r}: {per}"
                for name, per in counts.items()
                if len(set(per.values())) > 1
            ]
        return sorted(set(out))

    # --- Search ------------------------------------------------------------------------------
    def search(self, request: pb.SearchRequest, *, timeout: float | None = None) -> pb.SearchResponse:
        """Search ``request.collection`` wherever it lives (module docstring). The response's
        ``sequence`` is the sum of the shards' (a split collection has no single sequence line);
        ``timing`` is left empty for a split collection."""
        deadline = timeout or self.timeout
        shards = self.map.shards_for(request.collection)

        def one(shard: Shard) -> pb.SearchResponse | None:
            def call(address: str) -> pb.SearchResponse:
                stub = self.collections_stub(address)
                return stub.Search(request, timeout=deadline, metadata=self._metadata)  # type: ignore[no-any-return]

            try:
                return self.read(shard, call, f"Search {request.collection!r}")
            except ShardCallError as exc:
                if exc.code == "NOT_FOUND" and len(shards) > 1:
                    return None  # no document of this split collection landed on that shard
                raise

        if len(shards) == 1:
            response = one(shards[0])
            assert response is not None  # a single shard re-raises NOT_FOUND
            return response
        if request.mode in _NOT_COMPARABLE:
            raise RouterError(
                f"collection {request.collection!r} is split over {len(shards)} shards: LEXICAL and "
                "HYBRID scores (BM25 statistics) are per shard and do not merge; search it DENSE",
                code="INVALID_ARGUMENT",
            )
        futures = [self._pool.submit(one, shard) for shard in shards]
        answers = [f.result() for f in futures]
        responses = [r for r in answers if r is not None]
        if not responses:
            raise ShardCallError(
                f"no shard has collection {request.collection!r}", code="NOT_FOUND", shard=shards[0].name
            )
        fingerprints = {r.model_fingerprint for r in responses}
        if len(fingerprints) > 1:
            raise ShardMismatch(
                f"shards answered {request.collection!r} with vectors of different models "
                f"{sorted(fingerprints)}",
                code="FAILED_PRECONDITION",
            )
        merged = pb.SearchResponse(
            sequence=sum(r.sequence for r in responses), model_fingerprint=responses[0].model_fingerprint
        )
        merged.hits.extend(merge_hits(responses, request.k or 10))
        return merged

    # --- Ingest ------------------------------------------------------------------------------
    def partition(self, requests: Sequence[pb.IngestRequest]) -> dict[str, list[int]]:
        """Positions of ``requests`` per shard name (each document's placement), in order."""
        parts: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            parts.setdefault(self.map.shard_for_document(r.collection, r.id).name, []).append(i)
        return parts

    def ingest_shard(
        self, shard: Shard, requests: Sequence[pb.IngestRequest], *, timeout: float | None = None
    ) -> list[pb.IngestAck]:
        """Stream ``requests`` (all placed on ``shard``) through ``Ingest`` on every replica of
        it at once; one ack per request, in order (a replica's error ack wins over a success;
        ``cached`` only when every replica had it). ShardUnavailable / ShardCallError when a
        replica's stream fails: nothing of this call is known to be acknowledged everywhere;
        send it again (idempotent)."""
        return self._finish_shard(shard, requests, self._start_shard(shard, requests, timeout))

    def _start_shard(
        self, shard: Shard, requests: Sequence[pb.IngestRequest], timeout: float | None
    ) -> list[tuple[str, Future[list[pb.IngestAck]]]]:
        deadline = timeout or self.timeout

        def stream(address: str) -> list[pb.IngestAck]:
            stub = self.collections_stub(address)
            return list(stub.Ingest(iter(requests), timeout=deadline, metadata=self._metadata))

        return [(address, self._pool.submit(stream, address)) for address in shard.replicas]

    @staticmethod
    def _finish_shard(
        shard: Shard,
        requests: Sequence[pb.IngestRequest],
        futures: list[tuple[str, Future[list[pb.IngestAck]]]],
    ) -> list[pb.IngestAck]:
        per_replica: list[list[pb.IngestAck]] = []
        for address, future in futures:
            try:
                acks = future.result()
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    raise ShardUnavailable(
                        f"Ingest: replica {address} of shard {shard.name} is unreachable "
                        f"({exc.details()}); every replica must take the write: retry the batch",
                        code="UNAVAILABLE",
                        shard=shard.name,
                    ) from exc
                raise _call_error(exc, shard, address, "Ingest") from exc
            if len(acks) != len(requests):
                raise ShardCallError(
                    f"Ingest: replica {address} of shard {shard.name} answered {len(acks)} acks for "
                    f"{len(requests)} documents",
                    code="INTERNAL",
                    shard=shard.name,
                )
            per_replica.append(acks)
        out = []
        for i in range(len(requests)):
            acks = [replica[i] for replica in per_replica]
            failed = [a for a in acks if a.HasField("error")]
            ack = failed[0] if failed else acks[0]
            if not failed and not all(a.cached for a in acks):
                ack = pb.IngestAck()
                ack.CopyFrom(acks[0])
                ack.cached = False  # embedded on some replica
            out.append(ack)
        return out

    def ingest_batch(
        self, requests: Sequence[pb.IngestRequest], *, timeout: float | None = None
    ) -> list[pb.IngestAck]:
        """Every document of ``requests`` on its shard (all shards and replicas in parallel);
        acks in request order. Fails as :meth:`ingest_shard` does (resend the whole batch)."""
        parts = self.partition(requests)
        started = {
            name: self._start_shard(self.map.shard(name), [requests[i] for i in positions], timeout)
            for name, positions in parts.items()
        }
        out: list[pb.IngestAck | None] = [None] * len(requests)
        for name, positions in parts.items():
            part = [requests[i] for i in positions]
            for i, ack in zip(
                positions, self._finish_shard(self.map.shard(name), part, started[name]), strict=True
            ):
                out[i] = ack
        return [a for a in out if a is not None]

    def ingest(
        self, requests: Iterable[pb.IngestRequest], *, batch: int = 256, timeout: float | None = None
    ) -> Iterator[pb.IngestAck]:
        """:meth:`ingest_batch` over ``requests`` in batches of ``batch``; acks in order."""
        it = iter(requests)
        while chunk := list(itertools.islice(it, batch)):
            yield from self.ingest_batch(chunk, timeout=timeout)


def _call_error(exc: grpc.RpcError, shard: Shard, address: str, what: str) -> ShardCallError:
    code = exc.code()
    name = code.name if code is not None else "UNKNOWN"
    return ShardCallError(
        f"{what}: shard {shard.name} ({address}) answered {name}: {exc.details()}",
        code=name,
        shard=shard.name,
    )
