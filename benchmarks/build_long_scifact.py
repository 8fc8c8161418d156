"""Build a long-document retrieval set from BEIR SciFact (deterministic: a fixed seed).

Each long document is one SciFact abstract (a *target*: one judged relevant to a test query)
placed at a random position among 5-10 other abstracts (fillers: abstracts judged relevant to no
test query, each used once), paragraphs joined by a blank line; its id is ``long-<target id>``.
The abstracts no long document took are grouped the same way (6-11 per document) into
distractor long documents, so the set holds all of SciFact's text, as plain SciFact does. The
queries are SciFact's test queries (all, or the first ``--queries``), and each qrel points at the
long document holding the judged abstract, so the evidence usually starts past the model's 256
tokens.

Writes a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``) and
``manifest.json`` (seed, counts, where each target sits: its paragraph and first token).

    python benchmarks/build_long_scifact.py --out /tmp/scifact-long [--seed 13] [--queries 300]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

from _common import SHARED_DATA

from server.evaluation.datasets import load_beir

SEED = 13
MIN_OTHERS, MAX_OTHERS = 5, 10
SEPARATOR = "\n\n"


def build(scifact: Path, *, seed: int = SEED, queries: int = 0, distractors: int = -1) -> dict[str, Any]:
    """The long set in memory: {"corpus": {id: text}, "queries": {qid: text}, "qrels": {qid:
    {id: rel}}, "paragraphs": {id: [abstract ids]}, "targets": {id: paragraph index}}.
    ``queries``: the first N test queries (0: all); ``distractors``: at most this many
    distractor documents (-1: as many as the abstracts left make)."""
    plain = load_beir(scifact, "test")
    chosen = list(plain.qrels)[:queries] if queries else list(plain.qrels)
    judged_anywhere = {doc for rels in plain.qrels.values() for doc in rels}
    targets = [doc for doc in plain.corpus if any(doc in plain.qrels[q] for q in chosen)]
    rng = random.Random(seed)
    pool = [doc for doc in plain.corpus if doc not in judged_anywhere]
    rng.shuffle(pool)
    corpus: dict[str, str] = {}
    paragraphs: dict[str, list[str]] = {}
    where: dict[str, int] = {}
    for target in targets:
        count = rng.randint(MIN_OTHERS, MAX_OTHERS)
        fillers, pool = pool[:count], pool[count:]
        position = rng.randint(0, len(fillers))
        parts = [*fillers[:position], target, *fillers[position:]]
        doc_id = f"long-{target}"
        paragraphs[doc_id], where[doc_id] = parts, position
        corpus[doc_id] = SEPARATOR.join(plain.corpus[p] for p in parts)
    number = 0
    while len(pool) >= MIN_OTHERS + 1 and number != distractors:
        count = rng.randint(MIN_OTHERS, MAX_OTHERS) + 1
        parts, pool = pool[:count], pool[count:]
        doc_id = f"distractor-{number}"
        number += 1
        paragraphs[doc_id] = parts
        corpus[doc_id] = SEPARATOR.join(plain.corpus[p] for p in parts)
    qrels = {
        q: {f"long-{doc}": rel for doc, rel in plain.qrels[q].items() if f"long-{doc}" in corpus}
        for q in chosen
    }
    return {
        "corpus": corpus,
        "queries": {q: plain.queries[q] for q in chosen},
        "qrels": qrels,
        "paragraphs": paragraphs,
        "targets": where,
    }


def first_tokens(
    corpus: dict[str, str], paragraphs: dict[str, list[str]], where: dict[str, int]
) -> list[int]:
    """Per long document with a target: the target's first token (model tokenizer, no special tokens)."""
    from server.chunking import chunker_for
    from server.model import load_spec

    tokenizer = chunker_for(load_spec()).tokenizer
    out = []
    for doc_id, position in where.items():
        text = corpus[doc_id]
        start = sum(len(p) for p in text.split(SEPARATOR)[:position]) + len(SEPARATOR) * position
        out.append(len(tokenizer.encode(text[:start], add_special_tokens=False).ids) if start else 0)
    return out


def write(long_set: dict[str, Any], out: Path, *, seed: int, scifact: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "qrels").mkdir(exist_ok=True)
    with (out / "corpus.jsonl").open("w") as handle:
        for doc_id, text in long_set["corpus"].items():
            handle.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
    with (out / "queries.jsonl").open("w") as handle:
        for qid, text in long_set["queries"].items():
            handle.write(json.dumps({"_id": qid, "text": text}) + "\n")
    with (out / "qrels" / "test.tsv").open("w") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        for qid, rels in long_set["qrels"].items():
            for doc_id, rel in rels.items():
                handle.write(f"{qid}\t{doc_id}\t{rel}\n")
    starts = first_tokens(long_set["corpus"], long_set["paragraphs"], long_set["targets"])
    manifest = {
        "source": str(scifact),
        "seed": seed,
        "others_per_target": [MIN_OTHERS, MAX_OTHERS],
        "documents": len(long_set["corpus"]),
        "target_documents": len(long_set["targets"]),
        "queries": len(long_set["queries"]),
        "targets_starting_after_token_256": sum(s > 256 for s in starts),
        "median_target_first_token": sorted(starts)[len(starts) // 2] if starts else 0,
        "paragraphs": long_set["paragraphs"],
        "target_paragraph": long_set["targets"],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scifact", type=Path, default=SHARED_DATA / "scifact", help="BEIR SciFact folder")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the long set to")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--queries", type=int, default=0, help="first N test queries (0 = all)")
    args = parser.parse_args()
    manifest = write(
        build(args.scifact, seed=args.seed, queries=args.queries),
        args.out,
        seed=args.seed,
        scifact=args.scifact,
    )
    print(
        f"{args.out}: {manifest['documents']} long documents ({manifest['target_documents']} with a judged "
        f"abstract; {manifest['targets_starting_after_token_256']} of them start it after token 256, median "
        f"token {manifest['median_target_first_token']}), {manifest['queries']} queries, seed {args.seed}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
