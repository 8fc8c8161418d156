"""The HTTP error table (server.http.errors): every domain error has a row, and each dialect's
body has its API's shape. The statuses that need a loaded or broken server to reach (429, 424,
503 for a worker) are checked here; the live tests reach the others through real requests."""

from __future__ import annotations

import orjson
import pytest

from server import errors
from server.http.errors import STATUS, Dialect, dialect_of, error_body


def _all_domain_errors() -> list[type[errors.ServiceError]]:
    found, todo = [], [errors.ServiceError]
    while todo:
        kind = todo.pop()
        found.append(kind)
        todo.extend(kind.__subclasses__())
    return [k for k in found if k is not errors.ServiceError]


def test_every_domain_error_has_a_row() -> None:
    """Each class or one of its bases (status_of walks the MRO: DiskFull is a StorageFull)."""
    import server.store  # noqa: F401  (its errors subclass the domain ones)

    missing = [k for k in _all_domain_errors() if not any(base in STATUS for base in k.__mro__)]
    assert missing == []
    assert all(k in STATUS for k in errors.ServiceError.__subclasses__())


@pytest.mark.parametrize(
    ("error", "openai", "tei", "tei_type"),
    [
        (errors.EmptyInput("x", field="input"), 400, 400, "empty"),
        (errors.InvalidArgument("x", field="dimensions"), 400, 422, "validation"),
        (errors.TooLarge("x", field="input[0]"), 413, 413, "validation"),
        (errors.Unauthenticated("x"), 401, 401, "unauthorized"),
        (errors.Overloaded("queue full"), 429, 429, "overloaded"),
        (errors.NotReady("starting"), 503, 503, "unhealthy"),
        (errors.WorkerFailed("worker died"), 503, 424, "backend"),
        (RuntimeError("a bug with a secret"), 500, 500, "backend"),
    ],
)
def test_statuses_and_bodies(error: BaseException, openai: int, tei: int, tei_type: str) -> None:
    status, raw = error_body(error, Dialect.OPENAI)
    body = orjson.loads(raw)
    assert status == openai and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == (getattr(error, "field", "") or None)
    status, raw = error_body(error, Dialect.TEI)
    body = orjson.loads(raw)
    assert (status, body["error_type"]) == (tei, tei_type) and set(body) == {"error", "error_type"}
    if not isinstance(error, errors.ServiceError):
        assert "secret" not in body["error"]  # our own faults never go on the wire


def test_openai_codes_and_dialects() -> None:
    _, raw = error_body(errors.Unauthenticated("x"), Dialect.OPENAI)
    assert orjson.loads(raw)["error"]["code"] == "invalid_api_key"
    _, raw = error_body(errors.Overloaded("x"), Dialect.OPENAI)
    assert orjson.loads(raw)["error"]["type"] == "rate_limit_error"
    assert dialect_of("/v1/embeddings") is Dialect.OPENAI and dialect_of("/embed") is Dialect.TEI


def test_the_server_imports_without_the_http_stack() -> None:
    """FastAPI and uvicorn load only when --http-port is set (server.app imports server.http in
    serve)."""
    import subprocess
    import sys

    code = (
        "import sys, server.app, server.cli; sys.exit(any(m in sys.modules for m in ('fastapi', 'uvicorn')))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
