"""Export a model's transformer to ONNX (fp32) and a dynamic int8 copy (per-channel weights).

The graph maps (input_ids, attention_mask, token_type_ids) -> last_hidden_state; tokenization
(embedcore.tokenization), pooling and normalization (embedcore.pooling) stay outside it in
numpy, so the same graph serves the server's ``--backend onnx`` and the edge client.

Measured with all-MiniLM-L6-v2: fp32 90 MB, max abs diff 2.2e-7 to sentence-transformers;
int8 per-channel 23 MB, mean cosine 0.992 to fp32 (per-tensor 0.954, reduce_range 0.853).

Exports are cached (:func:`ensure_onnx`) under a key of the model fingerprint and this
exporter's own version (a hash of this file), so a change to the exporter is exported afresh.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.model import ModelSpec
from server.settings import Settings

log = logging.getLogger(__name__)

OPSET = 17
FP32_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"


def onnx_cache_dir(settings: Settings) -> Path:
    """``--edge-onnx-cache``, or a per-user cache directory."""
    if settings.edge_onnx_cache:
        return Path(settings.edge_onnx_cache)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("embedstream", appauthor=False)) / "onnx"


@functools.cache
def exporter_version() -> str:
    """A hash of this module's source: any change to how graphs are made changes it."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def ensure_onnx(spec: ModelSpec, cache_dir: Path, *, int8: bool = True) -> Path:
    """``cache_dir/<model fingerprint>-<exporter version>/`` with model.onnx (+ int8), made once."""
    key = f"{spec.fingerprint}-{exporter_version()}".replace("/", "_").replace("@", "-")
    target = cache_dir / key
    if (target / FP32_NAME).is_file() and (not int8 or (target / INT8_NAME).is_file()):
        return target
    log.info("exporting %s to ONNX in %s (once per model and exporter version)", spec.fingerprint, target)
    export_onnx(spec, target, int8=int8)
    return target


@dataclass(frozen=True)
class OnnxExport:
    """Paths of an export; ``input_names`` lists the inputs the graph actually takes."""

    fp32: Path
    int8: Path | None
    input_names: tuple[str, ...]


def export_onnx(spec: ModelSpec, out_dir: Path, *, int8: bool = True) -> OnnxExport:
    """Write ``out_dir/model.onnx`` (and ``model.int8.onnx`` unless ``int8=False``).

    Each file is written to a temporary name and renamed, so a crash never leaves a partial
    model under the final name. Needs torch and transformers (server side only).
    """
    import torch
    from transformers import AutoModel

    out_dir.mkdir(parents=True, exist_ok=True)
    model = AutoModel.from_pretrained(str(spec.path), dtype=torch.float32)
    model.eval()
    # BERT-like models take token_type_ids; others (e.g. RoBERTa variants with one type) may not.
    accepts_types = "token_type_ids" in inspect.signature(model.forward).parameters
    names = INPUT_NAMES if accepts_types else INPUT_NAMES[:2]
    sample = torch.ones((2, 8), dtype=torch.int64)
    args = tuple(sample if n != "token_type_ids" else torch.zeros_like(sample) for n in names)
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[OUTPUT_NAME] = {0: "batch", 1: "sequence"}

    class _Hidden(torch.nn.Module):
        """Returns only last_hidden_state, so the graph has one named output."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: Any) -> Any:
            return self.inner(**dict(zip(names, inputs, strict=True))).last_hidden_state

    fp32 = out_dir / FP32_NAME
    tmp = _temp_path(out_dir, FP32_NAME)
    try:
        # What the exporter says here is known and checked: the tracer warns about Python
        # branches on tensor shapes inside transformers' masking code, aten::index about
        # negative indices (the model has none), and torch that this TorchScript exporter is the
        # legacy one (used deliberately: dynamo=False). The graph is checked against
        # sentence-transformers in tests/test_onnx_parity.py.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
            warnings.filterwarnings("ignore", message="Exporting aten::index operator", category=UserWarning)
            warnings.filterwarnings(
                "ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning
            )
            torch.onnx.export(
                _Hidden(model),
                args,
                str(tmp),
                input_names=list(names),
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        os.replace(tmp, fp32)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("exported %s (%.1f MB)", fp32, fp32.stat().st_size / 1e6)
    quantized = quantize_int8(fp32, out_dir / INT8_NAME) if int8 else None
    return OnnxExport(fp32=fp32, int8=quantized, input_names=names)


def quantize_int8(fp32: Path, out: Path) -> Path:
    """Dynamic int8 quantization with per-channel weights (per-tensor loses noticeably more)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = _temp_path(out.parent, out.name)
    try:
        quantize_dynamic(str(fp32), str(tmp), per_channel=True, weight_type=QuantType.QInt8)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("quantized %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out


def _temp_path(directory: Path, name: str) -> Path:
    fd, raw = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.fchmod(fd, 0o644)  # mkstemp makes 0600; the result is an ordinary readable file
    os.close(fd)
    return Path(raw)
