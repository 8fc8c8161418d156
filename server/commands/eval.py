"""``embed-server eval``."""

from __future__ import annotations

import argparse

from server.commands import not_built


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="BEIR-format folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--server", default="127.0.0.1:50051", help="HOST:PORT")
    parser.add_argument("--json", dest="json_file", default=None, help="write results to FILE")


def run(args: argparse.Namespace) -> int:
    return not_built("eval", 6)
