"""``embed-server ingest``."""

from __future__ import annotations

import argparse

from server.commands import not_built


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="corpus JSONL (BEIR: _id, title, text), .jsonl.gz too")
    parser.add_argument("--collection", required=True)
    parser.add_argument("--server", default="127.0.0.1:50051", help="HOST:PORT")


def run(args: argparse.Namespace) -> int:
    return not_built("ingest", 4)
