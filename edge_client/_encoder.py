"""The edge's ONNX encoder: tokenizer + ONNX Runtime + numpy pooling (no torch).

Produces the same full-dimension vectors as the server's model (fp32 graph: max abs diff
~1e-7), or close ones with the int8 graph (mean cosine ~0.99, 2-3x faster on CPU).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edge_client._pooling import PoolingMode, l2_normalize, pool
from edge_client._tokenizer import encode_batch, load_tokenizer

log = logging.getLogger(__name__)


def _providers(requested: Sequence[str] | None) -> list[str]:
    """Requested providers that this onnxruntime build has (CPU always last, as a fallback)."""
    available = ort.get_available_providers()
    wanted = list(requested or ["CPUExecutionProvider"])
    chosen = [p for p in wanted if p in available]
    missing = [p for p in wanted if p not in available]
    if missing:
        log.warning("ONNX providers %s are not available here (have %s); using CPU", missing, available)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class OnnxEncoder:
    """Embeds texts into full-dimension float32 vectors with an exported transformer graph."""

    def __init__(
        self,
        model_path: Path,
        tokenizer_path: Path,
        *,
        max_tokens: int,
        pooling: PoolingMode,
        normalize: bool,
        threads: int = 0,
        providers: Sequence[str] | None = None,
        batch_size: int = 32,
    ) -> None:
        options = ort.SessionOptions()
        # 0 lets ORT pick (all cores); an app sharing the machine can pass a smaller number.
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=_providers(providers)
        )
        used = self.session.get_providers()
        if providers and providers[0] not in used:
            log.warning("ONNX Runtime fell back from %s to %s", providers[0], used)
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.tokenizer = load_tokenizer(tokenizer_path, max_tokens=max_tokens)
        self.pooling = pooling
        self.normalize = normalize
        self.batch_size = batch_size
        pad = self.tokenizer.padding  # None after load_tokenizer; read the pad id from the vocab
        self.pad_id = int(pad["pad_id"]) if pad else int(self.tokenizer.token_to_id("[PAD]") or 0)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dimensions) float32; unit length when the model normalizes."""
        texts = list(texts)
        if not texts:
            raise ValueError("encode() needs at least one text")
        # Sorting by length keeps padding small inside each batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[np.ndarray] = []
        for start in range(0, len(order), self.batch_size):
            chunk = [texts[i] for i in order[start : start + self.batch_size]]
            out.append(self._encode_batch(chunk))
        stacked = np.concatenate(out, axis=0)
        result = np.empty_like(stacked)
        result[np.asarray(order)] = stacked
        return result

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        batch = encode_batch(self.tokenizer, texts, pad_id=self.pad_id)
        feeds: dict[str, Any] = {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "token_type_ids": batch.token_type_ids,
        }
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        (hidden,) = self.session.run(["last_hidden_state"], feeds)
        pooled = pool(np.asarray(hidden, dtype=np.float32), batch.attention_mask, self.pooling)
        return l2_normalize(pooled) if self.normalize else pooled


def default_threads() -> int:
    """Intra-op threads when the caller gives none: every core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
