"""``embed-server gc``: drop previous model versions past their retention, then stored vectors
that no document references.

Runs on the store directly; stop the server first (the store refuses a second process).
LMDB reuses the freed pages for later writes; the file itself does not shrink.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default="./data", help="the server's --data-dir")
    parser.add_argument(
        "--version-retention-hours",
        type=float,
        default=None,
        help="drop a collection's previous model version (kept for `migrate --rollback`) this "
        "long after its cutover [env EMBED_VERSION_RETENTION_HOURS; default: the server's setting]",
    )


def run(args: argparse.Namespace) -> int:
    from server.settings import Settings
    from server.store import StoreError, open_store

    try:
        overrides = (
            {}
            if args.version_retention_hours is None
            else {"version_retention_hours": args.version_retention_hours}
        )
        retention_h = Settings.from_env(**overrides).version_retention_hours
    except ValueError as exc:
        print(f"embed-server gc: {exc}", file=sys.stderr)
        return 2
    try:
        store = open_store(Path(args.data_dir))
    except StoreError as exc:
        print(f"embed-server gc: {exc}", file=sys.stderr)
        return 2
    try:
        expired = store.expire_versions(retention_h * 3600.0)
        removed, kept = store.gc()
    finally:
        store.close()
    for name in expired:
        print(f"dropped the previous model version of {name!r} (retired over {retention_h:g} h ago)")
    print(f"removed {removed} unreferenced vectors; {kept} vectors still referenced")
    return 0
