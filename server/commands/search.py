"""``embed-server search "text" --collection NAME``: ranked results from a running server."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from server.commands._client import add_server_arguments, channel, credentials, report_error, router

_PRECISIONS = ("float32", "int8", "ubinary")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text")
    parser.add_argument("--collection", required=True)
    add_server_arguments(parser)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--exact", action="store_true", help="brute force instead of the index")
    parser.add_argument("--dimensions", type=int, default=None, help="Matryoshka dimensions (exact search)")
    parser.add_argument(
        "--precision", choices=_PRECISIONS, default="float32", help="first pass precision (then rescoring)"
    )
    parser.add_argument(
        "--filter",
        default="",
        metavar="JSON",
        help='metadata filter (SearchRequest.filter), e.g. \'{"year": {"gte": 2010}, "source": "pubmed"}\'',
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the answer")


def run(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format

    from protos.embedding.v1 import embedding_pb2 as pb
    from protos.embedding.v1.embedding_pb2_grpc import CollectionServiceStub

    creds = credentials(args, "search")
    if creds is None:
        return 2
    precision = {"float32": pb.PRECISION_FLOAT32, "int8": pb.PRECISION_INT8, "ubinary": pb.PRECISION_UBINARY}
    request = pb.SearchRequest(
        collection=args.collection,
        query=args.text,
        k=args.k,
        exact=args.exact,
        precision=precision[args.precision],
        filter=args.filter,
    )
    if args.dimensions is not None:
        request.dimensions = args.dimensions
    routed = router(args, creds, "search")
    if routed is False:
        return 2
    if routed is not None:
        from embedcore.router import RouterError

        with routed:
            try:
                response = routed.search(request, timeout=args.timeout)
            except RouterError as exc:
                print(f"embed-server search: {exc}", file=sys.stderr)
                return 1
    else:
        with channel(args, creds) as ch:
            try:
                response = CollectionServiceStub(ch).Search(
                    request, metadata=creds.metadata(), timeout=args.timeout
                )
            except grpc.RpcError as exc:
                report_error(args, "search", exc, creds, timeout=args.timeout)
                return 1
    results: list[dict[str, Any]] = [
        {"id": h.id, "score": h.score, "text": h.text, "metadata": json_format.MessageToDict(h.metadata)}
        for h in response.hits
    ]
    snippets = [h.snippet for h in response.hits]  # a long document's best chunk ("" otherwise)
    if args.json:
        print(json.dumps({"results": results, "source": "server", "degraded": False, "reason": None}))
        return 0
    for rank, (hit, snippet) in enumerate(zip(results, snippets, strict=True), 1):
        text = " ".join((snippet or hit["text"]).split())
        print(f"{rank:>3}. {hit['score']:.4f}  {hit['id']}  {text[:100]}")
    if not results:
        print("no results")
    return 0
