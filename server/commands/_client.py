"""What the client-side subcommands (ingest, search) share: the channel and its credentials."""

from __future__ import annotations

import argparse
import os

import grpc


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default="127.0.0.1:50051", help="HOST:PORT of a running server")
    parser.add_argument(
        "--token",
        default=os.environ.get("EMBED_AUTH_TOKEN", ""),
        help="bearer token, if the server requires one [env EMBED_AUTH_TOKEN]",
    )


def channel(args: argparse.Namespace) -> grpc.Channel:
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    return grpc.insecure_channel(args.server, options=options)


def call_metadata(args: argparse.Namespace) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {args.token}")] if args.token else []


def describe_error(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return f"{code.name if code else 'ERROR'}: {details}"
