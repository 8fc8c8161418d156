"""One evaluation run: ingest once, then every selected configuration, then STS."""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedcore.router import Router
from embedcore.transport import ClientCredentials
from server.evaluation.configs import ConfigResult, EvalConfig, default_configs, select
from server.evaluation.datasets import BeirDataset, load_beir, load_sts
from server.evaluation.edge_path import EdgeSession, EdgeUnavailable, run_edge
from server.evaluation.metrics import evaluate_run, spearman
from server.evaluation.server_path import ServerClient, Unavailable, collection_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalOptions:
    server: str
    dataset: Path | None = None
    split: str = "test"
    sts: Path | None = None
    configs: Sequence[str] = ()
    collection: str | None = None
    concurrency: int = 4
    credentials: ClientCredentials = field(default_factory=ClientCredentials)  # TLS, bearer token
    workdir: Path | None = None  # edge client state; a temporary folder when None
    router: Router | None = None  # sharded servers: ingest and search routed (embedcore.router)


@dataclass
class EvalOutcome:
    results: list[ConfigResult] = field(default_factory=list)
    sts: dict[str, Any] | None = None
    ingest: dict[str, Any] | None = None
    server: dict[str, str] = field(default_factory=dict)  # what the server computed with

    def json_rows(self) -> list[dict[str, Any]]:
        rows = [{"task": "retrieval", **r.to_json(), **self.server} for r in self.results]
        if self.sts is not None:
            rows.append({"task": "sts", **self.sts, **self.server})
        return rows


def run_evaluation(options: EvalOptions, say: Callable[[str], None] = print) -> EvalOutcome:
    if options.dataset is None and options.sts is None:
        raise ValueError("give --dataset DIR, --sts FILE.csv, or both")
    configs = select(default_configs(), options.configs)
    client = ServerClient(options.server, credentials=options.credentials, router=options.router)
    outcome = EvalOutcome()
    try:
        client.wait_ready()
        info = client.info()
        full_dims = int(info.dimensions) if info is not None and info.dimensions else None
        if info is not None:
            outcome.server = {
                "model": info.model_fingerprint,
                "server_compute": f"{info.backend}/{info.dtype}",
            }
            say(f"server {options.server}: model {info.model_fingerprint}, {info.backend}/{info.dtype}")
        if options.dataset is not None:
            _retrieval(options.dataset, options, configs, client, full_dims, outcome, say)
        if options.sts is not None:
            outcome.sts = _sts(options.sts, client, full_dims, say)
    finally:
        client.close()
    return outcome


def _retrieval(
    dataset: Path,
    options: EvalOptions,
    configs: list[EvalConfig],
    client: ServerClient,
    full_dims: int | None,
    outcome: EvalOutcome,
    say: Callable[[str], None],
) -> None:
    data = load_beir(dataset, options.split)
    collection = options.collection or collection_name(data.name, list(data.corpus))
    say(f"{data.name}/{options.split}: {len(data.corpus)} documents, {len(data.queries)} judged queries")
    ingest_error = ""
    sequence = 0
    try:
        summary = client.ingest(collection, data.corpus, _progress(len(data.corpus)))
        sequence = summary.sequence
        outcome.ingest = {
            "collection": collection,
            "documents": summary.documents,
            "cached": summary.cached,
            "errors": summary.errors,
            "seconds": round(summary.seconds, 3),
        }
        say(
            f"\ningested into {collection}: {summary.documents} docs, {summary.cached} cached, "
            f"{summary.errors} rejected, {summary.documents / max(summary.seconds, 1e-9):.1f} docs/s"
        )
        if summary.errors:
            say(f"  first rejection: {summary.first_error}")
    except Unavailable as exc:
        ingest_error = str(exc)
        say(f"ingest failed: {ingest_error}")
    with tempfile.TemporaryDirectory(prefix="embed-eval-") as tmp:
        edge = EdgeSession(
            address=options.server,
            collection=collection,
            workdir=options.workdir or Path(tmp),
            credentials=options.credentials,  # the edge path needs the same TLS and token
            router=options.router,
        )
        try:
            for config in configs:
                outcome.results.append(
                    _one(config, data, collection, client, edge, full_dims, options, ingest_error, sequence)
                )
        finally:
            edge.close()


def _one(
    config: EvalConfig,
    data: BeirDataset,
    collection: str,
    client: ServerClient,
    edge: EdgeSession,
    full_dims: int | None,
    options: EvalOptions,
    ingest_error: str,
    sequence: int = 0,
) -> ConfigResult:
    dims = full_dims if config.dims is None else config.dims
    result = ConfigResult(config=config, dims=dims, queries=len(data.qrels))
    start = time.perf_counter()
    try:
        if ingest_error:
            raise Unavailable(f"corpus not ingested: {ingest_error}")
        if config.path == "server":
            if config.mode != "dense":  # BM25 sees the corpus once its index was rebuilt with it
                client.wait_lexical(collection, sequence)
            run = client.search_all(collection, data.queries, config, options.concurrency)
        else:
            run, result.local_share, result.dims = run_edge(edge, config, data.queries)
        result.metrics = evaluate_run(run, data.qrels)
    except (Unavailable, EdgeUnavailable) as exc:
        result.unavailable = str(exc)
    result.seconds = time.perf_counter() - start
    status = result.unavailable or f"nDCG@10 {result.metrics['ndcg@10']:.4f}"  # type: ignore[index]
    log.info("%s: %s", config.label, status)
    return result


def _sts(
    path: Path, client: ServerClient, full_dims: int | None, say: Callable[[str], None]
) -> dict[str, Any]:
    pairs = load_sts(path)
    row: dict[str, Any] = {"path": "server", "label": "server/full/float32", "dims": full_dims}
    row["precision"] = "float32"
    row["pairs"] = len(pairs.gold)
    try:
        vectors = client.embed([*pairs.left, *pairs.right])
        left, right = vectors[: len(pairs.left)], vectors[len(pairs.left) :]
        row["spearman"] = spearman(np.sum(left * right, axis=1), pairs.gold)
        say(f"STS {path.name}: cosine Spearman {row['spearman']:.4f} over {len(pairs.gold)} pairs")
    except Unavailable as exc:
        row["spearman"] = None
        row["unavailable"] = str(exc)
        say(f"STS {path.name}: unavailable: {exc}")
    return row


def _progress(total: int) -> Callable[[int], None]:
    """A one-line counter on stderr when it is a terminal."""
    if not sys.stderr.isatty():
        return lambda done: None
    step = max(total // 100, 1)

    def show(done: int) -> None:
        if done % step == 0 or done == total:
            print(f"\ringest {done}/{total}", end="", file=sys.stderr, flush=True)

    return show
