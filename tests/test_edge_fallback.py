"""auto search: local when the evidence is strong, the server when weak; degraded when it fails."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from edge_client import EdgeClient, Policy
from edge_client.cli import main as edge_main
from tests._collections import ingest
from tests.server_harness import free_port

SAMPLE = Path(__file__).resolve().parent.parent / "server" / "samples" / "sample_corpus.jsonl"


@pytest.fixture(scope="module")
def edge_home(live_server: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    collection = f"edge-fallback-{uuid.uuid4().hex[:8]}"
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    ingest(live_server.address, collection, [(r["_id"], f"{r['title']} {r['text']}", {}) for r in rows])
    home = tmp_path_factory.mktemp("edge-fallback")
    with EdgeClient(home, server=live_server.address) as client:
        client.init()
        client.sync(collection)
    return home, collection


def test_auto_answers_locally_when_the_match_is_clear(live_server: Any, edge_home: tuple[Path, str]) -> None:
    home, collection = edge_home
    with EdgeClient(home, server=live_server.address) as client:
        result = client.search("why can't light escape a black hole", collection=collection, k=3)
    assert (result.source, result.degraded, result.reason) == ("local", False, None)
    assert result.results[0].id == "astro-1"


def test_auto_asks_the_server_when_local_evidence_is_weak(
    live_server: Any, edge_home: tuple[Path, str]
) -> None:
    home, collection = edge_home
    with EdgeClient(home, server=live_server.address, policy=Policy(threshold=0.95)) as client:
        client.index(collection).set_state("threshold", "")  # use the policy's (strict) default
        weak = client.search("why can't light escape a black hole", collection=collection, k=3)
        asked = client.search("volcano", collection=collection, k=3, comprehensive=True)
    assert weak.source == "server" and "below the threshold" in (weak.reason or "")
    assert weak.results[0].id == "astro-1"
    assert asked.source == "server" and asked.reason == "comprehensive results requested"


def test_auto_asks_the_server_for_an_empty_index(
    live_server: Any, edge_home: tuple[Path, str], tmp_path: Path
) -> None:
    _, collection = edge_home
    with EdgeClient(tmp_path, server=live_server.address) as client:
        client.init()  # bundle installed, nothing synced yet
        result = client.search("volcano eruption", collection=collection, k=3, mode="auto")
    assert result.source == "server" and result.reason == "local index is empty"
    assert result.results[0].id == "geo-1" and not result.degraded


def test_unreachable_server_gives_degraded_local_answers(edge_home: tuple[Path, str]) -> None:
    home, collection = edge_home
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    with EdgeClient(home, server=dead, timeout=2.0) as client:
        result = client.search("sourdough", collection=collection, k=3, comprehensive=True)
        local = client.search("sourdough", collection=collection, k=3, mode="local")
    assert result.source == "local" and result.degraded
    # The reason names the server in words; gRPC's transport text is kept for --verbose.
    assert result.reason == (
        f"comprehensive results requested; server failed: server at {dead} unreachable (connection refused)"
    )
    assert [h.id for h in result.results] == [h.id for h in local.results]
    assert result.results[0].id == "cook-1"


def test_the_cli_says_the_server_is_unreachable_and_shows_grpcs_text_with_verbose(
    edge_home: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    home, collection = edge_home
    dead = f"127.0.0.1:{free_port()}"
    argv = ["search", "sourdough", "--collection", collection, "--home", str(home), "--server", dead,
            "--comprehensive", "--timeout", "2"]  # fmt: skip
    assert edge_main(argv) == 0
    out, err = capsys.readouterr()
    assert f"source: local DEGRADED (comprehensive results requested; server failed: server at {dead} " in out
    assert "unreachable (connection refused))" in out
    assert "failed to connect" not in out + err
    assert edge_main([*argv, "--verbose"]) == 0
    assert "failed to connect to all addresses" in capsys.readouterr().err


def test_server_past_its_deadline_gives_degraded_local_answers(
    live_server: Any, edge_home: tuple[Path, str]
) -> None:
    home, collection = edge_home
    with EdgeClient(home, server=live_server.address) as client:
        result = client.search("sourdough", collection=collection, k=3, comprehensive=True, timeout=1e-4)
    assert result.source == "local" and result.degraded
    expected = f"server failed: server at {live_server.address} did not answer within 0.0001 s"
    assert expected in (result.reason or "")


def test_query_cache_serves_repeats(live_server: Any, edge_home: tuple[Path, str]) -> None:
    home, _ = edge_home
    with EdgeClient(home, server=live_server.address, cache_size=2) as client:
        first = client.embed_query("honeybee dance", 128)
        assert client.embed_query("honeybee dance", 128) is first
        client.embed_query("a", 128)
        client.embed_query("b", 128)
        assert client.embed_query("honeybee dance", 128) is not first  # evicted (LRU of 2)
