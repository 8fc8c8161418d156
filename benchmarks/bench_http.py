"""The HTTP API against gRPC and Infinity: ``/v1/embeddings`` throughput (float and base64 JSON)
and single-query latency, beside gRPC ``Embed`` on the same server and Infinity's own OpenAI
``/embeddings`` on the same model, in interleaved rounds.

One server of ours (its CLI, ``--http-port``, query cache off so every input is computed) and one
Infinity (torch engine, ``--infinity-setting``, its own venv outside the repo, created on first
use: minutes) are started first and stay up. Each round then measures, in a rotated order:
- throughput: the round's ``--limit`` SciFact documents, ``--batch`` per request from
  ``--concurrency`` client threads: gRPC ``Embed``; ``POST /v1/embeddings`` with
  ``encoding_format`` float and base64; Infinity's ``POST /embeddings`` (float);
- latency: the round's ``--queries`` STS-B sentences, one per request, one at a time: gRPC
  ``Embed``, ``/v1/embeddings`` float, Infinity; p50 and p95 in milliseconds, client side (the
  client decodes the vectors: JSON for HTTP, bytes for gRPC).
Every HTTP client is httpx with keep-alive, the same code for ours and Infinity. Ratios are taken
within a round, then summarized as min / median / max over rounds. Goals (issue 14): HTTP within
1.2x of gRPC per call (latency p50; throughput), and ahead of Infinity (both).

    python benchmarks/bench_http.py [--rounds 3] [--limit 64] [--queries 40] [--no-infinity]
        [--server-arg=--workers=1 ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
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
from _engines import INFINITY_VERSION, Infinity, timed_parallel
from bench_latency import stsb_sentences

from server.launch import free_port
from server.model import load_spec

SCIFACT = SHARED_DATA / "scifact"
Call = Callable[[list[str]], np.ndarray]  # texts -> (n, dims) float32


@dataclass
class Target:
    name: str
    call: Call
    kind: str  # "grpc", "http", "infinity"


def _clients() -> Callable[[], httpx.Client]:
    """One keep-alive httpx client per thread (closed with the process)."""
    local = threading.local()

    def get() -> httpx.Client:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=600)
        return client

    return get


def grpc_embed(address: str) -> Call:
    import grpc

    from protos.embedding.v1 import embedding_pb2 as pb
    from protos.embedding.v1 import embedding_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
    stub = pb_grpc.EmbeddingServiceStub(channel)

    def call(texts: list[str]) -> np.ndarray:
        reply = stub.Embed(pb.EmbedRequest(inputs=texts), timeout=600)
        return np.stack([np.frombuffer(v.data, "<f4") for v in reply.embeddings])

    return call


def openai_embeddings(url: str, model: str, encoding_format: str | None) -> Call:
    """POST ``url`` OpenAI's way; decodes floats or base64 (little-endian float32) as a client does."""
    client = _clients()

    def call(texts: list[str]) -> np.ndarray:
        body: dict[str, Any] = {"model": model, "input": texts}
        if encoding_format:
            body["encoding_format"] = encoding_format
        reply = client().post(url, json=body)
        reply.raise_for_status()
        data = sorted(reply.json()["data"], key=lambda d: d["index"])
        if encoding_format == "base64":
            return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in data])
        return np.asarray([d["embedding"] for d in data], dtype=np.float32)

    return call


def throughput(target: Target, texts: list[str], batch: int, concurrency: int) -> tuple[float, np.ndarray]:
    """docs/s of ``texts`` sent ``batch`` per request from ``concurrency`` threads; the vectors."""
    out: dict[int, np.ndarray] = {}

    def work(part: list[tuple[int, str]]) -> int:
        for s in range(0, len(part), batch):
            chunk = part[s : s + batch]
            vectors = target.call([t for _, t in chunk])
            out.update(zip([i for i, _ in chunk], vectors, strict=True))
        return len(part)

    rate = timed_parallel(texts, concurrency, work)
    return rate, np.stack([out[i] for i in range(len(texts))])


def latency(target: Target, queries: list[str]) -> tuple[list[float], np.ndarray]:
    """Milliseconds of each single-query call, one at a time; the vectors."""
    times, vectors = [], []
    for query in queries:
        start = time.perf_counter()
        vectors.append(target.call([query])[0])
        times.append((time.perf_counter() - start) * 1000)
    return times, np.stack(vectors)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).mean())


def run(args: argparse.Namespace) -> dict[str, Any]:
    spec = load_spec()
    docs = corpus_texts(SCIFACT, args.limit * args.rounds)
    sentences = stsb_sentences()[: args.queries * args.rounds]
    failed: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        http_port = free_port()
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-http-"))
        flags = ["--http-port", str(http_port), "--query-cache-size", "0", "--log-level", "WARNING",
                 *args.server_arg]  # fmt: skip
        server = stack.enter_context(server_process(Path(tmp) / "data", *flags))
        base = f"http://127.0.0.1:{http_port}/v1/embeddings"
        ours = httpx.get(f"http://127.0.0.1:{http_port}/info", timeout=60).json()
        compute = {k: ours[k] for k in ("model_id", "model_dtype", "max_batch_tokens")} | {"flags": flags}
        targets = [
            Target("ours gRPC Embed", grpc_embed(server.address), "grpc"),
            Target("ours HTTP /v1/embeddings float", openai_embeddings(base, "m", "float"), "http"),
            Target("ours HTTP /v1/embeddings base64", openai_embeddings(base, "m", "base64"), "http64"),
        ]
        if not args.no_infinity:
            try:
                infinity = Infinity(spec.path, args.infinity_venv, args.batch, args.infinity_setting)
                stack.callback(infinity.close)
                url = f"{infinity.url}/embeddings"
                name = f"Infinity {INFINITY_VERSION} {args.infinity_setting} /embeddings"
                targets.append(Target(name, openai_embeddings(url, "bench", None), "infinity"))
            except Exception as exc:  # reported, the rest still measured
                failed[f"Infinity {INFINITY_VERSION}"] = f"{type(exc).__name__}: {exc}"[:500]
        for target in targets:  # warm-up: every request shape a round uses
            for size in (1, 8, args.batch):
                target.call([f"warm-up sentence {i}" for i in range(size)])
        rounds: list[dict[str, Any]] = []
        for r in range(args.rounds):
            texts = docs[r * args.limit : (r + 1) * args.limit]
            queries = sentences[r * args.queries : (r + 1) * args.queries]
            order = targets[r % len(targets) :] + targets[: r % len(targets)]
            result: dict[str, Any] = {"order": [t.name for t in order], "load_avg": os.getloadavg()[0]}
            vectors: dict[str, np.ndarray] = {}
            for target in order:
                rate, vectors[target.name] = throughput(target, texts, args.batch, args.concurrency)
                result.setdefault("docs_per_s", {})[target.name] = rate
            for target in order:
                if target.kind == "http64":
                    continue  # one latency row per engine: float JSON is the slower HTTP answer
                times, _ = latency(target, queries)
                result.setdefault("latency_ms", {})[target.name] = {
                    "p50": float(np.percentile(times, 50)),
                    "p95": float(np.percentile(times, 95)),
                }
            reference = vectors[targets[0].name]
            result["cosine_to_grpc"] = {t.name: mean_cosine(vectors[t.name], reference) for t in targets[1:]}
            rounds.append(result)
            print(f"round {r + 1}/{args.rounds} done (load {result['load_avg']:.1f})", flush=True)
    return {"targets": [t.name for t in targets], "rounds": rounds, "failed": failed, "ours": compute}


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    rounds, names = results["rounds"], results["targets"]
    grpc_name = names[0]
    infinity = next((n for n in names if n.startswith("Infinity")), None)
    rows: dict[str, Any] = {}
    for name in names:
        rate = [r["docs_per_s"][name] for r in rounds]
        row: dict[str, Any] = {
            "docs_per_s": spread(rate),
            "rate_x_grpc": spread([r["docs_per_s"][name] / r["docs_per_s"][grpc_name] for r in rounds]),
            "rate_x_infinity": spread(
                [r["docs_per_s"][name] / r["docs_per_s"][infinity] for r in rounds] if infinity else []
            ),
        }
        if name in rounds[0].get("latency_ms", {}):
            lat = [r["latency_ms"][name] for r in rounds]
            row["p50_ms"] = spread([x["p50"] for x in lat])
            row["p95_ms"] = spread([x["p95"] for x in lat])
            row["p50_x_grpc"] = spread(
                [r["latency_ms"][name]["p50"] / r["latency_ms"][grpc_name]["p50"] for r in rounds]
            )
            row["p50_x_infinity"] = spread(
                [r["latency_ms"][name]["p50"] / r["latency_ms"][infinity]["p50"] for r in rounds]
                if infinity
                else []
            )
        rows[name] = row
    return rows


def report(
    results: dict[str, Any], rows: dict[str, Any], args: argparse.Namespace, record: RunRecord
) -> None:
    print(
        f"\n{args.rounds} rounds; throughput: {args.limit} SciFact docs per round, {args.batch} per request, "
        f"concurrency {args.concurrency}; latency: {args.queries} STS-B sentences one at a time. "
        "min / median / max over rounds; ratios within a round."
    )
    print(
        "\n| engine | docs/s | x gRPC Embed | x Infinity | single query p50 ms | p95 ms | p50 x gRPC "
        "| p50 x Infinity |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        print(
            f"| {name} | {fmt_spread(row['docs_per_s'], '.1f')} | {fmt_spread(row['rate_x_grpc'])} | "
            f"{fmt_spread(row['rate_x_infinity'])} | {fmt_spread(row.get('p50_ms'), '.1f')} | "
            f"{fmt_spread(row.get('p95_ms'), '.1f')} | {fmt_spread(row.get('p50_x_grpc'))} | "
            f"{fmt_spread(row.get('p50_x_infinity'))} |"
        )
    ours = results["ours"]
    print(f"\nours: {ours['model_id']} at {ours['model_dtype']}, flags {' '.join(ours['flags'])}")
    for name, reason in results["failed"].items():
        print(f"- {name}: not measured ({reason})")
    cosines = {
        n: min(r["cosine_to_grpc"][n] for r in results["rounds"])
        for n in results["rounds"][0]["cosine_to_grpc"]
    }
    print(
        "\nlowest mean cosine to gRPC Embed's vectors: "
        + ", ".join(f"{n} {c:.5f}" for n, c in cosines.items())
    )
    http = rows.get("ours HTTP /v1/embeddings float", {})
    if http:
        print("\nGoals (median per-round ratio):")
        print(f"- HTTP float single-query p50 <= 1.2x gRPC: {fmt_spread(http.get('p50_x_grpc'))}")
        print(f"- HTTP float throughput >= 1/1.2 of gRPC: {fmt_spread(http.get('rate_x_grpc'))}")
        print(f"- HTTP float ahead of Infinity: throughput x {fmt_spread(http.get('rate_x_infinity'))}, "
              f"p50 x {fmt_spread(http.get('p50_x_infinity'))}")  # fmt: skip
    print(record.load_line() + "; per round: " + ", ".join(f"{r['load_avg']:.1f}" for r in results["rounds"]))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=64, help="SciFact documents per round (throughput)")
    parser.add_argument("--queries", type=int, default=40, help="STS-B sentences per round (latency)")
    parser.add_argument("--batch", type=int, default=32, help="texts per throughput request")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads (throughput)")
    parser.add_argument("--no-infinity", action="store_true")
    parser.add_argument("--infinity-setting", default="float32", help="Infinity DTYPE[+compile]")
    parser.add_argument(
        "--infinity-venv",
        type=Path,
        default=Path.home() / ".cache" / "embedstream" / "infinity-venv",
        help="venv holding infinity-emb (created when missing; outside the repo)",
    )
    parser.add_argument("--server-arg", action="append", default=[], help="extra flag for our server")
    add_json_argument(parser, "bench_http")
    args = parser.parse_args(argv)
    record = RunRecord("bench_http")
    results = run(args)
    rows = summarize(results)
    report(results, rows, args, record)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    record.write(args.json, {"settings": settings, "summary": rows, **results})


if __name__ == "__main__":
    main()
