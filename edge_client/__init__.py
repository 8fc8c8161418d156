"""Torch-free edge client: ONNX Runtime encoder, local usearch index, server fallback.

Public API is what ``__all__`` lists, plus the modules ``edge_client.errors`` (the exception
tree), ``edge_client.index`` (the local usearch + sqlite index) and ``edge_client.policy`` (when
``auto`` search asks the server); every other module is private (underscore-prefixed). What the
edge computes exactly as the server does (tokenizer, pooling, projection, bundle format) lives
in the shared package ``embedcore``.
"""

from __future__ import annotations

from edge_client._client import AddReport, EdgeClient, SearchResult
from edge_client._sync import SyncReport
from edge_client.errors import (
    BundleError,
    BundleIntegrityError,
    CollectionNotFound,
    EdgeError,
    FingerprintMismatch,
    InvalidInput,
    LocalIndexError,
    NotInitialized,
    ServerError,
    ServerUnavailable,
)
from edge_client.index import Hit
from edge_client.policy import Policy

__version__ = "0.1.0"

__all__ = [
    "AddReport",
    "BundleError",
    "BundleIntegrityError",
    "CollectionNotFound",
    "EdgeClient",
    "EdgeError",
    "FingerprintMismatch",
    "Hit",
    "InvalidInput",
    "LocalIndexError",
    "NotInitialized",
    "Policy",
    "SearchResult",
    "ServerError",
    "ServerUnavailable",
    "SyncReport",
    "__version__",
]
