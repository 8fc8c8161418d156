"""The server's runtime: everything the services of one process share, built in one place.

:func:`build_runtime` opens the store and catches the indexes up, starts and warms the encoder
workers, loads the int8 calibration and loads or builds the edge bundle, off the event loop;
every API (gRPC servicers, HTTP routes) then works on these same objects;
:meth:`Runtime.close` undoes it in reverse. :mod:`server.app` calls both; nothing else builds
a runtime (tools that need part of it, such as ``reembed``, build just that part).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from server.calibration import Calibration, sample_path
from server.catalog import Catalog
from server.edge_builder import EdgeBundles
from server.embedder import Embedder, Priority
from server.ingest import Ingestor
from server.migration import Migrations
from server.model import ModelSpec, load_spec
from server.model_routing import (
    ModelStack,
    RoutedIngestor,
    RoutedSearcher,
    RoutedSyncer,
    Router,
    build_stack,
)
from server.search import Searcher
from server.served_models import ServedModel, ServedModels, default_name, start_extra_models
from server.settings import Settings
from server.store import Indexes, Store, open_store
from server.store.lexical import LexicalIndexes
from server.sync import Syncer
from server.tei import TeiEngine
from server.tokenization import TokenInspector

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What the services of one server process share. Built once, after any fork, by
    :func:`build_runtime`; the servicers receive it whole."""

    settings: Settings
    spec: ModelSpec
    embedder: Embedder  # the default model's
    store: Store
    indexes: Indexes
    lexical: LexicalIndexes  # BM25 over the stored texts (LEXICAL and HYBRID search)
    calibration: Calibration
    edge: EdgeBundles
    ingestor: RoutedIngestor  # each collection's writes to the model it is bound to
    searcher: RoutedSearcher  # each collection searched with the model it is bound to
    catalog: Catalog  # ListCollections, DropCollection, GetDocuments
    syncer: RoutedSyncer  # each collection synced with its model's edge bundle
    tokens: TokenInspector
    tei: TeiEngine  # TEI's API (gRPC tei.v1 and the HTTP routes) over the same embedder
    models: ServedModels  # every served model, the default (spec, embedder, calibration) first
    migrations: Migrations  # online migrations of collections between served models
    router: Router  # per-model indexes, searcher, ingestors, edge bundle, syncer
    tasks: list[asyncio.Task[None]] = field(default_factory=list)  # background work, stopped at close

    async def close(self) -> bool:
        """Stop background tasks, save the indexes, close the store, then stop the pool. Every
        step runs even when an earlier one fails (each failure is logged), so the store and the
        workers are always released. Returns False when the final index save could not be
        written (the indexes are then rebuilt from the store at the next start)."""
        try:
            await self.migrations.close()
        except Exception:
            log.exception("stopping the migrations failed")
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await task
                except Exception:
                    log.exception("background task %s had failed", task.get_name())
        try:
            await asyncio.to_thread(self.lexical.close)
        except Exception:
            log.exception("stopping the lexical index thread failed")
        saved = True
        try:
            await asyncio.to_thread(self.indexes.save_all)
        except Exception:  # a full disk: OSError from numpy, RuntimeError from usearch
            saved = False
            log.exception("saving the vector indexes at shutdown failed; they are rebuilt from the store")
        try:
            await asyncio.to_thread(self.store.close)
        except Exception:
            log.exception("closing the store failed")
        for model in self.models:
            try:
                await model.embedder.close()
            except Exception:
                log.exception("stopping the encoder pool of model %r failed", model.name)
        return saved


def create_embedder(settings: Settings, spec: ModelSpec) -> Embedder:
    """The encoder pool (worker processes), behind the query-embedding LRU. Nothing starts here:
    the workers start in :func:`build_runtime`."""
    from server.pool import EncoderPool
    from server.query_cache import CachedEmbedder

    return CachedEmbedder(EncoderPool(settings, spec), settings.query_cache_size)


async def build_runtime(
    settings: Settings,
    spec: ModelSpec,
    embedder: Embedder,
    phase: Callable[[str], None] = lambda _: None,
) -> Runtime:
    """Open the store, warm the encoder, load the calibration and the edge bundle (see the
    module docstring). ``phase`` is told what is being done, for start-up messages."""
    phase("opening the store")
    store = await asyncio.to_thread(
        open_store,
        settings.data_dir,
        map_size=settings.store_map_size_mb << 20,
        float16=settings.store_float16,
    )
    try:
        store.serving_fingerprint = spec.fingerprint
        indexes = Indexes(
            store,
            settings.data_dir / "indexes",
            fingerprint=spec.fingerprint,
            ndim=spec.dimension,
            metric="ip" if spec.normalize else "cos",
            dtype=settings.index_dtype,
        )
        lexical = LexicalIndexes(store, settings.data_dir / "indexes" / "lexical")
        phase("loading the vector and lexical indexes")
        others = await asyncio.to_thread(
            lambda: frozenset(load_spec(ref).fingerprint for _, ref in settings.extra_model_refs())
        )
        await asyncio.to_thread(_warm_indexes, store, indexes, lexical, spec.fingerprint, others)
        phase("starting the encoder workers")
        await embedder.start()

        async def encode(texts: list[str]) -> np.ndarray:
            return (await embedder.encode(texts, priority=Priority.BULK)).vectors

        phase("loading the int8 calibration")
        calibration = await Calibration.load_or_create(
            sample_path(settings.data_dir, spec.fingerprint), spec.dimension, encode
        )
        phase("loading or fitting the edge bundle")
        edge = EdgeBundles(settings, spec, store, embedder)
        await edge.load_or_build()
        name = default_name(settings, spec)
        if settings.extra_models:
            phase("starting the other models' encoder workers")
        extras = await start_extra_models(settings, name, create_embedder)
        workers = embedder.describe().workers
        models = ServedModels(
            [ServedModel(name, spec, embedder, calibration, workers, default=True), *extras]
        )
    except BaseException:
        await asyncio.to_thread(store.close)
        raise
    searcher = Searcher(
        store,
        indexes,
        embedder,
        spec,
        settings.search_max_k,
        max_message_bytes=settings.max_message_bytes,
        lexical=lexical,
        filter_exact_max=settings.search_filter_exact_max,
        batch_max_queries=settings.search_batch_max_queries,
    )
    syncer = Syncer(store, spec, edge, max_message_bytes=settings.max_message_bytes)
    default_stack = ModelStack(
        models.default,
        indexes,
        searcher,
        Ingestor.from_settings(store, indexes, embedder, spec, settings, lexical=lexical),
        Ingestor.from_settings(store, None, embedder, spec, settings, hidden_names=True),
        edge,
        syncer,
    )
    router = Router(
        store, lexical, [default_stack, *(build_stack(settings, store, lexical, m) for m in list(models)[1:])]
    )
    if len(models) > 1:
        phase("loading or fitting the other models' edge bundles")
    try:
        await router.start()
    except BaseException:
        for extra in list(models)[1:]:
            await extra.embedder.close()
        await asyncio.to_thread(store.close)
        raise
    routed = RoutedSearcher(router)
    runtime = Runtime(
        settings=settings,
        spec=spec,
        embedder=embedder,
        store=store,
        indexes=indexes,
        calibration=calibration,
        edge=edge,
        lexical=lexical,
        ingestor=RoutedIngestor(router),
        searcher=routed,
        catalog=Catalog(
            store,
            indexes,
            lexical,
            routed,
            serving_fingerprint=spec.fingerprint,
            max_message_bytes=settings.max_message_bytes,
            served_fingerprints=frozenset(m.spec.fingerprint for m in models),
        ),
        syncer=RoutedSyncer(router),
        tokens=TokenInspector(
            spec, max_reply_bytes=settings.max_message_bytes, max_input_chars=settings.max_input_chars
        ),
        tei=TeiEngine(spec, embedder, settings, edge),
        models=models,
        migrations=Migrations(store, router),
        router=router,
    )
    lexical.start()
    runtime.migrations.resume_all()
    runtime.tasks.append(asyncio.create_task(_save_indexes_periodically(runtime), name="index-saver"))
    return runtime


def _warm_indexes(
    store: Store,
    indexes: Indexes,
    lexical: LexicalIndexes,
    fingerprint: str,
    others: frozenset[str] = frozenset(),
) -> None:
    """Load or rebuild the vector and lexical indexes of every current collection of the default
    model, and say which ones are stale (stored under a model not served: ``others`` are the
    fingerprints of the other served models, whose indexes load on first use)."""
    for row in store.collection_rows(fingerprint):
        if row.model_fingerprint in others:
            continue
        if row.stale:
            log.warning(
                "collection %r holds vectors of model %s, not the serving model %s: it will not be "
                "searched or synced until you run `embed-server reembed --collection %s`",
                row.name,
                row.model_fingerprint,
                fingerprint,
                row.name,
            )
        else:
            indexes.get(row.name)
            lexical.get(row.name)
    indexes.save_all()


async def _save_indexes_periodically(runtime: Runtime) -> None:
    """Indexes are caches of the store (a restart replays the change log), so they are saved
    on a timer, not after every call. A failed save (a full disk) is logged and retried next
    time: this task ends only when cancelled."""
    while True:
        await asyncio.sleep(runtime.settings.index_save_interval_s)  # the save timer, not a wait
        try:
            saved = await asyncio.to_thread(runtime.indexes.save_all)
        except Exception as exc:
            log.warning("saving the vector indexes failed (%s); retrying at the next interval", exc)
            continue
        if saved:
            log.debug("saved %d changed vector indexes", saved)
