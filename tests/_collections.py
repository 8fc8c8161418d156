"""Helpers for the store/ingest/search tests: SciFact documents and CollectionService calls."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1.embedding_pb2_grpc import CollectionServiceStub
from server.commands.ingest import read_corpus

# The shared live server's --search-filter-exact-max (tests/conftest.py).
LIVE_FILTER_EXACT_MAX = 30
# A small subset of BEIR SciFact kept in the repository (tests/fixtures/scifact/SOURCE.md).
SCIFACT = Path(__file__).resolve().parent / "fixtures" / "scifact"


def scifact_docs(n: int, skip: int = 0) -> list[tuple[str, str, dict[str, Any]]]:
    return list(itertools.islice(read_corpus(SCIFACT / "corpus.jsonl.gz"), skip, skip + n))


def scifact_queries(n: int) -> list[str]:
    with (SCIFACT / "queries.jsonl").open() as handle:
        return [json.loads(line)["text"] for line in itertools.islice(handle, n)]


def stub(address: str) -> tuple[grpc.Channel, CollectionServiceStub]:
    channel = grpc.insecure_channel(address)
    return channel, CollectionServiceStub(channel)


def requests(collection: str, docs: Iterable[tuple[str, str, dict[str, Any]]]) -> list[pb.IngestRequest]:
    out = []
    for doc_id, text, metadata in docs:
        request = pb.IngestRequest(collection=collection, id=doc_id, text=text)
        if metadata:
            request.metadata.update(metadata)
        out.append(request)
    return out


def ingest(
    address: str, collection: str, docs: Iterable[tuple[str, str, dict[str, Any]]]
) -> list[pb.IngestAck]:
    channel, service = stub(address)
    with channel:
        return list(service.Ingest(iter(requests(collection, docs)), timeout=600))


def search(address: str, collection: str, query: str, **options: Any) -> pb.SearchResponse:
    channel, service = stub(address)
    with channel:
        response: pb.SearchResponse = service.Search(
            pb.SearchRequest(collection=collection, query=query, **options), timeout=120
        )
        return response


def ranked(response: pb.SearchResponse) -> list[str]:
    return [hit.id for hit in response.hits]
