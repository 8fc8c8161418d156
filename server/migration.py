"""Migrating a collection to another model version: re-embed, cut over, roll back.

:func:`migrate_collection` re-embeds every document of a collection with another model into
the collection's hidden target version (:mod:`server.store.versions`) through the Ingest path at
bulk priority, then binds the collection to it in one LMDB transaction. The serving version is
untouched until then and stays, retained, for :func:`rollback` until ``gc`` drops it after the
retention (``--version-retention-hours``).

Crash safety and resume: every batch is committed to the target before the next one is read,
and the cutover is one transaction, so a process killed at any point leaves the collection
bound to exactly one version. Running the migration again resumes it: a document whose target
record already has the serving version's text and metadata is skipped without being read into
a batch, and a text whose vector the target model already stored (content hash: model
fingerprint + text) is not embedded again.

Documents changed while the migration ran (a server writing the serving version) are caught at
the cutover, which compares both versions document by document inside its transaction and
refuses (MigrationIncomplete) while any differs; they are then copied and the cutover retried.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from server.ingest import IngestItem, Ingestor
from server.store import Store
from server.store.versions import NEXT, MigrationIncomplete, Retained, VersionError, hidden

log = logging.getLogger(__name__)

BATCH = 128
CUTOVER_ATTEMPTS = 5


@dataclass
class MigrationReport:
    """What one run of :func:`migrate_collection` did. ``skipped``: documents found already
    migrated (by an earlier, interrupted run); ``embedded``/``reused``: documents written now,
    whose vectors were computed / found stored."""

    collection: str
    to: str
    documents: int = 0
    skipped: int = 0
    embedded: int = 0
    reused: int = 0
    resumed: bool = False
    previous: str = ""  # the fingerprint the collection served before the cutover


async def migrate_collection(
    store: Store,
    ingestor: Ingestor,
    collection: str,
    progress: Callable[[int], None] = lambda _: None,
    *,
    batch: int = BATCH,
) -> MigrationReport:
    """Re-embed ``collection`` with ``ingestor``'s model, then cut over (see the module
    docstring). ``progress`` is told how many documents each batch settled (skipped or
    written). VersionError: no such collection, already on that model, or documents stored
    without text (they cannot be re-embedded; ingest them again with text first).
    RuntimeError naming a document the target model refused."""
    spec = ingestor.spec
    report = MigrationReport(collection, spec.fingerprint)
    without_text = await asyncio.to_thread(_count_without_text, store, collection)
    if without_text:
        raise VersionError(
            f"collection {collection!r} has {without_text} documents stored without text; they "
            "cannot be re-embedded with another model (ingest them again with their text first)"
        )
    report.resumed = await asyncio.to_thread(
        store.begin_migration, collection, spec.fingerprint, spec.dimension
    )
    target = hidden(collection, NEXT)
    for _attempt in range(CUTOVER_ATTEMPTS):
        await _copy(store, ingestor, collection, target, report, progress, batch)
        try:
            retained: Retained = await asyncio.to_thread(store.cutover, collection)
        except MigrationIncomplete as exc:  # written to while we copied: copy what changed
            log.info("%s", exc)
            continue
        report.previous = retained.fingerprint
        return report
    raise VersionError(
        f"collection {collection!r} kept changing during {CUTOVER_ATTEMPTS} cutover attempts; "
        "run the migration again (it resumes)"
    )


def _count_without_text(store: Store, collection: str) -> int:
    if store.collection(collection) is None:
        raise VersionError(f"no collection {collection!r}")
    return sum(doc.text is None for rows in store.iter_documents(collection) for _, doc in rows)


async def _copy(
    store: Store,
    ingestor: Ingestor,
    collection: str,
    target: str,
    report: MigrationReport,
    progress: Callable[[int], None],
    batch: int,
) -> None:
    """One pass over the serving version: write to ``target`` every document it lacks or holds
    in another form, ``batch`` per commit."""
    pages = store.iter_documents(collection, batch=batch)
    while True:
        rows = await asyncio.to_thread(next, pages, None)
        if rows is None:
            return
        ids = [doc_id for doc_id, _ in rows]
        done = await asyncio.to_thread(store.documents, target, ids)
        todo = [
            (doc_id, doc)
            for (doc_id, doc), have in zip(rows, done, strict=True)
            if have is None or (have.text, have.metadata) != (doc.text, doc.metadata)
        ]
        items = [
            IngestItem(target, doc_id, doc.text, doc.metadata, chunking=bool(doc.chunks))
            for doc_id, doc in todo
            if doc.text is not None
        ]
        outcomes = await ingestor.process(items) if items else []
        failed = [o for o in outcomes if o.error is not None]
        if failed:
            raise RuntimeError(f"document {failed[0].item.doc_id!r}: {failed[0].error}")
        report.documents += len(rows)
        report.skipped += len(rows) - len(items)
        report.embedded += sum(not o.cached for o in outcomes)
        report.reused += sum(o.cached for o in outcomes)
        progress(len(rows))


def rollback(store: Store, collection: str) -> Retained:
    """(Blocking) Bind ``collection`` back to its retained previous version, nothing embedded;
    returns the version now retained (the one that served). VersionError when there is none."""
    return store.rollback(collection)
