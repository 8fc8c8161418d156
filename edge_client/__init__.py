"""Torch-free edge client: ONNX Runtime encoder, local usearch index, server fallback.

Public API is what ``__all__`` lists; every other module is private (underscore-prefixed).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
