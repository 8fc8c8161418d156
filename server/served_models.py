"""The models one server serves: a name each, one default, each with its own encoder pool.

``embed-server serve --model A=MODEL --model B=OTHER`` serves two models; requests name one
(``EmbedOptions.model``, ``MigrateRequest.to_model``) or get the default (the first). Each has
its own pool workers (the default ``--workers``, the others ``--extra-model-workers``; extra
models compute interactive inputs on their workers, without an interactive lane), fingerprint,
int8 calibration and query-cache entries (the cache is keyed by fingerprint). A collection is
bound to the model whose fingerprint it was stored under (see server.store.versions for
switching it to another).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from server.calibration import Calibration, sample_path
from server.embedder import Embedder, Priority
from server.errors import NotFound
from server.model import ModelSpec, load_spec
from server.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """One served model: its ``name`` (what requests say), description, encoder and int8
    calibration; ``workers``: its encoder worker processes."""

    name: str
    spec: ModelSpec
    embedder: Embedder
    calibration: Calibration
    workers: int
    default: bool = False


def default_name(settings: Settings, spec: ModelSpec) -> str:
    """The default model's name: --model NAME=MODEL's NAME, else the fingerprint's name part."""
    return settings.model_name or spec.fingerprint.split("@", 1)[0]


class ServedModels:
    """The served models by name, default first."""

    def __init__(self, models: list[ServedModel]) -> None:
        if not models or not models[0].default:
            raise ValueError("the first served model must be the default one")
        self._by_name = {m.name: m for m in models}
        if len(self._by_name) != len(models):
            raise ValueError("two served models have the same name")

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    @property
    def default(self) -> ServedModel:
        return next(iter(self._by_name.values()))

    def get(self, name: str, field: str = "model") -> ServedModel:
        """The model called ``name`` ("" = the default); NotFound naming the served ones."""
        if not name:
            return self.default
        found = self._by_name.get(name)
        if found is None:
            served = ", ".join(repr(n) for n in self._by_name)
            raise NotFound(f"model {name!r} is not served here; this server serves {served}", field=field)
        return found

    def by_fingerprint(self, fingerprint: str) -> ServedModel | None:
        """The served model whose vectors have this fingerprint, if any."""
        return next((m for m in self._by_name.values() if m.spec.fingerprint == fingerprint), None)


async def start_extra_models(
    settings: Settings, default_model: str, create_embedder: Callable[[Settings, ModelSpec], Embedder]
) -> list[ServedModel]:
    """Load, start and calibrate every ``--extra-models`` entry (in order), each on an encoder
    from ``create_embedder``. On any failure the pools already started are stopped and the
    error raised: ModelNotFoundError for a model that does not resolve, ValueError for a name
    used twice."""
    extra_settings = dataclasses.replace(
        settings, workers=settings.extra_model_workers, interactive_lane="off"
    )
    started: list[ServedModel] = []
    try:
        for name, ref in settings.extra_model_refs():
            if name == default_model:
                raise ValueError(f"model name {name!r} is given twice")
            spec = await asyncio.to_thread(load_spec, ref)
            embedder = create_embedder(extra_settings, spec)
            await embedder.start()
            calibration = await load_calibration(settings, spec, embedder)
            started.append(ServedModel(name, spec, embedder, calibration, settings.extra_model_workers))
            log.info("serving model %r (%s) beside the default", name, spec.fingerprint)
    except BaseException:
        for model in started:
            await model.embedder.close()
        raise
    return started


async def load_calibration(settings: Settings, spec: ModelSpec, embedder: Embedder) -> Calibration:
    """The model's int8 ranges (computed once per fingerprint, kept under the data directory)."""

    async def encode(texts: list[str]) -> np.ndarray:
        return (await embedder.encode(texts, priority=Priority.BULK)).vectors

    return await Calibration.load_or_create(
        sample_path(settings.data_dir, spec.fingerprint), spec.dimension, encode
    )
