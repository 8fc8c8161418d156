"""What the server and the edge client must compute identically, torch-free.

Both sides import these public names (never each other's modules): the tokenizer set up as
sentence-transformers does, pooling and normalization in numpy, Matryoshka truncation, the
edge projection (identity, PCA rotation, linear adaptor), the edge-bundle format and the ONNX
Runtime encoder built from it. Dependencies: numpy, tokenizers, onnxruntime.
"""

from __future__ import annotations

from embedcore.bundle import (
    FORMAT,
    MANIFEST,
    EdgeBundle,
    FileEntry,
    Manifest,
    bundle_fingerprint,
    format_for,
    sha256_file,
    swap_in_directory,
    verify_file,
)
from embedcore.errors import BundleError, BundleIntegrityError
from embedcore.onnx_encoder import OnnxEncoder, OnnxModel
from embedcore.pooling import PoolingMode, l2_normalize, pool, truncate_dims
from embedcore.projection import Projection, fit_pca_rotation, pca_directions
from embedcore.tokenization import TokenBatch, load_tokenizer, pad_token_id, tokenize_batch

__all__ = [
    "FORMAT",
    "MANIFEST",
    "BundleError",
    "BundleIntegrityError",
    "EdgeBundle",
    "FileEntry",
    "Manifest",
    "OnnxEncoder",
    "OnnxModel",
    "PoolingMode",
    "Projection",
    "TokenBatch",
    "bundle_fingerprint",
    "fit_pca_rotation",
    "format_for",
    "l2_normalize",
    "load_tokenizer",
    "pad_token_id",
    "pca_directions",
    "pool",
    "sha256_file",
    "swap_in_directory",
    "tokenize_batch",
    "truncate_dims",
    "verify_file",
]
