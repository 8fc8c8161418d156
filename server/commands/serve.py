"""``embed-server serve``: run the gRPC server until SIGTERM.

A configuration that cannot start (server.preflight: TLS files, the data directory, the ports;
an unknown model) is one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from server import settings as settings_module

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings_module.add_arguments(parser)


def _fail(message: str, code: int) -> int:
    print(f"embed-server serve: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    from server.app import serve
    from server.errors import WorkerFailed
    from server.memory import return_large_blocks_at_once
    from server.model import ModelNotFoundError
    from server.preflight import StartupError
    from server.store import StoreError

    try:
        settings = settings_module.from_args(args)
    except ValueError as exc:
        return _fail(str(exc), 2)
    return_large_blocks_at_once()  # before the first large document arrives
    try:
        clean = asyncio.run(serve(settings))
    except (ModelNotFoundError, StartupError) as exc:
        return _fail(str(exc), 2)
    except WorkerFailed as exc:  # an encoder worker could not load the model
        return _fail(exc.message, 1)
    except (StoreError, OSError) as exc:  # past the start-up checks (e.g. the disk filled up)
        log.debug("start-up failed", exc_info=exc)
        return _fail(f"{exc} (--log-level DEBUG shows where)", 1)
    return 0 if clean else 1  # not clean: the final index save failed (logged)
