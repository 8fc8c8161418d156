"""Errors of the shared edge-bundle format (both the server and the edge client raise them).

BundleError               the bundle is unusable: missing file, bad manifest, bad projection
└── BundleIntegrityError  a file's size or sha256 differs from the manifest
"""

from __future__ import annotations


class BundleError(Exception):
    """The edge bundle is missing a file, has a bad manifest, or cannot be loaded."""


class BundleIntegrityError(BundleError):
    """A downloaded or installed file does not match the manifest's size or sha256."""
