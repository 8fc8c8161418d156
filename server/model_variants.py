"""A second real model built locally from the bundled one, for migrations, tests and the demo.

Model hubs are unreachable here, so a second model is derived from the bundled
all-MiniLM-L6-v2: the same transformer and mean pooling, then a Dense head that projects the
384-dim pooled vector onto ``dimension`` orthonormal directions (identity activation, no bias),
then Normalize. The directions are the first rows of an orthogonal matrix obtained from the QR
decomposition of a standard normal matrix drawn with numpy's PCG64 generator seeded by
``seed``, so the same (base, dimension, seed) always builds byte-identical weights and therefore
the same fingerprint, and another seed or dimension gives another fingerprint.

It is a real model: its vectors are a fixed linear function of the base model's, so it ranks
texts by meaning (a random projection to 256 of 384 dims keeps cosine similarities close, not
equal), yet its vectors, scores and dimension differ from the base model's, which is what a
migration from one model version to another has to handle. The model folder is a normal
sentence-transformers folder (Transformer, Pooling, Dense, Normalize), served by both backends
and the edge bundle like any other (see server.onnx_export).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

VARIANT_DIMENSION = 256
VARIANT_SEED = 16


def orthogonal_rows(dimension: int, width: int, seed: int) -> np.ndarray:
    """``dimension`` orthonormal rows of length ``width`` (float32, (dimension, width)), from the
    QR decomposition of a seeded standard normal (width, width) matrix, signs fixed so that R's
    diagonal is positive (QR is then unique, hence reproducible across LAPACK builds).
    ValueError when ``dimension`` is not in 1..width."""
    if not 0 < dimension <= width:
        raise ValueError(f"dimension must be in 1..{width}, got {dimension}")
    gaussian = np.random.default_rng(seed).standard_normal((width, width))
    q, r = np.linalg.qr(gaussian)
    q = q * np.sign(np.diag(r))[None, :]
    return np.ascontiguousarray(q.T[:dimension], dtype=np.float32)


def build_projected_model(
    base: Path, out: Path, *, dimension: int = VARIANT_DIMENSION, seed: int = VARIANT_SEED
) -> Path:
    """Save to ``out`` (created; must not exist or be empty) the model ``base`` (a
    sentence-transformers folder whose pipeline is Transformer + Pooling) followed by a Dense
    ``width -> dimension`` orthogonal projection (see the module docstring) and Normalize.
    Returns ``out``. Needs torch and sentence-transformers (the server extra). ValueError when
    ``out`` holds files or ``dimension`` is out of range."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty")
    base_model = SentenceTransformer(str(base), device="cpu")
    transformer: Any = base_model[0]
    width = int(transformer.get_embedding_dimension())
    weights = orthogonal_rows(dimension, width, seed)
    dense = Dense(width, dimension, bias=False, activation_function=torch.nn.Identity())
    with torch.no_grad():
        dense.linear.weight.copy_(torch.from_numpy(weights))
    model = SentenceTransformer(modules=[transformer, Pooling(width), dense, Normalize()], device="cpu")
    model.save(str(out))
    # Say where it came from (not part of the fingerprint: only weights and configs are).
    (out / "embedstream_variant.json").write_text(
        json.dumps({"base": str(base), "dimension": dimension, "seed": seed, "head": "orthogonal Dense"}),
        encoding="utf-8",
    )
    return out
