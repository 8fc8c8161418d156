"""``embed-server serve``: run the gRPC server until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import sys

from server import settings as settings_module


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings_module.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from server.app import serve
    from server.errors import WorkerFailed
    from server.model import ModelNotFoundError

    try:
        settings = settings_module.from_args(args)
    except ValueError as exc:
        print(f"embed-server serve: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(settings))
    except ModelNotFoundError as exc:
        print(f"embed-server serve: {exc}", file=sys.stderr)
        return 2
    except WorkerFailed as exc:  # an encoder worker could not load the model
        print(f"embed-server serve: {exc.message}", file=sys.stderr)
        return 1
    return 0
