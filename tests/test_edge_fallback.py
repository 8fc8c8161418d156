"""auto search (edge_client/policy.py), one test per branch: local when the evidence is strong;
the server when the index is empty, stale (synced too long ago, or for another bundle), the top
score is below the threshold, the top scores are tied, comprehensive results are asked for, or
no bundle is installed; the local answer flagged degraded when the server then fails."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from edge_client import EdgeClient, InvalidInput, Policy
from edge_client.cli import main as edge_main
from tests._collections import ingest
from tests.server_harness import free_port

SAMPLE = Path(__file__).resolve().parent.parent / "server" / "samples" / "sample_corpus.jsonl"


def _rows() -> list[dict[str, str]]:
    return [json.loads(line) for line in SAMPLE.read_text().splitlines()]


@pytest.fixture(scope="module")
def edge_home(live_server: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    collection = f"edge-fallback-{uuid.uuid4().hex[:8]}"
    ingest(live_server.address, collection, [(r["_id"], f"{r['title']} {r['text']}", {}) for r in _rows()])
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


def test_auto_asks_the_server_when_the_index_is_stale(live_server: Any, edge_home: tuple[Path, str]) -> None:
    home, collection = edge_home
    query = "why can't light escape a black hole"  # answered locally by a fresh index (above)
    with EdgeClient(home, server=live_server.address, policy=Policy(max_staleness_s=0.0)) as client:
        result = client.search(query, collection=collection, k=3)
    assert result.source == "server" and not result.degraded
    assert (result.reason or "").startswith("local index is stale (last synced")
    assert result.results[0].id == "astro-1"


def test_auto_asks_the_server_when_the_index_was_synced_for_another_bundle(
    live_server: Any, edge_home: tuple[Path, str], tmp_path: Path
) -> None:
    home, collection = edge_home
    copy = tmp_path / "home"
    shutil.copytree(home, copy)  # the shared home stays as it is
    with EdgeClient(copy, server=live_server.address) as client:
        client.index(collection).set_state("bundle_fingerprint", "edge-0000000000000000")
        result = client.search("why can't light escape a black hole", collection=collection, k=3)
    assert result.source == "server" and not result.degraded
    assert result.reason == "local index was built with another edge bundle (sync again)"
    assert result.results[0].id == "astro-1"


def test_auto_asks_the_server_when_the_top_scores_are_tied(
    live_server: Any, edge_home: tuple[Path, str]
) -> None:
    """Two different contents with the same vector tie; two documents of one content do not.

    The model's tokenizer is uncased, so a text and its upper-case copy embed to the same vector
    while their content hashes differ: two points of the index, a real tie."""
    home, _ = edge_home
    collection = f"edge-tied-{uuid.uuid4().hex[:8]}"
    docs: list[tuple[str, str, dict[str, Any]]] = [
        (r["_id"], f"{r['title']} {r['text']}", {}) for r in _rows()
    ]
    (tied_id, tied_text, _), (twin_id, twin_text, _) = docs[0], docs[1]
    extra: list[tuple[str, str, dict[str, Any]]] = [
        ("shouted", tied_text.upper(), {}),  # another content, the same vector
        ("twin-copy", twin_text, {}),  # the same content: one point, two documents
    ]
    ingest(live_server.address, collection, [*docs, *extra])
    with EdgeClient(home, server=live_server.address) as client:
        client.sync(collection)
        local = client.search(tied_text, collection=collection, k=3, mode="local")
        tied = client.search(tied_text, collection=collection, k=3)
        twins = client.search(twin_text, collection=collection, k=3)
    first, second = local.results[:2]
    assert {first.id, second.id} == {tied_id, "shouted"}
    assert first.vector_key != second.vector_key and abs(first.score - second.score) < 0.005
    assert tied.source == "server" and not tied.degraded
    assert (tied.reason or "").startswith("top local scores are tied within")
    assert {h.id for h in tied.results[:2]} == {tied_id, "shouted"}
    assert (twins.source, twins.degraded, twins.reason) == ("local", False, None)
    assert {h.id for h in twins.results[:2]} == {twin_id, "twin-copy"}


def test_auto_asks_the_server_without_a_bundle(
    live_server: Any, edge_home: tuple[Path, str], tmp_path: Path
) -> None:
    _, collection = edge_home
    with EdgeClient(tmp_path, server=live_server.address) as client:  # never initialized
        result = client.search("volcano eruption", collection=collection, k=3)
    assert result.source == "server" and not result.degraded
    assert (result.reason or "").startswith("no local bundle")
    assert result.results[0].id == "geo-1"


def test_a_query_or_paragraph_the_server_refuses_is_refused_locally_too(
    live_server: Any, edge_home: tuple[Path, str], tmp_path: Path
) -> None:
    """The edge tokenizer drops NUL: "he\x00llo" would be searched as "hello" locally while the
    server refuses it. Every mode refuses it (and an empty query) before embedding."""
    home, collection = edge_home
    bad = tmp_path / "bad.txt"
    bad.write_text("fine paragraph\n\nbro\x00ken paragraph\n", encoding="utf-8")
    with EdgeClient(home, server=live_server.address) as client:
        for mode in ("local", "auto", "server"):
            with pytest.raises(InvalidInput, match=r"query contains a NUL character"):
                client.search("he\x00llo", collection=collection, mode=mode)
            with pytest.raises(InvalidInput, match="query is empty"):
                client.search("", collection=collection, mode=mode)
        before = len(client.index(collection))
        with pytest.raises(InvalidInput, match=r"bad.txt#1 contains a NUL character"):
            client.add([bad], collection=collection)
        assert len(client.index(collection)) == before  # nothing added
