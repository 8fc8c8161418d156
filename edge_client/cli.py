"""``edge-client``: the edge client's command line.

``init`` remembers the server and how to reach it (TLS files, the token *file*; never a token
given with ``--token``) in the home's config.json, so ``sync`` and ``search`` need neither again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from embedcore import transport

_SERVER_COMMANDS = ("init", "sync", "search")  # the ones that talk to a server


def _default_home() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("edge-client", appauthor=False))


def _add_shard_map(p: argparse.ArgumentParser) -> None:
    """``--shard-map`` of the commands that reach the server (sync, search)."""
    p.add_argument(
        "--shard-map",
        default=None,
        metavar="FILE",
        help="sharded servers: sync / ask the shard(s) that hold the collection "
        "(embedcore/shardmap.py; default: $EMBED_SHARD_MAP)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-client",
        description="Local semantic search with an ONNX model; falls back to the embedding server.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--home",
            type=Path,
            default=None,
            help="local state directory (default: a per-user data directory)",
        )
        if name in _SERVER_COMMANDS:
            transport.add_arguments(p)  # TLS, bearer token, --verbose
        else:
            p.add_argument("--verbose", action="store_true", help="log what the client does")
        return p

    p = command("init", "download and verify the edge bundle from a server")
    p.add_argument("--server", required=True, help="HOST:PORT")
    p.add_argument("--dims", type=int, default=None, help="edge dimensions (default: the bundle's)")
    p.add_argument("--dtype", choices=("f16", "i8", "b1"), default=None, help="local index dtype (f16)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = command("sync", "pull a collection's truncated vectors from the server")
    p.add_argument("--collection", required=True)
    p.add_argument("--server", default=None, help="HOST:PORT (default: the one given to init)")
    _add_shard_map(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = command("add", "embed local text files on this device into the local index")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--collection", default="local", help="local index to add to (default: local)")
    p.add_argument(
        "--no-chunking",
        dest="chunking",
        action="store_false",
        help="embed only the beginning of a paragraph longer than the model reads (default: chunk it "
        "as the server chunks long documents)",
    )
    p = command("search", "search locally, on the server, or automatically")
    p.add_argument("text")
    p.add_argument("--collection", required=True)
    p.add_argument("--mode", choices=("local", "server", "auto"), default="auto")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--comprehensive", action="store_true", help="auto: always ask the server")
    p.add_argument(
        "--filter",
        default=None,
        metavar="JSON",
        help='metadata filter, the server\'s language: {"year": {"gte": 2010}, "source": "pubmed"} '
        "(README: Metadata filters)",
    )
    p.add_argument("--server", default=None, help="HOST:PORT (default: the one given to init)")
    p.add_argument("--timeout", type=float, default=5.0, help="server deadline in seconds")
    _add_shard_map(p)
    return parser


class _InitProgress:
    """What ``init`` shows: a line while the server prepares the bundle, then a byte bar."""

    def __init__(self, server: str, enabled: bool) -> None:
        self.server, self.enabled = server, enabled
        self._bar: Any = None
        self._waited = False

    def waiting(self, seconds: float) -> None:
        if not self._waited:
            message = (
                f"waiting for the server at {self.server} to prepare the edge bundle (once enough "
                "documents arrived it first fits the projection on its store: up to a minute or two)"
            )
        else:
            message = f"still waiting for the edge bundle ({seconds:.0f} s)"
        self._waited = True
        print(message, file=sys.stderr, flush=True)

    def bytes(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="edge bundle")
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _run(args: argparse.Namespace, credentials: transport.ClientCredentials | None) -> int:
    from edge_client import EdgeClient

    options: dict[str, Any] = {"server": getattr(args, "server", None), "credentials": credentials}
    if args.command == "init":
        options.update(dims=args.dims, dtype=args.dtype)
    if args.command == "search":
        options["timeout"] = args.timeout
    if args.command in ("sync", "search"):
        from embedcore.router import Router
        from embedcore.shardmap import ShardMap, ShardMapError

        try:
            shard_map = ShardMap.load(args.shard_map) if args.shard_map else ShardMap.from_env()
        except ShardMapError as exc:
            print(f"edge-client {args.command}: {exc}", file=sys.stderr)
            return 2
        if shard_map is not None:
            options["router"] = Router(shard_map, credentials=credentials)
    try:
        return _run_client(args, EdgeClient(args.home, **options))
    finally:
        if "router" in options:
            options["router"].close()


def _run_client(args: argparse.Namespace, edge: Any) -> int:
    with edge as client:
        if args.command == "init":
            shown = _InitProgress(client.server, enabled=not args.no_progress)
            try:
                bundle = client.init(progress=shown.bytes, waiting=shown.waiting)
            finally:
                shown.close()
            m = bundle.manifest
            print(
                f"installed edge bundle {bundle.fingerprint} ({m.model_id}, {m.projection_kind} projection, "
                f"{client.dims} dims, {client.dtype}) in {args.home}"
            )
        elif args.command == "sync":
            report = client.sync(args.collection, progress=not args.no_progress)
            kind = "full resync" if report.full_resync else "incremental"
            print(
                f"synced {args.collection!r} ({kind}): {report.upserts} upserts, {report.deletes} deletes; "
                f"{report.documents} documents locally, at sequence {report.sequence}"
            )
        elif args.command == "add":
            added = client.add(args.paths, collection=args.collection, chunking=args.chunking)
            print(f"added {added.summary()} to the local index {args.collection!r}")
        else:
            result = client.search(
                args.text,
                collection=args.collection,
                k=args.k,
                mode=args.mode,
                comprehensive=args.comprehensive,
                filter=args.filter,
            )
            if args.verbose and result.detail:
                print(f"  gRPC: {result.detail}", file=sys.stderr)
            if args.json:
                print(json.dumps(result.to_dict(), ensure_ascii=False))
            else:
                flag = " DEGRADED" if result.degraded else ""
                print(f"source: {result.source}{flag}" + (f" ({result.reason})" if result.reason else ""))
                for rank, hit in enumerate(result.results, 1):
                    line = " ".join(hit.snippet.split()) if hit.snippet else hit.text  # long: best chunk
                    print(f"{rank:2d}. {hit.score:.3f}  {hit.id}  {line[:90]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    # gRPC's own INFO lines (a failed TLS handshake, ...) would land on the terminal beside the
    # one-line message this CLI prints; --verbose shows that detail. Set before grpc loads.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    args = build_parser().parse_args(argv)
    if args.home is None:
        args.home = _default_home()
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from edge_client.errors import EdgeError, ServerError

    try:
        credentials = transport.from_args(args) if args.command in _SERVER_COMMANDS else None
    except transport.CredentialsError as exc:
        print(f"edge-client {args.command}: {exc}", file=sys.stderr)
        return 2
    try:
        return _run(args, None if credentials is None or credentials.is_empty else credentials)
    except EdgeError as exc:
        print(f"edge-client {args.command}: {exc}", file=sys.stderr)
        if args.verbose and isinstance(exc, ServerError) and exc.detail:
            print(f"  gRPC: {exc.code}: {exc.detail}", file=sys.stderr)
        return 1
    except transport.CredentialsError as exc:  # a remembered token file that is gone
        print(f"edge-client {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
