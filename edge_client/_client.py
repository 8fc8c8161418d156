"""EdgeClient: the public entry point (bundle install, sync, local add, search with fallback)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict

from edge_client._download import Progress, Waiting, install_bundle
from edge_client._sync import SyncReport, sync_collection
from edge_client._transport import open_channel
from edge_client.errors import (
    BundleError,
    CollectionNotFound,
    FingerprintMismatch,
    InvalidInput,
    NotInitialized,
    ServerError,
    ServerUnavailable,
)
from edge_client.index import Chunk, Hit, LocalIndex
from edge_client.policy import Policy, fit_threshold, weak_evidence
from embedcore import BundleError as BundleFormatError
from embedcore import EdgeBundle, Filter, FilterError, parse_filter
from embedcore.chunking import CHUNK_MAX_CHARS, Chunker, embedded_part
from embedcore.router import Router, RouterError
from embedcore.transport import ClientCredentials, explain
from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1 import embedding_pb2_grpc as rpc

log = logging.getLogger(__name__)

Mode = Literal["local", "server", "auto"]


@dataclass(frozen=True)
class SearchResult:
    """Hits best first; ``source`` says who answered; ``degraded`` + ``reason`` say why local
    results stand in for the server's (or why auto asked the server)."""

    results: list[Hit]
    source: Literal["local", "server"]
    degraded: bool = False
    reason: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    detail: str | None = None  # degraded: what gRPC reported when asking the server failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "results": [
                {
                    "id": h.id,
                    "score": h.score,
                    "text": h.text,
                    "metadata": h.metadata,
                    "text_truncated": h.text_truncated,
                    "snippet_start": h.snippet_start,
                    "snippet_stop": h.snippet_stop,
                    "snippet": h.snippet,
                }
                for h in self.results
            ],
            "source": self.source,
            "degraded": self.degraded,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class AddReport:
    """What :meth:`EdgeClient.add` stored: ``documents`` paragraphs (one document each); of
    them ``chunked`` longer than the model reads, stored as ``chunks`` chunk vectors in all (the
    rest as one vector each); ``cut``: chunked paragraphs longer than
    ``embedcore.chunking.CHUNK_MAX_CHARS`` characters, whose end is stored but not embedded."""

    documents: int = 0
    chunked: int = 0
    chunks: int = 0
    cut: int = 0

    def summary(self) -> str:
        """One line for people, e.g. ``3 paragraphs (1 chunked into 4 chunks)``."""
        out = f"{self.documents} paragraph{'' if self.documents == 1 else 's'}"
        if self.chunked:
            out += f" ({self.chunked} longer than the model reads, chunked into {self.chunks} chunks"
            if self.cut:
                out += (
                    f"; {self.cut} over {CHUNK_MAX_CHARS:,} characters: "
                    "the text past that is stored, not embedded"
                )
            out += ")"
        return out


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs (blocks separated by blank lines), whitespace-collapsed, empty ones dropped."""
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def check_dims(bundle: EdgeBundle, dims: int) -> None:
    """BundleError unless the bundle's projection can produce ``dims``-dimensional vectors."""
    top = bundle.projection.max_dims
    if not 0 < dims <= top:
        raise BundleError(
            f"dims {dims} is not available with this bundle: its {bundle.projection.kind} projection "
            f"produces 1..{top} dimensions; pass --dims {top} or less"
        )


class EdgeClient:
    """Local semantic search with the server's model in ONNX; the server as fallback.

    ``home`` holds the installed bundle (``bundle/``), one index per collection
    (``collections/<name>/``) and ``config.json`` (server address, dims, dtype, and how to
    connect: TLS files and the token *file*, never a token). ``credentials`` (TLS, bearer token;
    ``token`` is a shorthand) override what ``config.json`` remembers for the same server.
    ``channel`` may be injected (interceptors); otherwise one is opened to ``server`` with
    retries and keepalive configured (see edge_client._transport).

    ``router`` (an :class:`embedcore.router.Router` over sharded servers): the server fallback
    searches through it (a split collection: every shard, merged) and :meth:`sync` pulls a
    collection from the shard(s) that hold it (a split collection part by part into the one
    local index, one checkpoint per shard). Without ``server``, :meth:`init` fetches the bundle
    from the first shard's primary; every shard must serve the same bundle (same model and
    projection) or SyncVectors refuses the others (FingerprintMismatch).
    """

    def __init__(
        self,
        home: Path | str,
        *,
        server: str | None = None,
        channel: grpc.Channel | None = None,
        dims: int | None = None,
        dtype: str | None = None,
        int8: bool = True,
        threads: int = 0,
        timeout: float = 5.0,
        credentials: ClientCredentials | None = None,
        token: str = "",
        cache_size: int = 1024,
        policy: Policy | None = None,
        router: Router | None = None,
    ) -> None:
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        config = self._read_config()
        self.router = router
        first_shard = router.map.shards[0].primary if router is not None else ""
        self.server = server or config.get("server", "") or first_shard
        # What init remembered applies to the server it was given, not to another one.
        saved = config.get("connection") if self.server == config.get("server") else None
        given = credentials or ClientCredentials()
        if token:
            given = dataclasses.replace(given, token=token, token_file=None)
        remembered = ClientCredentials.from_config(saved) if saved else ClientCredentials()
        self.credentials = remembered.overridden_by(given)
        self.dims = dims or int(config.get("dims", 0))
        self.dtype = dtype or str(config.get("dtype", "f16"))
        self.int8, self.threads, self.timeout = int8, threads, timeout
        self.policy = policy or Policy()
        self._metadata = self.credentials.metadata()
        self._channel = channel
        self._owns_channel = channel is None
        self._bundle: EdgeBundle | None = None
        self._indexes: dict[str, LocalIndex] = {}
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    # --- plumbing ----------------------------------------------------------------------------
    def _read_config(self) -> dict[str, Any]:
        path = self.home / "config.json"
        return dict(json.loads(path.read_text())) if path.is_file() else {}

    def _write_config(self) -> None:
        data = {
            "server": self.server,
            "dims": self.dims,
            "dtype": self.dtype,
            "connection": self.credentials.to_config(),
        }
        (self.home / "config.json").write_text(json.dumps(data, indent=2) + "\n")

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            if not self.server:
                raise NotInitialized("no server address: pass server=HOST:PORT or run init first")
            self._channel = open_channel(self.server, self.credentials)
        return self._channel

    @property
    def bundle(self) -> EdgeBundle:
        if self._bundle is None:
            try:
                self._bundle = EdgeBundle.load(self.home / "bundle")
            except BundleFormatError as exc:
                if not (self.home / "bundle").exists():
                    raise NotInitialized(
                        f"no edge bundle in {self.home}; run `edge-client init --server HOST:PORT`"
                    ) from exc
                self._bundle = self._refetch_bundle(str(exc))
        return self._bundle

    def _refetch_bundle(self, why: str) -> EdgeBundle:
        """The installed bundle is damaged: fetch it again from the server (it is a copy of
        the server's); NotInitialized when there is no server to fetch it from."""
        self._bundle = None
        if not self.server and self._channel is None:
            raise NotInitialized(
                f"the edge bundle in {self.home} is damaged ({why}); "
                "run `edge-client init --server HOST:PORT`"
            )
        log.warning(
            "the edge bundle in %s is damaged (%s); fetching it again from the server", self.home, why
        )
        try:
            return self.init()
        except ServerError as exc:
            raise NotInitialized(
                f"the edge bundle in {self.home} is damaged ({why}) and could not be fetched again: {exc}"
            ) from exc

    def _embed(self, texts: list[str], dims: int, kind: str) -> np.ndarray:
        """The bundle's vectors for ``texts``; a bundle whose model file turns out damaged
        (ONNX Runtime cannot load it) is fetched again once."""
        try:
            return self.bundle.embed(texts, dims, kind=kind, int8=self.int8, threads=self.threads)
        except BundleFormatError as exc:
            self._refetch_bundle(str(exc))
            return self.bundle.embed(texts, dims, kind=kind, int8=self.int8, threads=self.threads)

    def index(self, collection: str) -> LocalIndex:
        if collection not in self._indexes:
            dims = self.dims or self.bundle.manifest.default_dims
            index = LocalIndex(self.home / "collections" / collection, dims=dims, dtype=self.dtype)
            self._indexes[collection] = index
            if index.lost_local:  # their vectors were in a damaged file: embed their texts again
                # (chunked when long: whether one was added with --no-chunking is not kept)
                self._upsert_local(index, *map(list, zip(*index.lost_local, strict=True)))
                index.lost_local = []
                index.save()
        return self._indexes[collection]

    def _upsert_local(
        self,
        index: LocalIndex,
        ids: list[str],
        texts: list[str],
        metadata: list[dict[str, Any]],
        *,
        chunking: bool = True,
    ) -> AddReport:
        """Embed and store local documents. With ``chunking``, a text longer than the model
        reads is cut as the server cuts it (the bundle's chunker, at most
        :data:`~embedcore.chunking.CHUNK_MAX_CHARS` characters of it embedded) and stored with a
        vector per chunk; otherwise (and for short texts) it is one vector, of what the model
        reads of it (its beginning)."""
        # The same text embedded by the same bundle and graph is the same vector: shared.
        model = f"local:{self.bundle.fingerprint}:{'int8' if self.int8 else 'fp32'}:"
        chunker = self.bundle.chunker() if chunking else None
        spans = [_chunk_spans(chunker, text) for text in texts]
        report = AddReport(
            documents=len(ids),
            chunked=sum(1 for found in spans if found),
            chunks=sum(len(found) for found in spans),
            cut=sum(
                1 for found, text in zip(spans, texts, strict=True) if found and len(text) > CHUNK_MAX_CHARS
            ),
        )
        for group in _groups(spans, _EMBED_BATCH):
            pieces = [[texts[i]] if not spans[i] else [texts[i][a:b] for a, b in spans[i]] for i in group]
            flat = [piece for parts in pieces for piece in parts]
            vectors = self._embed(flat, index.dims, "document")
            contents = [model + hashlib.sha256(piece.encode("utf-8")).hexdigest() for piece in flat]
            at, firsts, chunks = 0, [], []
            for i, parts in zip(group, pieces, strict=True):
                firsts.append(at)
                chunks.append(
                    [Chunk(vectors[at + j], contents[at + j], a, b) for j, (a, b) in enumerate(spans[i])]
                )
                at += len(parts)
            index.upsert(
                [ids[i] for i in group],
                vectors[firsts],
                [texts[i] for i in group],
                [metadata[i] for i in group],
                source="local",
                contents=[contents[j] for j in firsts],
                chunks=chunks,
            )
        return report

    def close(self) -> None:
        for index in self._indexes.values():
            index.close()
        self._indexes.clear()
        if self._owns_channel and self._channel is not None:
            self._channel.close()
            self._channel = None

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- bundle and sync ---------------------------------------------------------------------
    def init(
        self,
        *,
        attempts: int = 3,
        progress: Progress | None = None,
        waiting: Waiting | None = None,
        collection: str = "",
    ) -> EdgeBundle:
        """Download, verify and install the server's edge bundle; remember the server and how
        to connect to it. ``progress(bytes, total)`` follows the download; ``waiting(seconds)``
        is called while the server prepares the bundle (it may be fitting the projection).
        ``collection``: the bundle of the model that collection is bound to on the server (a
        server may serve several models); "" = the server's default model's."""
        stub = rpc.EdgeServiceStub(self.channel)
        bundle = install_bundle(
            stub,
            self.home / "bundle",
            attempts=attempts,
            metadata=self._metadata,
            progress=progress,
            waiting=waiting,
            server=self.server,
            credentials=self.credentials,
            collection=collection,
        )
        self._bundle = bundle
        self._cache.clear()
        self.dims = self.dims or bundle.manifest.default_dims
        check_dims(bundle, self.dims)
        self._write_config()
        return bundle

    def sync(self, collection: str, *, progress: bool = False, timeout: float = 600.0) -> SyncReport:
        """Bring the local copy of ``collection`` up to date (incremental, resumable). With a
        router: from the shard(s) that hold it (see the class docstring). When the server
        refuses this edge's bundle for the collection (its model changed: a migration's cutover
        or rollback, or a refitted bundle), the collection's current bundle is fetched and
        installed and the collection synced again from the start, once (without a router)."""
        index = self.index(collection)
        if self.router is not None:
            report = self._sync_routed(self.router, index, collection, progress=progress, timeout=timeout)
            if report.upserts or report.deletes or report.full_resync:
                fit_threshold(index)
            return report
        try:
            report = sync_collection(
                rpc.CollectionServiceStub(self.channel),
                index,
                collection=collection,
                bundle_fingerprint=self.bundle.fingerprint,
                timeout=timeout,
                metadata=self._metadata,
                progress=progress,
            )
        except FingerprintMismatch as exc:
            if not self.server:
                raise
            old = self.bundle.fingerprint
            bundle = self.init(collection=collection)
            if bundle.fingerprint == old:  # the bundle was right: refused for another reason
                raise
            log.info(
                "the server's bundle for %r is now %s (%s); resyncing it", collection, bundle.fingerprint, exc
            )
            report = sync_collection(
                rpc.CollectionServiceStub(self.channel),
                index,
                collection=collection,
                bundle_fingerprint=bundle.fingerprint,
                timeout=timeout,
                metadata=self._metadata,
                progress=progress,
            )
        if report.upserts or report.deletes or report.full_resync:
            fit_threshold(index)
        return report

    def _sync_routed(
        self, router: Router, index: LocalIndex, collection: str, *, progress: bool, timeout: float
    ) -> SyncReport:
        """Each shard of ``collection`` in turn, from its primary, the next replica when that
        one is unreachable (another store: its part is synced again from 0); ServerUnavailable
        when a shard has no reachable replica. A split collection's parts missing on a shard
        (NOT_FOUND: no document landed there) add nothing."""
        shards = router.map.shards_for(collection)
        split = len(shards) > 1 or router.map.is_split(collection)
        reports: list[SyncReport] = []
        for shard in shards:
            failures: list[str] = []
            for address in shard.replicas:
                try:
                    reports.append(
                        sync_collection(
                            router.collections_stub(address),
                            index,
                            collection=collection,
                            bundle_fingerprint=self.bundle.fingerprint,
                            timeout=timeout,
                            metadata=router.metadata,
                            progress=progress,
                            part=shard.name if split else "",
                        )
                    )
                    break
                except ServerUnavailable as exc:
                    failures.append(f"{address}: {exc}")
                except CollectionNotFound:
                    if not split:
                        raise
                    break
            else:
                raise ServerUnavailable(
                    f"sync of {collection!r}: no replica of shard {shard.name} answered: "
                    + "; ".join(failures)
                )
        return SyncReport(
            collection,
            sum(r.upserts for r in reports),
            sum(r.deletes for r in reports),
            sum(r.sequence for r in reports),
            any(r.full_resync for r in reports),
            len(index),
            ",".join(r.incarnation for r in reports),
        )

    def add(self, paths: Iterable[Path | str], *, collection: str, chunking: bool = True) -> AddReport:
        """Embed local text files (one document per paragraph, id ``PATH#N``) into the index.
        A paragraph longer than the model reads is chunked as the server chunks a long document
        (several vectors, a search answers with its best chunk as the snippet; at most
        ``embedcore.chunking.CHUNK_MAX_CHARS`` characters of it are embedded, all of it is
        stored); ``chunking=False`` embeds only its beginning (what the model reads), as before.
        InvalidInput names the first paragraph with a NUL character (nothing is added)."""
        ids: list[str] = []
        texts: list[str] = []
        metadata: list[dict[str, Any]] = []
        for raw in paths:
            path = Path(raw).resolve()
            for n, paragraph in enumerate(split_paragraphs(path.read_text(encoding="utf-8"))):
                check_text(paragraph, f"{path}#{n}")
                ids.append(f"{path}#{n}")
                texts.append(paragraph)
                metadata.append({"path": str(path), "paragraph": n})
        if not ids:
            return AddReport()
        index = self.index(collection)
        report = self._upsert_local(index, ids, texts, metadata, chunking=chunking)
        index.save()
        fit_threshold(index)
        return report

    # --- search ------------------------------------------------------------------------------
    def embed_query(self, text: str, dims: int) -> np.ndarray:
        """The query's edge vector, from the LRU cache when seen before."""
        key = (text, dims)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        vector: np.ndarray = self._embed([text], dims, "query")[0]
        if self._cache_size:
            self._cache[key] = vector
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return vector

    def search_local(
        self, text: str, *, collection: str, k: int = 10, filter: str | None = None
    ) -> list[Hit]:
        """The local index's best ``k`` (those ``filter`` keeps: see :meth:`search`)."""
        check_text(text, "query")
        keep = parse_metadata_filter(filter)
        index = self.index(collection)
        return index.search(self.embed_query(text, index.dims), k, keep=keep)

    def search_server(
        self,
        text: str,
        *,
        collection: str,
        k: int = 10,
        timeout: float | None = None,
        filter: str | None = None,
    ) -> list[Hit]:
        """Full-dimension search on the server; ServerUnavailable when unreachable or too slow,
        CollectionNotFound when it has no such collection."""
        parse_metadata_filter(filter)  # refused here as the server would refuse it
        request = pb.SearchRequest(collection=collection, query=text, k=k, filter=filter or "")
        try:
            if self.router is not None:
                reply = self.router.search(request, timeout=timeout or self.timeout)
            else:
                stub = rpc.CollectionServiceStub(self.channel)
                reply = stub.Search(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except RouterError as exc:
            if exc.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                raise ServerUnavailable(str(exc), code=exc.code, detail=str(exc)) from exc
            if exc.code == "NOT_FOUND":
                raise CollectionNotFound(
                    f"no shard has collection {collection!r}", code=exc.code, detail=str(exc)
                ) from exc
            raise ServerError(f"server search failed: {exc}", code=exc.code, detail=str(exc)) from exc
        except grpc.RpcError as exc:
            failure = explain(exc, self.server, timeout=timeout or self.timeout, credentials=self.credentials)
            if failure.unreachable:
                raise ServerUnavailable(failure.summary, code=failure.code, detail=failure.detail) from exc
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise CollectionNotFound(
                    f"the server has no collection {collection!r}", code=failure.code, detail=failure.detail
                ) from exc
            message = f"server search failed: {failure.summary}"
            raise ServerError(message, code=failure.code, detail=failure.detail) from exc
        return [
            Hit(
                h.id,
                float(h.score),
                h.text,
                MessageToDict(h.metadata),
                h.text_truncated,
                snippet_start=h.snippet_start,
                snippet_stop=h.snippet_stop,
                snippet=h.snippet,
            )
            for h in reply.hits
        ]

    def search(
        self,
        text: str,
        *,
        collection: str,
        k: int = 10,
        mode: Mode = "auto",
        comprehensive: bool = False,
        timeout: float | None = None,
        filter: str | None = None,
    ) -> SearchResult:
        """Search ``collection``: locally, on the server, or ``auto`` (see edge_client.policy).
        ``filter``: a metadata filter as JSON text, the server's language (SearchRequest.filter,
        embedcore.filters): locally only the documents it keeps are ranked (exactly), and the
        server gets it. InvalidInput for an empty query or one with a NUL character, and for a
        malformed filter (naming the offending part, e.g. ``and[1].year.gte``), in every mode."""
        if mode not in ("local", "server", "auto"):
            raise ValueError(f"mode must be local, server or auto, got {mode!r}")
        check_text(text, "query")
        parse_metadata_filter(filter)
        if mode == "server":
            hits = self.search_server(text, collection=collection, k=k, timeout=timeout, filter=filter)
            return SearchResult(hits, "server")
        t0 = time.perf_counter()
        try:
            hits = self.search_local(text, collection=collection, k=k, filter=filter)
            reason = None
            if mode == "auto":
                index, fingerprint = self.index(collection), self.bundle.fingerprint
                reason = weak_evidence(hits, index, fingerprint, self.policy, comprehensive=comprehensive)
        except NotInitialized as exc:
            if mode == "local":
                raise
            hits, reason = [], f"no local bundle ({exc})"
        local_ms = (time.perf_counter() - t0) * 1e3
        if mode == "local" or reason is None:
            return SearchResult(hits, "local", timings_ms={"local": local_ms})
        try:
            server_hits = self.search_server(text, collection=collection, k=k, timeout=timeout, filter=filter)
        except ServerError as exc:
            # Fallback failed: the local answer stands, flagged, with both reasons.
            reason = f"{reason}; server failed: {exc}"
            detail = f"{exc.code}: {exc.detail}" if exc.detail else None
            return SearchResult(hits, "local", degraded=True, reason=reason, detail=detail)
        return SearchResult(server_hits, "server", reason=reason, timings_ms={"local": local_ms})

    def stats(self, collection: str) -> dict[str, Any]:
        index = self.index(collection)
        return {
            "documents": len(index),
            "dims": index.dims,
            "dtype": index.dtype,
            "sequence": int(index.get_state("sequence", "0")),
            "threshold": index.get_state("threshold"),
            "bundle": self.bundle.fingerprint,
        }


_EMBED_BATCH = 256  # texts (whole documents or chunks) embedded and stored at once


def _chunk_spans(chunker: Chunker | None, text: str) -> list[tuple[int, int]]:
    """The character spans of ``text``'s chunks when it is longer than the model reads and
    ``chunker`` is given (what the server stores for it), else [] (embedded whole)."""
    if chunker is None:
        return []
    found = chunker.split(embedded_part(text, CHUNK_MAX_CHARS))
    return [(span.start, span.stop) for span in found] if len(found) > 1 else []


def _groups(spans: list[list[tuple[int, int]]], size: int) -> list[list[int]]:
    """Consecutive documents in groups of about ``size`` vectors (a document's chunks stay in
    one group, so a group may be larger when one document has more)."""
    groups: list[list[int]] = []
    current: list[int] = []
    count = 0
    for i, found in enumerate(spans):
        need = max(1, len(found))
        if current and count + need > size:
            groups.append(current)
            current, count = [], 0
        current.append(i)
        count += need
    if current:
        groups.append(current)
    return groups


def parse_metadata_filter(text: str | None) -> Filter | None:
    """The parsed filter (None for none or ""); InvalidInput naming the offending part."""
    if not text:
        return None
    try:
        return parse_filter(text)
    except FilterError as exc:
        raise InvalidInput(f"filter: {exc}") from None


def check_text(text: str, what: str) -> None:
    """The server's input rule (server.validation.check_text), applied before embedding: the
    edge tokenizer would drop a NUL and answer for another text."""
    if not text:
        raise InvalidInput(f"{what} is empty; send at least one character")
    if "\x00" in text:
        raise InvalidInput(f"{what} contains a NUL character (U+0000), which is not accepted")
