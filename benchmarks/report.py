"""Regenerate the README's benchmark tables from the raw results in benchmarks/results/.

Each generated block sits between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in
README.md and starts with its provenance (results file, date, commit, machine, load, rounds), so
no figure in those blocks can drift from the file it comes from. A block whose results file is
missing says so and gives the command that makes it.

    python benchmarks/report.py            # rewrite the blocks in README.md
    python benchmarks/report.py --check    # exit 1 if README.md differs from the results
"""

# ruff: noqa: E501  (each markdown table row is one f-string; splitting them hides the table)
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
README = REPO / "README.md"

COMMANDS = {
    "bench_throughput": "python benchmarks/bench_throughput.py --limit 400 --rounds 5",
    "bench_ablation": "python benchmarks/bench_ablation.py",
    "bench_ingest": "python benchmarks/bench_ingest.py",
    "bench_index_updates": "python benchmarks/bench_index_updates.py --rounds 4 --batch 200",
    "bench_index_updates-random64": "python benchmarks/bench_index_updates.py --random-dim 64 --limit 5000",
    "bench_edge": "python benchmarks/bench_edge.py --cache .scratch/edge --measure-install edge",
    "bench_adaptor_min_docs": "python benchmarks/bench_adaptor_min_docs.py --cache .scratch/edge",
    "bench_http_fp32": "python benchmarks/bench_http.py --rounds 4 --server-arg=--dtype=float32",
    "bench_http": "python benchmarks/bench_http.py --rounds 4",
    "bench_hybrid": "python benchmarks/bench_hybrid.py",
    "bench_filter": "python benchmarks/bench_filter.py --data-dir /tmp/bench-filter/data",
}


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return dict(json.loads(path.read_text())) if path.is_file() else None


def command(data: dict[str, Any]) -> str:
    """The command line that made a results file (without its --json destination)."""
    argv, out = list(data["argv"]), []
    while argv:
        arg = argv.pop(0)
        if arg == "--json":
            argv = argv[1:]
        elif not arg.startswith("--json="):
            out.append(arg)
    return " ".join(["python", data["script"], *out])


def provenance(name: str, data: dict[str, Any], timed: bool) -> str:
    """Where a block's figures come from; ``timed`` blocks (speeds, latencies) also get a warning
    when the machine had more runnable work than cores."""
    m = data["machine"]
    flags = ", ".join(m["cpu_flags"]) or "none of AMX/AVX512"
    commit = (data.get("commit") or "?")[:10] + (" + uncommitted changes" if data.get("dirty") else "")
    before, after = data["load_avg_before"][0], data["load_avg_after"][0]
    text = (
        f"Source: `benchmarks/results/{name}.json`, made by `{command(data)}` on {data['date'][:16]} UTC at "
        f"commit {commit}; {m['cpu_model']}, {m['usable_cores']} cores, {m['ram_gib']} GiB, flags: {flags}; "
        f"1-min load average {before:.1f} before, {after:.1f} after."
    )
    if timed and max(before, after) > m["usable_cores"]:
        text += (
            " **The machine was oversubscribed (load above its core count) during this run: a validation of "
            "the script, not figures to quote; speeds and ratios are dominated by other work.**"
        )
    return text


def spread(values: dict[str, float] | None, spec: str = ".2f") -> str:
    if values is None:
        return "-"
    return " / ".join(format(values[k], spec) for k in ("min", "median", "max"))


def throughput(data: dict[str, Any]) -> list[str]:
    lines = [
        f"{data['rounds']} rounds x {data['docs_per_round']} SciFact documents ({data['mean_tokens']:.0f} tokens "
        f"mean), concurrency {data['concurrency']}, batch {data['batch_size']} for the peers. Ratios: per round "
        "against the best peer of that round, min / median / max over rounds.",
        "",
        "| engine | docs/s (min / median / max) | x best peer | x best in-process | x best Infinity |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in data["rows"]:
        name = f"**{row['name']}**" if row["group"] == "ours" else row["name"]
        lines.append(
            f"| {name} | {spread(row['docs_per_s'], '.1f')} | {spread(row['x_best_peer'])} | "
            f"{spread(row['x_best_in_process'])} | {spread(row['x_best_infinity'])} |"
        )
    for name, note in data["not_measured"].items():
        lines.append(f"| {name} | {note} | | | |")
    lines += ["", "Goals (met = the median per-round ratio reaches the goal):", ""]
    for g in data["goals"]:
        verdict = "not measured"
        if g["ratio"] is not None:
            verdict = ("**met**" if g["met_median"] else "**not met**") + (
                " (every round)" if g["met_every_round"] else ""
            )
        lines.append(f"- {g['engine']} >= {g['goal']:.1f}x {g['against']}: {spread(g['ratio'])} -> {verdict}")
    peaks, half = data["peaks_gflops"], data["half_dtype"]
    for row in data["rows"]:
        if row["group"] == "ours" and row["model_gflops"]:
            half_part = (
                f" / {row['pct_half_peak']:.0f}% of the {half} one ({peaks[half]:.0f} GFLOP/s)"
                if row["pct_half_peak"] is not None
                else f" ({half} is not native on this CPU: no {half} peak)"
            )
            lines.append(
                f"- {row['name']}: model {row['model_gflops']['median']:.0f} GFLOP/s (useful FLOPs, median round) = "
                f"{row['pct_fp32_peak']:.0f}% of the fp32 square-matmul peak measured in the same run "
                f"({peaks['float32']:.0f} GFLOP/s){half_part}"
            )
    servers = [
        r for r in data["rows"] if r.get("server") and r["group"] == "ours" and "EmbedStream" in r["name"]
    ]
    for row in servers:
        parent = sorted(x["parent_cpu_s_per_100_docs"] for x in row["server"])
        busy = sorted(x["worker_cpu_share"] for x in row["server"])
        lines.append(
            f"- {row['name']}: server parent process {parent[len(parent) // 2]:.2f} CPU-s per 100 documents, "
            f"encoder workers' CPU time {busy[len(busy) // 2]:.0%} of their wall time (median round)"
        )
    cosines: dict[str, list[float | None]] = {}
    for rnd in data["round_details"]:
        for name, value in rnd["mean_cosine_to_st_fp32"].items():
            cosines.setdefault(name, []).append(value)
    for name, values in cosines.items():
        if None not in values:
            low = min(v for v in values if v is not None)
            lines.append(
                f"- mean cosine of {name}'s vectors to in-process fp32 ones: {low:.5f} (lowest round)"
            )
    for name, ratio in data["reingest_vs_first"].items():
        lines.append(f"- {name}: {spread(ratio, '.0f')} x the first Ingest")
    return lines


def ablation(data: dict[str, Any]) -> list[str]:
    lines = [
        f"{data['rounds']} rounds x {data['docs_per_round']} SciFact documents through `EmbedStream` "
        f"(concurrency {data['concurrency']}), one server per configuration, all up at once.",
        "",
        "| server | resolved by Info (backend / dtype / workers / compiled / batch tokens) | docs/s (min / median / max) "
        "| worker CPU / wall | parent CPU-s / 100 docs |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in data["configs"]:
        s = c["server"]
        resolved = (
            f"{s['backend']} / {s['dtype']} / {s['workers']} / {s['compiled']} / {s['max_batch_tokens']}"
        )
        lines.append(
            f"| {c['name']} | {resolved} | {spread(c['docs_per_s'], '.1f')} | {c['worker_cpu_share_median']:.0%} | "
            f"{c['parent_cpu_s_per_100_docs_median']:.2f} |"
        )
    lines += ["", "| factor | ratio per round (min / median / max) |", "| --- | --- |"]
    lines += [f"| {f['factor']} | {spread(f['ratio'])} |" for f in data["factors"]]
    return lines


def ingest(data: dict[str, Any]) -> list[str]:
    return [
        f"{data['documents']} SciFact documents, {data['queries']} queries, one fresh server "
        f"({'float16' if data['float16'] else 'float32'} stored vectors).",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| first Ingest (one pass; compare peers in the throughput table) | {data['first_docs_per_s']:.1f} docs/s |",
        f"| re-Ingest (every document a content-hash hit) | {data['reingest_docs_per_s']:,.0f} docs/s, "
        f"{data['reingest_speedup']:.0f}x the first |",
        f"| Search k=10 p50 / p95, query embedded | {data['search_index_p50_ms']:.1f} / "
        f"{data['search_index_p95_ms']:.1f} ms |",
        f"| Search p50 / p95, query embedding cached, index | {data['search_index_cached_query_p50_ms']:.1f} / "
        f"{data['search_index_cached_query_p95_ms']:.1f} ms |",
        f"| Search p50 / p95, cached, brute force (`exact`) | {data['search_exact_cached_query_p50_ms']:.1f} / "
        f"{data['search_exact_cached_query_p95_ms']:.1f} ms |",
        f"| Search p50 / p95, cached, int8 first pass + rescoring | {data['search_int8_cached_query_p50_ms']:.1f} / "
        f"{data['search_int8_cached_query_p95_ms']:.1f} ms |",
        f"| LMDB bytes per document | {data['lmdb_bytes_per_doc']:,.0f} |",
        f"| server index bytes per document (usearch f16, 384 dims) | {data['index_bytes_per_doc']:,.0f} |",
    ]


def index_updates(data: dict[str, Any]) -> list[str]:
    lines = [
        f"{data['vectors']}: {data['documents']} documents, {data['queries']} queries, every document updated "
        f"{data['rounds']} time(s), {data['batch']} per call.",
        "",
        "| index | recall@10 vs exact | rebuilds |",
        "| --- | --- | --- |",
    ]
    return lines + [f"| {r['index']} | {r['recall@10']:.3f} | {r['rebuilds']} |" for r in data["rows"]]


def edge_quality(data: dict[str, Any]) -> list[str]:
    q = data.get("quality")
    if not q:
        return ["Not in this results file (run without --only-latency)."]
    full = q["full_ndcg@10"]
    lines = [
        f"nDCG@10, SciFact test, torch query vectors, exact search; full 384 dims {full:.3f}.",
        "",
        "| dims | naive truncation | PCA rotation | adaptor | rotation / full | adaptor / full |",
        "| --: | --: | --: | --: | --: | --: |",
    ]
    for dims, row in q["ndcg@10"].items():
        cells = [f"{row[k]:.3f}" if k in row else "-" for k in ("naive", "rotation", "adaptor")]
        ratios = [f"{row[k] / full:.1%}" if k in row else "-" for k in ("rotation", "adaptor")]
        lines.append(f"| {dims} | " + " | ".join(cells + ratios) + " |")
    goals = {128: 0.985, 64: 0.93}  # of the full-dimension nDCG@10
    for dims, goal in goals.items():
        row = q["ndcg@10"].get(str(dims), {})  # JSON object keys are strings
        got = ", ".join(
            f"{k} {row[k] / full:.1%} ({'met' if row[k] / full >= goal else 'not met'})"
            for k in ("adaptor", "rotation")
            if k in row
        )
        lines.append(f"\nGoal: {dims} dims >= {goal:.1%} of full: {got}.")
    sts = "; ".join(
        f"{n}: " + ", ".join(f"{d} dims {v:.3f}" for d, v in s.items()) for n, s in q["sts"].items()
    )
    lines += ["", f"STS-B test transfer (cosine Spearman, projections fitted on SciFact): {sts}.", ""]
    lines += [
        "Local vs **simulated** server and auto (server = exact full-dimension cosine in numpy; auto = "
        "edge_client.policy on each local answer, the simulated server answer when it asks):",
        "",
        "| projection | dims | local | server (simulated) | auto (simulated) | answered locally | threshold |",
        "| --- | --: | --: | --: | --: | --: | --: |",
    ]
    for r in q["local_server_auto"]:
        lines.append(
            f"| {r['projection']} | {r['dims']} | {r['local']:.3f} | {r['server_simulated']:.3f} | "
            f"{r['auto_simulated']:.3f} | {r['answered_locally']:.1%} | {r['threshold']:.3f} |"
        )
    if q.get("real"):
        lines += [
            "",
            "Measured through a real server (EdgeClient `local` / `server` (Search RPC) / `auto`):",
            "",
        ]
        lines += [
            "| dims | projection | local | server | auto | answered locally |",
            "| --: | --- | --: | --: | --: | --: |",
        ]
        for r in q["real"]:
            lines.append(
                f"| {r['dims']} | {r['projection']} | {r['local']:.3f} | {r['server']:.3f} | {r['auto']:.3f} | "
                f"{r['answered_locally']:.1%} |"
            )
    return lines


def edge_latency(data: dict[str, Any]) -> list[str]:
    if not data.get("latency"):
        return ["Not in this results file (run without --only-quality)."]
    lines = [
        "| local vectors | encoder (own process) | p50 ms | p99 ms | embed p50 ms | search p50 ms | p50 vs torch |",
        "| --: | --- | --: | --: | --: | --: | --: |",
    ]
    for size in data["latency"]:
        for kind, r in size["encoders"].items():
            lines.append(
                f"| {size['vectors']:,} | {kind} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['embed_p50_ms']:.1f} | "
                f"{r['search_p50_ms']:.2f} | {r['p50_vs_torch']:.2f}x |"
            )
    lines += ["", "| index (128 dims) | files | bytes/doc | raw bytes/doc |", "| --- | --- | --: | --: |"]
    for r in data.get("index_bytes", []):
        lines.append(
            f"| edge {r['dtype']} | {' + '.join(r['files'])} | {r['bytes_per_doc']:.0f} | {r['raw_bytes_per_doc']} |"
        )
    for r in data.get("install", []):
        lines.append(
            f"\n`pip install '.[{r['extra']}]'` into a fresh venv: {r['install_s']:.0f} s, {r['venv_mib']:,.0f} MiB "
            f"(pip cache {r['pip_cache']})."
        )
    return lines


def min_docs(data: dict[str, Any]) -> list[str]:
    lines = [
        f"Projection fitted by `export-edge --fit-corpus` on the first N {data['dataset']} documents; nDCG@10 over "
        f"all {data['documents']:,} (full 384 dims {data['full_ndcg@10']:.3f}); held-out recall = share of the full-dimension top-10 "
        "among the documents not fitted on that the projected top-20 keeps.",
        "",
        "| fit docs | dims | nDCG@10 adaptor | nDCG@10 rotation | held-out recall adaptor | held-out recall rotation |",
        "| --: | --: | --: | --: | --: | --: |",
    ]
    rows = {(r["fit_docs"], r["dims"], r["kind"]): r for r in data["rows"]}
    for n, dims in sorted({(r["fit_docs"], r["dims"]) for r in data["rows"]}):
        a, r = rows[(n, dims, "adaptor")], rows[(n, dims, "rotation")]
        lines.append(
            f"| {n:,} | {dims} | {a['ndcg@10']:.3f} | {r['ndcg@10']:.3f} | {a['held_out_recall_10_in_20']:.3f} | "
            f"{r['held_out_recall_10_in_20']:.3f} |"
        )
    return lines


def http_api(data: dict[str, Any]) -> list[str]:
    """bench_http: /v1/embeddings beside gRPC Embed and Infinity's /embeddings."""
    s = data["settings"]
    ours = data.get("ours") or {"model_id": "the default model", "model_dtype": "its default dtype"}
    lines = [
        f"{len(data['rounds'])} rounds; throughput: {s['limit']} SciFact documents per round, {s['batch']} per "
        f"request, {s['concurrency']} client threads; latency: {s['queries']} STS-B sentences, one per request, "
        f"one at a time (client side, vectors decoded). Ours: {ours['model_id']} at {ours['model_dtype']}, "
        "query cache off. min / median / max over rounds; ratios within a round.",
        "",
        "| engine | docs/s | x gRPC Embed | x Infinity | single query p50 ms | p95 ms | p50 x gRPC | p50 x Infinity |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in data["summary"].items():
        lines.append(
            f"| {name} | {spread(row['docs_per_s'], '.1f')} | {spread(row['rate_x_grpc'])} | "
            f"{spread(row['rate_x_infinity'])} | {spread(row.get('p50_ms'), '.1f')} | "
            f"{spread(row.get('p95_ms'), '.1f')} | {spread(row.get('p50_x_grpc'))} | "
            f"{spread(row.get('p50_x_infinity'))} |"
        )
    lines.append("")
    for name, reason in data["failed"].items():
        lines.append(f"- {name}: not measured ({reason})")
    http = data["summary"].get("ours HTTP /v1/embeddings float")
    if http:
        lines += [
            f"- goal HTTP within 1.2x of gRPC per call: single-query p50 x {spread(http.get('p50_x_grpc'))}, "
            f"throughput x {spread(http['rate_x_grpc'])}",
            f"- goal HTTP ahead of Infinity: throughput x {spread(http['rate_x_infinity'])}, "
            f"single-query p50 x {spread(http.get('p50_x_infinity'))}",
        ]
    cosines = {
        n: min(r["cosine_to_grpc"][n] for r in data["rounds"]) for n in data["rounds"][0]["cosine_to_grpc"]
    }
    lines.append(
        "- lowest per-round mean cosine to gRPC Embed's vectors: "
        + ", ".join(f"{n} {c:.5f}" for n, c in cosines.items())
    )
    lines.append(
        "- 1-min load average per round: " + ", ".join(f"{r['load_avg']:.1f}" for r in data["rounds"])
    )
    return lines


_HYBRID_ROWS = {
    "server/full/float32": "dense, exact: brute force",
    "server/full/float32/ann": "dense, usearch index: a default request",
    "server/bm25": "LEXICAL: BM25",
    "server/hybrid/rrf": "HYBRID, RRF k 60",
    "server/hybrid/weighted": "HYBRID, WEIGHTED",
}


def hybrid(data: dict[str, Any]) -> list[str]:
    dev, rows = data["dev"], [r for r in data["test"] if r.get("task") == "retrieval"]
    grid, alpha = dev["grid"], dev["default_alpha"]
    compute = rows[0].get("server_compute", "?") if rows else "?"
    lines = [
        f"SciFact test ({rows[0]['queries'] if rows else '?'} queries, 5,183 documents), one server ({compute}); "
        f"each mode with the server's defaults (RRF k 60, WEIGHTED alpha {alpha}, candidate lists 100 deep); "
        "HYBRID's dense side through the usearch index, as a default request.",
        "",
        "| configuration | nDCG@10 | R@10 | R@100 | MRR@10 | MAP@10 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        name = _HYBRID_ROWS.get(r["label"], r["label"])
        if r["label"] == "server/hybrid/weighted":
            name += f" alpha {alpha}"
        if r.get("ndcg@10") is None:
            lines.append(f"| `{r['label']}` ({name}) | unavailable: {r.get('unavailable', '')} | | | | |")
            continue
        lines.append(
            f"| `{r['label']}` ({name}) | {r['ndcg@10']:.4f} | {r['recall@10']:.4f} | {r['recall@100']:.4f} | "
            f"{r['mrr@10']:.4f} | {r['map@10']:.4f} |"
        )
    weighted = ", ".join(f"{a} {m['ndcg@10']:.4f}" for a, m in grid["weighted"].items())
    rrf = ", ".join(f"{k} {m['ndcg@10']:.4f}" for k, m in grid["rrf"].items())
    lines += [
        "",
        f"Fusion settings chosen on non-test data only: the titles of {dev['queries']} SciFact abstracts that no "
        f"test query judges, as queries over {dev['documents']} such abstracts ingested without their titles "
        f"(seed {dev['seed']}; each title judges its own abstract; SciFact's train qrels are not in shared/). "
        f"nDCG@10 there: dense {grid['dense']['ndcg@10']:.4f}, BM25 {grid['bm25']['ndcg@10']:.4f}; WEIGHTED by "
        f"alpha: {weighted}; RRF by k: {rrf}. Best alpha {dev['best_alpha']}, the server's default "
        f"{alpha}; the server's WEIGHTED answers matched the client-side fusion on {dev['server_agrees_queries']} "
        "queries.",
    ]
    lag = data.get("lag")
    if lag:
        lines += [
            "",
            f"Lag from ack to a LEXICAL answer holding the document, in that collection ({lag['documents']:,} "
            f"documents): {', '.join(f'{s:.2f}' for s in lag['singles_s'])} s for documents sent one at a time; "
            f"during a stream of {lag['stream_documents']} abstracts acknowledged over {lag['stream_seconds']} s, "
            f"median {lag['stream_median_s']:.2f} s, max {lag['stream_max_s']:.2f} s.",
        ]
    return lines


def filtered_search(data: dict[str, Any]) -> list[str]:
    """bench_filter: latency by selectivity, then the crossover that sets the threshold."""
    k = data["k"]
    lines = [
        f"SciFact test corpus ({data['documents']:,} documents) with synthetic metadata; {data['queries']} test "
        f"queries searched by their vectors (no query embedding in the timings), k={k}, client-side per "
        f"RPC. Default request: the approximate index, or exact over the kept documents when at most "
        f"--search-filter-exact-max are kept ({data.get('threshold') or 'the default'}).",
        "",
        "| kept (share) | default request p50 / p95 ms | exact p50 / p95 ms | LEXICAL p50 / p95 ms "
        f"| default recall@{k} vs exact |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in data["selectivity"]:
        share = "no filter" if row["share"] is None else f"{row['kept']:,} ({row['share']:.1%})"
        lexical = row.get("lexical_ms")
        lexical_cell = "-" if lexical is None else f"{lexical['p50']:.1f} / {lexical['p95']:.1f}"
        recall = row.get("recall_at_k")
        lines.append(
            f"| {share} | {row['default_ms']['p50']:.1f} / {row['default_ms']['p95']:.1f} "
            f"| {row['exact_ms']['p50']:.1f} / {row['exact_ms']['p95']:.1f} | {lexical_cell} "
            f"| {'-' if recall is None else recall} |"
        )
    cross = data["crossover"]
    lines += [
        "",
        "Crossover (server with `--search-filter-exact-max 0`: an approximate request always asks the index, "
        'oversampled, exact when too few candidates pass) by kept documents (`{"rank": {"lt": n}}`):',
        "",
        "| kept documents | exact over them p50 ms | index, oversampled p50 ms |",
        "| --- | --- | --- |",
    ]
    for row in cross["rows"]:
        lines.append(f"| {row['kept']:,} | {row['exact_ms']['p50']:.1f} | {row['index_ms']['p50']:.1f} |")
    lines += [
        "",
        f"Measured crossover: exact is as fast or faster up to {cross['measured_threshold']:,} kept documents.",
    ]
    return lines


# block -> (results file, renderer, whether its figures are timings)
BLOCKS: dict[str, tuple[str, Callable[[dict[str, Any]], list[str]], bool]] = {
    "throughput": ("bench_throughput", throughput, True),
    "ablation": ("bench_ablation", ablation, True),
    "ingest": ("bench_ingest", ingest, True),
    "index-updates": ("bench_index_updates", index_updates, False),
    "index-updates-random": ("bench_index_updates-random64", index_updates, False),
    "edge-quality": ("bench_edge", edge_quality, False),
    "edge-latency": ("bench_edge", edge_latency, True),
    "min-docs": ("bench_adaptor_min_docs", min_docs, False),
    "http": ("bench_http_fp32", http_api, True),
    "http-auto": ("bench_http", http_api, True),
    "hybrid": ("bench_hybrid", hybrid, False),
    "filter": ("bench_filter", filtered_search, True),
}


def block(name: str) -> str:
    source, render, timed = BLOCKS[name]
    data = load(source)
    if data is None:
        return f"Not measured yet: no `benchmarks/results/{source}.json`; run `{COMMANDS[source]}`."
    return "\n".join([provenance(source, data, timed), "", *render(data)])


def regenerate(text: str) -> str:
    for name in BLOCKS:
        pattern = re.compile(rf"(<!-- bench:{name} -->\n)(?:.*?\n)?(<!-- /bench:{name} -->)", re.S)
        replacement = r"\g<1>" + block(name).replace("\\", "\\\\") + r"\n\g<2>"
        text = pattern.sub(replacement, text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is not up to date")
    args = parser.parse_args()
    old = README.read_text(encoding="utf-8")
    new = regenerate(old)
    if args.check:
        if new != old:
            print(
                "README.md's benchmark blocks differ from benchmarks/results/: run python benchmarks/report.py"
            )
            return 1
        return 0
    README.write_text(new, encoding="utf-8")
    print(f"README.md: {sum(f'<!-- bench:{n} -->' in new for n in BLOCKS)} benchmark blocks regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
