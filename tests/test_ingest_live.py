"""Ingest through the real server and model: content-hash caching, acks, per-item errors, CLI."""

from __future__ import annotations

import subprocess
import sys
import uuid
from typing import Any

import grpc
import pytest

from protos.embedding.v1 import embedding_pb2 as pb
from tests._collections import ingest, requests, scifact_docs, search, stub

N = 120


def _unseen(docs: list[tuple[str, str, dict[str, Any]]]) -> list[tuple[str, str, dict[str, Any]]]:
    """The documents with a marker no other test (or earlier run) used, so the live server's
    content-hash store has never seen their texts, whatever ran before on it."""
    marker = uuid.uuid4().hex
    return [(doc_id, f"{text} [{marker}]", metadata) for doc_id, text, metadata in docs]


def test_reingest_embeds_nothing_and_a_changed_doc_only_itself(live_server) -> None:  # type: ignore[no-untyped-def]
    docs = _unseen(scifact_docs(N))
    first = ingest(live_server.address, "ing-cache", docs)
    assert [a.id for a in first] == [d[0] for d in docs]  # request order
    assert not any(a.HasField("error") for a in first)
    assert sum(not a.cached for a in first) == N
    assert [a.sequence for a in first] == list(range(1, N + 1))
    assert all(len(a.content_hash) == 64 for a in first)

    again = ingest(live_server.address, "ing-cache", docs)
    assert all(a.cached for a in again)
    assert [a.sequence for a in again] == [a.sequence for a in first]  # unchanged: not logged again
    assert [a.content_hash for a in again] == [a.content_hash for a in first]

    changed = list(docs)
    changed[5] = (docs[5][0], docs[5][1] + " An added sentence about mitochondria.", docs[5][2])
    third = ingest(live_server.address, "ing-cache", changed)
    assert [a.id for a in third if not a.cached] == [docs[5][0]]
    assert third[5].content_hash != first[5].content_hash
    assert third[5].sequence == N + 1
    # the same text in another collection is a cache hit too (vectors are shared by content)
    other = ingest(live_server.address, "ing-cache-other", docs[:10])
    assert all(a.cached for a in other)
    # and the changed text is what the collection now returns
    hits = search(live_server.address, "ing-cache", "mitochondria added sentence", k=N, exact=True).hits
    assert next(h.text for h in hits if h.id == docs[5][0]).endswith("about mitochondria.")


def test_bad_documents_get_item_errors_and_the_stream_goes_on(live_server) -> None:  # type: ignore[no-untyped-def]
    reqs = requests("ing-errors", [("ok-1", "a fine document", {})])
    reqs.append(pb.IngestRequest(collection="ing-errors", id="", text="no id"))
    reqs.append(pb.IngestRequest(collection="ing-errors", id="empty", text="   "))
    reqs.append(pb.IngestRequest(collection="", id="x", text="no collection"))
    reqs.append(pb.IngestRequest(collection="ing-errors", id="i" * 300, text="long id"))
    reqs += requests("ing-errors", [("ok-2", "another fine document", {"k": "v"})])
    channel, service = stub(live_server.address)
    with channel:
        acks = list(service.Ingest(iter(reqs), timeout=120))
    assert [a.error.field for a in acks] == ["", "id", "text", "collection", "id", ""]
    assert all(a.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] for a in acks[1:5])
    assert "256" in acks[4].error.message
    assert [a.sequence for a in acks if not a.HasField("error")] == [1, 2]
    hit = search(live_server.address, "ing-errors", "another document", k=1).hits[0]
    assert hit.id == "ok-2" and dict(hit.metadata) == {"k": "v"}


def test_store_text_false_keeps_no_text(live_server) -> None:  # type: ignore[no-untyped-def]
    channel, service = stub(live_server.address)
    request = pb.IngestRequest(collection="ing-notext", id="secret", text="a private note", store_text=False)
    with channel:
        acks = list(service.Ingest(iter([request]), timeout=60))
    assert not acks[0].HasField("error")
    hit = search(live_server.address, "ing-notext", "private note", k=1).hits[0]
    assert hit.id == "secret" and hit.text == ""


def test_cli_ingest_then_search_json(live_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import gzip
    import json

    corpus = tmp_path / "corpus.jsonl.gz"
    with gzip.open(corpus, "wt") as handle:
        for doc_id, title, text in [
            ("p1", "Cats", "Cats purr when they are content."),
            ("p2", "Rockets", "A rocket engine burns fuel and oxidizer."),
            ("p3", "", "Bread is baked from flour, water and yeast."),
        ]:
            handle.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    cmd = [sys.executable, "-m", "server"]
    done = subprocess.run(
        [*cmd, "ingest", str(corpus), "--collection", "ing-cli", "--server", live_server.address],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "3 docs into 'ing-cli': 3 embedded, 0 cached, 0 failed" in done.stdout
    found = subprocess.run(
        [
            *cmd,
            "search",
            "how is bread made",
            "--collection",
            "ing-cli",
            "--server",
            live_server.address,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert found.returncode == 0, found.stderr
    answer = json.loads(found.stdout)
    assert answer["source"] == "server" and answer["degraded"] is False and answer["reason"] is None
    assert answer["results"][0]["id"] == "p3"
    assert {r["id"] for r in answer["results"]} == {"p1", "p2", "p3"}
    assert answer["results"][1]["metadata"].get("title") in ("Cats", "Rockets")
    missing = subprocess.run(
        [*cmd, "search", "x", "--collection", "ing-no-such", "--server", live_server.address],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


@pytest.mark.parametrize("batch", [1, 700])
def test_acks_follow_request_order_across_commits(live_server, batch: int) -> None:  # type: ignore[no-untyped-def]
    # 700 docs span several commits (256 per commit) and the bounded read-ahead
    docs: list[tuple[str, str, dict[str, Any]]] = [
        (f"o{i}", f"order test document number {i % 50}", {}) for i in range(batch)
    ]
    acks = ingest(live_server.address, f"ing-order-{batch}", docs)
    assert [a.id for a in acks] == [d[0] for d in docs]
    assert sorted(a.sequence for a in acks) == [a.sequence for a in acks]
    assert sum(not a.cached for a in acks) <= 50  # 50 distinct texts: embedded at most once each


def test_cli_ingest_chunking_flags_override_the_server(live_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The shared server chunks by default: the CLI's --no-chunking keeps a long document whole,
    no flag leaves it to the server, and the two flags together are refused."""
    import json

    from tests._collections import scifact_docs

    long_text = " ".join(text for _, text, _ in scifact_docs(4, skip=300))  # ~1,000 tokens
    corpus = tmp_path / "long.jsonl"
    corpus.write_text(json.dumps({"_id": "long", "title": "", "text": long_text}) + "\n")
    cmd = [sys.executable, "-m", "server", "ingest", str(corpus), "--server", live_server.address]
    outputs = {}
    for collection, flags in (("cli-whole", ["--no-chunking"]), ("cli-default", [])):
        done = subprocess.run(
            [*cmd, "--collection", collection, *flags], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        outputs[collection] = done.stdout
    assert "1 chunks (0 docs longer than the model reads were chunked)" in outputs["cli-whole"]
    assert "(1 docs longer than the model reads were chunked)" in outputs["cli-default"]
    both = subprocess.run(
        [*cmd, "--collection", "cli-x", "--chunking", "--no-chunking"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
