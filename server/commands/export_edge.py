"""``embed-server export-edge``."""

from __future__ import annotations

import argparse

from server.commands import not_built


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="bundle directory to write")


def run(args: argparse.Namespace) -> int:
    return not_built("export-edge", 5)
