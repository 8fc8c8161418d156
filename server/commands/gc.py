"""``embed-server gc``: drop stored vectors that no document references.

Runs on the store directly; stop the server first (the store refuses a second process).
LMDB reuses the freed pages for later writes; the file itself does not shrink.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default="./data", help="the server's --data-dir")


def run(args: argparse.Namespace) -> int:
    from server.store import StoreError, open_store

    try:
        store = open_store(Path(args.data_dir))
    except StoreError as exc:
        print(f"embed-server gc: {exc}", file=sys.stderr)
        return 2
    try:
        removed, kept = store.gc()
    finally:
        store.close()
    print(f"removed {removed} unreferenced vectors; {kept} vectors still referenced")
    return 0
