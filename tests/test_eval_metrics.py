"""Evaluator metrics and loaders: hand-computed cases, and pytrec_eval / scipy as cross-checks."""

from __future__ import annotations

import gzip
import json
import math
import random
from pathlib import Path

import pytest

from server.evaluation import evaluate_run, load_beir, load_sts, spearman
from server.evaluation.datasets import DatasetError
from server.evaluation.metrics import query_metrics, ranked


def test_single_relevant_at_rank_two() -> None:
    m = query_metrics(["b", "a"], {"a": 1})
    assert m["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert m["mrr@10"] == pytest.approx(0.5)
    assert m["map@10"] == pytest.approx(0.5)
    assert m["recall@10"] == 1.0


def test_graded_gain_and_negative_relevance() -> None:
    judged = {"a": 2, "b": 1, "c": -1}
    # c (negative: gain 0, not relevant), a (gain 2), b (gain 1).
    m = query_metrics(["c", "a", "b"], judged)
    dcg = 2 / math.log2(3) + 1 / math.log2(4)
    idcg = 2 + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx(dcg / idcg)
    assert m["map@10"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["mrr@10"] == pytest.approx(0.5)


def test_cutoffs_and_ideal_uses_all_judged_docs() -> None:
    judged = {"r1": 1, "r2": 1}
    ranking = [f"n{i:02d}" for i in range(10)] + ["r1"]  # r1 at rank 11, r2 never
    m = query_metrics(ranking, judged)
    assert m == {"ndcg@10": 0.0, "recall@10": 0.0, "recall@100": 0.5, "mrr@10": 0.0, "map@10": 0.0}
    # One of two relevant docs at rank 1: nDCG = 1 / (1 + 1/log2(3)); MAP@10 divides by 2.
    m = query_metrics(["r1"], judged)
    assert m["ndcg@10"] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert m["map@10"] == pytest.approx(0.5)


def test_ties_break_by_doc_id_descending() -> None:
    assert ranked({"a": 1.0, "b": 1.0, "c": 2.0}) == ["c", "b", "a"]
    assert evaluate_run({"q": {"a": 1.0, "b": 1.0}}, {"q": {"a": 1}})["mrr@10"] == pytest.approx(0.5)


def test_mean_over_judged_queries_missing_run_scores_zero() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    scores = evaluate_run({"q1": {"a": 0.9}}, qrels)
    assert scores["ndcg@10"] == pytest.approx(0.5)
    assert scores["recall@100"] == pytest.approx(0.5)


def test_agrees_with_pytrec_eval_on_random_runs() -> None:
    import pytrec_eval  # dev extra: pytrec-eval-terrier (a cross-check only, not used by the product)

    rng = random.Random(7)
    docs = [f"d{i}" for i in range(150)]
    qrels = {f"q{q}": {d: rng.choice([-1, 0, 1, 2, 3]) for d in rng.sample(docs, 8)} for q in range(40)}
    # Scores rounded to 1 decimal: plenty of ties, to check the tie order as well.
    run = {q: {d: round(rng.random(), 1) for d in rng.sample(docs, 120)} for q in qrels}
    ours = evaluate_run(run, qrels)
    measures = {"ndcg_cut.10", "recall.10", "recall.100", "map_cut.10", "recip_rank"}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    top10 = {
        q: dict(sorted(hits.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:10])
        for q, hits in run.items()
    }
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    assert ours["ndcg@10"] == pytest.approx(mean([v["ndcg_cut_10"] for v in per_query.values()]))
    assert ours["recall@10"] == pytest.approx(mean([v["recall_10"] for v in per_query.values()]))
    assert ours["recall@100"] == pytest.approx(mean([v["recall_100"] for v in per_query.values()]))
    assert ours["map@10"] == pytest.approx(mean([v["map_cut_10"] for v in per_query.values()]))
    assert ours["mrr@10"] == pytest.approx(mean([v["recip_rank"] for v in rr.values()]))


def test_spearman_hand_computed_and_ties() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ranks x: 1,2,3 ; y (tie): 1.5,1.5,3 -> Pearson of (-1,0,1) and (-.5,-.5,1) = 1.5 / sqrt(2*1.5)
    assert spearman([1, 2, 3], [5, 5, 9]) == pytest.approx(1.5 / math.sqrt(2 * 1.5))
    from scipy import stats as scipy_stats  # comes with sentence-transformers

    rng = random.Random(3)
    x = [rng.randint(0, 5) for _ in range(200)]
    y = [rng.random() + xi * 0.1 for xi in x]
    assert spearman(x, y) == pytest.approx(float(scipy_stats.spearmanr(x, y).statistic))


def _write_beir(folder: Path, *, gz: bool) -> None:
    (folder / "qrels").mkdir(parents=True)
    corpus = [
        {"_id": "d1", "title": "Title one", "text": "body one"},
        {"_id": "d2", "title": "", "text": " body two "},
    ]
    lines = "".join(json.dumps(row) + "\n" for row in corpus)
    if gz:
        with gzip.open(folder / "corpus.jsonl.gz", "wt", encoding="utf-8") as handle:
            handle.write(lines)
    else:
        (folder / "corpus.jsonl").write_text(lines)
    (folder / "queries.jsonl").write_text(
        "".join(
            json.dumps({"_id": q, "text": t}) + "\n" for q, t in [("q1", "one"), ("q2", "two"), ("q3", "x")]
        )
    )
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\n")


@pytest.mark.parametrize("gz", [False, True])
def test_load_beir(tmp_path: Path, gz: bool) -> None:
    _write_beir(tmp_path / "tiny", gz=gz)
    data = load_beir(tmp_path / "tiny")
    assert data.name == "tiny"
    assert data.corpus == {"d1": "Title one body one", "d2": "body two"}
    assert data.queries == {"q1": "one", "q2": "two"}  # q3 is not judged
    assert data.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}
    with pytest.raises(DatasetError, match=r"dev\.tsv"):
        load_beir(tmp_path / "tiny", "dev")


def test_load_sts(tmp_path: Path) -> None:
    path = tmp_path / "sts.csv"
    path.write_text(
        'g\tf\t2012\t0001\t4.5\tA "quoted" man.\tA man.\textra\tcols\ng\tf\t2012\t0002\t0\tx\ty\n'
    )
    pairs = load_sts(path)
    assert pairs.gold == [4.5, 0.0]
    assert pairs.left == ['A "quoted" man.', "x"]
    assert pairs.right == ["A man.", "y"]


def test_config_labels_and_selection() -> None:
    from server.evaluation.configs import default_configs, select
    from server.evaluation.server_path import collection_name

    labels = [c.label for c in default_configs()]
    assert labels[0] == "server/full/float32"
    assert {"server/64/float32", "server/full/binary+rescore", "edge-local/32/naive", "edge-auto"} <= set(
        labels
    )
    assert len(labels) == len(set(labels))
    chosen = select(default_configs(), ["edge-local/128/*,server/full/int8"])
    assert [c.label for c in chosen] == ["server/full/int8", "edge-local/128/naive", "edge-local/128/fitted"]
    with pytest.raises(ValueError, match="matches no configuration"):
        select(default_configs(), ["nope/*"])
    # Stable per corpus (re-runs hit the same collection), different for another corpus.
    assert collection_name("sci fact", ["b", "a"]) == collection_name("sci fact", ["a", "b"])
    assert collection_name("sci fact", ["a"]) != collection_name("sci fact", ["a", "b"])
    assert collection_name("sci fact", ["a"]).startswith("eval-sci-fact-")
