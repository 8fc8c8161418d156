"""What the client-side subcommands (ingest, search, eval) share: the server address, TLS and
the bearer token (embedcore.transport, the same options the edge client takes), the channel,
and failed calls said in one line."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Literal

import grpc

from embedcore import transport
from embedcore.transport import ClientCredentials, CredentialsError

if TYPE_CHECKING:
    from embedcore.router import Router

MESSAGE_BYTES = 64 << 20


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default="127.0.0.1:50051", help="HOST:PORT of a running server")
    parser.add_argument(
        "--shard-map",
        default=None,
        metavar="FILE",
        help="route over the sharded servers of this JSON shard map instead of --server "
        "(embedcore/shardmap.py; default: $EMBED_SHARD_MAP, JSON text or a file path)",
    )
    transport.add_arguments(parser)


def router(
    args: argparse.Namespace, creds: ClientCredentials, command: str
) -> Router | Literal[False] | None:
    """The router ``--shard-map`` (or ``$EMBED_SHARD_MAP``) asks for, checked against every
    server's Info; None when neither is given (use ``--server``); False after printing why the
    map cannot be used (bad map, a shard unreachable, servers of different models)."""
    from embedcore.router import Router, RouterError
    from embedcore.shardmap import ShardMap, ShardMapError

    try:
        shard_map = ShardMap.load(args.shard_map) if args.shard_map else ShardMap.from_env()
    except ShardMapError as exc:
        print(f"embed-server {command}: {exc}", file=sys.stderr)
        return False
    if shard_map is None:
        return None
    routed = Router(shard_map, credentials=creds)
    try:
        routed.check()
    except RouterError as exc:
        routed.close()
        print(f"embed-server {command}: {exc}", file=sys.stderr)
        return False
    return routed


def credentials(args: argparse.Namespace, command: str) -> ClientCredentials | None:
    """The credentials the options give, or None after printing why they cannot be used."""
    try:
        return transport.from_args(args)
    except CredentialsError as exc:
        print(f"embed-server {command}: {exc}", file=sys.stderr)
        return None


def channel(args: argparse.Namespace, creds: ClientCredentials) -> grpc.Channel:
    options = [
        ("grpc.max_receive_message_length", MESSAGE_BYTES),
        ("grpc.max_send_message_length", MESSAGE_BYTES),
    ]
    return transport.open_channel(args.server, creds, options)


def report_error(
    args: argparse.Namespace,
    command: str,
    exc: grpc.RpcError,
    creds: ClientCredentials,
    timeout: float | None = None,
) -> None:
    """One line on stderr for a failed call; gRPC's own text too with ``--verbose``."""
    failure = transport.explain(exc, args.server, timeout=timeout, credentials=creds)
    print(f"embed-server {command}: {failure.summary}", file=sys.stderr)
    if args.verbose and failure.detail != failure.summary:
        print(f"  gRPC: {failure.code}: {failure.detail}", file=sys.stderr)
