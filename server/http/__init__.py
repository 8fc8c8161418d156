"""The HTTP API beside gRPC: OpenAI's ``/v1/embeddings`` and TEI's HTTP routes, on FastAPI and
uvicorn in the same process and event loop, over the same runtime (encoder pool, interactive
priority, query cache, token, TLS, metrics, health). Imported only when ``--http-port`` is set,
so the server imports and runs without FastAPI.

    server.http.server   start_http / HttpServer: uvicorn on the running loop, its lifecycle
    server.http.app      the app, the edge middleware (metrics, token, body limit), the gate
    server.http.errors   the one table from domain errors to HTTP statuses and error bodies
    server.http.openai   POST /v1/embeddings, GET /v1/models
    server.http.tei      POST /embed, /embed_all, /tokenize, /decode; GET /info, /health, /metrics
"""

from __future__ import annotations

from server.http.server import HttpServer, start_http

__all__ = ["HttpServer", "start_http"]
