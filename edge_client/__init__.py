"""Torch-free edge client: ONNX Runtime encoder, local usearch index, server fallback.

Public API is what ``__all__`` lists (plus the ``edge_client.errors`` module); every other
module is private (underscore-prefixed).
"""

from __future__ import annotations

from edge_client._client import EdgeClient, SearchResult
from edge_client._index import Hit
from edge_client._policy import Policy
from edge_client._sync import SyncReport
from edge_client.errors import (
    BundleError,
    BundleIntegrityError,
    EdgeError,
    FingerprintMismatch,
    LocalIndexError,
    NotInitialized,
    ServerError,
    ServerUnavailable,
)

__version__ = "0.1.0"

__all__ = [
    "BundleError",
    "BundleIntegrityError",
    "EdgeClient",
    "EdgeError",
    "FingerprintMismatch",
    "Hit",
    "LocalIndexError",
    "NotInitialized",
    "Policy",
    "SearchResult",
    "ServerError",
    "ServerUnavailable",
    "SyncReport",
    "__version__",
]
