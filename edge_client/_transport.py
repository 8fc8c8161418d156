"""The gRPC channel the edge client talks through: retries and keepalive as channel config.

Retries are declared in the service config (gRPC retries UNAVAILABLE with backoff by itself),
not written as loops. TLS and the bearer token are embedcore.transport's (the options every
bundled client takes). Callers may inject their own channel (tests, interceptors).
"""

from __future__ import annotations

import json

import grpc

from embedcore.transport import ClientCredentials
from embedcore.transport import open_channel as _open

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_RETRY = {
    "maxAttempts": 3,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": "embedding.v1.CollectionService", "method": "Search"},
                    {"service": "embedding.v1.EmbeddingService", "method": "Info"},
                ],
                "retryPolicy": _RETRY,
            }
        ]
    }
)

CHANNEL_OPTIONS: list[tuple[str, str | int]] = [
    ("grpc.service_config", SERVICE_CONFIG),
    ("grpc.enable_retries", 1),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


def open_channel(address: str, credentials: ClientCredentials | None = None) -> grpc.Channel:
    """A channel to ``HOST:PORT`` with the options above; TLS when the credentials ask for it."""
    return _open(address, credentials or ClientCredentials(), CHANNEL_OPTIONS)
