"""What the client-side subcommands (ingest, search, eval) share: the server address, TLS and
the bearer token (embedcore.transport, the same options the edge client takes), the channel,
and failed calls said in one line."""

from __future__ import annotations

import argparse
import sys

import grpc

from embedcore import transport
from embedcore.transport import ClientCredentials, CredentialsError

MESSAGE_BYTES = 64 << 20


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default="127.0.0.1:50051", help="HOST:PORT of a running server")
    transport.add_arguments(parser)


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
