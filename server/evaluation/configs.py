"""The configurations one evaluation run measures, and what each one produced.

Labels are ``path/dims/precision[/variant]``, and ``server/bm25`` (LEXICAL search: BM25 over the
stored texts) and ``server/hybrid/rrf``, ``server/hybrid/weighted`` (HYBRID search, the server's
default fusion parameters, the dense side through the index as a default request);
``--configs`` selects by glob (``'server/*'``, ``'edge-local/*/fitted'``). The list is fixed and
dataset-independent: nothing here is tuned to any one benchmark.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from server.evaluation.metrics import RETRIEVAL_METRICS

SERVER_DIMS = (256, 128, 64)
SERVER_PRECISIONS = ("float16", "int8", "binary+rescore")
EDGE_DIMS = (32, 64, 128, 256)
EDGE_ROTATIONS = ("naive", "fitted")


@dataclass(frozen=True)
class EvalConfig:
    path: str  # "server" | "edge-local" | "edge-auto"
    dims: int | None = None  # None: the model's full dimensions
    precision: str = "float32"  # float32 | float16 | int8 | binary+rescore
    exact: bool = True  # server: brute force (True) or the approximate index
    rotation: str = ""  # edge-local: "naive" truncation or the bundle's "fitted" projection
    mode: str = "dense"  # server: "dense" | "lexical" | "hybrid" (SearchRequest.mode)
    fusion: str = ""  # server, hybrid: "rrf" | "weighted"

    @property
    def label(self) -> str:
        if self.path == "edge-auto":
            return "edge-auto"
        if self.mode == "lexical":
            return "server/bm25"
        if self.mode == "hybrid":
            return f"server/hybrid/{self.fusion}"
        parts = [self.path, "full" if self.dims is None else str(self.dims)]
        if self.path == "server":
            parts.append(self.precision)
            if not self.exact:
                parts.append("ann")
        if self.rotation:
            parts.append(self.rotation)
        return "/".join(parts)


def default_configs() -> list[EvalConfig]:
    configs = [EvalConfig("server"), EvalConfig("server", exact=False)]
    configs += [EvalConfig("server", dims=d) for d in SERVER_DIMS]
    configs += [EvalConfig("server", precision=p) for p in SERVER_PRECISIONS]
    configs.append(EvalConfig("server", exact=False, mode="lexical"))
    configs += [EvalConfig("server", exact=False, mode="hybrid", fusion=f) for f in ("rrf", "weighted")]
    configs += [EvalConfig("edge-local", dims=d, rotation=r) for r in EDGE_ROTATIONS for d in EDGE_DIMS]
    configs.append(EvalConfig("edge-auto"))
    return configs


def select(configs: Sequence[EvalConfig], patterns: Iterable[str]) -> list[EvalConfig]:
    """Configs whose label matches any pattern (comma-separated lists allowed); keeps order."""
    globs = [p.strip() for pattern in patterns for p in pattern.split(",") if p.strip()]
    if not globs:
        return list(configs)
    chosen = [c for c in configs if any(fnmatch.fnmatchcase(c.label, g) for g in globs)]
    if not chosen:
        known = ", ".join(c.label for c in configs)
        raise ValueError(f"--configs {' '.join(globs)!r} matches no configuration; known: {known}")
    return chosen


@dataclass
class ConfigResult:
    config: EvalConfig
    dims: int | None  # effective dimensions (the model's when the config says full)
    metrics: dict[str, float] | None = None
    queries: int = 0
    seconds: float = 0.0
    unavailable: str = ""  # why this configuration could not be measured
    local_share: float | None = None  # edge-auto: fraction answered locally
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "path": self.config.path,
            "label": self.config.label,
            "dims": self.dims,
            "precision": self.config.precision,
        }
        if self.config.path == "server":
            row["exact"] = self.config.exact
            row["mode"] = self.config.mode
            if self.config.fusion:
                row["fusion"] = self.config.fusion
        if self.config.rotation:
            row["rotation"] = self.config.rotation
        for name in RETRIEVAL_METRICS:
            row[name] = None if self.metrics is None else self.metrics[name]
        row["queries"] = self.queries
        if self.config.path == "edge-auto":
            row["local_share"] = self.local_share
        row["seconds"] = round(self.seconds, 3)
        if self.unavailable:
            row["unavailable"] = self.unavailable
        row.update(self.extra)
        return row
