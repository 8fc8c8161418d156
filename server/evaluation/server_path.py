"""The server path: ingest through ``CollectionService.Ingest``, query through ``Search``, STS
through ``EmbeddingService.Embed``. A plain gRPC client; nothing of the service runtime. With a
router (``embed-server eval --shard-map FILE``) ingest and search go through
``embedcore.router.Router`` (a split collection: every shard, merged); Info, Embed and the
health wait stay with ``address`` (the first shard's primary)."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np

from embedcore.router import Router, RouterError
from embedcore.transport import ClientCredentials, explain, open_channel
from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1 import embedding_pb2_grpc as pb_grpc
from server.evaluation.configs import EvalConfig

log = logging.getLogger(__name__)

_PRECISION = {
    "float32": pb.PRECISION_FLOAT32,
    "float16": pb.PRECISION_FLOAT16,
    "int8": pb.PRECISION_INT8,
    "binary+rescore": pb.PRECISION_UBINARY,
}
_MODE = {"dense": pb.SEARCH_MODE_DENSE, "lexical": pb.SEARCH_MODE_LEXICAL, "hybrid": pb.SEARCH_MODE_HYBRID}
_FUSION = {"": pb.FUSION_UNSPECIFIED, "rrf": pb.FUSION_RRF, "weighted": pb.FUSION_WEIGHTED}
_MESSAGE_BYTES = 64 * 1024 * 1024
SEARCH_K = 100  # Recall@100 needs the top 100
_SERVING = b"\x08\x01"  # grpc.health.v1.HealthCheckResponse(status=SERVING), serialized


class Unavailable(Exception):
    """The server cannot answer this configuration (e.g. the RPC answers UNIMPLEMENTED)."""


def describe(error: grpc.RpcError, rpc: str) -> str:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    return f"{rpc}: {code.name if code else 'ERROR'} ({details})"


def collection_name(dataset: str, doc_ids: Sequence[str]) -> str:
    """``eval-<dataset>-<hash of the doc ids>``: stable across re-runs, so the store's content-
    hash cache makes a re-run ingest nothing new, and two different corpora never share one."""
    digest = hashlib.sha256("\n".join(sorted(doc_ids)).encode()).hexdigest()[:8]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset).strip("-") or "dataset"
    return f"eval-{slug}-{digest}"


@dataclass(frozen=True)
class IngestSummary:
    documents: int
    cached: int
    errors: int
    seconds: float
    first_error: str = ""
    sequence: int = 0  # the highest acknowledged change-log sequence


class ServerClient:
    def __init__(
        self,
        address: str,
        *,
        credentials: ClientCredentials | None = None,
        timeout: float = 120.0,
        router: Router | None = None,
    ) -> None:
        self.address = address
        self.router = router
        self.timeout = timeout
        self.credentials = credentials or ClientCredentials()
        self._metadata = list(self.credentials.metadata())
        options = [
            ("grpc.max_send_message_length", _MESSAGE_BYTES),
            ("grpc.max_receive_message_length", _MESSAGE_BYTES),
        ]
        self._channel = open_channel(address, self.credentials, options)
        self._embedding = pb_grpc.EmbeddingServiceStub(self._channel)
        self._collections = pb_grpc.CollectionServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def wait_ready(self, seconds: float = 30.0, serving_seconds: float = 600.0) -> None:
        """Wait for the connection, then for grpc.health.v1 to say SERVING (the model warms up
        after the port opens). Watch streams status changes, so nothing polls."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=seconds)
        except grpc.FutureTimeoutError as exc:
            hint = (
                "over TLS: check --tls-ca and, for mutual TLS, the client certificate"
                if self.credentials.use_tls
                else "if it speaks TLS, pass --tls-ca"
            )
            raise ConnectionError(
                f"no server answers at {self.address} (waited {seconds:.0f} s; {hint})"
            ) from exc
        # Raw bytes keep grpcio-health-checking out of the client's dependencies: the request
        # (service "") encodes as b"", a SERVING reply (status = 1) as b"\x08\x01".
        watch = self._channel.unary_stream(
            "/grpc.health.v1.Health/Watch",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        try:
            for reply in watch(b"", timeout=serving_seconds, metadata=self._metadata):
                if reply == _SERVING:
                    return
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return  # a server without the health service: nothing to wait for
            failure = explain(exc, self.address, credentials=self.credentials)
            raise ConnectionError(f"{self.address} never became SERVING: {failure}") from exc
        raise ConnectionError(f"{self.address} ended the health watch before SERVING")

    def info(self) -> pb.InfoResponse | None:
        """The server's Info, or None when it does not answer Info (older or partial servers)."""
        try:
            info: pb.InfoResponse = self._embedding.Info(
                pb.InfoRequest(), timeout=self.timeout, metadata=self._metadata
            )
            return info
        except grpc.RpcError as exc:
            log.warning("%s", describe(exc, "EmbeddingService.Info"))
            return None

    def ingest(
        self,
        collection: str,
        corpus: Mapping[str, str],
        progress: Callable[[int], None] | None = None,
    ) -> IngestSummary:
        """Stream the corpus in; acknowledgements arrive after commit, in request order. Texts
        are stored, as Ingest does by default: the edge adaptor is fitted on their sentences, so
        the edge rows measure what a default deployment serves."""

        def requests() -> Iterator[pb.IngestRequest]:
            for doc_id, text in corpus.items():
                yield pb.IngestRequest(collection=collection, id=doc_id, text=text)

        start = time.perf_counter()
        acks = cached = errors = sequence = 0
        first_error = ""
        try:
            # The whole corpus is one call: no per-call deadline that a large corpus could outlive.
            stream = (
                self._collections.Ingest(requests(), metadata=self._metadata)
                if self.router is None
                else self.router.ingest(requests(), timeout=self.timeout)
            )
            for ack in stream:
                acks += 1
                if ack.HasField("error") and ack.error.code:
                    errors += 1
                    first_error = first_error or f"{ack.id}: {ack.error.message}"
                elif ack.cached:
                    cached += 1
                sequence = max(sequence, ack.sequence)
                if progress is not None:
                    progress(acks)
        except grpc.RpcError as exc:
            raise Unavailable(describe(exc, "CollectionService.Ingest")) from exc
        except RouterError as exc:
            raise Unavailable(f"CollectionService.Ingest through the router: {exc}") from exc
        if acks != len(corpus):
            raise Unavailable(f"CollectionService.Ingest acknowledged {acks} of {len(corpus)} documents")
        return IngestSummary(acks, cached, errors, time.perf_counter() - start, first_error, sequence)

    def wait_lexical(self, collection: str, sequence: int, seconds: float = 600.0) -> None:
        """Wait until LEXICAL search reflects the collection up to ``sequence`` (the lexical index
        is rebuilt in the background after an ingest; SearchResponse.sequence says how far it is)."""
        deadline = time.monotonic() + seconds
        request = pb.SearchRequest(
            collection=collection, query="a", k=1, include_text=False, mode=pb.SEARCH_MODE_LEXICAL
        )
        while True:
            try:
                response = self._collections.Search(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as exc:
                raise Unavailable(describe(exc, "CollectionService.Search")) from exc
            if response.sequence >= sequence:
                return
            if time.monotonic() > deadline:
                raise Unavailable(f"the lexical index did not reach sequence {sequence} in {seconds:.0f} s")
            time.sleep(0.1)

    def search(self, collection: str, query: str, config: EvalConfig) -> dict[str, float]:
        request = pb.SearchRequest(
            collection=collection,
            query=query,
            k=SEARCH_K,
            exact=config.exact,
            precision=_PRECISION[config.precision],
            include_text=False,
            mode=_MODE[config.mode],
            fusion=_FUSION[config.fusion],
        )
        if config.dims is not None:
            request.dimensions = config.dims
        if self.router is not None:
            response = self.router.search(request, timeout=self.timeout)
        else:
            response = self._collections.Search(request, timeout=self.timeout, metadata=self._metadata)
        return {hit.id: float(hit.score) for hit in response.hits}

    def search_all(
        self, collection: str, queries: Mapping[str, str], config: EvalConfig, concurrency: int = 4
    ) -> dict[str, dict[str, float]]:
        """Every query; the first one alone, so an unsupported config fails fast and once."""
        items = list(queries.items())
        if not items:
            return {}
        try:
            run = {items[0][0]: self.search(collection, items[0][1], config)}
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                answers = pool.map(lambda item: self.search(collection, item[1], config), items[1:])
                run.update(zip((qid for qid, _ in items[1:]), answers, strict=True))
        except grpc.RpcError as exc:
            raise Unavailable(describe(exc, "CollectionService.Search")) from exc
        except RouterError as exc:
            raise Unavailable(f"CollectionService.Search through the router: {exc}") from exc
        return run

    def embed(self, texts: Sequence[str], batch: int = 64) -> np.ndarray:
        """Full-dimension float32 vectors, L2-normalized, through the unary Embed RPC."""
        rows: list[np.ndarray] = []
        options = pb.EmbedOptions(normalize=True, precision=pb.PRECISION_FLOAT32)
        try:
            for start in range(0, len(texts), batch):
                request = pb.EmbedRequest(inputs=list(texts[start : start + batch]), options=options)
                response = self._embedding.Embed(request, timeout=self.timeout, metadata=self._metadata)
                for vector in response.embeddings:
                    rows.append(np.frombuffer(vector.data, dtype="<f4", count=vector.dims))
        except grpc.RpcError as exc:
            raise Unavailable(describe(exc, "EmbeddingService.Embed")) from exc
        matrix = np.vstack(rows).astype(np.float32)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        return np.asarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)
