"""``embed-server eval`` end to end against the shared live server, on a tiny BEIR folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.cli import main
from server.evaluation.metrics import RETRIEVAL_METRICS
from tests.server_harness import ServerProcess

# Each query has one clearly matching document: a model worth serving ranks it first.
_DOCS = {
    "cat": ("Cats", "Cats are small domesticated felines that purr and chase mice."),
    "rust": ("Rust", "Rust is a systems programming language focused on memory safety."),
    "eiffel": ("", "The Eiffel Tower is a wrought-iron lattice tower in Paris, France."),
    "bread": ("Baking", "Bread is made from flour, water and yeast, then baked in an oven."),
}
_QUERIES = {
    "q-cat": ("which pet purrs and hunts mice", "cat"),
    "q-rust": ("memory-safe systems programming language", "rust"),
    "q-eiffel": ("famous iron tower in Paris", "eiffel"),
}


def _dataset(folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w") as handle:
        for doc_id, (title, text) in _DOCS.items():
            handle.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with (folder / "queries.jsonl").open("w") as handle:
        for qid, (text, _) in _QUERIES.items():
            handle.write(json.dumps({"_id": qid, "text": text}) + "\n")
        handle.write(json.dumps({"_id": "unjudged", "text": "not in the qrels"}) + "\n")
    rows = "".join(f"{qid}\t{doc}\t1\n" for qid, (_, doc) in _QUERIES.items())
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    return folder


def test_eval_end_to_end_json_shape_and_perfect_ranking(
    live_server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = _dataset(tmp_path / "tiny-beir")
    sts = tmp_path / "sts.csv"
    sts.write_text(
        "g\tf\t2012\t1\t5.0\tA man is eating food.\tA man is eating a piece of bread.\n"
        "g\tf\t2012\t2\t0.0\tA man is eating food.\tThe new movie is awesome.\n"
        "g\tf\t2012\t3\t3.0\tA woman plays the guitar.\tA woman is playing a violin.\n"
    )
    out = tmp_path / "results.json"
    args = ["eval", "--dataset", str(dataset), "--server", live_server.address, "--json", str(out)]
    assert main([*args, "--sts", str(sts), "--configs", "server/*", "edge-local/64/*", "edge-auto"]) == 0
    printed = capsys.readouterr().out
    assert "server/full/float32" in printed and "nDCG@10" in printed

    rows = json.loads(out.read_text())
    retrieval = [r for r in rows if r["task"] == "retrieval"]
    assert {r["label"] for r in retrieval} >= {"server/full/float32", "server/64/float32", "edge-auto"}
    for row in retrieval:
        assert row["path"] in ("server", "edge-local", "edge-auto")
        assert {"dims", "precision", "queries", *RETRIEVAL_METRICS} <= row.keys()
        assert row["queries"] == 3  # only judged queries
        if row["path"] == "edge-auto":
            assert "local_share" in row
        if row["ndcg@10"] is None:
            assert row["unavailable"]  # a configuration that cannot run says why
    by_label = {r["label"]: r for r in retrieval}
    # The edge half ran: edge-auto measured every query (locally or through the server), and of
    # the two 64-dim edge-local rows exactly the one matching the server's bundle projection
    # (identity: "naive", fitted on the store: "fitted") was measured; the other says why not.
    auto = by_label["edge-auto"]
    assert "unavailable" not in auto, auto.get("unavailable")
    # Every query has one clear match: the edge ranks it first, and auto answered some queries
    # itself (a local half that always deferred to the server, or ranked wrongly, fails here).
    assert auto["ndcg@10"] == pytest.approx(1.0) and auto["mrr@10"] == pytest.approx(1.0)
    assert 0.0 < auto["local_share"] <= 1.0, auto
    local = [by_label["edge-local/64/naive"], by_label["edge-local/64/fitted"]]
    measured = [r for r in local if r["ndcg@10"] is not None]
    assert len(measured) == 1, [r.get("unavailable") for r in local]
    assert measured[0]["ndcg@10"] == pytest.approx(1.0) and measured[0]["mrr@10"] == pytest.approx(1.0)
    (skipped,) = [r for r in local if r["ndcg@10"] is None]
    assert "the server's edge bundle uses the" in skipped["unavailable"]
    full = by_label["server/full/float32"]
    assert full["ndcg@10"] == pytest.approx(1.0)
    assert full["recall@10"] == pytest.approx(1.0) and full["mrr@10"] == pytest.approx(1.0)
    assert by_label["server/256/float32"]["dims"] == 256
    for label in ("server/bm25", "server/hybrid/rrf", "server/hybrid/weighted"):
        row = by_label[label]
        assert "unavailable" not in row, row.get("unavailable")
        assert 0.0 < row["ndcg@10"] <= 1.0 and row["mode"] in ("lexical", "hybrid")

    (sts_row,) = [r for r in rows if r["task"] == "sts"]
    assert sts_row["pairs"] == 3
    assert sts_row["spearman"] == pytest.approx(1.0)  # bread pair > guitar/violin > movie

    # A re-run ingests into the same collection and embeds nothing new.
    assert main([*args, "--configs", "server/full/float32"]) == 0
    assert "4 docs, 4 cached" in capsys.readouterr().out


def test_eval_needs_a_dataset_or_sts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--server", "127.0.0.1:1"]) == 2
    assert "--dataset" in capsys.readouterr().err
