"""Base model vs the same model fine-tuned on the collection's own texts (``embed-server finetune``).

Everything goes through the evaluator (``server.evaluation``: corpus ingested with Ingest,
queries through Search and through the edge client): SciFact test nDCG@10 at full / 256 / 128 /
64 / 32 dims on the server path (exact search, Matryoshka truncation) and the edge path (int8
ONNX queries; "naive" = plain truncation, "fitted" = the projection the server fits on its
store), plus STS-B test Spearman. The fine-tune sees only the stored corpus texts and vectors:
never a query or a qrel; its settings are the defaults (chosen on held-out pseudo-queries).

    python benchmarks/bench_finetune.py --work /tmp/ftbench --max-minutes 30 --json ft.json

Steps (each server started here, stopped before the next step):
1. base server on WORK/base: eval (ingests the corpus, fits its edge projection), server/32;
   then a second start with an identity edge bundle for the naive edge rows;
2. ``finetune_collection`` on that store (the server stopped), ``--max-minutes`` budget;
3. the same two evaluations on WORK/tuned with ``--model WORK/model``.
Re-runs reuse WORK (cached ingest; an existing WORK/model is reused unless --retrain).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from _common import SHARED_DATA, embed_server

from server.evaluation import evaluate_run, load_beir
from server.evaluation.configs import EvalConfig
from server.evaluation.runner import EvalOptions, run_evaluation
from server.evaluation.server_path import ServerClient, collection_name

DIMS = ("full", "256", "128", "64", "32")
SERVER_CONFIGS = "server/full/float32,server/256/float32,server/128/float32,server/64/float32"
NAIVE_BUNDLE_ARGS = ("--edge-fit-min-vectors", "1000000000")  # identity projection: plain truncation


def _evaluate(address: str, args: argparse.Namespace, configs: str, sts: bool) -> dict[str, Any]:
    """nDCG@10 by label (plus server/32/float32, which the evaluator's fixed list lacks) and STS."""
    options = EvalOptions(
        server=address, dataset=args.dataset, sts=args.sts if sts else None, configs=[configs]
    )
    outcome = run_evaluation(options, say=lambda line: print(f"  {line}", flush=True))
    rows = {r.config.label: (r.metrics or {}).get("ndcg@10") for r in outcome.results}
    if configs.startswith("server/"):
        data = load_beir(args.dataset, "test")
        client = ServerClient(address)
        try:
            run = client.search_all(
                collection_name(data.name, list(data.corpus)), data.queries, EvalConfig("server", dims=32), 4
            )
        finally:
            client.close()
        rows["server/32/float32"] = evaluate_run(run, data.qrels)["ndcg@10"]
    if outcome.sts is not None:
        rows["sts"] = outcome.sts.get("spearman")
    return rows


def _measure(data_dir: Path, args: argparse.Namespace, *model: str) -> dict[str, Any]:
    serve = ("--workers", str(args.workers), "--compile", args.compile, *model)
    rows: dict[str, Any] = {}
    with embed_server(data_dir, *serve) as address:
        rows.update(_evaluate(address, args, f"{SERVER_CONFIGS},edge-local/*/fitted", sts=True))
    naive_bundle = ("--edge-bundle-dir", str(data_dir.parent / f"{data_dir.name}-naive-bundle"))
    with embed_server(data_dir, *serve, *NAIVE_BUNDLE_ARGS, *naive_bundle) as address:
        rows.update(_evaluate(address, args, "edge-local/*/naive", sts=False))
    return rows


def _finetune(args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    from server.finetune import FinetuneConfig, finetune_collection

    data = load_beir(args.dataset, "test")
    config = FinetuneConfig(max_minutes=args.max_minutes, seed=args.seed, **json.loads(args.config))
    started = time.perf_counter()
    result = finetune_collection(
        args.work / "base", collection_name(data.name, list(data.corpus)), model_dir, config
    )
    return {**result.to_json(), "wall_seconds": time.perf_counter() - started, "config": config.__dict__}


def _table(base: dict[str, Any], tuned: dict[str, Any]) -> list[str]:
    full = base["server/full/float32"]
    lines = [
        "| path | dims | base nDCG@10 | fine-tuned nDCG@10 | fine-tuned / base full |",
        "| --- | --- | --- | --- | --- |",
    ]
    for path, label in (("server (exact)", "server/{}/float32"), ("edge naive", "edge-local/{}/naive"),
                        ("edge fitted", "edge-local/{}/fitted")):  # fmt: skip
        for dims in DIMS:
            key = label.format(dims)
            if key in base or key in tuned:
                b, t = base.get(key), tuned.get(key)
                share = f"{t / full:.1%}" if t is not None and full else "-"
                lines.append(f"| {path} | {dims} | {_num(b)} | {_num(t)} | {share} |")
    lines.append(f"| STS-B Spearman | full | {_num(base.get('sts'))} | {_num(tuned.get('sts'))} | |")
    return lines


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def _goals(base: dict[str, Any], tuned: dict[str, Any], minutes: float) -> list[tuple[str, bool]]:
    full = base["server/full/float32"]
    return [
        ("64 dims >= 93% of base full", tuned["server/64/float32"] >= 0.93 * full),
        ("128 dims >= 99% of base full", tuned["server/128/float32"] >= 0.99 * full),
        ("full >= base full + 0.01", tuned["server/full/float32"] >= full + 0.01),
        ("STS-B drop <= 0.02", base["sts"] - tuned["sts"] <= 0.02),
        ("fine-tune <= 30 minutes", minutes <= 30),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", type=Path, default=SHARED_DATA / "scifact")
    parser.add_argument("--sts", type=Path, default=SHARED_DATA / "stsb" / "sts-test.csv")
    parser.add_argument("--work", type=Path, required=True, help="data dirs, the model, server logs")
    parser.add_argument("--max-minutes", type=float, default=30.0, help="fine-tune budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--config", default="{}", help="other FinetuneConfig fields as JSON, e.g. '{\"epochs\": 2}'"
    )
    parser.add_argument("--retrain", action="store_true", help="fine-tune again even if WORK/model exists")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = args.work / "model"

    print("base model:", flush=True)
    base = _measure(args.work / "base", args)
    if args.retrain and model_dir.exists():
        shutil.rmtree(model_dir)
        shutil.rmtree(args.work / "tuned", ignore_errors=True)
    record_path = model_dir / "finetune.json"
    if not record_path.is_file():
        print(f"fine-tuning into {model_dir}:", flush=True)
        finetune = _finetune(args, model_dir)
    else:
        finetune = json.loads(record_path.read_text())["result"]
        finetune.setdefault("wall_seconds", finetune["seconds"])
    print("fine-tuned model:", flush=True)
    tuned = _measure(args.work / "tuned", args, "--model", str(model_dir))

    minutes = float(finetune["wall_seconds"]) / 60
    training = finetune["training"]
    print(
        f"\nfine-tune: {finetune['documents']} documents, {finetune['train_pairs']} pairs, "
        f"{training['steps']} steps of {training.get('batches_per_epoch', '?')} per epoch, "
        f"{minutes:.1f} min, dtype {training['dtype']}"
    )
    print("\n".join(_table(base, tuned)))
    goals = _goals(base, tuned, minutes)
    for name, met in goals:
        print(f"{'met    ' if met else 'NOT met'}  {name}")
    if args.json:
        report = {"base": base, "finetuned": tuned, "finetune": finetune, "goals": dict(goals)}
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
