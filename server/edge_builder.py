"""The server's edge bundle: loaded from disk or built, its projection fitted on the store.

One implementation for the running server (at start-up and when a client fetches the bundle)
and for ``embed-server export-edge``: both call :meth:`EdgeBundles.load_or_build` with the same
settings, store and encoder, so the same store gives the same bundle.

The projection (``--edge-projection``) is fitted on stored vectors: the Matryoshka adaptor, with
sentences of the stored texts embedded as pseudo-queries, or the PCA rotation; the identity
(plain truncation) until the store holds ``--edge-fit-min-vectors``. A bundle fitted on too few
vectors is refitted once the store holds enough (at the next start or GetEdgeBundle), and one of
another kind than ``--edge-projection`` at the next start; the new fingerprint makes edge
clients re-init and resync.

For a model trained with Matryoshka loss (its ``matryoshka_dims``, e.g. one made by
``embed-server finetune``) the fitted projection is kept only when it measures better than plain
truncation: neighbour fidelity@10 at the default dims on held-out pseudo-queries (corpus-only).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedcore import BundleError, EdgeBundle, Projection, fit_pca_rotation
from server.edge_adaptor import (
    MAX_FIT_DOCS,
    OUT_DIMS,
    fit_adaptor,
    neighbour_fidelity,
    pseudo_query_sentences,
)
from server.edge_bundle import build_bundle
from server.embedder import Embedder, Priority
from server.errors import NotReady, ServiceError
from server.model import ModelSpec
from server.onnx_export import ensure_onnx, onnx_cache_dir
from server.settings import Settings
from server.store import Store

log = logging.getLogger(__name__)

# An MRL-trained model's prefixes were trained to be short embeddings: a fitted projection
# replaces plain truncation only when it keeps this much more held-out neighbour fidelity@10
# (a few hundred queries measure it to about +-0.01).
MRL_MARGIN = 0.01
HELD_OUT_SHARE = 0.2  # pseudo-queries held out of the fit to compare on

FIT_KINDS = ("adaptor", "rotation")  # what the server can fit (--edge-projection)
EMBED_CHUNK = 512  # pseudo-query sentences per encode call (a few model batches each)


def bundle_dir(settings: Settings) -> Path:
    """``--edge-bundle-dir``, default DATA_DIR/edge_bundle."""
    return Path(settings.edge_bundle_dir) if settings.edge_bundle_dir else settings.data_dir / "edge_bundle"


def fit_projection(
    vectors: np.ndarray | None,
    dimension: int,
    *,
    min_vectors: int,
    kind: str = "adaptor",
    pseudo_queries: np.ndarray | None = None,
    out_dims: int = OUT_DIMS,
    adaptor_min_docs: int,
) -> Projection:
    """``kind`` fitted on ``vectors`` (corpus vectors only; ``pseudo_queries``: vectors of corpus
    sentences, the adaptor's query-like anchors) when there are at least ``min_vectors``; else
    the identity. The adaptor needs ``adaptor_min_docs`` vectors and pseudo-queries; without
    them the PCA rotation is fitted instead (the returned kind says which)."""
    if kind not in FIT_KINDS:
        raise ValueError(f"unknown edge projection kind {kind!r} (expected one of {', '.join(FIT_KINDS)})")
    if vectors is None or len(vectors) < min_vectors:
        n = 0 if vectors is None else len(vectors)
        log.info("edge projection: identity (%d vectors to fit on, need %d)", n, min_vectors)
        return Projection.identity(dimension)
    if kind == "adaptor" and len(vectors) < adaptor_min_docs:
        log.info(
            "edge projection: %d vectors, the adaptor needs %d: PCA rotation", len(vectors), adaptor_min_docs
        )
        kind = "rotation"
    if kind == "adaptor" and (pseudo_queries is None or not len(pseudo_queries)):
        # Fitted on documents alone the adaptor loses to PCA at the default 128 dims (SciFact
        # through the edge: 0.624 vs 0.632): it needs query-like anchors from stored texts.
        log.info("edge projection: no pseudo-queries (no stored texts) for the adaptor: PCA rotation")
        kind = "rotation"
    if kind == "rotation":
        log.info("edge projection: PCA rotation fitted on %d vectors", len(vectors))
        return fit_pca_rotation(vectors)
    return Projection.adaptor(fit_adaptor(vectors, pseudo_queries, out_dims=out_dims))


def held_out_queries(
    vectors: np.ndarray, pseudo_queries: np.ndarray | None, *, seed: int = 0
) -> tuple[np.ndarray | None, np.ndarray]:
    """(pseudo-queries left to fit on, held-out query vectors): a seeded HELD_OUT_SHARE of the
    pseudo-queries, or of the corpus vectors when there are none (the rotation's case: PCA on
    thousands of vectors barely depends on a fifth of them)."""
    rng = np.random.default_rng(seed)
    source = pseudo_queries if pseudo_queries is not None and len(pseudo_queries) else vectors
    held = np.zeros(len(source), dtype=bool)
    held[rng.choice(len(source), max(1, int(HELD_OUT_SHARE * len(source))), replace=False)] = True
    rest = pseudo_queries[~held] if source is pseudo_queries else pseudo_queries
    return rest, source[held]


def prefer_truncation(
    fitted: Projection, queries: np.ndarray, corpus: np.ndarray, dims: int
) -> tuple[Projection, dict[str, object]]:
    """For an MRL-trained model: plain truncation unless ``fitted`` keeps more of the full-
    dimension top-10 of the held-out ``queries`` at ``dims`` (by MRL_MARGIN). Returns the
    projection kept and the comparison (recorded in the bundle's manifest)."""
    identity = Projection.identity(corpus.shape[1])
    scores = {
        "identity": neighbour_fidelity(identity, queries, corpus, dims),
        fitted.kind: neighbour_fidelity(fitted, queries, corpus, dims),
    }
    keep = fitted if scores[fitted.kind] >= scores["identity"] + MRL_MARGIN else identity
    log.info(
        "edge projection for an MRL-trained model: neighbour fidelity@10 at %d dims on %d held-out "
        "queries: truncation %.3f, %s %.3f: keeping %s",
        dims, len(queries), scores["identity"], fitted.kind, scores[fitted.kind], keep.kind,
    )  # fmt: skip
    return keep, {"fitted": fitted.kind, "dims": dims, "queries": len(queries), "fidelity@10": scores}


@dataclass
class _Plan:
    """What :meth:`EdgeBundles._plan` found on disk and in the store."""

    keep: EdgeBundle | None  # the bundle on disk, still right: serve it as it is
    vectors: np.ndarray | None = None  # stored vectors to fit on (None: none sampled)
    texts: list[str | None] = field(default_factory=list)  # their stored texts


class EdgeBundles:
    """The current edge bundle of one server (or one export) and the projection SyncVectors
    applies, so synced vectors match what the edge's own ONNX encoder produces."""

    def __init__(
        self,
        settings: Settings,
        spec: ModelSpec,
        store: Store,
        embedder: Embedder,
        *,
        target: Path | None = None,
    ) -> None:
        self.settings, self.spec, self.store, self.embedder = settings, spec, store, embedder
        self.target = target or bundle_dir(settings)
        self._bundle: EdgeBundle | None = None
        self._refit_lock = asyncio.Lock()
        self._unfit_state: str | None = None  # store state last found too small to fit on

    @property
    def bundle(self) -> EdgeBundle:
        """The installed bundle; NotReady before the first :meth:`load_or_build`."""
        if self._bundle is None:
            raise NotReady("the edge bundle is not built yet; retry shortly")
        return self._bundle

    @property
    def fingerprint(self) -> str:
        return self.bundle.fingerprint

    def project(self, vectors: np.ndarray, dims: int) -> np.ndarray:
        """(n, model dimension) float32 -> (n, dims) float32, renormalized (dims 0: default)."""
        bundle = self.bundle
        return bundle.projection.apply(vectors, dims or bundle.manifest.default_dims)

    async def load_or_build(self) -> EdgeBundle:
        """The bundle on disk if it still fits this model and settings, else a new one; installed.
        Disk, store and fitting run in threads; the pseudo-queries are embedded by the encoder."""
        plan = await asyncio.to_thread(self._plan)
        if plan.keep is not None:
            self._bundle = plan.keep
            return plan.keep
        pseudo_queries = None
        n = 0 if plan.vectors is None else len(plan.vectors)
        if n >= self.settings.edge_fit_min_vectors and self._kind_for(n, plan.texts) == "adaptor":
            pseudo_queries = await self._pseudo_query_vectors(plan.texts)
        self._bundle = await asyncio.to_thread(self._build, plan, pseudo_queries)
        return self._bundle

    async def refit_if_due(self) -> None:
        """A bundle fitted on fewer than ``--edge-fit-min-vectors`` is refitted as soon as the
        store holds enough (checked when a client fetches the bundle), so ingest -> init -> sync
        gets a fitted projection without a restart. Edges on the old bundle are refused by
        SyncVectors with a clear message, and re-init."""
        bundle = self._bundle
        if (
            bundle is None
            or int(bundle.manifest.extra.get("fit_vectors", 0)) >= self.settings.edge_fit_min_vectors
        ):
            return
        async with self._refit_lock:
            state = await asyncio.to_thread(self._store_state)
            if state == self._unfit_state:
                return  # the store has not changed since it was found too small: no walk again
            fresh = await self.load_or_build()
            if fresh.fingerprint != bundle.fingerprint:
                log.info("edge bundle refitted: %s -> %s", bundle.fingerprint, fresh.fingerprint)
            elif int(fresh.manifest.extra.get("fit_vectors", 0)) < self.settings.edge_fit_min_vectors:
                self._unfit_state = state

    # --- internals ---------------------------------------------------------------------------

    def _kind_for(self, documents: int, texts: list[str | None]) -> str:
        """The kind fit_projection makes from ``documents`` vectors with these texts."""
        settings = self.settings
        if settings.edge_projection == "adaptor" and (
            documents < settings.edge_adaptor_min_docs or not any(texts)
        ):
            return "rotation"
        return settings.edge_projection

    def _store_state(self) -> str:
        """The change-log heads of this model's collections: equal states, same documents."""
        heads = sorted(
            (name, meta.sequence)
            for name, meta in self.store.collections().items()
            if meta.fingerprint == self.spec.fingerprint
        )
        return json.dumps(heads)

    def _check_path(self) -> Path:
        """Beside the bundle, not in it: the bundle's files are hashed into its fingerprint."""
        return self.target.with_name(self.target.name + ".fit-check.json")

    def _already_checked(self, bundle: EdgeBundle, state: str) -> bool:
        """True when the store was sampled for this bundle at this state and could not give the
        configured kind (too few documents, or no texts): sampling again would find the same."""
        try:
            check = json.loads(self._check_path().read_text())
        except (OSError, ValueError):
            return False
        return bool(state) and check == {"bundle": bundle.fingerprint, "store": state}

    def _plan(self) -> _Plan:
        """Blocking: read the bundle on disk and, when a (re)fit is due, sample the store."""
        settings, spec = self.settings, self.spec
        existing: EdgeBundle | None = None
        try:
            existing = EdgeBundle.load(self.target)
        except BundleError as exc:
            if self.target.exists():
                log.warning("rebuilding the edge bundle in %s: %s", self.target, exc)
        min_vectors = settings.edge_fit_min_vectors
        fitted_on = int(existing.manifest.extra.get("fit_vectors", 0)) if existing else 0
        # A fitted bundle of another kind than --edge-projection is refitted (when the store can).
        # An MRL model's bundle that kept plain truncation over a fitted kind counts as that kind.
        compared = existing.manifest.extra.get("mrl_choice", {}) if existing else {}
        existing_kind = compared.get("fitted") or (existing.manifest.projection_kind if existing else "")
        other_kind = fitted_on > 0 and existing_kind != settings.edge_projection
        state = self._store_state()
        if other_kind and existing is not None and self._already_checked(existing, state):
            other_kind = False  # no walk over a large store at every start to find the same answer
        vectors: np.ndarray | None = None
        texts: list[str | None] = []
        if existing is None or fitted_on < min_vectors or other_kind:
            limit = settings.edge_fit_sample
            if settings.edge_projection == "adaptor":
                limit = min(limit, MAX_FIT_DOCS)  # the adaptor fits on at most this many anyway
            sampled, texts = self.store.sample_documents(limit, fingerprint=spec.fingerprint)
            vectors = sampled if len(sampled) else None
        can_refit = vectors is not None and len(vectors) >= min_vectors
        if other_kind and vectors is not None and self._kind_for(len(vectors), texts) == existing_kind:
            can_refit = False  # e.g. a rotation, and still too few documents (or no texts) for the adaptor
            if existing is not None and state:
                self._check_path().write_text(json.dumps({"bundle": existing.fingerprint, "store": state}))
        if (
            existing is not None
            and existing.manifest.model_fingerprint == spec.fingerprint
            and existing.manifest.default_dims == settings.edge_dims
            and bool(existing.manifest.onnx_int8) == settings.edge_int8
            and ((fitted_on >= min_vectors and not other_kind) or not can_refit)
        ):
            quiet = self._bundle is not None and self._bundle.fingerprint == existing.fingerprint
            log.log(
                logging.DEBUG if quiet else logging.INFO,
                "edge bundle %s loaded from %s",
                existing.fingerprint,
                self.target,
            )
            return _Plan(existing)
        return _Plan(None, vectors, texts)

    async def _pseudo_query_vectors(self, texts: list[str | None]) -> np.ndarray | None:
        """Vectors of sentences of the sampled documents (the adaptor's query-like anchors),
        embedded at bulk priority; None without texts or when embedding fails."""
        sentences = pseudo_query_sentences(texts)
        if not sentences:
            log.info("edge adaptor: the sampled documents have no stored text; fitting the PCA rotation")
            return None
        log.info("edge adaptor: embedding %d pseudo-query sentences", len(sentences))
        parts = []
        try:
            await self.embedder.start()  # idempotent; export-edge starts its workers only here
            for i in range(0, len(sentences), EMBED_CHUNK):
                result = await self.embedder.encode(
                    sentences[i : i + EMBED_CHUNK],
                    prompt_name=self.spec.query_prompt_name,  # they stand in for queries
                    priority=Priority.BULK,
                )
                parts.append(np.asarray(result.vectors, dtype=np.float32))
        except ServiceError as exc:
            log.warning("edge adaptor: embedding pseudo-queries failed (%s); fitting the PCA rotation", exc)
            return None
        return np.concatenate(parts)

    def _build(self, plan: _Plan, pseudo_queries: np.ndarray | None) -> EdgeBundle:
        """Blocking: fit the projection and write the bundle."""
        settings, spec = self.settings, self.spec
        vectors = plan.vectors
        held: np.ndarray | None = None
        if spec.matryoshka_dims and vectors is not None and len(vectors) >= settings.edge_fit_min_vectors:
            pseudo_queries, held = held_out_queries(vectors, pseudo_queries)
        projection = fit_projection(
            vectors,
            spec.dimension,
            min_vectors=settings.edge_fit_min_vectors,
            kind=settings.edge_projection,
            pseudo_queries=pseudo_queries,
            out_dims=max(OUT_DIMS, settings.edge_dims),  # the default dims must exist
            adaptor_min_docs=settings.edge_adaptor_min_docs,
        )
        choice: dict[str, object] = {}
        if held is not None and vectors is not None and projection.kind != "identity":
            projection, choice = prefer_truncation(projection, held, vectors, settings.edge_dims)
        fitted = projection.kind != "identity" or bool(choice)
        fit = len(vectors) if vectors is not None and fitted else 0
        queries = (
            len(pseudo_queries) if fit and projection.kind == "adaptor" and pseudo_queries is not None else 0
        )
        return build_bundle(
            spec,
            self.target,
            projection,
            default_dims=settings.edge_dims,
            onnx_dir=ensure_onnx(spec, onnx_cache_dir(settings), int8=settings.edge_int8),
            int8=settings.edge_int8,
            extra={
                "fit_vectors": fit,
                "fit_pseudo_queries": queries,
                "fit_source": "store sample" if fit else "none",
                "kind": projection.kind,
                **({"mrl_choice": choice} if choice else {}),
            },
        )
