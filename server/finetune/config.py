"""What a fine-tune can be asked to do: :class:`FinetuneConfig` (no heavy imports here: the
CLI builds its flags from these defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from server.errors import InvalidArgument
from server.model import DEFAULT_MODEL, ModelSpec

MATRYOSHKA_DIMS = (384, 256, 128, 64, 32)  # the set; clipped to the model's width


@dataclass(frozen=True)
class FinetuneConfig:
    """Every knob of a fine-tune (``embed-server finetune --help`` says each flag)."""

    base_model: str = DEFAULT_MODEL  # must be the model the collection is stored under
    matryoshka_dims: tuple[int, ...] = MATRYOSHKA_DIMS
    batch_size: int = 32  # pairs per step (in-batch negatives: batch_size - 1 + hard negatives)
    mini_batch_size: int = 0  # > 0 and < batch_size: the gradient-cached loss, this many per pass
    epochs: float = 1.0
    max_steps: int = 0  # 0: epochs decide
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    scale: float = 20.0  # MNRL's inverse temperature (sentence-transformers' default)
    max_tokens: int = 0  # training truncation; 0: the model's own (what the server embeds with)
    queries_per_doc: int = 1
    max_documents: int = 0  # documents that get pseudo-queries (a seeded sample); 0: all
    num_negatives: int = 1  # mined hard negatives per pair
    near_duplicate_cosine: float = 0.95
    max_negative_ratio: float = 0.95
    remove_query_prob: float = 0.5  # inverse cloze: cut the query sentence out of its positive
    validation_queries: int = 200  # held-out pseudo-queries (their documents get no training pair)
    validation_documents: int = 1000  # documents they are searched among (theirs included)
    seed: int = 0
    max_minutes: float = 0.0  # the whole run, reading to saving; 0: no budget
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | bfloat16
    threads: int = 0  # torch intra-op threads; 0: the usable cores

    def check(self, spec: ModelSpec) -> tuple[int, ...]:
        """The Matryoshka dims to train (descending, the model's width included); InvalidArgument
        naming the option when a value is out of range."""
        dims = tuple(sorted({d for d in self.matryoshka_dims if 0 < d < spec.dimension} | {spec.dimension}))
        too_wide = [d for d in self.matryoshka_dims if d > spec.dimension]
        if too_wide or any(d <= 0 for d in self.matryoshka_dims):
            raise InvalidArgument(
                f"dims must be in 1..{spec.dimension} (the model's width), got {list(self.matryoshka_dims)}",
                field="dims",
            )
        for name, value, low in (
            ("batch_size", self.batch_size, 2),
            ("queries_per_doc", self.queries_per_doc, 1),
            ("num_negatives", self.num_negatives, 0),
            ("validation_queries", self.validation_queries, 0),
        ):
            if value < low:
                raise InvalidArgument(f"{name} must be at least {low}, got {value}", field=name)
        if not self.epochs > 0 and self.max_steps <= 0:
            raise InvalidArgument(
                f"epochs must be > 0 (or give max_steps), got {self.epochs}", field="epochs"
            )
        fractions: tuple[tuple[str, float], ...] = (
            ("near_duplicate_cosine", self.near_duplicate_cosine),
            ("max_negative_ratio", self.max_negative_ratio),
            ("remove_query_prob", self.remove_query_prob),
        )
        for label, fraction in fractions:
            if not 0.0 <= fraction <= 1.0:
                raise InvalidArgument(f"{label} must be in 0..1, got {fraction}", field=label)
        if self.max_minutes < 0:
            raise InvalidArgument(f"max_minutes must be >= 0, got {self.max_minutes}", field="max_minutes")
        if self.learning_rate <= 0:
            raise InvalidArgument(
                f"learning_rate must be > 0, got {self.learning_rate}", field="learning_rate"
            )
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise InvalidArgument(
                f"dtype must be auto, float32 or bfloat16, got {self.dtype!r}", field="dtype"
            )
        return tuple(sorted(dims, reverse=True))
