"""``edge-client``: the edge client's command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _default_home() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("edge-client", appauthor=False))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-client",
        description="Local semantic search with an ONNX model; falls back to the embedding server.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--home",
            type=Path,
            default=None,
            help="local state directory (default: a per-user data directory)",
        )
        return p

    p = command("init", "download and verify the edge bundle from a server")
    p.add_argument("--server", required=True, help="HOST:PORT")
    p = command("sync", "pull a collection's truncated vectors from the server")
    p.add_argument("--collection", required=True)
    p = command("add", "embed local text files on this device into the local index")
    p.add_argument("paths", nargs="+", type=Path)
    p = command("search", "search locally, on the server, or automatically")
    p.add_argument("text")
    p.add_argument("--collection", required=True)
    p.add_argument("--mode", choices=("local", "server", "auto"), default="auto")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.home is None:
        args.home = _default_home()
    print(f"edge-client {args.command}: not built yet (issue 5); nothing was done.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
