"""What the server and the edge client must compute identically, torch-free.

Both sides import these public names (never each other's modules): the tokenizer set up as
sentence-transformers does, pooling and normalization in numpy, Matryoshka truncation, the
edge projection (identity, PCA rotation, linear adaptor), the edge-bundle format and the ONNX
Runtime encoder built from it, the metadata filter language of Search, and the chunker
(``embedcore.chunking``) that cuts long documents.
Dependencies: numpy, tokenizers, onnxruntime.
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
from embedcore.filters import Filter, FilterError, MetadataTable, parse_filter
from embedcore.onnx_encoder import OnnxEncoder, OnnxModel
from embedcore.pooling import PoolingMode, l2_normalize, pool, truncate_dims
from embedcore.projection import Projection, fit_pca_rotation, pca_directions
from embedcore.tokenization import (
    ModelTokenizer,
    NoContentError,
    TokenBatch,
    Tokens,
    TruncationSide,
    check_content,
    load_tokenizer,
    no_content_message,
    pad_token_id,
    pad_tokens,
    tokenize_batch,
    tokens_before_cut,
)

__all__ = [
    "FORMAT",
    "MANIFEST",
    "BundleError",
    "BundleIntegrityError",
    "EdgeBundle",
    "FileEntry",
    "Filter",
    "FilterError",
    "Manifest",
    "MetadataTable",
    "ModelTokenizer",
    "NoContentError",
    "OnnxEncoder",
    "OnnxModel",
    "PoolingMode",
    "Projection",
    "TokenBatch",
    "Tokens",
    "TruncationSide",
    "bundle_fingerprint",
    "check_content",
    "fit_pca_rotation",
    "format_for",
    "l2_normalize",
    "load_tokenizer",
    "no_content_message",
    "pad_token_id",
    "pad_tokens",
    "parse_filter",
    "pca_directions",
    "pool",
    "sha256_file",
    "swap_in_directory",
    "tokenize_batch",
    "tokens_before_cut",
    "truncate_dims",
    "verify_file",
]
