"""``embed-server export-edge --out DIR``: write the edge bundle (ONNX model, tokenizer, manifest).

The bundle is made by the very code the running server uses (server.edge_builder) with the
same settings (every ``serve`` option is accepted: ``--model``, ``--edge-dims``,
``--edge-projection``, ``--edge-fit-min-vectors``, ...), so the same store gives the same bundle.
The projection is fitted on the store under ``--data-dir`` (stop the server first: the store
takes one process), or on a JSONL corpus (``--fit-corpus``, BEIR format) ingested through the
Ingest path into a temporary store. Without either it is the identity (plain truncation). To
make a server serve this bundle, write it to DATA_DIR/edge_bundle (or pass
``--edge-bundle-dir``) and restart it; edge clients then re-init and resync.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from server import settings as settings_module

CORPUS_BATCH = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="bundle directory to write")
    parser.add_argument(
        "--fit-corpus", type=Path, default=None, help="fit on this JSONL corpus instead of --data-dir's store"
    )
    settings_module.add_arguments(parser)


async def _export(settings: settings_module.Settings, out: Path, corpus: Path | None) -> int:
    import onnxruntime  # noqa: F401  (before usearch, which the store imports)

    from server.commands.ingest import read_corpus
    from server.edge_builder import EdgeBundles
    from server.ingest import IngestItem, Ingestor
    from server.model import load_spec
    from server.runtime import create_embedder
    from server.store import open_store

    spec = load_spec(settings.model)
    source = "none"
    with tempfile.TemporaryDirectory(prefix="export-edge-") as scratch:
        if corpus is not None:
            data_dir, source = Path(scratch), f"corpus {corpus.name}"
        elif (settings.data_dir / "store").is_dir():
            data_dir, source = settings.data_dir, f"store {settings.data_dir}"
        else:
            data_dir = Path(scratch)  # nothing to fit on: an empty store, the identity projection
        store = open_store(data_dir, map_size=settings.store_map_size_mb << 20)
        embedder = create_embedder(settings, spec)
        try:
            if corpus is not None:
                ingestor = Ingestor.from_settings(store, None, embedder, spec, settings)
                await embedder.start()
                items = [IngestItem("corpus", i, text, meta) for i, text, meta in read_corpus(corpus)]
                for start in range(0, len(items), CORPUS_BATCH):
                    await ingestor.process(items[start : start + CORPUS_BATCH])
            bundle = await EdgeBundles(settings, spec, store, embedder, target=out).load_or_build()
        finally:
            await embedder.close()
            store.close()
    extra = bundle.manifest.extra
    print(
        f"edge bundle {bundle.fingerprint} in {out}: {spec.fingerprint}, {bundle.manifest.projection_kind} "
        f"projection ({extra.get('fit_vectors', 0)} vectors + {extra.get('fit_pseudo_queries', 0)} "
        f"pseudo-queries from {source}), {bundle.manifest.default_dims} dims"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    from server.model import ModelNotFoundError
    from server.store import StoreError

    try:
        settings = settings_module.from_args(args)
    except ValueError as exc:
        print(f"embed-server export-edge: {exc}", file=sys.stderr)
        return 2
    if args.fit_corpus is not None and not args.fit_corpus.is_file():
        print(f"embed-server export-edge: no such file {args.fit_corpus}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_export(settings, args.out, args.fit_corpus))
    except (ModelNotFoundError, StoreError) as exc:  # e.g. the store is held by a running server
        print(f"embed-server export-edge: {exc}", file=sys.stderr)
        return 2
