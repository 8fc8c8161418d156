"""``embed-server``: the server's command line. Each subcommand lives in server/commands/."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# name -> (module, one-line help). Modules import nothing heavy at import time.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("server.commands.serve", "run the gRPC server"),
    "ingest": ("server.commands.ingest", "stream a JSONL corpus (BEIR format, .gz ok) into a collection"),
    "search": ("server.commands.search", "search a collection on a running server"),
    "eval": ("server.commands.eval", "retrieval / STS evaluation through the server and edge paths"),
    "export-edge": ("server.commands.export_edge", "write the edge bundle (ONNX model, tokenizer, manifest)"),
    "reembed": ("server.commands.reembed", "re-embed collections stored under another model"),
    "migrate": ("server.commands.migrate", "re-embed a collection with another model; cut over, roll back"),
    "gc": ("server.commands.gc", "drop stored vectors that no document references"),
    "finetune": ("server.commands.finetune", "fine-tune a Matryoshka model on a collection's own texts"),
    "demo": ("server.commands.demo", "start a server, ingest the sample corpus, search from the edge"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embed-server",
        description="gRPC streaming embedding server with an LMDB content-hash store.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


class _LibraryChatter(logging.Filter):
    """Drops what onnxruntime's quantizer logs on the root logger while the edge bundle's int8
    graph is made (~35 lines of "Quantization parameters for tensor ... not specified", "Ignore
    MatMul ...", "Please consider to run pre-processing"): notes on its own heuristics, not news
    about this server. Its errors still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        quantizer = (
            record.name == "root" and "onnxruntime" in record.pathname and "quantization" in record.pathname
        )
        return not quantizer or record.levelno >= logging.ERROR


def _quiet_libraries() -> None:
    """Before anything heavy loads (the pool's workers inherit the environment)."""
    # gRPC C-core's INFO lines (every failed TLS handshake of a stray plaintext client) are noise
    # in the log and on a client's terminal; its errors still show. A user's setting wins.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    # transformers' "Loading weights" bar, drawn by every worker at every start.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    args = build_parser().parse_args(argv)
    level = getattr(args, "log_level", None) or "INFO"
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_LibraryChatter())
    try:
        return int(args._run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
