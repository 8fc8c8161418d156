"""Exceptions the edge client raises. Catch at any level of the tree:

EdgeError
├── NotInitialized        no bundle installed yet: run ``edge-client init --server HOST:PORT``
├── InvalidInput          a query or document text the server would refuse too (empty, NUL)
├── BundleError           the bundle is unusable
│   └── BundleIntegrityError   a file's size or sha256 differs from the manifest
├── LocalIndexError       the local index is missing, corrupt or built for another bundle
├── FingerprintMismatch   the server's bundle/collection fingerprint is not ours (re-init)
└── ServerError           the server could not answer
    ├── ServerUnavailable      unreachable or past the deadline (search falls back locally)
    └── CollectionNotFound     the server has no such collection (dropped, or never created)
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base of every error the edge client raises."""


class NotInitialized(EdgeError):
    """No edge bundle is installed in this home directory."""


class InvalidInput(EdgeError, ValueError):
    """A text the server refuses as well (empty, or with a NUL character): refused here too,
    instead of being embedded as something else (the tokenizer drops NUL characters)."""


class BundleError(EdgeError):
    """The edge bundle is missing a file, has a bad manifest, or cannot be loaded."""


class BundleIntegrityError(BundleError):
    """A downloaded or installed file does not match the manifest's size or sha256."""


class LocalIndexError(EdgeError):
    """The local index cannot be used as it is."""


class FingerprintMismatch(EdgeError):
    """Our bundle's fingerprint differs from the server's: vectors would not be comparable."""


class ServerError(EdgeError):
    """The server answered with an error, or could not be reached. The message is one line for
    a person (``server at HOST:PORT unreachable (connection refused)``); ``code`` is the gRPC
    status name and ``detail`` what gRPC itself reported (``edge-client --verbose`` prints it)."""

    def __init__(self, message: str, *, code: str = "", detail: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail


class ServerUnavailable(ServerError):
    """The server is unreachable or did not answer before the deadline."""


class CollectionNotFound(ServerError):
    """The server has no collection of that name (it was dropped, or never created). A sync
    that gets this drops what it had synced of the collection and its sync state."""
