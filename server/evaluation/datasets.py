"""Readers for the two dataset layouts the evaluator accepts: BEIR folders and STS Benchmark CSV.

BEIR: ``corpus.jsonl`` (or ``.jsonl.gz``) with ``_id``, ``title``, ``text``; ``queries.jsonl``
with ``_id``, ``text``; ``qrels/<split>.tsv`` with a header and ``query-id corpus-id score``
rows. As BEIR and MTEB do, a document's text is ``(title + " " + text).strip()`` and only the
queries that appear in the split's qrels are evaluated.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

Qrels = dict[str, dict[str, int]]  # query id -> {doc id: graded relevance}


class DatasetError(ValueError):
    """The folder or file is not in the expected layout; the message says what is wrong."""


@dataclass(frozen=True)
class BeirDataset:
    name: str
    corpus: dict[str, str]  # doc id -> text to embed, in file order
    queries: dict[str, str]  # query id -> text (only queries judged in the split)
    qrels: Qrels


@dataclass(frozen=True)
class StsPairs:
    left: list[str]
    right: list[str]
    gold: list[float]


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def _jsonl(path: Path) -> Iterator[dict[str, object]]:
    with _open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{number}: not JSON ({exc.msg})") from exc
            if not isinstance(row, dict) or "_id" not in row:
                raise DatasetError(f"{path}:{number}: expected an object with an '_id'")
            yield row


def _find(folder: Path, *names: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise DatasetError(f"{folder} has none of {', '.join(names)} (BEIR layout expected)")


def read_qrels(path: Path) -> Qrels:
    """``query-id<TAB>corpus-id<TAB>score`` with one header line."""
    qrels: Qrels = {}
    with path.open("r", encoding="utf-8") as handle:
        header = handle.readline()
        if not header:
            raise DatasetError(f"{path} is empty")
        for number, line in enumerate(handle, 2):
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) == 1 and not parts[0].strip():
                continue
            if len(parts) < 3:
                raise DatasetError(f"{path}:{number}: expected 3 tab-separated columns")
            try:
                score = int(float(parts[2]))
            except ValueError as exc:
                raise DatasetError(f"{path}:{number}: score {parts[2]!r} is not a number") from exc
            qrels.setdefault(parts[0], {})[parts[1]] = score
    return qrels


def load_beir(folder: Path | str, split: str = "test") -> BeirDataset:
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder {folder} does not exist")
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise DatasetError(f"{qrels_path} not found (choose --split among the files in {folder / 'qrels'})")
    qrels = read_qrels(qrels_path)
    corpus: dict[str, str] = {}
    for row in _jsonl(_find(folder, "corpus.jsonl", "corpus.jsonl.gz")):
        title = str(row.get("title") or "")
        text = str(row.get("text") or "")
        corpus[str(row["_id"])] = (title + " " + text).strip()
    queries: dict[str, str] = {}
    for row in _jsonl(_find(folder, "queries.jsonl", "queries.jsonl.gz")):
        qid = str(row["_id"])
        if qid in qrels:
            queries[qid] = str(row.get("text") or "")
    missing = [qid for qid in qrels if qid not in queries]
    if missing:
        log.warning("%d judged queries are missing from queries.jsonl; evaluating without them", len(missing))
        qrels = {qid: rels for qid, rels in qrels.items() if qid in queries}
    if not queries:
        raise DatasetError(f"no query of {qrels_path} is in queries.jsonl")
    return BeirDataset(name=folder.resolve().name, corpus=corpus, queries=queries, qrels=qrels)


def load_sts(path: Path | str) -> StsPairs:
    """STS Benchmark CSV: tab-separated, no header, no quoting; score in column 5, sentences in
    columns 6 and 7 (some rows carry extra trailing columns, ignored)."""
    path = Path(path)
    left: list[str] = []
    right: list[str] = []
    gold: list[float] = []
    with _open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) == 1 and not parts[0].strip():
                continue
            if len(parts) < 7:
                raise DatasetError(f"{path}:{number}: expected >= 7 tab-separated columns (STS Benchmark)")
            try:
                gold.append(float(parts[4]))
            except ValueError as exc:
                raise DatasetError(f"{path}:{number}: score {parts[4]!r} is not a number") from exc
            left.append(parts[5])
            right.append(parts[6])
    if not gold:
        raise DatasetError(f"{path} has no pairs")
    return StsPairs(left=left, right=right, gold=gold)
