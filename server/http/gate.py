"""What the HTTP routes share: the gate to the runtime (the same start-up lifecycle as gRPC) and
the JSON and error responses."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response

from server.errors import NotReady
from server.http.errors import dialect_of, error_body, record
from server.runtime import Runtime

# Metric labels: the routes; anything else is counted as "other" (a scan must not add labels).
ROUTES = frozenset(
    {"/v1/embeddings", "/v1/models", "/embed", "/embed_all", "/tokenize", "/decode", "/info",
     "/health", "/metrics", "/openapi.json"}
)  # fmt: skip


@dataclass
class Gate:
    """What the HTTP routes share with gRPC's lifecycle (server.app): the runtime once built, the
    start-up phase until then, and whether the server reports SERVING."""

    runtime: Runtime | None = None
    phase: str = "starting"
    serving: bool = False

    def get(self) -> Runtime:
        """The runtime; NotReady naming the start-up phase before it is built."""
        if self.runtime is None:
            raise NotReady(f"the server is starting ({self.phase}); retry when GET /health answers 200")
        return self.runtime


async def runtime(request: Request) -> Runtime:
    """The runtime of the app serving ``request`` (NotReady: 503 until start-up is done)."""
    gate: Gate = request.app.state.gate
    return gate.get()


def json_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(content=body, status_code=status, media_type="application/json", headers=headers)


def error_response(request: Request | None, path: str, exc: BaseException) -> Response:
    status, body = error_body(exc, dialect_of(path))
    route = f"{request.method if request else ''} {path if path in ROUTES else 'other'}".strip()
    record(route, status, exc)
    return json_response(status, body)
