"""``embed-server ingest FILE --collection NAME``: stream a JSONL corpus into a collection.

BEIR corpus lines (``_id``, ``title``, ``text``; ``.jsonl.gz`` too). The embedded text is
``title + " " + text`` (the usual BEIR convention); the title also goes into the metadata.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from embedcore.transport import ClientCredentials
from server.commands._client import add_server_arguments, channel, credentials, report_error, router


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="corpus JSONL (BEIR: _id, title, text), .jsonl.gz too")
    parser.add_argument("--collection", required=True)
    add_server_arguments(parser)
    parser.add_argument("--limit", type=int, default=0, help="only the first N documents (0 = all)")
    parser.add_argument("--no-text", action="store_true", help="do not keep document text in the store")
    chunking = parser.add_mutually_exclusive_group()
    chunking.add_argument(
        "--chunking",
        dest="chunking",
        action="store_const",
        const=True,
        help="chunk documents longer than the model reads (IngestRequest.chunking=true), "
        "whatever the server's --chunking",
    )
    chunking.add_argument(
        "--no-chunking",
        dest="chunking",
        action="store_const",
        const=False,
        help="cut documents longer than the model reads at its maximum instead of chunking them "
        "(IngestRequest.chunking=false)",
    )
    ray = parser.add_argument_group("bulk ingestion on Ray Data (the `cluster` extra; server/ray_ingest.py)")
    ray.add_argument(
        "--ray",
        action="store_true",
        help="read the corpus (JSONL, .jsonl.gz, Parquet) with Ray Data and stream it to the shards "
        "from Ray actors (placement by --shard-map, else the one --server)",
    )
    ray.add_argument(
        "--ray-address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)"
    )
    ray.add_argument(
        "--ray-senders", type=int, default=2, help="sender actors (concurrent batches in flight)"
    )
    ray.add_argument("--ray-batch", type=int, default=64, help="documents per batch sent to a shard")
    ray.add_argument("--ray-attempts", type=int, default=5, help="tries per batch before the document fails")


def _open(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def read_corpus(path: Path, limit: int = 0) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(id, text, metadata) per line; ids from ``_id`` (or ``id``)."""
    with _open(path) as handle:
        count = 0
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            doc_id = str(row.get("_id", row.get("id", "")))
            if not doc_id:
                raise ValueError(f"{path}:{line_no}: no _id")
            title = str(row.get("title") or "")
            text = f"{title} {row.get('text') or ''}".strip()
            metadata = {"title": title} if title else {}
            yield doc_id, text, metadata
            count += 1
            if limit and count >= limit:
                return


def run(args: argparse.Namespace) -> int:
    import grpc
    from tqdm import tqdm

    from embedcore.router import RouterError
    from protos.embedding.v1 import embedding_pb2 as pb
    from protos.embedding.v1.embedding_pb2_grpc import CollectionServiceStub

    path = Path(args.file)
    if not path.is_file():
        print(f"embed-server ingest: no such file {path}", file=sys.stderr)
        return 2
    creds = credentials(args, "ingest")
    if creds is None:
        return 2
    if args.ray:
        return _run_ray(args, creds)
    routed = router(args, creds, "ingest")
    if routed is False:
        return 2
    total = sum(1 for _ in read_corpus(path, args.limit))

    def requests() -> Iterator[pb.IngestRequest]:
        for doc_id, text, metadata in read_corpus(path, args.limit):
            request = pb.IngestRequest(collection=args.collection, id=doc_id, text=text)
            if metadata:
                request.metadata.update(metadata)
            if args.no_text:
                request.store_text = False
            if args.chunking is not None:  # unset: the server's --chunking decides
                request.chunking = args.chunking
            yield request

    embedded = cached = failed = 0
    chunks_embedded = chunks_cached = chunked = 0
    started = time.perf_counter()
    with channel(args, creds) as ch, tqdm(total=total, unit="doc", desc=f"ingest {args.collection}") as bar:
        stub = CollectionServiceStub(ch)
        acks = (
            stub.Ingest(requests(), metadata=creds.metadata())
            if routed is None
            else routed.ingest(requests(), timeout=600.0)
        )
        try:
            for ack in acks:
                if ack.HasField("error"):
                    failed += 1
                    tqdm.write(f"{ack.id}: {ack.error.message}", file=sys.stderr)
                elif ack.cached:
                    cached += 1
                else:
                    embedded += 1
                chunks_embedded += ack.chunks_embedded
                chunks_cached += ack.chunks_cached
                chunked += ack.chunks_embedded + ack.chunks_cached > 1
                bar.update(1)
        except grpc.RpcError as exc:
            bar.close()
            report_error(args, "ingest", exc, creds)
            return 1
        except RouterError as exc:
            bar.close()
            print(
                f"embed-server ingest: {exc}; send the file again (acknowledged documents are cache hits)",
                file=sys.stderr,
            )
            return 1
        finally:
            if routed is not None:
                routed.close()
    elapsed = time.perf_counter() - started
    print(
        summary(args.collection, embedded, cached, failed, chunks_embedded, chunks_cached, chunked, elapsed)
    )
    return 1 if failed else 0


def summary(
    collection: str,
    embedded: int,
    cached: int,
    failed: int,
    chunks_embedded: int,
    chunks_cached: int,
    chunked: int,
    elapsed: float,
) -> str:
    """The one-line summary every ingest path prints (plain, routed, Ray)."""
    docs = embedded + cached + failed
    return (
        f"{docs} docs into {collection!r}: {embedded} embedded, {cached} cached, {failed} failed; "
        f"{chunks_embedded + chunks_cached} chunks ({chunked} docs longer than the model reads were "
        f"chunked): {chunks_embedded} embedded, {chunks_cached} cached; "
        f"in {elapsed:.1f}s ({docs / max(elapsed, 1e-9):.1f} docs/s)"
    )


def _run_ray(args: argparse.Namespace, credentials: ClientCredentials) -> int:
    """``embed-server ingest ... --ray``: progress bar, the plain CLI's summary line, and the
    documents per shard; exit 1 when a document failed, 2 for unusable input."""
    from tqdm import tqdm

    from embedcore.router import Router, RouterError
    from embedcore.shardmap import ShardMap, ShardMapError
    from server.ray_ingest import ingest_with_ray

    try:
        shard_map = ShardMap.load(args.shard_map) if args.shard_map else ShardMap.from_env()
    except ShardMapError as exc:
        print(f"embed-server ingest: {exc}", file=sys.stderr)
        return 2
    shard_map = shard_map or ShardMap.single(args.server)
    with Router(shard_map, credentials=credentials) as checked:
        try:
            checked.check()
        except RouterError as exc:
            print(f"embed-server ingest: {exc}", file=sys.stderr)
            return 2
    try:
        import ray  # noqa: F401
    except ImportError:
        print("embed-server ingest --ray: Ray is not installed; pip install '.[cluster]'", file=sys.stderr)
        return 2
    with tqdm(unit="doc", desc=f"ingest {args.collection} (ray)") as bar:
        try:
            report = ingest_with_ray(
                [args.file],
                collection=args.collection,
                shard_map=shard_map,
                credentials=credentials,
                senders=args.ray_senders,
                batch=args.ray_batch,
                attempts=args.ray_attempts,
                limit=args.limit,
                store_text=not args.no_text,
                chunking=args.chunking,
                ray_address=args.ray_address,
                progress=bar.update,
            )
        except ValueError as exc:
            bar.close()
            print(f"embed-server ingest: {exc}", file=sys.stderr)
            return 2
    for row in report.acks:
        if row["error"]:
            print(f"{row['id']}: {row['error']}", file=sys.stderr)
    print(
        summary(
            args.collection,
            report.embedded,
            report.cached,
            report.failed,
            report.chunks_embedded,
            report.chunks_cached,
            report.chunked,
            report.seconds,
        )
    )
    shards = ", ".join(f"{name} {n}" for name, n in sorted(report.per_shard.items()))
    print(f"per shard: {shards}; documents sent again after a failed batch: {report.resent_documents}")
    return 1 if report.failed else 0
