"""The gRPC channel the edge client talks through: retries and keepalive as channel config.

Retries are declared in the service config (gRPC retries UNAVAILABLE with backoff by itself),
not written as loops. Callers may inject their own channel (tests, TLS, interceptors).
"""

from __future__ import annotations

import json

import grpc

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


def open_channel(address: str, *, tls: bool = False) -> grpc.Channel:
    """A channel to ``HOST:PORT`` with the options above (TLS with the system roots if asked)."""
    if tls:
        return grpc.secure_channel(address, grpc.ssl_channel_credentials(), options=CHANNEL_OPTIONS)
    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)


def call_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()
