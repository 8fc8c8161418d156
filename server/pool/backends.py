"""Model backends that run inside a worker process: token ids in, pooled vectors out.

A backend receives padded token ids (the parent tokenizes, so the batcher knows real token
counts) and returns float32 (batch, dims) vectors as the model's own pipeline makes them
(pooling per its configuration, any Dense head) except a final Normalize: the pool normalizes
and keeps the lengths (EncodeResult.raw_norms; tei.v1's normalize=false returns raw vectors).

Knobs another engineer may tune later live in :class:`BackendConfig` (dtype, threads); nothing
else in the pool depends on how a backend computes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from server.hardware import cpu_has_native_bf16
from server.model import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendConfig:
    kind: str  # torch | onnx
    device: str  # cpu | cuda:N
    dtype: str  # auto | float32 | bfloat16 | float16
    threads: int  # intra-op threads for this worker (0 = library default)
    onnx_dir: Path | None = None  # ONNX export cache (per model fingerprint subdirs), onnx backend
    compile: bool = False  # torch.compile the transformer (torch backend)


class Backend(Protocol):
    device: str
    dtype: str
    compiled: bool

    def forward(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> np.ndarray:
        """(batch, seq) int64 arrays -> (batch, dims) float32, before a final Normalize."""
        ...


def resolve_dtype(requested: str, device: str) -> str:
    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        return "float16"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


class TorchBackend:
    """sentence-transformers' modules (transformer, pooling, dense, normalize) on torch."""

    def __init__(self, spec: ModelSpec, config: BackendConfig) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if config.threads > 0:
            torch.set_num_threads(config.threads)
        self.device = config.device
        self.dtype = resolve_dtype(config.dtype, config.device)
        self._torch: Any = torch
        model: Any = SentenceTransformer(str(spec.path), device=config.device)
        model.max_seq_length = spec.max_tokens
        model.eval()
        # Only the transformer runs in the compute dtype; pooling, any Dense head and the
        # normalization (in the pool) run in float32, so vectors are unit-length to float32 precision.
        model[0].to(getattr(torch, self.dtype))
        self._model = model
        modules = list(model)
        if type(modules[-1]).__name__ == "Normalize":  # the pool normalizes (module docstring)
            modules = modules[:-1]
        self._modules = modules
        self.compiled = config.compile and self._compile()

    def _compile(self) -> bool:
        """torch.compile the transformer; on any failure keep running eagerly.

        Measured on this 2-core AMX CPU (bf16, SciFact docs): compiled ran ~1.5x the eager
        model (inductor fuses GELU/LayerNorm/adds and prepacks weights; freezing folds the
        weights into constants). dynamic=True so batch and sequence sizes share one graph; the
        warm-up compiles the batch-of-one graph (queries) and the general one (batches).
        """
        import torch._inductor.config as inductor_config

        transformer = self._model[0]
        # sentence-transformers >= 6: auto_model is a read-only property of ``.model``, and
        # forward calls ``.model``; assigning auto_model would leave the eager model running.
        attr = (
            "model" if isinstance(getattr(type(transformer), "auto_model", None), property) else "auto_model"
        )
        eager = getattr(transformer, attr)
        inductor_config.freezing = True
        try:
            setattr(transformer, attr, self._torch.compile(eager, dynamic=True))
            for batch, seq in ((1, 8), (3, 17)):
                ids = np.full((batch, seq), 100, dtype=np.int64)
                mask = np.ones_like(ids)
                mask[1:, seq // 2 :] = 0  # padded rows, as real batches have
                self.forward(ids, mask, np.zeros_like(ids))
        except Exception as exc:  # e.g. no C++ compiler on the host
            log.warning("torch.compile failed (%s: %s); running the model eagerly", type(exc).__name__, exc)
            setattr(transformer, attr, eager)
            return False
        return True

    def forward(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> np.ndarray:
        torch = self._torch
        features = {
            "input_ids": torch.from_numpy(input_ids).to(self.device),
            "attention_mask": torch.from_numpy(attention_mask).to(self.device),
            "token_type_ids": torch.from_numpy(token_type_ids).to(self.device),
        }
        with torch.inference_mode():
            features = self._modules[0](features)
            features["token_embeddings"] = features["token_embeddings"].float()
            for module in self._modules[1:]:
                features = module(features)
        return np.asarray(features["sentence_embedding"].cpu().numpy(), dtype=np.float32)


class OnnxBackend:
    """ONNX Runtime on the same export the edge bundle uses (server.onnx_export)."""

    def __init__(self, spec: ModelSpec, config: BackendConfig) -> None:
        import onnxruntime as ort

        from embedcore import OnnxModel
        from server.onnx_export import FP32_NAME, INT8_NAME, ensure_onnx  # what the edge bundle ships

        # int8 on CPU by default: per-channel dynamic quantization ran ~1.5x ORT fp32 here with
        # SciFact nDCG@10 0.6445 vs 0.6451 (fp32); GPUs run the fp32 graph.
        cpu = not config.device.startswith("cuda")
        int8 = config.dtype == "int8" or (config.dtype == "auto" and cpu)
        # Exported once per model fingerprint into the shared cache, then reused.
        export_dir = ensure_onnx(spec, config.onnx_dir or Path("onnx"), int8=int8)
        model_path = export_dir / (INT8_NAME if int8 else FP32_NAME)
        providers = ["CPUExecutionProvider"]
        if config.device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self._model = OnnxModel(
            model_path,
            pooling=spec.pooling,
            normalize=spec.normalize,
            threads=config.threads,
            providers=providers,
        )
        self.device = config.device
        self.dtype = "int8" if int8 else "float32"
        self.compiled = False

    def forward(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> np.ndarray:
        return self._model.raw(input_ids, attention_mask, token_type_ids)


def load_backend(spec: ModelSpec, config: BackendConfig) -> Backend:
    if config.kind == "onnx":
        return OnnxBackend(spec, config)
    return TorchBackend(spec, config)
