"""Writes the edge bundle: ONNX graphs, tokenizer, projection and manifest (format: embedcore.bundle).

The ONNX export needs torch and takes seconds, so exported graphs are cached per model
fingerprint (``onnx_cache``) and reused when only the projection changes. A bundle directory
is replaced atomically: it is built beside the target and renamed into place.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from embedcore import (
    MANIFEST,
    EdgeBundle,
    FileEntry,
    Manifest,
    Projection,
    bundle_fingerprint,
    format_for,
    load_tokenizer,
    sha256_file,
    swap_in_directory,
)
from server.model import ModelSpec
from server.onnx_export import FP32_NAME, INT8_NAME, export_onnx

log = logging.getLogger(__name__)

TOKENIZER_NAME = "tokenizer.json"
PROJECTION_NAME = "projection.npz"
STANDARD_DIMS = (32, 64, 128, 256, 384, 512, 768, 1024)


def edge_dims_for(spec: ModelSpec) -> tuple[int, ...]:
    """Dimensions an edge may keep: the model's MRL dims, else powers of two up to full."""
    dims = spec.matryoshka_dims or tuple(d for d in STANDARD_DIMS if d < spec.dimension)
    return tuple(sorted({*dims, spec.dimension}))


def build_bundle(
    spec: ModelSpec,
    out_dir: Path,
    projection: Projection,
    *,
    default_dims: int,
    onnx_dir: Path | None = None,
    int8: bool = True,
    extra: dict[str, Any] | None = None,
) -> EdgeBundle:
    """Write a complete bundle to ``out_dir`` (replacing any there) and return it loaded.

    ``onnx_dir`` is a directory from :func:`ensure_onnx`; without it the model is exported
    into the bundle directly.
    """
    if projection.dimension != spec.dimension:
        raise ValueError(f"projection is for {projection.dimension} dims, model has {spec.dimension}")
    if not 0 < default_dims <= projection.max_dims:
        raise ValueError(
            f"default_dims must be in 1..{projection.max_dims} ({projection.kind} projection), "
            f"got {default_dims}"
        )
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        names = [FP32_NAME, INT8_NAME] if int8 else [FP32_NAME]
        if onnx_dir is None:
            export_onnx(spec, stage, int8=int8)
        else:
            for name in names:
                _link_or_copy(onnx_dir / name, stage / name)
        tokenizer = load_tokenizer(spec.path / "tokenizer.json", max_tokens=spec.max_tokens)
        tokenizer.save(str(stage / TOKENIZER_NAME))  # truncation at max_tokens, no fixed padding
        (stage / PROJECTION_NAME).write_bytes(projection.to_bytes())
        files = {
            name: FileEntry((stage / name).stat().st_size, sha256_file(stage / name))
            for name in (*names, TOKENIZER_NAME, PROJECTION_NAME)
        }
        manifest = Manifest(
            fingerprint=bundle_fingerprint(
                model_fingerprint=spec.fingerprint,
                tokenizer_sha256=files[TOKENIZER_NAME].sha256,
                projection_sha256=files[PROJECTION_NAME].sha256,
                pooling=spec.pooling,
                normalize=spec.normalize,
                max_tokens=spec.max_tokens,
            ),
            model_id=spec.model_id,
            model_fingerprint=spec.fingerprint,
            pooling=spec.pooling,
            normalize=spec.normalize,
            max_tokens=spec.max_tokens,
            dimension=spec.dimension,
            default_dims=default_dims,
            # Only what the projection produces (an adaptor stops at its out_dims).
            matryoshka_dims=tuple(
                sorted({*(d for d in edge_dims_for(spec) if d <= projection.max_dims), projection.max_dims})
            ),
            prompts=dict(spec.prompts),
            query_prompt_name=spec.query_prompt_name,
            document_prompt_name=spec.document_prompt_name,
            onnx_fp32=FP32_NAME,
            onnx_int8=INT8_NAME if int8 else "",
            tokenizer=TOKENIZER_NAME,
            projection=PROJECTION_NAME,
            projection_kind=projection.kind,
            files=files,
            extra=extra or {},
            head=spec.head,
            format=format_for(spec.head, spec.pooling),
        )
        (stage / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
        swap_in_directory(stage, out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log.info("edge bundle %s written to %s (%s projection)", manifest.fingerprint, out_dir, projection.kind)
    return EdgeBundle.load(out_dir)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def bundle_files(bundle: EdgeBundle, wanted: Sequence[str] = ()) -> list[str]:
    """The bundle's files to send (all of them when ``wanted`` is empty); KeyError if unknown."""
    names = sorted(bundle.manifest.files)
    if not wanted:
        return names
    unknown = [w for w in wanted if w not in bundle.manifest.files]
    if unknown:
        raise KeyError(f"not in the bundle: {', '.join(unknown)}; it has {', '.join(names)}")
    return list(dict.fromkeys(wanted))
