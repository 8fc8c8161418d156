"""The training loop: sentence-transformers' MatryoshkaLoss around MultipleNegativesRankingLoss.

Our own small loop rather than ``SentenceTransformerTrainer``: that trainer needs ``datasets``
and ``accelerate`` (not dependencies of this server), and a time budget and a seeded, exactly
repeatable batch order are simpler to keep here. The loss modules are sentence-transformers'
own: ``MatryoshkaLoss(MultipleNegativesRankingLoss)``, or its gradient-cached variant
(``CachedMultipleNegativesRankingLoss``) when ``mini_batch_size`` is below ``batch_size``, which
trains large batches in the memory of small ones.

AdamW, linear warm-up then linear decay. Mixed precision: bfloat16 autocast on CPUs with native
bfloat16 (AMX / AVX512-BF16) and on GPUs that have it; float32 elsewhere (weights stay float32).
Deterministic for a seed on CPU with the same thread count (same weights, bit for bit).
On CPU the attention-probability dropout is turned off (:func:`no_attention_dropout`: it
made each step ~3x slower); the hidden-state dropout stays.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.finetune.pairs import TrainingPair
from server.hardware import cpu_has_native_bf16, usable_cores

log = logging.getLogger(__name__)

CALIBRATION_STEPS = 2  # steps timed before a --max-minutes budget resizes the schedule


@dataclass
class TrainReport:
    steps: int  # optimizer steps taken
    planned_steps: int  # what epochs / max_steps asked for
    seconds: float
    stopped_by_budget: bool
    final_loss: float  # moving average of the last steps
    dtype: str  # the autocast dtype, or float32


def pick_device(requested: str) -> str:
    """``auto``: the first CUDA GPU when torch sees one, else the CPU."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(requested: str, device: str) -> str:
    """``auto``: bfloat16 where it runs natively (GPU with bf16, AMX/AVX512-BF16 CPU), else float32."""
    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


def autocast(device: str, dtype: str) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision for the forward pass; a no-op for float32."""
    import torch

    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, dtype))


def seed_everything(seed: int, threads: int) -> None:
    """torch, numpy and random seeded; ``threads`` intra-op threads (0: the usable cores).
    The thread count is part of determinism: float sums split differently across threads."""
    import torch

    random.seed(seed)
    np.random.seed(seed)  # libraries may draw from the global generator
    torch.manual_seed(seed)
    torch.set_num_threads(threads or usable_cores())


def no_attention_dropout(model: Any) -> int:
    """Attention-probability dropout off for training (hidden-state dropout stays); returns how
    many attention layers were changed. A non-zero dropout takes PyTorch's SDPA off its fused
    CPU kernel: measured on this 2-core CPU (all-MiniLM-L6-v2, bf16 autocast, 96 texts x 256
    tokens), the training forward took 22 s with it and 6.3 s without (the backward 7-8 s either
    way), so a step took ~19 s and a 30-minute budget held half an epoch."""
    import torch

    changed = 0
    for module in model.modules():
        dropout = getattr(module, "dropout", None)
        if "Attention" in type(module).__name__ and isinstance(dropout, torch.nn.Dropout) and dropout.p:
            dropout.p = 0.0
            changed += 1
    return changed


def _losses() -> Any:
    """sentence-transformers' losses module (moved in 6.0; the old path warns)."""
    try:
        return importlib.import_module("sentence_transformers.sentence_transformer.losses")
    except ImportError:  # sentence-transformers 5.x
        return importlib.import_module("sentence_transformers.losses")


def matryoshka_loss(
    model: Any, dims: Sequence[int], *, scale: float, batch_size: int, mini_batch_size: int
) -> Any:
    """MatryoshkaLoss over ``dims`` (equal weights) around MNRL, cached when mini-batched."""
    losses = _losses()
    if 0 < mini_batch_size < batch_size:
        inner = losses.CachedMultipleNegativesRankingLoss(model, scale=scale, mini_batch_size=mini_batch_size)
    else:
        inner = losses.MultipleNegativesRankingLoss(model, scale=scale)
    return losses.MatryoshkaLoss(model, inner, list(dims))


def _columns(
    pairs: Sequence[TrainingPair], texts: Sequence[str], query_prompt: str, document_prompt: str
) -> list[list[str]]:
    """Loss input columns: queries, positives, then one column per hard negative."""
    columns = [[query_prompt + p.query for p in pairs], [document_prompt + p.positive for p in pairs]]
    for k in range(len(pairs[0].negatives)):
        columns.append([document_prompt + texts[p.negatives[k]] for p in pairs])
    return columns


@dataclass
class LoopOptions:
    device: str
    dtype: str
    learning_rate: float
    warmup_ratio: float
    weight_decay: float
    planned_steps: int
    deadline: float  # time.monotonic() by which training must stop (inf: none)
    query_prompt: str = ""
    document_prompt: str = ""


def train_loop(
    model: Any,
    loss: Any,
    pairs: Sequence[TrainingPair],
    texts: Sequence[str],
    batches: Iterator[list[int]],
    options: LoopOptions,
    progress: Callable[[int, int, float], None],
) -> TrainReport:
    """Optimizer steps over ``batches`` (indexes into ``pairs``; ``texts``: the corpus texts the
    negatives point to) until ``planned_steps`` or the deadline. After CALIBRATION_STEPS, a
    deadline that cannot fit the plan shrinks it, the LR schedule with it. ``progress(step,
    planned, loss)`` after each step."""
    import torch

    started = time.monotonic()
    total = [options.planned_steps]  # the schedule reads the current plan

    def schedule(step: int) -> float:
        warmup = max(1, int(options.warmup_ratio * total[0]))
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total[0] - step) / max(1, total[0] - warmup))

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=options.learning_rate,
        weight_decay=options.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    step, average, stopped = 0, math.nan, False
    for indexes in batches:
        if step >= total[0]:
            break
        if time.monotonic() >= options.deadline:
            stopped = True
            break
        chunk = [pairs[i] for i in indexes]
        features = [
            _to_device(model.preprocess(column), options.device)
            for column in _columns(chunk, texts, options.query_prompt, options.document_prompt)
        ]
        with autocast(options.device, options.dtype):
            value = loss(features, None)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        step += 1
        current = float(value.detach())
        average = current if math.isnan(average) else 0.9 * average + 0.1 * current
        if step == CALIBRATION_STEPS and math.isfinite(options.deadline):
            per_step = (time.monotonic() - started) / step
            fits = step + int((options.deadline - time.monotonic()) / per_step)
            if fits < total[0]:
                log.info(
                    "time budget: %d of %d planned steps fit (%.1f s per step)", fits, total[0], per_step
                )
                total[0], stopped = max(fits, step), True
        progress(step, total[0], average)
    model.eval()
    return TrainReport(
        steps=step,
        planned_steps=options.planned_steps,
        seconds=time.monotonic() - started,
        stopped_by_budget=stopped,
        final_loss=average,
        dtype=options.dtype,
    )


def _to_device(features: dict[str, Any], device: str) -> dict[str, Any]:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in features.items()}
