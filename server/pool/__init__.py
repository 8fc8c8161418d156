"""The encoder pool: worker processes that run the model, fed by the batching scheduler."""

from server.pool.pool import EncoderPool, worker_devices

__all__ = ["EncoderPool", "worker_devices"]
