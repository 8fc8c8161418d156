"""Encoder worker memory against items served: RSS per worker after each round of SciFact
documents, its slope after warm-up (MiB per 1,000 items) and the throughput.

Starts the real pool in this process (``EncoderPool``: the server's worker processes, batcher
and settings) and embeds the next ``--per-round`` corpus documents per round as BULK calls of
256 documents, as Ingest sends them. After each round it reads each worker's RSS twice: at once
("busy": a batch's freed activations may still be resident) and after ``--settle-s`` without
work ("idle": what the worker keeps). The slopes are least-squares fits over the rounds from the
end of warm-up on.

With ``--compare KEY=VALUE`` a second pool with that setting changed embeds the same documents
in each round, the two pools taking turns going first, so a shared machine's drift hits both
alike; its throughput ratio is the median of per-round ratios. Worker CPU ms per document (user +
system, from /proc, idle time included) is printed beside docs/s: on a busy machine it moves far
less than wall time.

    python benchmarks/bench_worker_rss.py [--rounds 6] [--per-round 200] [--warmup-rounds 1]
        [--settle-s 2] [--setting KEY=VALUE ...] [--compare KEY=VALUE ...] [--corpus FILE]
        [--json FILE]

e.g. ``--compare worker_trim_tokens=0``: the defaults against workers that never trim their heap.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's server package
from _common import SHARED_DATA

SCIFACT = SHARED_DATA / "scifact" / "corpus.jsonl.gz"
CALL_ITEMS = 256  # documents per encode call, as Ingest batches them


def _settings(pairs: list[str]) -> Any:
    """Settings from the environment with KEY=VALUE pairs on top, converted as EMBED_* are."""
    from server.settings import Settings, env_var

    names = {f.name for f in dataclasses.fields(Settings)}
    env = dict(os.environ)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.replace("-", "_")
        if not sep or key not in names:
            raise SystemExit(f"--setting and --compare take KEY=VALUE with a Settings field, got {pair!r}")
        env[env_var(key)] = raw
    return Settings.from_env(env)


def _slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares MiB per 1,000 items."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 1000 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else float("nan")


class Run:
    """One pool and its rows: row 0 is the ready state, row i the state after round i."""

    def __init__(self, name: str, settings: Any) -> None:
        from server.model import load_spec
        from server.pool import EncoderPool

        self.name = name
        self.settings = settings
        self.pool = EncoderPool(settings, load_spec(settings.model))
        self.rows: list[dict[str, Any]] = []
        self._cpu = 0.0

    def _sample(self) -> tuple[list[float], float]:
        import psutil

        procs = [psutil.Process(w.pid) for w in self.pool.workers if w.pid is not None]
        rss = [p.memory_info().rss / 2**20 for p in procs]
        cpu = sum(t.user + t.system for t in (p.cpu_times() for p in procs))
        return rss, cpu

    async def ready(self, settle_s: float) -> dict[str, Any]:
        await asyncio.sleep(settle_s)
        rss, self._cpu = self._sample()
        row = {"round": 0, "items_served": 0, "items": 0, "seconds": 0.0, "docs_per_s": 0.0}
        self.rows.append(row | {"cpu_ms_per_doc": 0.0, "rss_busy_mib": rss, "rss_idle_mib": rss})
        return self.rows[-1]

    async def round(self, texts: list[str], settle_s: float) -> dict[str, Any]:
        from server.embedder import Priority

        t0 = time.perf_counter()
        calls = [texts[i : i + CALL_ITEMS] for i in range(0, len(texts), CALL_ITEMS)]
        await asyncio.gather(*(self.pool.encode(c, priority=Priority.BULK) for c in calls))
        seconds = time.perf_counter() - t0
        busy, _ = self._sample()
        await asyncio.sleep(settle_s)
        idle, cpu = self._sample()
        cpu, self._cpu = cpu - self._cpu, cpu
        self.rows.append(
            {
                "round": len(self.rows),
                "items_served": self.rows[-1]["items_served"] + len(texts),
                "items": len(texts),
                "seconds": seconds,
                "docs_per_s": len(texts) / seconds,
                "cpu_ms_per_doc": 1000 * cpu / len(texts),
                "rss_busy_mib": busy,
                "rss_idle_mib": idle,
            }
        )
        return self.rows[-1]

    def summary(self, warmup: int) -> dict[str, Any]:
        fitted = self.rows[warmup:]  # from the state at the end of warm-up on
        timed = self.rows[warmup + 1 :]
        xs = [float(r["items_served"]) for r in fitted]
        workers = range(len(self.rows[0]["rss_idle_mib"]))

        def slopes(key: str) -> list[float]:
            return [_slope(xs, [r[key][w] for r in fitted]) for w in workers]

        return {
            "name": self.name,
            "ready_rss_mib": self.rows[0]["rss_idle_mib"],
            "final_rss_idle_mib": self.rows[-1]["rss_idle_mib"],
            "final_rss_busy_mib": self.rows[-1]["rss_busy_mib"],
            "slope_idle_mib_per_1000_items": slopes("rss_idle_mib"),
            "slope_busy_mib_per_1000_items": slopes("rss_busy_mib"),
            "docs_per_s": sum(r["items"] for r in timed) / sum(r["seconds"] for r in timed),
            "cpu_ms_per_doc": statistics.median(r["cpu_ms_per_doc"] for r in timed),
        }


def _print_header(workers: int) -> None:
    columns = "  ".join(f"{'busy w' + str(i):>8} {'idle w' + str(i):>8}" for i in range(workers))
    print(f"\n{'pool':<8} {'round':>5} {'items':>6} {'docs/s':>7} {'cpu ms':>7}   {columns}", flush=True)


def _print_row(name: str, row: dict[str, Any]) -> None:
    rss = "  ".join(
        f"{b:8.0f} {i:8.0f}" for b, i in zip(row["rss_busy_mib"], row["rss_idle_mib"], strict=True)
    )
    docs = f"{row['docs_per_s']:7.1f}" if row["items"] else ""
    cpu = f"{row['cpu_ms_per_doc']:7.0f}" if row["items"] else ""
    print(f"{name:<8} {row['round']:>5} {row['items_served']:>6} {docs:>7} {cpu:>7}   {rss}", flush=True)


def _median_ratio(pairs: list[tuple[dict[str, Any], dict[str, Any]]], key: str) -> float:
    return float(statistics.median(b[key] / a[key] for a, b in pairs))


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    from server.commands.ingest import read_corpus
    from server.settings import Settings

    texts = [text for _, text, _ in read_corpus(args.corpus)]
    runs = [Run("first", _settings(args.setting))]
    if args.compare:
        runs.append(Run("compare", _settings(args.setting + args.compare)))
    defaults = dataclasses.asdict(Settings())
    changed = {
        r.name: {k: v for k, v in dataclasses.asdict(r.settings).items() if v != defaults[k]} for r in runs
    }
    print(f"settings changed from the defaults: {changed}", flush=True)
    try:
        for run in runs:  # one pool at a time: on few cores, parallel warm-ups only slow each other
            t0 = time.perf_counter()
            await run.pool.start()
            print(f"{run.name}: ready in {time.perf_counter() - t0:.0f}s, {run.pool.describe()}", flush=True)
        _print_header(len(runs[0].pool.workers))
        for run in runs:
            _print_row(run.name, await run.ready(args.settle_s))
        for index in range(args.rounds):
            start = index * args.per_round
            chunk = [texts[(start + i) % len(texts)] for i in range(args.per_round)]
            for run in runs[index % len(runs) :] + runs[: index % len(runs)]:
                _print_row(run.name, await run.round(chunk, args.settle_s))
    finally:
        for run in runs:
            await run.pool.close()
    summaries = [run.summary(args.warmup_rounds) for run in runs]
    print(f"\nafter {args.warmup_rounds} warm-up round(s), RSS slope per worker in MiB per 1,000 items:")
    for s in summaries:
        idle = ", ".join(f"{v:+.1f}" for v in s["slope_idle_mib_per_1000_items"])
        busy = ", ".join(f"{v:+.1f}" for v in s["slope_busy_mib_per_1000_items"])
        print(
            f"  {s['name']:<8} idle [{idle}]  busy [{busy}]  "
            f"{s['docs_per_s']:.2f} docs/s  {s['cpu_ms_per_doc']:.0f} worker CPU ms/doc"
        )
    result: dict[str, Any] = {
        "corpus": str(args.corpus),
        "rounds": args.rounds,
        "per_round": args.per_round,
        "warmup_rounds": args.warmup_rounds,
        "settle_s": args.settle_s,
        "changed_settings": changed,
        "rows": {run.name: run.rows for run in runs},
        "summary": summaries,
    }
    if len(runs) == 2:
        pairs = list(zip(runs[0].rows, runs[1].rows, strict=True))[args.warmup_rounds + 1 :]
        ratios = {key: _median_ratio(pairs, key) for key in ("docs_per_s", "cpu_ms_per_doc")}
        result["compare_over_first"] = ratios
        print(
            f"  compare / first (medians of per-round ratios): docs/s x{ratios['docs_per_s']:.3f}, "
            f"worker CPU per doc x{ratios['cpu_ms_per_doc']:.3f}"
        )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=200, help="documents per round")
    parser.add_argument("--warmup-rounds", type=int, default=1, help="rounds left out of the slopes")
    parser.add_argument("--settle-s", type=float, default=2.0, help="idle wait before the idle RSS")
    parser.add_argument(
        "--setting", action="append", default=[], metavar="KEY=VALUE", help="a Settings field, every pool"
    )
    parser.add_argument(
        "--compare", action="append", default=[], metavar="KEY=VALUE", help="a second pool with this changed"
    )
    parser.add_argument("--corpus", type=Path, default=SCIFACT, help="BEIR corpus.jsonl[.gz]")
    parser.add_argument("--json", type=Path, help="write every row and the summary here")
    args = parser.parse_args()
    if args.rounds < args.warmup_rounds + 2:
        parser.error("--rounds must exceed --warmup-rounds by 2 or more (a slope needs 2 rounds after it)")
    if not args.corpus.is_file():
        parser.error(f"no corpus at {args.corpus}; pass --corpus")
    result = asyncio.run(_main(args))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
