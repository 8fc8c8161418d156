"""``embed-server reembed``: re-embed collections stored under another model with this one.

Runs on the store directly (stop the server first: the store refuses a second process). Each
document's text is embedded with the configured model (vectors already stored under it are
reused), written while the collection stays marked stale, and only at the end is the collection
switched to the new model, so an interrupted run never serves mixed vectors; run it again to
finish. Documents stored without text cannot be re-embedded: they are deleted and counted.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from server import settings as settings_module

if TYPE_CHECKING:
    from server.ingest import Ingestor
    from server.store import Store

log = logging.getLogger(__name__)
BATCH = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings_module.add_arguments(parser)
    parser.add_argument(
        "--collection",
        action="append",
        default=None,
        help="collection to re-embed (repeatable; default: every stale one)",
    )


@dataclass
class ReembedReport:
    collection: str
    documents: int = 0
    embedded: int = 0
    reused: int = 0
    dropped_without_text: int = 0


async def reembed_collection(
    store: Store, ingestor: Ingestor, collection: str, progress: Callable[[int], None]
) -> ReembedReport:
    """Rewrite every document of ``collection`` through the Ingest path (content-hash hits are
    not embedded again) while it stays marked with its old model; then switch it. Each document
    keeps its stored form, whatever the server's --chunking: one stored as chunks is chunked
    again, one stored whole (short, or ingested with chunking off) is embedded whole."""
    from server.ingest import IngestItem

    meta = store.collection(collection)
    if meta is None:
        raise KeyError(collection)
    old_fp, report = meta.fingerprint, ReembedReport(collection)
    without_text: list[str] = []
    for rows in store.iter_documents(collection, batch=BATCH):
        items = [
            IngestItem(collection, doc_id, doc.text, doc.metadata, chunking=bool(doc.chunks))
            for doc_id, doc in rows
            if doc.text is not None
        ]
        without_text += [doc_id for doc_id, doc in rows if doc.text is None]
        outcomes = await ingestor.process(items, rewrite_from=old_fp)
        failed = [o for o in outcomes if o.error is not None]
        if failed:
            raise RuntimeError(f"document {failed[0].item.doc_id!r}: {failed[0].error}")
        report.documents += len(rows)
        report.embedded += sum(not o.cached for o in outcomes)
        report.reused += sum(o.cached for o in outcomes)
        progress(len(rows))
    if without_text:
        store.delete(collection, without_text)
        report.dropped_without_text = len(without_text)
    store.set_fingerprint(collection, ingestor.spec.fingerprint, ingestor.spec.dimension)
    return report


async def _run(settings: settings_module.Settings, names: list[str] | None) -> int:
    from tqdm import tqdm

    from server.ingest import Ingestor
    from server.model import load_spec
    from server.pool import EncoderPool
    from server.store import StoreError, open_store

    spec = load_spec(settings.model)
    try:
        store = open_store(
            settings.data_dir, map_size=settings.store_map_size_mb << 20, float16=settings.store_float16
        )
    except StoreError as exc:
        print(f"embed-server reembed: {exc}", file=sys.stderr)
        return 2
    try:
        rows = {r.name: r for r in store.collection_rows(spec.fingerprint)}
        unknown = [n for n in names or [] if n not in rows]
        if unknown:
            print(f"embed-server reembed: no collection {', '.join(map(repr, unknown))}", file=sys.stderr)
            return 2
        targets = names or [name for name, row in rows.items() if row.stale]
        if not targets:
            print(f"nothing to re-embed: every collection is stored under {spec.fingerprint}")
            return 0
        embedder = EncoderPool(settings, spec)
        await embedder.start()
        ingestor = Ingestor.from_settings(store, None, embedder, spec, settings)
        try:
            for name in targets:
                with tqdm(total=rows[name].documents, unit="doc", desc=f"reembed {name}") as bar:
                    report = await reembed_collection(store, ingestor, name, bar.update)
                print(
                    f"{name!r}: {report.documents} docs, {report.embedded} embedded, {report.reused} reused, "
                    f"{report.dropped_without_text} dropped (stored without text; ingest them again); "
                    f"now {spec.fingerprint}"
                )
        finally:
            await embedder.close()
    finally:
        store.close()
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_module.from_args(args)
    except ValueError as exc:
        print(f"embed-server reembed: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_run(settings, args.collection))
