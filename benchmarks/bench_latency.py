"""Interactive latency: single short queries (STS-B sentences) at concurrency 1 and 8, p50 / p99,
our server against in-process peers, idle and while a SciFact ingest runs, in interleaved rounds.

Rows, each measured once per round on that round's sentences (the order rotated every round):
- peers in this process: ONNX Runtime fp32 and int8 (the server's own exported graphs, ORT's
  default threads, tokenization included), sentence-transformers fp32 ``encode([q])``;
  Infinity (same model, HTTP, ``--infinity-setting``) unless ``--no-infinity``;
- ours over gRPC loopback (query cache off, so every query is computed): ``Embed`` of one
  sentence idle; ``Search`` k=10 on a SciFact collection; ``Embed`` while an ``Ingest`` of
  ``--ingest-docs`` SciFact documents runs (fresh collection each time), the clients offering
  ``--busy-qps`` queries/s in all; and that ingest's docs/s alone and with the queries running.
Our rows also report the server's ``Timing`` per stage (tokenization, queue, inference, the
rest of the server, and gRPC = client round trip - server total), medians.

Ratios are taken within a round, then summarized as min / median / max over rounds (a shared
machine's speed drifts within minutes). Goals (the latency issue):
1. idle Embed p50 <= 1.5x in-process ORT fp32 p50 (concurrency 1);
2. Embed p99 during ingest <= 3x idle Embed p99 (each concurrency);
3. the ingest with queries running >= 80% of its docs/s alone;
4. Search k=10 p50 <= 2x idle Embed p50.
(Throughput, EmbedStream >= 3x in-process fp32, is bench_throughput.py's.)

    python benchmarks/bench_latency.py [--rounds 3] [--queries 60] [--ingest-docs 150]
        [--no-infinity] [--server-arg=--compile=off ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    SHARED_DATA,
    RunRecord,
    add_json_argument,
    corpus_texts,
    fmt_spread,
    server_process,
    spread,
)
from _engines import INFINITY_VERSION, Infinity

STSB = SHARED_DATA / "stsb" / "sts-test.csv"
SCIFACT = SHARED_DATA / "scifact"
CONCURRENCY = (1, 8)


def stsb_sentences() -> list[str]:
    with STSB.open(encoding="utf-8") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return list(dict.fromkeys(row[5] for row in rows if len(row) > 6))


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


@dataclass
class Sample:
    """Latencies (ms) of one row in one round, plus our server's Timing stages (ms)."""

    latencies: list[float]
    stages: dict[str, list[float]] = field(default_factory=dict)

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99)


Query = Callable[[str], dict[str, float] | None]  # one query; our rows return Timing stages (ms)


def run_queries(query: Query, texts: Sequence[str], concurrency: int) -> Sample:
    """``texts`` split over ``concurrency`` threads, each sending one query at a time."""
    sample = Sample([])
    lock = threading.Lock()

    def worker(part: Sequence[str]) -> None:
        for text in part:
            t0 = time.perf_counter_ns()
            stages = query(text)
            ms = (time.perf_counter_ns() - t0) / 1e6
            with lock:
                sample.latencies.append(ms)
                for name, value in (stages or {}).items():
                    sample.stages.setdefault(name, []).append(value)
                if stages is not None:
                    sample.stages.setdefault("grpc + client", []).append(ms - stages["server total"])

    threads = [threading.Thread(target=worker, args=(texts[i::concurrency],)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sample


# --- peers in this process -----------------------------------------------------------------------
def onnx_peer(graph: Path, model: str) -> Query:
    from embedcore import OnnxModel
    from server.model import load_spec
    from server.tokenization import TextTokenizer

    spec = load_spec(model)
    tokenizer = TextTokenizer(spec, 1 << 20)
    session = OnnxModel(graph, pooling=spec.pooling, normalize=spec.normalize)  # ORT default threads

    def query(text: str) -> None:
        (tokens,) = tokenizer.tokenize([text], ["q"])
        ids = tokens.ids[None, :].astype(np.int64)
        session.forward(ids, np.ones_like(ids), np.zeros_like(ids))

    return query


def st_peer(model_path: Path, max_tokens: int) -> Query:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_path), device="cpu")
    st.max_seq_length = max_tokens

    def query(text: str) -> None:
        st.encode([text], normalize_embeddings=True, convert_to_numpy=True)

    return query


def infinity_peer(engine: Infinity) -> Query:
    def query(text: str) -> None:
        engine._post([text])

    return query


# --- our server ----------------------------------------------------------------------------------
class Ours:
    def __init__(self, args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
        import grpc

        from protos.embedding.v1 import embedding_pb2 as pb
        from protos.embedding.v1 import embedding_pb2_grpc as pb_grpc

        self.pb = pb
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-latency-"))
        flags = ["--query-cache-size", "0", "--log-level", "WARNING", "--model", args.model, *args.server_arg]
        started = time.monotonic()
        self.server = stack.enter_context(server_process(Path(tmp) / "data", *flags))
        self.start_s = time.monotonic() - started
        self.channel = grpc.insecure_channel(self.server.address)
        stack.callback(self.channel.close)
        self.embedding = pb_grpc.EmbeddingServiceStub(self.channel)
        self.collections = pb_grpc.CollectionServiceStub(self.channel)
        info = self.embedding.Info(pb.InfoRequest(), timeout=60)
        self.info = {
            "backend": info.backend,
            "dtype": info.dtype,
            "workers": info.workers,
            "compiled": info.compiled,
            "flags": flags,
            "start_s": round(self.start_s, 1),
        }
        for size in (1, 8, 64):
            self.embedding.Embed(pb.EmbedRequest(inputs=[f"warm-up {i}" for i in range(size)]), timeout=600)
        self.search_collection = "bench-search"
        self.ingest(self.search_collection, corpus_texts(SCIFACT, args.search_docs), 0)

    @staticmethod
    def _stages(timing: Any) -> dict[str, float]:
        ms = {
            "tokenization": timing.tokenization_ns / 1e6,
            "queue": timing.queue_ns / 1e6,
            "inference": timing.inference_ns / 1e6,
            "server total": timing.total_ns / 1e6,
        }
        ms["server other"] = ms["server total"] - ms["tokenization"] - ms["queue"] - ms["inference"]
        return ms

    def embed(self, text: str) -> dict[str, float]:
        reply = self.embedding.Embed(self.pb.EmbedRequest(inputs=[text]), timeout=120)
        return self._stages(reply.timing)

    def search(self, text: str) -> dict[str, float]:
        reply = self.collections.Search(
            self.pb.SearchRequest(collection=self.search_collection, query=text, k=10), timeout=120
        )
        return self._stages(reply.timing) if reply.HasField("timing") else {}

    def ingest(self, collection: str, texts: Sequence[str], offset: int) -> float:
        """docs/s of one Ingest stream of ``texts`` into ``collection``."""
        pb = self.pb
        requests = (
            pb.IngestRequest(collection=collection, id=f"d{offset + i}", text=t) for i, t in enumerate(texts)
        )
        t0 = time.perf_counter()
        count = 0
        for ack in self.collections.Ingest(requests, timeout=3600):
            if ack.HasField("error") and ack.error.code:
                raise RuntimeError(f"Ingest {ack.id}: {ack.error.message}")
            count += 1
        if count != len(texts):
            raise RuntimeError(f"{count} of {len(texts)} acks")
        return len(texts) / (time.perf_counter() - t0)


def during_ingest(
    ours: Ours, docs: Sequence[str], collection: str, queries: Sequence[str], conc: int, qps: float
) -> tuple[Sample, float]:
    """Embed latencies while ``docs`` are ingested, and that ingest's docs/s. ``conc`` clients
    offer ``qps`` queries per second in all (each waits for its answer, then for its next slot;
    0 = back to back, which takes as much CPU from the ingest as the queries can use)."""
    rate: list[float] = []
    ingesting = threading.Thread(target=lambda: rate.append(ours.ingest(collection, docs, 0)))
    sample = Sample([])
    lock = threading.Lock()
    interval = conc / qps if qps > 0 else 0.0

    def client(k: int) -> None:
        cycle = itertools.cycle(queries[k::conc] or queries)
        slot = time.perf_counter() + interval * k / conc  # clients staggered over one interval
        while ingesting.is_alive():
            part = run_queries(ours.embed, [next(cycle)], 1)
            with lock:
                sample.latencies += part.latencies
                for name, values in part.stages.items():
                    sample.stages.setdefault(name, []).extend(values)
            slot += interval
            time.sleep(max(0.0, slot - time.perf_counter()))  # pacing, not a readiness wait

    ingesting.start()
    clients = [threading.Thread(target=client, args=(k,)) for k in range(conc)]
    for thread in clients:
        thread.start()
    ingesting.join()
    for thread in clients:
        thread.join()
    return sample, rate[0]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=60, help="STS-B sentences per row and round")
    parser.add_argument("--ingest-docs", type=int, default=100, help="SciFact documents per timed ingest")
    parser.add_argument(
        "--search-docs", type=int, default=500, help="SciFact documents in the Search collection"
    )
    parser.add_argument(
        "--busy-qps", type=float, default=10.0, help="queries/s offered during the ingest (0 = back to back)"
    )
    parser.add_argument("--no-infinity", action="store_true")
    parser.add_argument("--infinity-setting", default="float32")
    parser.add_argument(
        "--infinity-venv", type=Path, default=Path.home() / ".cache" / "embedstream" / "infinity-venv"
    )
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra flag for our server (repeatable)"
    )
    add_json_argument(parser, "bench_latency")
    args = parser.parse_args()
    record = RunRecord("bench_latency")

    from server.model import load_spec
    from server.onnx_export import FP32_NAME, INT8_NAME, ensure_onnx, onnx_cache_dir
    from server.settings import Settings

    spec = load_spec(args.model)
    sentences = stsb_sentences()
    scifact = corpus_texts(SCIFACT, None)
    notes: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        export = ensure_onnx(spec, onnx_cache_dir(Settings.from_env()))
        peers: dict[str, Query] = {
            "in-process ORT fp32": onnx_peer(export / FP32_NAME, args.model),
            "in-process ORT int8": onnx_peer(export / INT8_NAME, args.model),
            "in-process sentence-transformers fp32": st_peer(spec.path, spec.max_tokens),
        }
        if args.no_infinity:
            notes["Infinity"] = "skipped (--no-infinity)"
        else:
            try:
                engine = Infinity(spec.path, args.infinity_venv, 32, args.infinity_setting)
                stack.callback(engine.close)
                peers[f"Infinity {INFINITY_VERSION} {args.infinity_setting} (HTTP)"] = infinity_peer(engine)
            except Exception as exc:
                notes["Infinity"] = f"did not start: {type(exc).__name__}: {exc}"[:400]
        ours = Ours(args, stack)
        print(f"our server: {ours.info}", flush=True)
        idle: dict[str, Query] = {**peers, "ours Embed idle": ours.embed, "ours Search k=10": ours.search}
        rows: dict[str, list[Sample]] = {}
        ingest_rates: dict[str, list[float]] = {}
        for r in range(args.rounds):
            texts = sentences[r * args.queries : (r + 1) * args.queries]
            names = list(idle)
            names = names[r % len(names) :] + names[: r % len(names)]
            for name in names:
                for conc in CONCURRENCY:
                    sample = run_queries(idle[name], texts, conc)
                    rows.setdefault(f"{name} c={conc}", []).append(sample)
                    print(
                        f"  round {r + 1} {name} c={conc}: p50 {sample.p50:.1f} ms p99 {sample.p99:.1f} ms",
                        flush=True,
                    )
            # Fresh documents each time (after the Search collection's): no content-hash hits.
            fresh = scifact[args.search_docs :]
            docs = fresh[(r * 3) * args.ingest_docs : (r * 3 + 1) * args.ingest_docs]
            ingest_rates.setdefault("alone", []).append(ours.ingest(f"alone-{r}", docs, 0))
            for conc in CONCURRENCY:
                slot = r * 3 + 1 + CONCURRENCY.index(conc)  # this round's own slices
                docs = fresh[slot * args.ingest_docs :][: args.ingest_docs]
                sample, rate = during_ingest(ours, docs, f"busy-{r}-{conc}", texts, conc, args.busy_qps)
                rows.setdefault(f"ours Embed during ingest c={conc}", []).append(sample)
                ingest_rates.setdefault(f"with queries c={conc}", []).append(rate)
                print(
                    f"  round {r + 1} Embed during ingest c={conc}: p50 {sample.p50:.1f} p99 "
                    f"{sample.p99:.1f} ms; ingest {rate:.1f} docs/s (alone {ingest_rates['alone'][-1]:.1f})",
                    flush=True,
                )
    report(args, record, rows, ingest_rates, notes, ours.info)
    return 0


def ratio(rows: dict[str, list[Sample]], a: str, b: str, stat: str) -> dict[str, float] | None:
    if a not in rows or b not in rows:
        return None
    return spread([getattr(x, stat) / getattr(y, stat) for x, y in zip(rows[a], rows[b], strict=True)])


def report(
    args: argparse.Namespace,
    record: RunRecord,
    rows: dict[str, list[Sample]],
    ingest_rates: dict[str, list[float]],
    notes: dict[str, str],
    info: dict[str, Any],
) -> None:
    print(f"\n{record.load_line()}\nour server: {info}")
    print(f"\n{'row':58} {'p50 ms (min/med/max over rounds)':>34} {'p99 ms':>26}")
    table: list[dict[str, Any]] = []
    for name, samples in rows.items():
        p50, p99 = spread([s.p50 for s in samples]), spread([s.p99 for s in samples])
        stages = {
            stage: statistics.median(v for s in samples for v in s.stages.get(stage, []))
            for stage in (samples[0].stages or {})
        }
        table.append({"row": name, "p50_ms": p50, "p99_ms": p99, "stages_median_ms": stages})
        print(f"{name:58} {fmt_spread(p50, '.1f'):>34} {fmt_spread(p99, '.1f'):>26}")
    print("\nour Timing per stage, medians (ms):")
    for entry in table:
        if entry["stages_median_ms"]:
            print(
                f"  {entry['row']:40} "
                + ", ".join(f"{k} {v:.2f}" for k, v in entry["stages_median_ms"].items())
            )
    alone = ingest_rates.get("alone", [])
    throughput = {name: spread(v) for name, v in ingest_rates.items()}
    print("\ningest docs/s: " + "; ".join(f"{k} {fmt_spread(v, '.1f')}" for k, v in throughput.items()))
    goals = []
    for conc in CONCURRENCY:
        goals.append(
            (
                "idle Embed p50 / ORT fp32 p50",
                conc,
                ratio(rows, f"ours Embed idle c={conc}", f"in-process ORT fp32 c={conc}", "p50"),
                1.5,
                "<=",
            )
        )
        goals.append(
            (
                "Embed p99 during ingest / idle p99",
                conc,
                ratio(rows, f"ours Embed during ingest c={conc}", f"ours Embed idle c={conc}", "p99"),
                3.0,
                "<=",
            )
        )
        kept = ingest_rates.get(f"with queries c={conc}", [])
        share = spread([k / a for k, a in zip(kept, alone, strict=True)]) if kept and alone else None
        goals.append(("ingest docs/s with queries / alone", conc, share, 0.8, ">="))
        goals.append(
            (
                "Search p50 / idle Embed p50",
                conc,
                ratio(rows, f"ours Search k=10 c={conc}", f"ours Embed idle c={conc}", "p50"),
                2.0,
                "<=",
            )
        )
    print("\ngoals (per-round ratios, min / median / max; verdict on the median):")
    verdicts = []
    for name, conc, value, bound, op in goals:
        met = (
            None if value is None else (value["median"] <= bound if op == "<=" else value["median"] >= bound)
        )
        verdict = "not measured" if met is None else ("met" if met else "NOT met")
        verdicts.append(
            {"goal": name, "concurrency": conc, "bound": f"{op} {bound}", "ratio": value, "verdict": verdict}
        )
        print(f"  {name} (c={conc}) {op} {bound}: {fmt_spread(value, '.2f')} -> {verdict}")
    for name, note in notes.items():
        print(f"  note: {name}: {note}")
    record.write(
        args.json,
        {
            "rounds": args.rounds,
            "queries_per_row": args.queries,
            "ingest_docs": args.ingest_docs,
            "busy_qps": args.busy_qps,
            "server": info,
            "table": table,
            "ingest_docs_per_s": ingest_rates,
            "goals": verdicts,
            "notes": notes,
            "raw_latencies_ms": {name: [s.latencies for s in samples] for name, samples in rows.items()},
        },
    )


if __name__ == "__main__":
    raise SystemExit(main())
