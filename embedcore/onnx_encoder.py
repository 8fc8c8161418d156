"""The edge's ONNX encoder: tokenizer + ONNX Runtime (+ numpy normalization), no torch.

Produces the same full-dimension vectors as the server's model (fp32 graph: max abs diff
~1e-7), or close ones with the int8 graph (mean cosine ~0.99, 2-3x faster on CPU).

Graphs (server.onnx_export) map (input_ids, attention_mask[, token_type_ids]) to
``last_hidden_state`` (batch, seq, hidden) and ``sentence_embedding`` (batch, dims): the model's
whole module pipeline after the transformer (pooling, any Dense head, ...) except a final
Normalize, which is applied here, so the raw pipeline output stays available. Graphs of older
exporters have only ``last_hidden_state`` (Transformer + Pooling models): pooled in numpy.

A text gets the same vector alone or in any batch. Dynamically quantized graphs (the int8
export: DynamicQuantizeLinear) take one activation scale over the whole input tensor, so in a
batch a row's vector depended on the other rows and on padding (cosine down to 0.968 to the
same text alone, measured here): such graphs run each row alone, without padding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from embedcore.pooling import PoolingMode, l2_normalize, pool
from embedcore.tokenization import (
    ModelTokenizer,
    NoContentError,
    TruncationSide,
    no_content_message,
    pad_token_id,
    tokenize_batch,
)

log = logging.getLogger(__name__)

HIDDEN_OUTPUT = "last_hidden_state"
SENTENCE_OUTPUT = "sentence_embedding"


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


_DYNAMIC_QUANTIZATION = b"DynamicQuantizeLinear"  # the op's name, stored as text in the graph


def quantizes_per_batch(model_path: Path) -> bool:
    """True when the graph quantizes activations dynamically, one scale per input tensor (the
    op name appears in the ONNX file's node list; read in blocks, the file can be large)."""
    tail = b""
    with model_path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            if _DYNAMIC_QUANTIZATION in tail + block:
                return True
            tail = block[-len(_DYNAMIC_QUANTIZATION) :]
    return False


class OnnxModel:
    """An exported graph: token ids in, the model's vectors out (see the module docstring).

    The server's ``--backend onnx`` workers and the edge encoder both run this.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        pooling: PoolingMode,
        normalize: bool,
        threads: int = 0,
        providers: Sequence[str] | None = None,
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
        self.head_in_graph = SENTENCE_OUTPUT in {o.name for o in self.session.get_outputs()}
        self.pooling = pooling
        self.normalize = normalize
        self.per_row = quantizes_per_batch(Path(model_path))  # see the module docstring

    def _feeds(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> dict[str, Any]:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return {k: v for k, v in feeds.items() if k in self.input_names}

    def raw(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> np.ndarray:
        """(batch, seq) int64 arrays -> (batch, dimension) float32: the model's pipeline
        output before its final Normalize (equal to :meth:`forward` for models without one)."""
        if not self.per_row:
            return self._run(input_ids, attention_mask, token_type_ids)
        rows = []
        for row, length in enumerate(attention_mask.sum(axis=1).tolist()):
            keep = (slice(row, row + 1), slice(0, max(int(length), 1)))
            rows.append(self._run(input_ids[keep], attention_mask[keep], token_type_ids[keep]))
        return np.concatenate(rows) if rows else self._run(input_ids, attention_mask, token_type_ids)

    def _run(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> np.ndarray:
        feeds = self._feeds(input_ids, attention_mask, token_type_ids)
        if self.head_in_graph:
            (out,) = self.session.run([SENTENCE_OUTPUT], feeds)
            return np.asarray(out, dtype=np.float32)
        (hidden,) = self.session.run([HIDDEN_OUTPUT], feeds)
        return pool(np.asarray(hidden, dtype=np.float32), attention_mask, self.pooling)

    def forward(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> np.ndarray:
        """(batch, seq) int64 arrays, right-padded -> (batch, dimension) float32, the model's
        vectors (unit length when it ends in Normalize)."""
        pooled = self.raw(input_ids, attention_mask, token_type_ids)
        return l2_normalize(pooled) if self.normalize else pooled

    def token_embeddings(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> np.ndarray:
        """(batch, seq) int64 arrays -> (batch, seq, hidden) float32: the transformer's last
        hidden state for every position (padded positions included; mask them out)."""
        (hidden,) = self.session.run([HIDDEN_OUTPUT], self._feeds(input_ids, attention_mask, token_type_ids))
        return np.asarray(hidden, dtype=np.float32)


class OnnxEncoder:
    """Embeds texts into full-dimension float32 vectors: tokenizer + :class:`OnnxModel`.

    Texts are tokenized only as far as the model reads (:class:`ModelTokenizer`); a text with
    no content token (zero-width or control characters only) raises
    :class:`~embedcore.NoContentError`."""

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
        self.model = OnnxModel(
            model_path, pooling=pooling, normalize=normalize, threads=threads, providers=providers
        )
        self.tokenizer = ModelTokenizer(tokenizer_path, max_tokens=max_tokens)
        self.batch_size = batch_size
        self.pad_id = pad_token_id(self.tokenizer.tokenizer())

    def encode(self, texts: Sequence[str], *, side: TruncationSide = "right") -> np.ndarray:
        """(n, dimension) float32; unit length when the model normalizes. Over-long texts are
        cut on ``side`` ("left" keeps the end). NoContentError naming ``texts[i]``."""
        texts = list(texts)
        if not texts:
            raise ValueError("encode() needs at least one text")
        # Sorting by length keeps padding small inside each batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[np.ndarray] = []
        for start in range(0, len(order), self.batch_size):
            chunk = [texts[i] for i in order[start : start + self.batch_size]]
            try:
                batch = tokenize_batch(self.tokenizer, chunk, pad_id=self.pad_id, side=side)
            except NoContentError as exc:  # name the caller's index, not the chunk's
                index = order[start + exc.index]
                raise NoContentError(index, no_content_message(f"texts[{index}]")) from None
            out.append(self.model.forward(batch.input_ids, batch.attention_mask, batch.token_type_ids))
        stacked = np.concatenate(out, axis=0)
        result = np.empty_like(stacked)
        result[np.asarray(order)] = stacked
        return result
