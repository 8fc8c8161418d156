"""``embed-server eval``: retrieval (BEIR folder) and STS evaluation through the real paths.

The corpus goes in through the server's Ingest RPC (a re-run re-ingests into the same
collection and embeds nothing), queries through Search (and the edge client where its API
exists). One row per configuration; ``--configs`` picks some by glob.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from server.commands._client import add_server_arguments, credentials, router


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", type=Path, default=None, help="BEIR-format folder")
    parser.add_argument("--split", default="test", help="qrels/<split>.tsv to evaluate (default test)")
    parser.add_argument("--json", dest="json_file", type=Path, default=None, help="write results to FILE")
    parser.add_argument("--sts", type=Path, default=None, help="STS Benchmark CSV: cosine Spearman")
    parser.add_argument(
        "--configs",
        nargs="*",
        default=[],
        help="configuration labels or globs (e.g. 'server/*' 'edge-local/128/*'); default all",
    )
    parser.add_argument("--collection", default=None, help="collection name (default: from the dataset)")
    parser.add_argument("--concurrency", type=int, default=4, help="queries in flight")
    add_server_arguments(parser)
    parser.add_argument("--list-configs", action="store_true", help="print the configuration labels")


def run(args: argparse.Namespace) -> int:
    from server.evaluation.configs import default_configs
    from server.evaluation.datasets import DatasetError
    from server.evaluation.report import table, write_json
    from server.evaluation.runner import EvalOptions, run_evaluation

    if args.list_configs:
        print("\n".join(c.label for c in default_configs()))
        return 0
    if args.dataset is None and args.sts is None:
        print("embed-server eval: give --dataset DIR and/or --sts FILE.csv", file=sys.stderr)
        return 2
    if args.concurrency < 1:
        print("embed-server eval: --concurrency must be >= 1", file=sys.stderr)
        return 2
    creds = credentials(args, "eval")
    if creds is None:
        return 2
    routed = router(args, creds, "eval")
    if routed is False:
        return 2
    options = EvalOptions(
        server=args.server if routed is None else routed.map.shards[0].primary,
        dataset=args.dataset,
        split=args.split,
        sts=args.sts,
        configs=args.configs,
        collection=args.collection,
        concurrency=args.concurrency,
        credentials=creds,
        router=routed,
    )
    try:
        outcome = run_evaluation(options)
    except (DatasetError, ValueError, ConnectionError) as exc:
        print(f"embed-server eval: {exc}", file=sys.stderr)
        return 2
    finally:
        if routed is not None:
            routed.close()
    if outcome.results:
        print()
        print(table(outcome.results))
    if args.json_file is not None:
        write_json(args.json_file, outcome.json_rows())
        print(f"\nwrote {args.json_file}")
    measured = [r for r in outcome.results if r.metrics is not None]
    sts_ok = outcome.sts is None or outcome.sts.get("spearman") is not None
    # Exit 1 when nothing could be measured: a scripted run should notice.
    return 0 if (measured or not outcome.results) and sts_ok else 1
