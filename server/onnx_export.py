"""Export a model's whole module pipeline to ONNX (fp32) and a dynamic int8 copy (per-channel weights).

The graph maps (input_ids, attention_mask[, token_type_ids]) to two outputs:
``last_hidden_state`` (batch, seq, hidden), the transformer's token vectors, and
``sentence_embedding`` (batch, dims), every module after the transformer as sentence-transformers
runs it (Pooling in any of its modes, Dense heads, LayerNorm, ...) except a final Normalize,
which embedcore applies in numpy so the raw vector stays available. Tokenization stays outside
(embedcore.tokenization), so the same graph serves the server's ``--backend onnx`` and the edge.
Models with other modules are refused by name when loaded (server.model.SUPPORTED_HEAD), and
every export is checked against the torch pipeline on sample texts before it is used.

Measured with all-MiniLM-L6-v2: fp32 90 MB, max abs diff 2.2e-7 to sentence-transformers;
int8 per-channel 23 MB, mean cosine 0.992 to fp32 (per-tensor 0.954, reduce_range 0.853).
With a seeded Dense 384->256 (tanh) head: fp32 max abs diff 2.2e-7; int8 mean cosine to torch
0.991 on tests/test_onnx_parity.py's texts (the plain model 0.990): the head adds no error.

Exports are cached (:func:`ensure_onnx`) under a key of the model fingerprint and this
exporter's own version (a hash of this file), so a change to the exporter is exported afresh.
Each export records its graphs' sizes and sha256 (``checksums.json``); a cached export that does
not match them (cut short, overwritten) is set aside and exported again, never loaded.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedcore.onnx_encoder import HIDDEN_OUTPUT, SENTENCE_OUTPUT
from server.model import ModelNotSupportedError, ModelSpec
from server.settings import Settings

log = logging.getLogger(__name__)

OPSET = 17
FP32_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# Largest |onnx - torch| accepted on the sample texts (fp32; measured 2.2e-7 on MiniLM).
PARITY_TOLERANCE = 1e-4
_PARITY_TEXTS = (
    "A man is eating food.",
    "short",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar. " * 3,
)


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
    names = [FP32_NAME, *([INT8_NAME] if int8 else [])]
    cache_dir.mkdir(parents=True, exist_ok=True)
    # One process checks and exports at a time (workers of --backend onnx and the edge builder
    # start together): a half-made export must not be taken for a damaged one and set aside.
    with (cache_dir / f".{key}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        problem = _cache_problem(target, names)
        if problem is None:
            return target
        if int8 and not (target / INT8_NAME).exists() and _cache_problem(target, [FP32_NAME]) is None:
            # An fp32-only export (the lane's, or --no-edge-int8) that now also needs int8: add
            # it in place. Setting the directory aside would pull model.onnx from under the
            # process that just opened it (two servers starting at once on an empty cache: one
            # failed with NO_SUCHFILE).
            log.info("adding the int8 graph to the ONNX cache %s", target)
            quantize_int8(target / FP32_NAME, target / INT8_NAME)
            _write_checksums(target)
            return target
        if target.exists():  # a damaged cache is set aside (kept for a post-mortem), made again
            log.warning(
                "the ONNX cache %s is damaged (%s); setting it aside and exporting again", target, problem
            )
            aside = target.with_name(target.name + ".damaged")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(target, aside)
        log.info("exporting %s to ONNX in %s (once per model and exporter version)", spec.fingerprint, target)
        export_onnx(spec, target, int8=int8)
        _write_checksums(target)
    return target


CHECKSUMS = "checksums.json"  # {file name: [size, sha256]} of an export, written after it


def _write_checksums(directory: Path) -> None:
    sums = {path.name: [path.stat().st_size, _sha256(path)] for path in sorted(directory.glob("*.onnx"))}
    tmp = _temp_path(directory, CHECKSUMS)
    tmp.write_text(json.dumps(sums, indent=1))
    os.replace(tmp, directory / CHECKSUMS)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cache_problem(directory: Path, names: list[str]) -> str | None:
    """What is wrong with the cached export in ``directory`` (None: usable): a graph missing,
    or not the size and sha256 recorded when it was exported (~0.3 s for MiniLM's 113 MB)."""
    try:
        sums = json.loads((directory / CHECKSUMS).read_text())
        for name in names:
            path = directory / name
            if not path.is_file():
                return f"{name} is missing"
            size, sha = sums[name]
            if path.stat().st_size != size:
                return f"{name} has {path.stat().st_size:,} bytes, exported with {size:,}"
            if _sha256(path) != sha:
                return f"{name} does not match its checksum"
    except FileNotFoundError:
        return "missing" if not directory.exists() else f"no {CHECKSUMS}"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{CHECKSUMS} unreadable: {exc}"
    return None


@dataclass(frozen=True)
class OnnxExport:
    """Paths of an export; ``input_names`` lists the inputs the graph actually takes."""

    fp32: Path
    int8: Path | None
    input_names: tuple[str, ...]
    max_abs_diff: float  # fp32 graph vs the torch pipeline on the sample texts


def export_onnx(spec: ModelSpec, out_dir: Path, *, int8: bool = True) -> OnnxExport:
    """Write ``out_dir/model.onnx`` (and ``model.int8.onnx`` unless ``int8=False``).

    Each file is written to a temporary name and renamed, so a crash never leaves a partial
    model under the final name. Needs torch and sentence-transformers (server side only).
    Raises ModelNotSupportedError when the graph's vectors differ from torch's by more than
    PARITY_TOLERANCE (the spec's modules were checked when it was loaded).
    """
    import torch
    from sentence_transformers import SentenceTransformer

    out_dir.mkdir(parents=True, exist_ok=True)
    model: Any = SentenceTransformer(str(spec.path), device="cpu")
    model.max_seq_length = spec.max_tokens
    model.eval()
    modules = list(model)
    head = modules[1:]
    if head and type(head[-1]).__name__ == "Normalize":
        head = head[:-1]  # applied in numpy (embedcore), so the raw vector stays available
    # BERT-like models take token_type_ids; others (e.g. MPNet, DistilBERT) do not.
    accepts_types = "token_type_ids" in inspect.signature(modules[0].auto_model.forward).parameters
    names = INPUT_NAMES if accepts_types else INPUT_NAMES[:2]

    class _Pipeline(torch.nn.Module):
        """features -> (token vectors, pipeline output), the modules sentence-transformers runs."""

        def __init__(self) -> None:
            super().__init__()
            self.transformer = modules[0]
            self.head = torch.nn.ModuleList(head)

        def forward(self, *inputs: Any) -> Any:
            features = self.transformer(dict(zip(names, inputs, strict=True)))
            hidden = features["token_embeddings"]
            features["token_embeddings"] = hidden.clone()  # a head module must not alter the output
            for module in self.head:
                features = module(features)
            return hidden, features["sentence_embedding"]

    pipeline = _Pipeline().eval()
    sample = torch.ones((2, 8), dtype=torch.int64)
    args = tuple(sample if n != "token_type_ids" else torch.zeros_like(sample) for n in names)
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[HIDDEN_OUTPUT] = {0: "batch", 1: "sequence"}
    axes[SENTENCE_OUTPUT] = {0: "batch"}

    fp32 = out_dir / FP32_NAME
    tmp = _temp_path(out_dir, FP32_NAME)
    try:
        # What the exporter says here is known and checked: the tracer warns about Python
        # branches on tensor shapes inside transformers' masking code, aten::index about
        # negative indices (the model has none), and torch that this TorchScript exporter is the
        # legacy one (used deliberately: dynamo=False). The graph is checked against the torch
        # pipeline below and against sentence-transformers in tests/test_onnx_parity.py.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
            warnings.filterwarnings("ignore", message="Exporting aten::index operator", category=UserWarning)
            warnings.filterwarnings(
                "ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning
            )
            torch.onnx.export(
                pipeline,
                args,
                str(tmp),
                input_names=list(names),
                output_names=[HIDDEN_OUTPUT, SENTENCE_OUTPUT],
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        diff = _parity(pipeline, model.tokenizer, names, tmp, spec.max_tokens)
        if not diff <= PARITY_TOLERANCE:
            raise ModelNotSupportedError(
                f"model {spec.model_id!r} is not supported: its ONNX export (--backend onnx and the "
                f"edge bundle) differs from the torch pipeline by {diff:.2e} on sample texts "
                f"(limit {PARITY_TOLERANCE:g})"
            )
        os.replace(tmp, fp32)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("exported %s (%.1f MB, max abs diff to torch %.1e)", fp32, fp32.stat().st_size / 1e6, diff)
    quantized = quantize_int8(fp32, out_dir / INT8_NAME) if int8 else None
    return OnnxExport(fp32=fp32, int8=quantized, input_names=names, max_abs_diff=diff)


def _parity(pipeline: Any, tokenizer: Any, names: tuple[str, ...], graph: Path, max_tokens: int) -> float:
    """Max |onnx - torch| of the pipeline output on _PARITY_TEXTS (one padded batch)."""
    import onnxruntime as ort
    import torch

    batch = tokenizer(
        list(_PARITY_TEXTS), padding=True, truncation=True, max_length=max_tokens, return_tensors="np"
    )
    arrays = [
        np.asarray(batch[n], dtype=np.int64) if n in batch else np.zeros_like(batch["input_ids"], np.int64)
        for n in names
    ]
    with torch.no_grad():
        _, expected = pipeline(*(torch.from_numpy(a) for a in arrays))
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    (got,) = session.run([SENTENCE_OUTPUT], dict(zip(names, arrays, strict=True)))
    return float(np.abs(np.asarray(got) - expected.numpy()).max())


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
