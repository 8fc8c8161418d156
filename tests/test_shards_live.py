"""Sharded servers behind one router (embedcore.router), fed by the Ray ingestion
(server/ray_ingest.py), against one server holding every document.

Four real servers start once for the module (their model loads overlap): three shards, the
first with a second replica. A collection is split by document id over the three shards and
ingested through Ray Data on a local Ray; the same documents go, through a plain Ingest stream,
into one collection on a single server (the reference). The documents: 400 built
deterministically from the repository's SciFact fixture (each abstract's sentences, numbered,
until 400 distinct texts; see ``shard_corpus``). 400 keeps the module near a minute on two
cores; ``benchmarks/bench_shards.py --docs 1000`` checks every acknowledgement at scale.

Every server runs with ``--edge-fit-min-vectors`` above the corpus size, so each keeps the
plain-truncation edge bundle: a split collection's shards must serve the same bundle for an
edge to sync all of them (deploy/README.md, "Edge clients and shards").
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from embedcore.router import Router, RouterError, ShardUnavailable, merge_hits
from embedcore.shardmap import ShardMap, ShardMapError
from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1.embedding_pb2_grpc import CollectionServiceStub
from tests._collections import SCIFACT, scifact_queries
from tests.server_harness import ServerProcess, running_servers

DOCS = 400
SPLIT = "scifact-split"
SERVER_ARGS = ("--edge-fit-min-vectors", "1000000", "--ingest-commit-docs", "64")


def shard_corpus(n: int = DOCS) -> list[dict[str, str]]:
    """``n`` BEIR rows: the fixture abstracts' sentences (of 6+ words), in corpus order, each
    once, id ``<abstract id>-<sentence number>``."""
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            for i, sentence in enumerate(re.split(r"(?<=[.!?])\s+", doc["text"])):
                if len(sentence.split()) >= 6 and sentence not in seen:
                    seen.add(sentence)
                    rows.append({"_id": f"{doc['_id']}-{i}", "title": "", "text": sentence})
                    if len(rows) == n:
                        return rows
    raise AssertionError(f"the fixture gives only {len(rows)} sentences")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, edge_onnx_dir: Path) -> Iterator[dict[str, Any]]:
    """The four servers; the ONNX export is made first (edge_onnx_dir): servers started at once
    on a cold ONNX cache would each export into it at the same time."""
    root = tmp_path_factory.mktemp("shards")
    names = ["s0a", "s0b", "s1", "s2"]
    with running_servers([root / n / "data" for n in names], *SERVER_ARGS) as servers:
        by = dict(zip(names, servers, strict=True))
        shard_map = ShardMap.parse(
            {
                "shards": [
                    {"name": "shard-0", "replicas": [by["s0a"].address, by["s0b"].address]},
                    {"name": "shard-1", "replicas": [by["s1"].address]},
                    {"name": "shard-2", "replicas": [by["s2"].address]},
                ],
                "split": [SPLIT],
            },
            "test",
        )
        corpus = root / "corpus.jsonl"
        corpus.write_text("".join(json.dumps(r) + "\n" for r in shard_corpus()))
        with Router(shard_map) as router:
            yield {"servers": by, "map": shard_map, "router": router, "corpus": corpus, "root": root}


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A local Ray on this machine (``ray.init()``), as on a laptop; a cluster is the same API."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_report(cluster: dict[str, Any], local_ray: None) -> Any:
    from server.ray_ingest import ingest_with_ray

    return ingest_with_ray(
        [cluster["corpus"]], collection=SPLIT, shard_map=cluster["map"], senders=2, batch=50
    )


@pytest.fixture(scope="module")
def reference(cluster: dict[str, Any], ray_report: Any) -> str:
    """Every document in one collection of one server (shard-1's, outside the map's placement)."""
    rows = [json.loads(line) for line in cluster["corpus"].read_text().splitlines()]
    address: str = cluster["servers"]["s1"].address
    with grpc.insecure_channel(address) as channel:
        acks = list(
            CollectionServiceStub(channel).Ingest(
                iter([pb.IngestRequest(collection="reference", id=r["_id"], text=r["text"]) for r in rows]),
                timeout=600,
            )
        )
    assert [a.id for a in acks] == [r["_id"] for r in rows]
    assert not [a for a in acks if a.HasField("error")]
    return address


def _counts(server: ServerProcess, collection: str) -> int:
    with grpc.insecure_channel(server.address) as channel:
        reply = CollectionServiceStub(channel).ListCollections(pb.ListCollectionsRequest(), timeout=30)
    return sum(int(c.documents) for c in reply.collections if c.name == collection)


def test_ray_ingest_acknowledges_every_document_exactly_once(
    cluster: dict[str, Any], ray_report: Any
) -> None:
    ids = [json.loads(line)["_id"] for line in cluster["corpus"].read_text().splitlines()]
    acked = Counter(row["id"] for row in ray_report.acks)
    assert len(ids) == DOCS
    assert acked == Counter(ids)  # every document once, no other
    assert ray_report.failed == 0 and ray_report.documents == DOCS
    placement = {i: cluster["map"].shard_for_document(SPLIT, i).name for i in ids}
    assert {row["id"]: row["shard"] for row in ray_report.acks} == placement
    expected = Counter(placement.values())
    assert set(expected) == {"shard-0", "shard-1", "shard-2"}  # split over all three
    servers = cluster["servers"]
    stored = {
        "shard-0": _counts(servers["s0a"], SPLIT),
        "shard-1": _counts(servers["s1"], SPLIT),
        "shard-2": _counts(servers["s2"], SPLIT),
    }
    assert stored == dict(expected)
    assert _counts(servers["s0b"], SPLIT) == expected["shard-0"]  # the replica took every write


def test_ray_ingest_again_is_all_cache_hits(cluster: dict[str, Any], ray_report: Any) -> None:
    """Re-sending acknowledged documents (what a retried batch does) embeds nothing again."""
    from server.ray_ingest import ingest_with_ray

    again = ingest_with_ray(
        [cluster["corpus"]], collection=SPLIT, shard_map=cluster["map"], senders=1, batch=200, limit=300
    )
    assert (again.documents, again.cached, again.embedded, again.failed) == (300, 300, 0, 0)
    assert (
        _counts(cluster["servers"]["s1"], SPLIT)
        + _counts(cluster["servers"]["s2"], SPLIT)
        + _counts(cluster["servers"]["s0a"], SPLIT)
        == DOCS
    )


def test_ray_ingest_retries_a_failing_batch_then_reports_each_document(
    cluster: dict[str, Any], local_ray: None
) -> None:
    """A shard that never answers: each batch is sent ``attempts`` times, then every document
    comes back once, as an error naming the shard (nothing is dropped or duplicated)."""
    from server.ray_ingest import ingest_with_ray
    from tests.server_harness import free_port

    dead = ShardMap.single(f"127.0.0.1:{free_port()}")
    report = ingest_with_ray(
        [cluster["corpus"]], collection="nowhere", shard_map=dead, senders=1, batch=16, attempts=2, limit=40
    )
    assert sorted(row["id"] for row in report.acks) == sorted(r["_id"] for r in shard_corpus(40))
    assert report.failed == 40 and report.resent_documents == 40
    assert all("UNAVAILABLE" in row["error"] and "shard default" in row["error"] for row in report.acks)


def test_ingest_cli_ray_path_prints_the_plain_summary(
    cluster: dict[str, Any], ray_report: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.cli import main

    path = cluster["root"] / "ingest-map.json"
    path.write_text(json.dumps(cluster["map"].to_json()))
    argv = ["ingest", str(cluster["corpus"]), "--collection", SPLIT, "--shard-map", str(path), "--ray"]
    assert main([*argv, "--limit", "40", "--ray-batch", "16"]) == 0
    out = capsys.readouterr().out
    assert "40 docs into 'scifact-split': 0 embedded, 40 cached, 0 failed" in out
    assert "per shard: shard-" in out
    path.write_text('{"shards": [{"name": "s", "replicas": ["127.0.0.1"]}]}')
    assert main([*argv, "--limit", "1"]) == 2
    assert "is not a HOST:PORT address" in capsys.readouterr().err


def test_scatter_gather_ranks_as_one_server(cluster: dict[str, Any], reference: str) -> None:
    router: Router = cluster["router"]
    queries = scifact_queries(50)
    assert len(queries) == 50
    with grpc.insecure_channel(reference) as channel:
        single = CollectionServiceStub(channel)
        for query in queries:
            request = pb.SearchRequest(collection=SPLIT, query=query, k=10, exact=True, include_text=False)
            routed = router.search(request, timeout=60)
            request.collection = "reference"
            one = single.Search(request, timeout=60)
            assert [h.id for h in routed.hits] == [h.id for h in one.hits], query
            assert [h.score for h in routed.hits] == pytest.approx([h.score for h in one.hits], abs=1e-6)
            assert routed.model_fingerprint == one.model_fingerprint


def test_split_collection_refuses_lexical(cluster: dict[str, Any], ray_report: Any) -> None:
    request = pb.SearchRequest(collection=SPLIT, query="cancer", mode=pb.SEARCH_MODE_LEXICAL)
    with pytest.raises(RouterError, match="are per shard and do not merge") as caught:
        cluster["router"].search(request)
    assert caught.value.code == "INVALID_ARGUMENT"


def test_merge_breaks_ties_by_id() -> None:
    a = pb.SearchResponse(hits=[pb.SearchHit(id="b", score=0.5), pb.SearchHit(id="z", score=0.25)])
    b = pb.SearchResponse(hits=[pb.SearchHit(id="a", score=0.5), pb.SearchHit(id="c", score=0.75)])
    assert [h.id for h in merge_hits([a, b], 3)] == ["c", "a", "b"]


def test_check_reports_the_cluster(cluster: dict[str, Any]) -> None:
    info = cluster["router"].check()
    assert len(info.infos) == 4 and info.dimensions == 384
    assert len({i.edge_bundle_fingerprint for i in info.infos.values()}) == 1


def test_unreachable_shard_is_named(cluster: dict[str, Any]) -> None:
    from tests.server_harness import free_port

    dead = f"127.0.0.1:{free_port()}"
    data = cluster["map"].to_json()
    data["shards"].append({"name": "shard-3", "replicas": [dead]})
    with (
        Router(ShardMap.parse(data, "t.json"), timeout=5) as router,
        pytest.raises(ShardUnavailable) as caught,
    ):
        router.check(timeout=5)
    assert "shard-3" in str(caught.value) and dead in str(caught.value)
    assert caught.value.code == "UNAVAILABLE"


def test_bad_shard_maps_say_what_is_wrong(tmp_path: Path) -> None:
    cases = {
        "[]": "top level: expected a JSON object",
        '{"shards": []}': "shards: expected a non-empty list",
        '{"shards": [{"name": "a", "replicas": ["no-port"]}]}': r"shards\[0\]\.replicas\[0\]: 'no-port'",
        '{"shards": [{"name": "a", "replicas": ["h:1"]}, {"name": "a", "replicas": ["h:2"]}]}': "another",
        '{"shards": [{"name": "a", "replicas": ["h:1"]}], "pinned": {"c": "b"}}': "no shard named 'b'",
        '{"shards": [{"name": "a", "replicas": ["h:1"]}], "splitt": []}': "unknown keys",
        "{oops": "not JSON",
    }
    for text, message in cases.items():
        path = tmp_path / "map.json"
        path.write_text(text)
        with pytest.raises(ShardMapError, match=message):
            ShardMap.load(path)
    with pytest.raises(ShardMapError, match="cannot be read"):
        ShardMap.load(tmp_path / "missing.json")
    assert ShardMap.from_env({"EMBED_SHARD_MAP": ""}) is None
    env_map = ShardMap.from_env({"EMBED_SHARD_MAP": '{"shards": [{"name": "a", "replicas": ["h:1"]}]}'})
    assert env_map is not None and env_map.shard_for_collection("x").name == "a"


def test_search_cli_routes_over_the_shard_map(
    cluster: dict[str, Any], ray_report: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.cli import main

    path = cluster["root"] / "map.json"
    path.write_text(json.dumps(cluster["map"].to_json()))
    query = scifact_queries(1)[0]
    assert main(["search", query, "--collection", SPLIT, "--shard-map", str(path), "--exact", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = cluster["router"].search(pb.SearchRequest(collection=SPLIT, query=query, exact=True))
    assert [r["id"] for r in printed["results"]] == [h.id for h in expected.hits]
    path.write_text('{"shards": [{"name": "x", "replicas": ["127.0.0.1:1"]}]}')
    assert main(["search", query, "--collection", SPLIT, "--shard-map", str(path)]) == 2
    assert "shard x has no reachable replica" in capsys.readouterr().err


def test_edge_syncs_a_split_collection(
    cluster: dict[str, Any], ray_report: Any, edge_onnx_dir: Path, tmp_path: Path
) -> None:
    from edge_client import EdgeClient

    with EdgeClient(tmp_path / "edge", router=cluster["router"]) as edge:
        edge.init()
        report = edge.sync(SPLIT)
        assert report.upserts == DOCS and report.documents == DOCS
        again = edge.sync(SPLIT)  # incremental: one checkpoint per shard, nothing new
        assert (again.upserts, again.documents) == (0, DOCS)
        local = edge.search_local(scifact_queries(1)[0], collection=SPLIT, k=5)
        assert len(local) == 5
        ids = {json.loads(line)["_id"] for line in cluster["corpus"].read_text().splitlines()}
        stats = edge.stats(SPLIT)
        assert stats["documents"] == len(ids)
        result = edge.search(scifact_queries(1)[0], collection=SPLIT, mode="server")
        assert result.source == "server" and len(result.results) == 10


def test_killing_a_replica_loses_no_query(
    cluster: dict[str, Any], reference: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Searches run in a thread while shard-0's second replica is killed: every one answers,
    with the ranking it had before (the first replica holds the same documents)."""
    router: Router = cluster["router"]
    queries = scifact_queries(20)
    expected = {
        q: [h.id for h in router.search(pb.SearchRequest(collection=SPLIT, query=q, exact=True)).hits]
        for q in queries
    }
    answered: list[bool] = []
    errors: list[BaseException] = []
    half = threading.Event()

    def search_loop() -> None:
        try:
            for round_ in range(3):
                for i, q in enumerate(queries):
                    if round_ == 0 and i == len(queries) // 2:
                        half.set()
                    hits = router.search(
                        pb.SearchRequest(collection=SPLIT, query=q, exact=True), timeout=60
                    ).hits
                    answered.append([h.id for h in hits] == expected[q])
        except BaseException as exc:  # surfaces in the assertion below
            errors.append(exc)
            half.set()

    caplog.set_level(logging.INFO, logger="embedcore.router")
    thread = threading.Thread(target=search_loop)
    thread.start()
    half.wait(timeout=120)
    victim = cluster["servers"]["s0b"].process
    victim.kill()
    victim.wait()
    thread.join(timeout=300)
    assert not errors, errors
    assert len(answered) == 3 * len(queries) and all(answered)
    dead = cluster["servers"]["s0b"].address
    failovers = [r for r in caplog.records if f"replica {dead} of shard-0 unavailable" in r.getMessage()]
    assert failovers  # the dead replica was asked, and the query went to the other one
