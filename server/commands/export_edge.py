"""``embed-server export-edge --out DIR``: write the edge bundle (ONNX model, tokenizer, manifest).

The Matryoshka projection (``--projection``: the linear adaptor, default, or the PCA rotation)
is fitted on corpus vectors: a server's store (``--fit-data-dir``, optionally one
``--fit-collection``) or a JSONL corpus embedded here (``--fit-corpus``, BEIR format). The
adaptor also trains on pseudo-queries: sentences of the corpus texts, embedded here with the
same model (a store that keeps no text gets the rotation). Without a corpus the projection is
the identity (plain truncation). To make a server serve this bundle, write it to DATA_DIR/edge_bundle (or pass
``--edge-bundle-dir``) and restart it; edge clients then re-init and resync.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="bundle directory to write")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="model directory, alias or hub id")
    parser.add_argument("--dims", type=int, default=128, help="default edge dimensions (128)")
    parser.add_argument("--no-int8", action="store_true", help="leave out the int8 ONNX graph")
    parser.add_argument(
        "--projection",
        choices=("adaptor", "rotation"),
        default="adaptor",
        help="Matryoshka projection to fit: linear adaptor (default) or PCA rotation",
    )
    parser.add_argument("--fit-data-dir", default=None, help="fit the projection on this store's vectors")
    parser.add_argument("--fit-collection", default=None, help="with --fit-data-dir: only this collection")
    parser.add_argument("--fit-corpus", default=None, help="fit the projection on this JSONL corpus")
    parser.add_argument("--fit-sample", type=int, default=20000, help="most vectors to fit on")
    parser.add_argument("--onnx-cache", default="", help="exported ONNX cache (default: per-user cache)")


def _encoder(spec_path: Path, max_tokens: int) -> Callable[[list[str]], np.ndarray]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(spec_path), device="cpu")
    model.max_seq_length = max_tokens

    def encode(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(texts, batch_size=32, convert_to_numpy=True), dtype=np.float32)

    return encode


def run(args: argparse.Namespace) -> int:
    import onnxruntime  # noqa: F401  (before usearch, which the store imports)

    from server.edge_adaptor import MAX_FIT_DOCS, MIN_FIT_DOCS, OUT_DIMS, pseudo_query_sentences
    from server.edge_bundle import build_bundle, ensure_onnx
    from server.edge_projection import fit_projection
    from server.model import ModelNotFoundError, load_spec
    from server.servicers.edge import onnx_cache_dir
    from server.settings import Settings

    try:
        spec = load_spec(args.model)
    except ModelNotFoundError as exc:
        print(f"embed-server export-edge: {exc}", file=sys.stderr)
        return 2
    if not 0 < args.dims <= spec.dimensions:
        print(f"embed-server export-edge: --dims must be in 1..{spec.dimensions}", file=sys.stderr)
        return 2
    limit = min(args.fit_sample, MAX_FIT_DOCS) if args.projection == "adaptor" else args.fit_sample
    vectors: np.ndarray | None = None
    texts: list[str | None] = []
    source = "none"
    encode: Callable[[list[str]], np.ndarray] | None = None
    if args.fit_data_dir:
        from server.store.lmdb_store import open_store

        store = open_store(Path(args.fit_data_dir))
        try:
            vectors, texts = store.sample_documents(
                limit, collection=args.fit_collection, fingerprint=spec.fingerprint
            )
        finally:
            store.close()
        source = f"store {args.fit_data_dir}" + (
            f" collection {args.fit_collection}" if args.fit_collection else ""
        )
    elif args.fit_corpus:
        from server.commands.ingest import read_corpus

        texts = [text for _, text, _ in read_corpus(Path(args.fit_corpus), limit)]
        encode = _encoder(spec.path, spec.max_tokens)
        document = spec.prompt_text(spec.document_prompt_name)  # as the server's Ingest embeds
        vectors = encode([document + str(t) for t in texts])
        source = f"corpus {Path(args.fit_corpus).name}"
    pseudo_queries: np.ndarray | None = None
    # Below MIN_FIT_DOCS fit_projection fits the rotation: no model load for unused sentences.
    enough = vectors is not None and len(vectors) >= max(2 * args.dims, MIN_FIT_DOCS)
    if args.projection == "adaptor" and enough:
        sentences = pseudo_query_sentences(texts)
        if sentences:
            encode = encode or _encoder(spec.path, spec.max_tokens)
            prefix = spec.prompt_text(spec.query_prompt_name)  # they stand in for queries
            pseudo_queries = encode([prefix + t for t in sentences])
    projection = fit_projection(
        vectors,
        spec.dimensions,
        min_vectors=2 * args.dims,
        kind=args.projection,
        pseudo_queries=pseudo_queries,
        out_dims=max(OUT_DIMS, args.dims),
    )
    fitted = len(vectors) if vectors is not None and projection.kind != "identity" else 0
    queries = (
        len(pseudo_queries) if fitted and projection.kind == "adaptor" and pseudo_queries is not None else 0
    )
    cache = Path(args.onnx_cache) if args.onnx_cache else onnx_cache_dir(Settings())
    bundle = build_bundle(
        spec,
        Path(args.out),
        projection,
        default_dims=args.dims,
        onnx_dir=ensure_onnx(spec, cache, int8=not args.no_int8),
        int8=not args.no_int8,
        extra={
            "fit_vectors": fitted,
            "fit_pseudo_queries": queries,
            "fit_source": source if fitted else "none",
            "kind": projection.kind,
        },
    )
    print(
        f"edge bundle {bundle.fingerprint} in {args.out}: {spec.fingerprint}, {projection.kind} projection"
        f" ({fitted} vectors + {queries} pseudo-queries from {source}), {args.dims} dims"
    )
    return 0
