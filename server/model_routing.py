"""Collections bound to different served models in one server: searches and writes go to the
model a collection is bound to, and writes also reach its other versions.

Each served model has a stack: its usearch indexes (a directory of their own), a Searcher and
two Ingestors (one for serving collections, with indexes; one for hidden versions, without).
:class:`RoutedSearcher` and :class:`RoutedIngestor` stand where the single-model Searcher and
Ingestor stood (the servicers call them the same way):

- a search goes to the stack whose fingerprint the collection is stored under (a collection
  whose model is not served is refused as stale by the default stack, as before); a search
  that fails because the collection switched version under it is sent once more;
- an ingest or delete goes to the bound stack, then to the collection's migration target and
  retained previous version (server.store.versions) with their models' ingestors, before it is
  acknowledged: documents written during a migration reach both versions, and a rollback loses
  nothing written since the cutover. A hidden version whose model is not served is skipped (the
  cutover's own check still catches what the migration target lacks).

:meth:`Router.switched` drops every cache of a collection (indexes, lexical index, search
caches) when a cutover or rollback rebound it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from server.edge_builder import EdgeBundles
from server.errors import InvalidArgument, PreconditionFailed, ServiceError
from server.ingest import IngestItem, Ingestor, IngestOutcome, validate_collection
from server.search import Searcher, SearchQuery, SearchResult, positioned
from server.served_models import ServedModel
from server.settings import Settings
from server.store import Indexes, Store
from server.store.lexical import LexicalIndexes
from server.store.versions import NEXT, PREV, hidden
from server.sync import Syncer, SyncPage, SyncRequest

log = logging.getLogger(__name__)


@dataclass
class ModelStack:
    """What serves the collections bound to one model."""

    model: ServedModel
    indexes: Indexes
    searcher: Searcher
    ingestor: Ingestor  # serving collections: keeps indexes and the lexical index current
    shadow: Ingestor  # hidden versions: no indexes
    edge: EdgeBundles  # the model's edge bundle (GetEdgeBundle of a collection bound to it)
    syncer: Syncer

    @property
    def fingerprint(self) -> str:
        return self.model.spec.fingerprint


def build_stack(settings: Settings, store: Store, lexical: LexicalIndexes, model: ServedModel) -> ModelStack:
    """The stack of a model served beside the default one (indexes under
    ``DATA_DIR/indexes/model-NAME``, edge bundle in ``DATA_DIR/edge_bundles/NAME``, loaded or
    built by :meth:`Router.start`)."""
    spec = model.spec
    indexes = Indexes(
        store,
        settings.data_dir / "indexes" / f"model-{model.name}",
        fingerprint=spec.fingerprint,
        ndim=spec.dimension,
        metric="ip" if spec.normalize else "cos",
        dtype=settings.index_dtype,
    )
    searcher = Searcher(
        store,
        indexes,
        model.embedder,
        spec,
        settings.search_max_k,
        max_message_bytes=settings.max_message_bytes,
        lexical=lexical,
        filter_exact_max=settings.search_filter_exact_max,
        batch_max_queries=settings.search_batch_max_queries,
    )
    ingestor = Ingestor.from_settings(store, indexes, model.embedder, spec, settings, lexical=lexical)
    shadow = Ingestor.from_settings(store, None, model.embedder, spec, settings, hidden_names=True)
    edge = EdgeBundles(
        settings, spec, store, model.embedder, target=settings.data_dir / "edge_bundles" / model.name
    )
    syncer = Syncer(store, spec, edge, max_message_bytes=settings.max_message_bytes)
    return ModelStack(model, indexes, searcher, ingestor, shadow, edge, syncer)


class Router:
    """The stacks of every served model, the default one first."""

    def __init__(self, store: Store, lexical: LexicalIndexes, stacks: list[ModelStack]) -> None:
        self.store, self.lexical, self.stacks = store, lexical, stacks

    @property
    def default(self) -> ModelStack:
        return self.stacks[0]

    async def start(self) -> None:
        """Load or build the edge bundle of every model besides the default one (whose bundle
        the runtime built first)."""
        for stack in self.stacks[1:]:
            await stack.edge.load_or_build()

    def by_fingerprint(self, fingerprint: str) -> ModelStack | None:
        return next((s for s in self.stacks if s.fingerprint == fingerprint), None)

    def by_name(self, name: str) -> ModelStack | None:
        return next((s for s in self.stacks if s.model.name == name), None)

    def bound(self, collection: str) -> ModelStack:
        """(Blocking) The stack of the model ``collection`` is stored under; the default one
        for a new collection, one whose model is not served (it refuses it as stale) or a name
        that is not valid (it refuses it, naming the field)."""
        try:
            validate_collection(collection)
        except ServiceError:
            return self.default
        meta = self.store.collection(collection)
        found = None if meta is None else self.by_fingerprint(meta.fingerprint)
        return found or self.default

    def forget(self, collection: str, stacks: Sequence[ModelStack] | None = None) -> None:
        """(Blocking) Drop the cached indexes and search caches of ``collection`` in
        ``stacks`` (default: every stack)."""
        for stack in self.stacks if stacks is None else stacks:
            stack.indexes.drop(collection)
            stack.searcher.forget(collection)

    def switched(self, collection: str) -> None:
        """(Blocking) ``collection`` was rebound (cutover, rollback): every cache of it goes."""
        self.forget(collection)
        self.lexical.drop(collection)


class RoutedSearcher:
    """Searcher's interface over several models (see the module docstring)."""

    def __init__(self, router: Router) -> None:
        self.router = router
        default = router.default.searcher
        self.batch_max_queries = default.batch_max_queries
        self.max_response_bytes = default.max_response_bytes

    async def search(self, q: SearchQuery, *, budget: int | None = None) -> SearchResult:
        stack = await asyncio.to_thread(self.router.bound, q.collection)
        try:
            result = await stack.searcher.search(q, budget=budget)
        except Exception:
            again = await asyncio.to_thread(self.router.bound, q.collection)
            if again is stack:
                raise
            log.info("collection %r switched model during a search; searching it again", q.collection)
            stack = again
            result = await stack.searcher.search(q, budget=budget)
        if len(self.router.stacks) > 1:
            # A cutover or rollback during the search need not fail it: the old model's searcher
            # may then read the renamed collection and answer a short page (seen under load in
            # tests/test_models_live.py: fewer than k hits). Searched again on the new model.
            again = await asyncio.to_thread(self.router.bound, q.collection)
            if again is not stack:
                log.info("collection %r switched model during a search; searching it again", q.collection)
                stack = again
                result = await stack.searcher.search(q, budget=budget)
        return dataclasses.replace(result, fingerprint=stack.fingerprint)

    async def search_batch(self, queries: list[SearchQuery]) -> list[SearchResult]:
        """As :meth:`server.search.Searcher.search_batch`, each query on its collection's model."""
        if not 0 < len(queries) <= self.batch_max_queries:
            raise InvalidArgument(
                f"requests must hold 1 to {self.batch_max_queries} searches, got {len(queries)}",
                field="requests",
            )
        stacks = [await asyncio.to_thread(self.router.bound, q.collection) for q in queries]
        for i, (q, stack) in enumerate(zip(queries, stacks, strict=True)):
            with positioned("requests", i):
                stack.searcher.validate(q)
        budget = self.max_response_bytes // len(queries)

        async def one(i: int, q: SearchQuery) -> SearchResult:
            with positioned("requests", i):
                return await self.search(q, budget=budget)

        return list(await asyncio.gather(*(one(i, q) for i, q in enumerate(queries))))

    def forget(self, collection: str) -> None:
        """The collection was dropped: its caches go in every model's stack."""
        self.router.forget(collection)


class RoutedIngestor:
    """Ingestor's interface over several models (see the module docstring)."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.spec = router.default.model.spec
        self.store = router.store

    def screen(self, item: IngestItem) -> IngestItem | IngestOutcome:
        return self.router.default.ingestor.screen(item)

    async def process(self, items: Sequence[IngestItem]) -> list[IngestOutcome]:
        """Store ``items`` in the version each collection is bound to, then in its hidden
        versions; outcomes (of the serving version) in input order."""
        names = sorted({item.collection for item in items})
        stacks = {n: await asyncio.to_thread(self.router.bound, n) for n in names}
        groups: dict[int, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(id(stacks[item.collection]), []).append(i)
        out: list[IngestOutcome | None] = [None] * len(items)
        for positions in groups.values():
            stack = stacks[items[positions[0]].collection]
            outcomes = await stack.ingestor.process([items[i] for i in positions])
            for i, outcome in zip(positions, outcomes, strict=True):
                out[i] = outcome
        # A collection cut over (or rolled back) while this batch was embedded refuses it as
        # stale: such items go once more, to the model the collection is bound to now.
        stale = [i for i, o in enumerate(out) if o is not None and isinstance(o.error, PreconditionFailed)]
        for name in sorted({items[i].collection for i in stale}):
            now = await asyncio.to_thread(self.router.bound, name)
            if now is stacks[name]:
                continue
            positions = [i for i in stale if items[i].collection == name]
            log.info(
                "collection %r switched model during an ingest; writing %d documents again",
                name,
                len(positions),
            )
            for i, outcome in zip(
                positions, await now.ingestor.process([items[i] for i in positions]), strict=True
            ):
                out[i] = outcome
        done = [o for o in out if o is not None and o.error is None]
        await self._mirror_writes(done)
        return [o for o in out if o is not None]

    async def _mirror_writes(self, stored: list[IngestOutcome]) -> None:
        by_collection: dict[str, list[IngestItem]] = {}
        for outcome in stored:
            by_collection.setdefault(outcome.item.collection, []).append(outcome.item)
        for name, written in by_collection.items():
            for role, stack in await asyncio.to_thread(self._hidden_stacks, name):
                target = hidden(name, role)
                copies = [dataclasses.replace(item, collection=target) for item in written]
                results = await stack.shadow.process(copies)
                failed = [r for r in results if r.error is not None]
                if failed:  # the serving version has it: a migration's cutover copies it again
                    log.warning(
                        "%d documents of %r not written to its %s version: %s",
                        len(failed),
                        name,
                        role,
                        failed[0].error,
                    )

    def _hidden_stacks(self, collection: str) -> list[tuple[str, ModelStack]]:
        """(role, stack) of each hidden version of ``collection`` whose model is served."""
        out: list[tuple[str, ModelStack]] = []
        for role in (NEXT, PREV):
            meta = self.store.collection(hidden(collection, role))
            if meta is None:
                continue
            stack = self.router.by_fingerprint(meta.fingerprint)
            if stack is None:
                log.warning(
                    "the %s version of %r is of model %s, which is not served: writes do not reach it%s",
                    role,
                    collection,
                    meta.fingerprint,
                    " (rolling back to it is refused from now on)" if role == PREV else "",
                )
                if role == PREV:
                    self.store.mark_retained_behind(collection)
                continue
            out.append((role, stack))
        return out

    async def delete(self, collection: str, doc_ids: Sequence[str]) -> tuple[int, int]:
        """Delete from the serving version (its result), then from every hidden version (no
        model is needed to delete)."""
        stack = await asyncio.to_thread(self.router.bound, collection)
        result = await stack.ingestor.delete(collection, doc_ids)
        for role in (NEXT, PREV):
            target = hidden(collection, role)
            try:
                await asyncio.to_thread(self.store.delete, target, list(doc_ids))
            except ServiceError as exc:
                log.warning("delete of %r did not reach its %s version: %s", collection, role, exc)
        return result


class RoutedSyncer:
    """Syncer's interface over several models: a collection syncs with the model (and edge
    bundle) it is bound to; an edge on the previous bundle is refused with FAILED_PRECONDITION
    (it fetches the collection's bundle and resyncs)."""

    def __init__(self, router: Router) -> None:
        self.router = router

    async def pages(self, request: SyncRequest) -> AsyncIterator[SyncPage]:
        stack = await asyncio.to_thread(self.router.bound, request.collection)
        async for page in stack.syncer.pages(request):
            yield page
