"""The encoder pool: worker processes (one per GPU, else --workers CPU processes), their
backends (torch, onnx) and supervision. :class:`PoolEmbedder` is what the services use."""

from server.pool.embedder import PoolEmbedder, worker_devices

__all__ = ["PoolEmbedder", "worker_devices"]
