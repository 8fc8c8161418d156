"""Ingest throughput over 1, 2 and 3 shards: how the bulk path scales with servers.

Three real servers (``embed-server serve``, one encoder worker each), each pinned to one core
with ``taskset`` (server i on core i mod the machine's cores: on a 2-core machine shards 0 and 2
share core 0, and the table says so). Each round ingests a fresh slice of SciFact (documents no
server has seen, so everything is embedded) into a collection split by document id over the
first 1, 2 or 3 servers, through the Ray Data path (``server/ray_ingest.py``, a local Ray) or
the router alone (``--path router``); the three configurations run interleaved, in a rotated
order each round, so a load change on the machine hits all of them.

    python benchmarks/bench_shards.py [--docs 200] [--rounds 2] [--path ray|router] [--json FILE]

Prints docs/s per configuration (min / median / max over rounds) and the scaling ratio of the
medians to one shard; raw numbers go to benchmarks/results/bench_shards.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import OFFLINE_ENV, REPO, SHARED_DATA, RunRecord, add_json_argument, fmt_spread, spread

from server.launch import free_port, serve_command, wait_serving

CORPUS = SHARED_DATA / "scifact" / "corpus.jsonl.gz"
CONFIGS = (1, 2, 3)


def _start(data_dir: Path, core: int | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    command = serve_command(port, data_dir, "--workers", "1", "--compile", "off", "--edge-fit-min-vectors",
                            "100000000")  # fmt: skip
    if core is not None and shutil.which("taskset"):
        command = ["taskset", "-c", str(core), *command]
    log = (data_dir.parent / f"server-{port}.log").open("wb")
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **OFFLINE_ENV}, cwd=REPO
    )
    return process, f"127.0.0.1:{port}"


def _slices(docs: int, rounds: int) -> list[list[dict[str, str]]]:
    """rounds x configs disjoint slices of ``docs`` SciFact documents (BEIR rows)."""
    import gzip
    import json

    with gzip.open(CORPUS, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    need = docs * rounds * len(CONFIGS)
    if need > len(rows):
        raise SystemExit(f"--docs x --rounds x 3 = {need} > {len(rows)} SciFact documents")
    return [rows[i * docs : (i + 1) * docs] for i in range(rounds * len(CONFIGS))]


def _ingest(
    path: str, addresses: list[str], collection: str, rows: list[dict[str, str]], work: Path
) -> float:
    """Seconds to ingest ``rows`` into ``collection`` split over ``addresses``."""
    import json

    from embedcore.router import Router
    from embedcore.shardmap import ShardMap
    from protos.embedding.v1 import embedding_pb2 as pb

    shard_map = ShardMap.parse(
        {
            "shards": [{"name": f"shard-{i}", "replicas": [a]} for i, a in enumerate(addresses)],
            "split": [collection],
        }
    )
    if path == "ray":
        from server.ray_ingest import ingest_with_ray

        corpus = work / f"{collection}.jsonl"
        corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
        report = ingest_with_ray([corpus], collection=collection, shard_map=shard_map, senders=2, batch=32)
        if report.failed or report.embedded != len(rows):
            raise SystemExit(
                f"{collection}: {report.failed} failed, {report.embedded} embedded of {len(rows)}"
            )
        if Counter(a["id"] for a in report.acks) != Counter(r["_id"] for r in rows):
            raise SystemExit(f"{collection}: not every document acknowledged exactly once")
        return report.seconds
    requests = [
        pb.IngestRequest(collection=collection, id=r["_id"], text=f"{r.get('title', '')} {r['text']}".strip())
        for r in rows
    ]
    with Router(shard_map, timeout=600) as router:
        started = time.perf_counter()
        acks = list(router.ingest(requests, batch=32))
        seconds = time.perf_counter() - started
    if len(acks) != len(rows) or any(a.cached or a.HasField("error") for a in acks):
        raise SystemExit(f"{collection}: not every document was embedded")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=200, help="documents per round and configuration")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--path", choices=("ray", "router"), default="ray")
    add_json_argument(parser, "bench_shards")
    args = parser.parse_args()
    if not CORPUS.is_file():
        print(f"no SciFact corpus at {CORPUS}", file=sys.stderr)
        return 2
    record = RunRecord("bench_shards")
    cores = os.cpu_count() or 1
    pinned = [i % cores for i in range(3)] if shutil.which("taskset") else [None, None, None]
    slices = _slices(args.docs, args.rounds)
    seconds: dict[int, list[float]] = {n: [] for n in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        work = Path(tmp)
        servers = [_start(work / f"s{i}" / "data", pinned[i]) for i in range(3)]
        try:
            for process, address in servers:
                wait_serving(address, process, 600)
            addresses = [a for _, a in servers]
            if args.path == "ray":
                import ray

                ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
            k = 0
            for round_ in range(args.rounds):
                order = CONFIGS[round_ % 3 :] + CONFIGS[: round_ % 3]
                for n in order:
                    took = _ingest(args.path, addresses[:n], f"bench-r{round_}-s{n}", slices[k], work)
                    k += 1
                    seconds[n].append(took)
                    print(f"round {round_ + 1}: {n} shard(s) {args.docs / took:.1f} docs/s", flush=True)
        finally:
            for process, _ in servers:
                process.terminate()
            for process, _ in servers:
                process.wait(60)
    rates = {n: [args.docs / s for s in seconds[n]] for n in CONFIGS}
    medians = {n: spread(rates[n])["median"] for n in CONFIGS}  # type: ignore[index]
    print()
    print(
        f"Ingest throughput, {args.docs} SciFact documents per round, {args.rounds} rounds, path {args.path}"
    )
    print(f"{'shards':>6}  {'cores used':<12} {'docs/s min / median / max':<28} scaling vs 1 shard")
    for n in CONFIGS:
        used = sorted({c for c in pinned[:n] if c is not None})
        print(
            f"{n:>6}  {','.join(map(str, used)) or 'unpinned':<12} {fmt_spread(spread(rates[n]), '.1f'):<28} "
            f"{medians[n] / medians[1]:.2f}x"
        )
    print(
        f"\nThis machine has {cores} CPU core(s): "
        + (
            "3 shards share them (servers 0 and 2 pinned to core 0), so 3 shards cannot beat 2 here; "
            if cores < 3
            else ""
        )
        + "the router, Ray and other work on the machine run beside the servers on the same cores."
    )
    print(
        "What a cluster adds: each shard on its own machine (its own GPU or cores), so the encoders no\n"
        "longer share cores and a split collection's ingest rate grows with its shards until the senders\n"
        "(--ray-senders x batch in flight), the corpus reads or the network bind; Ray places the sender\n"
        "actors and the reading on other nodes. Here the ratio measures 2 shared cores, not the design."
    )
    print(record.load_line())
    payload: dict[str, Any] = {
        "docs_per_round": args.docs,
        "rounds": args.rounds,
        "path": args.path,
        "cores": cores,
        "pinned_cores": pinned,
        "seconds": {str(n): seconds[n] for n in CONFIGS},
        "docs_per_s": {str(n): rates[n] for n in CONFIGS},
        "scaling_vs_1": {str(n): medians[n] / medians[1] for n in CONFIGS},
    }
    record.write(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
