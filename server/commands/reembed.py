"""``embed-server reembed``."""

from __future__ import annotations

import argparse

from server.commands import not_built


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default="./data")


def run(args: argparse.Namespace) -> int:
    return not_built("reembed", 4)
