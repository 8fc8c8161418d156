"""``embed-server demo``."""

from __future__ import annotations

import argparse

from server.commands import not_built


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help="store directory (default: a temp dir)")


def run(args: argparse.Namespace) -> int:
    return not_built("demo", 5)
