"""The embedding server: encoder pool, LMDB store, usearch search, gRPC services."""

__version__ = "0.1.0"
