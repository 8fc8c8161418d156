"""Where our server's speed comes from: each speed-up measured in one run, through the real
server with the flag that selects it, in interleaved rounds.

Servers (``embed-server serve``, one store each, query cache off), all started first and kept up:
- ``defaults``: no compute flag (what a user gets; Info says what it resolved to);
- the other dtype: ``--dtype float32`` where the default is bfloat16, else ``--dtype bfloat16``
  (bf16 is fast only where the CPU runs it natively: AMX / AVX512-BF16);
- ``--compile off`` (eager, at the default dtype);
- ``--workers 1 --threads-per-worker N`` (one N-thread worker instead of N single-threaded ones;
  N = usable cores);
- ``--max-batch-tokens`` at half and at twice the default;
- optional (``--factors ...,onnx``): ``--backend onnx`` with its int8 graph vs ``--dtype float32``.
Each round takes the next ``--limit`` SciFact documents and streams them through every server's
``EmbedStream`` (``--concurrency`` streams), in a rotated order. Each factor is the ratio of two
servers' docs/s within a round, reported as min / median / max over rounds, with the encoder
workers' CPU seconds per wall second and the parent process's CPU seconds (/proc).

    python benchmarks/bench_ablation.py [--limit 160] [--rounds 5] [--concurrency 4] [--json FILE]

Defaults: six servers (each start loads and compiles its workers, 20-60 s on a quiet 2-core
machine) and 5 x 6 measurements of 160 documents; about 10 minutes there, and about 10 GiB of RAM
with every server up (two ~0.7 GB workers each).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from _common import SHARED_DATA, RunRecord, add_json_argument, corpus_texts, fmt_spread, spread
from _engines import OurServer, Row


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def start_servers(
    args: argparse.Namespace, stack: contextlib.ExitStack
) -> tuple[dict[str, OurServer], list[tuple[str, str, str]]]:
    """The servers by config name, and the factors as (label, numerator config, denominator)."""
    common = ["--model", args.model, *args.server_arg]
    servers: dict[str, OurServer] = {}

    def start(name: str, *flags: str) -> OurServer:
        print(f"starting {name}: {' '.join(flags) or '(server defaults)'}", flush=True)
        servers[name] = OurServer(name, [*common, *flags], stack, stream_only=True)
        print(f"  -> {servers[name].info}", flush=True)
        return servers[name]

    base = start("defaults")
    dtype, tokens, cores = base.info["dtype"], int(base.info["max_batch_tokens"]), usable_cores()
    other = "float32" if dtype == "bfloat16" else "bfloat16"
    factors: list[tuple[str, str, str]] = []
    wanted = set(args.factors.split(","))
    if "dtype" in wanted:
        start(other, "--dtype", other)
        bf16, fp32 = ("defaults", other) if dtype == "bfloat16" else (other, "defaults")
        factors.append(("bfloat16 vs float32 (--compile auto)", bf16, fp32))
    if "compile" in wanted:
        start("eager", "--compile", "off")
        factors.append((f"--compile auto vs off ({dtype})", "defaults", "eager"))
    if "layout" in wanted and cores > 1:
        layout = f"1 worker x {cores} threads"
        start(layout, "--workers", "1", "--threads-per-worker", str(cores))
        factors.append((f"{base.info['workers']} workers x 1 thread vs {layout}", "defaults", layout))
    if "tokens" in wanted:
        for budget in (tokens // 2, tokens * 2):
            name = f"max-batch-tokens {budget}"
            start(name, "--max-batch-tokens", str(budget))
            factors.append((f"{budget} vs {tokens} batch tokens (default)", name, "defaults"))
    if "onnx" in wanted:
        start("onnx int8", "--backend", "onnx", "--dtype", "int8")
        start("onnx float32", "--backend", "onnx", "--dtype", "float32")
        factors.append(("ONNX Runtime int8 vs float32 graph", "onnx int8", "onnx float32"))
    return servers, factors


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", type=Path, default=SHARED_DATA / "scifact", help="BEIR folder (corpus)")
    parser.add_argument("--limit", type=int, default=160, help="corpus documents per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each on the next --limit documents")
    parser.add_argument("--concurrency", type=int, default=4, help="EmbedStream calls at once")
    parser.add_argument(
        "--factors", default="dtype,compile,layout,tokens", help="which factors to measure (also: onnx)"
    )
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="model (alias or directory)")
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra `serve` flag for every server"
    )
    add_json_argument(parser, "bench_ablation")
    args = parser.parse_args()
    record = RunRecord("bench_ablation")
    texts = corpus_texts(args.dataset, args.limit * args.rounds)
    if len(texts) < args.limit * args.rounds:
        parser.error(f"{args.dataset} has {len(texts)} documents, fewer than --limit x --rounds")
    slices = [texts[r * args.limit : (r + 1) * args.limit] for r in range(args.rounds)]

    rates: dict[str, list[float]] = {}
    cpu: dict[str, list[dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        servers, factors = start_servers(args, stack)
        engines = list(servers.values())
        for r, part in enumerate(slices):
            for engine in engines[r % len(engines) :] + engines[: r % len(engines)]:
                row: Row = engine.measure(part, args.concurrency)[0]
                rates.setdefault(engine.label, []).append(row.docs_per_s)
                cpu.setdefault(engine.label, []).append(row.extra)
                print(f"  round {r + 1} {engine.label}: {row.docs_per_s:.1f} docs/s", flush=True)
        infos = {name: server.info for name, server in servers.items()}

    print()
    print(record.load_line())
    print(f"{args.rounds} rounds x {args.limit} SciFact docs, EmbedStream x {args.concurrency}")
    header = f"{'server':<34} {'docs/s min/med/max':>20} {'worker CPU/wall':>15}"
    header += f" {'parent CPU-s/100 docs':>22}  flags"
    print(header)
    print("-" * len(header))
    configs = []
    for name, values in rates.items():
        busy = statistics.median(x["worker_cpu_share"] for x in cpu[name])
        parent = statistics.median(x["parent_cpu_s_per_100_docs"] for x in cpu[name])
        info = infos[name]
        flags = [f for f in info["flags"] if f not in ("--query-cache-size", "0", "--log-level", "WARNING")]
        print(
            f"{name:<34} {fmt_spread(spread(values), '.1f'):>20} {busy:>15.1%} {parent:>22.2f}  "
            + " ".join(flags)
        )
        configs.append(
            {
                "name": name,
                "docs_per_s": spread(values),
                "per_round": values,
                "server": info,
                "worker_cpu_share_median": busy,
                "parent_cpu_s_per_100_docs_median": parent,
                "cpu_per_round": cpu[name],
            }
        )
    print("\nfactor (ratio of docs/s within each round)               min / median / max")
    results = []
    for label, top, bottom in factors:
        ratio = spread([a / b for a, b in zip(rates[top], rates[bottom], strict=True)])
        results.append({"factor": label, "numerator": top, "denominator": bottom, "ratio": ratio})
        print(f"  {label:<55} {fmt_spread(ratio)}")
    record.write(
        args.json,
        {
            "dataset": args.dataset.name,
            "docs_per_round": args.limit,
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "configs": configs,
            "factors": results,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
