"""docs/s of EmbedStream over loopback vs in-process SentenceTransformer.encode, same texts.

    python benchmarks/bench_embed_stream.py --limit 500 [--address HOST:PORT] [-- serve flags]

Texts: SciFact documents, (title + " " + text).strip(), the first ``--limit`` of the corpus.
Without --address a server is started here (``embed-server serve`` on a free port, default
settings plus any flags after ``--``) and stopped at the end. Both sides run on this machine,
one after the other (never at the same time); the table also shows the mean cosine between the
two sides' vectors, so a fast-but-wrong configuration shows up.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1 import embedding_pb2_grpc as pb_grpc
from server.launch import free_port, serve_command, wait_serving

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact" / "corpus.jsonl.gz"


def load_texts(path: Path, limit: int) -> list[str]:
    texts = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            texts.append((doc.get("title", "") + " " + doc.get("text", "")).strip())
            if len(texts) >= limit:
                break
    return texts


def start_server(extra: list[str]) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    log_path = data_dir / "server.log"
    cmd = serve_command(port, data_dir / "d", *extra)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
    address = f"127.0.0.1:{port}"
    wait_serving(address, proc, timeout=600)
    return proc, address, log_path


def stream_embed(stub: pb_grpc.EmbeddingServiceStub, texts: list[str], tag: str) -> np.ndarray:
    def requests() -> Iterator[pb.EmbedStreamRequest]:
        for i, text in enumerate(texts):
            yield pb.EmbedStreamRequest(id=f"{tag}{i}", input=text)

    rows = []
    for i, reply in enumerate(stub.EmbedStream(requests(), timeout=3600)):
        if reply.id != f"{tag}{i}" or not reply.HasField("embedding"):
            raise RuntimeError(f"bad reply {i}: {reply}")
        rows.append(np.frombuffer(reply.embedding.data, "<f4"))
    return np.stack(rows)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=500, help="number of SciFact documents")
    parser.add_argument("--corpus", type=Path, default=SCIFACT)
    parser.add_argument("--address", help="use a running server instead of starting one")
    parser.add_argument("--batch-size", type=int, default=32, help="SentenceTransformer.encode batch size")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    texts = load_texts(args.corpus, args.limit)
    warm = [f"warm-up sentence {i}" for i in range(64)]

    proc = None
    address = args.address
    if address is None:
        proc, address, log_path = start_server(extra)
        print(f"server log: {log_path}", file=sys.stderr)
    try:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.EmbeddingServiceStub(channel)
            info = stub.Info(pb.InfoRequest(), timeout=30)
            stream_embed(stub, warm, "w")
            t0 = time.perf_counter()
            server_vectors = stream_embed(stub, texts, "d")
            server_s = time.perf_counter() - t0
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)

    from sentence_transformers import SentenceTransformer

    from server.model import load_spec

    model = SentenceTransformer(str(load_spec(info.model_id).path), device="cpu")
    model.encode(warm, batch_size=args.batch_size)
    t0 = time.perf_counter()
    st_vectors = model.encode(
        texts, batch_size=args.batch_size, convert_to_numpy=True, normalize_embeddings=True
    )
    st_s = time.perf_counter() - t0

    cosine = float(np.mean(np.sum(server_vectors * st_vectors, axis=1)))
    server_rate, st_rate = len(texts) / server_s, len(texts) / st_s
    print(f"SciFact docs: {len(texts)}   model: {info.model_id}   cores: {os.cpu_count()}")
    print(f"{'path':<58} {'seconds':>8} {'docs/s':>8}")
    label = f"EmbedStream, loopback ({info.backend}, {info.dtype}, {info.workers} worker(s))"
    print(f"{label:<58} {server_s:>8.2f} {server_rate:>8.1f}")
    label = f"SentenceTransformer.encode in-process (float32, batch {args.batch_size})"
    print(f"{label:<58} {st_s:>8.2f} {st_rate:>8.1f}")
    print(f"ratio EmbedStream / in-process: {server_rate / st_rate:.2f}x")
    print(f"mean cosine, server vs in-process vectors: {cosine:.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
