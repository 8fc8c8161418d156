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
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from server import metrics
from server.errors import NotFound, PreconditionFailed
from server.ingest import IngestItem, Ingestor
from server.model_routing import ModelStack, Router
from server.store import DocRecord, Store
from server.store.versions import NEXT, MigrationIncomplete, Retained, VersionError, hidden

log = logging.getLogger(__name__)

BATCH = 128
# Online, smaller batches: progress moves often and a batch holds the target's worker briefly.
ONLINE_BATCH = 32
IN_FLIGHT = 2  # batches a migration has in flight (reading and queueing the next one meanwhile)
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
    before_cutover: Callable[[], None] = lambda: None,
    report: MigrationReport | None = None,
) -> MigrationReport:
    """Re-embed ``collection`` with ``ingestor``'s model, then cut over (see the module
    docstring). ``progress`` is told how many documents each batch settled (skipped or
    written). VersionError: no such collection, already on that model, or documents stored
    without text (they cannot be re-embedded; ingest them again with text first).
    RuntimeError naming a document the target model refused. ``before_cutover`` runs (in a
    thread) before each cutover attempt; ``report`` is filled as the migration goes (a fresh
    one when None)."""
    spec = ingestor.spec
    report = report or MigrationReport(collection, spec.fingerprint)
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
        await asyncio.to_thread(before_cutover)
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
    in another form, ``batch`` per commit, up to :data:`IN_FLIGHT` batches at once (the next
    one is read, tokenized and queued while the encoder computes one; each commits on its own,
    so a kill loses at most the batches in flight)."""
    pages = store.iter_documents(collection, batch=batch)
    running: set[asyncio.Task[None]] = set()
    try:
        while True:
            rows = await asyncio.to_thread(next, pages, None)
            if rows is None:
                break
            running.add(asyncio.create_task(_copy_batch(store, ingestor, target, rows, report, progress)))
            if len(running) >= IN_FLIGHT:
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # a failed batch ends the pass
        await asyncio.gather(*running)
        running = set()
    finally:
        for task in running:
            task.cancel()


async def _copy_batch(
    store: Store,
    ingestor: Ingestor,
    target: str,
    rows: list[tuple[str, DocRecord]],
    report: MigrationReport,
    progress: Callable[[int], None],
) -> None:
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


@dataclass(frozen=True)
class Progress:
    """One MigrateProgress message: ``state`` copying / cut_over / rolled_back / aborted."""

    state: str
    documents: int = 0
    done: int = 0
    embedded: int = 0
    skipped: int = 0
    fingerprint: str = ""


class Migrations:
    """The online migrations of one server: at most one background task per collection, at
    bulk priority, on the target model's encoder (see server.model_routing for the writes that
    reach both versions meanwhile). A task outlives the call that started it: a cancelled
    Migrate call leaves it running, and a restarted server resumes every migration whose target
    model it serves."""

    def __init__(self, store: Store, router: Router) -> None:
        self.store, self.router = store, router
        self._tasks: dict[str, asyncio.Task[MigrationReport]] = {}
        self._reports: dict[str, MigrationReport] = {}
        self._totals: dict[str, int] = {}
        self._changed = asyncio.Event()  # replaced (after being set) at every change

    def resume_all(self) -> list[str]:
        """Start again every migration recorded in the store whose target model is served;
        returns their collections. (A migration to a model not served waits for a server
        that serves it, or for ``migrate --abort``.)"""
        resumed = []
        for name in self.store.collections():
            migration = self.store.migration(name)
            if migration is None:
                continue
            stack = self.router.by_fingerprint(migration.to)
            if stack is None:
                log.warning(
                    "collection %r has a migration to model %s, which this server does not serve; it waits",
                    name,
                    migration.to,
                )
                continue
            log.info("resuming the migration of %r to %r", name, stack.model.name)
            self._spawn(name, stack)
            resumed.append(name)
        return resumed

    async def start(self, collection: str, to_model: str) -> None:
        """Start migrating ``collection`` to the served model ``to_model`` (or join the
        migration to it already running). NotFound: no such collection or model;
        PreconditionFailed: already on it, or another migration is running."""
        meta = await asyncio.to_thread(self.store.collection, collection)
        if meta is None:
            raise NotFound(f"no collection {collection!r}", field="collection")
        stack = self.router.by_name(to_model)
        if stack is None:
            served = ", ".join(repr(s.model.name) for s in self.router.stacks)
            raise NotFound(
                f"model {to_model!r} is not served here; this server serves {served}", field="to_model"
            )
        running = self._tasks.get(collection)
        if running is not None and not running.done():
            if self._reports[collection].to == stack.fingerprint:
                return
            raise PreconditionFailed(
                f"collection {collection!r} is being migrated to another model; abort it first"
            )
        if meta.fingerprint == stack.fingerprint:
            raise PreconditionFailed(f"collection {collection!r} is already on model {to_model!r}")
        self._spawn(collection, stack)

    def _spawn(self, collection: str, stack: ModelStack) -> None:
        report = MigrationReport(collection, stack.fingerprint)
        self._reports[collection] = report
        meta = self.store.collection(collection)
        self._totals[collection] = meta.documents if meta else 0
        self._tasks[collection] = asyncio.create_task(
            self._run(collection, stack, report), name=f"migrate-{collection}"
        )

    async def _run(self, collection: str, stack: ModelStack, report: MigrationReport) -> MigrationReport:
        total = self._totals[collection]
        metrics.MIGRATION_DOCUMENTS.labels(collection, "total").set(total)

        def progress(_n: int) -> None:
            metrics.MIGRATION_DOCUMENTS.labels(collection, "done").set(report.documents)
            metrics.MIGRATION_DOCUMENTS.labels(collection, "embedded").set(report.embedded)
            self._notify()

        def before_cutover() -> None:  # the target model's caches of this name are stale
            self.router.forget(collection, [stack])

        try:
            result = await migrate_collection(
                self.store,
                stack.shadow,
                collection,
                progress,
                batch=ONLINE_BATCH,
                before_cutover=before_cutover,
                report=report,
            )
            await asyncio.to_thread(self.router.switched, collection)
            log.info(
                "collection %r now on model %r: %d documents, %d embedded, %d already migrated",
                collection,
                stack.model.name,
                result.documents,
                result.embedded,
                result.skipped,
            )
            return result
        finally:
            self._notify()

    def _notify(self) -> None:
        """Wake every watcher (each then waits on the new event)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def progress(self, collection: str) -> Progress:
        report = self._reports.get(collection)
        if report is None:
            return Progress("copying")
        return Progress(
            "copying",
            self._totals.get(collection, 0),
            report.documents,
            report.embedded,
            report.skipped,
            report.to,
        )

    async def watch(self, collection: str) -> AsyncIterator[Progress]:
        """The progress of ``collection``'s running migration until it cuts over (the last
        message, state cut_over); its failure is raised (VersionError as PreconditionFailed)."""
        task = self._tasks[collection]
        last: Progress | None = None
        while not task.done():
            changed = self._changed
            current = self.progress(collection)
            if current != last:
                last = current
                yield current
            if not task.done():
                await changed.wait()
        try:
            report = task.result()
        except VersionError as exc:
            raise PreconditionFailed(str(exc)) from exc
        total = self._totals.get(collection, 0)
        yield Progress("cut_over", total, report.documents, report.embedded, report.skipped, report.to)

    async def rollback(self, collection: str) -> Progress:
        """Bind ``collection`` back to its retained version (nothing embedded). NotFound: no
        such collection; PreconditionFailed: nothing retained, or a migration is running."""
        running = self._tasks.get(collection)
        if running is not None and not running.done():
            raise PreconditionFailed(f"collection {collection!r} is being migrated; abort it first")
        if await asyncio.to_thread(self.store.collection, collection) is None:
            raise NotFound(f"no collection {collection!r}", field="collection")
        try:
            await asyncio.to_thread(self._rollback, collection)
        except VersionError as exc:
            raise PreconditionFailed(str(exc)) from exc
        meta = await asyncio.to_thread(self.store.collection, collection)
        return Progress(
            "rolled_back", meta.documents if meta else 0, fingerprint=meta.fingerprint if meta else ""
        )

    def _rollback(self, collection: str) -> None:
        retained = self.store.retained(collection)
        incoming = None if retained is None else self.router.by_fingerprint(retained.fingerprint)
        if incoming is not None:
            self.router.forget(collection, [incoming])
        self.store.rollback(collection)
        self.router.switched(collection)

    async def abort(self, collection: str) -> Progress:
        """Stop ``collection``'s migration and drop its target. PreconditionFailed: none."""
        task = self._tasks.pop(collection, None)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if not await asyncio.to_thread(self.store.abort_migration, collection):
            raise PreconditionFailed(f"collection {collection!r} has no migration in progress")
        meta = await asyncio.to_thread(self.store.collection, collection)
        return Progress("aborted", fingerprint=meta.fingerprint if meta else "")

    async def close(self) -> None:
        """Stop every running migration (each resumes at the next start)."""
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
