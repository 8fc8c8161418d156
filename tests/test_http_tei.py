"""TEI's HTTP routes against text-embeddings-inference's documented request and response shapes
(its OpenAPI: EmbedRequest, EmbedResponse = [[float]], TokenizeResponse = [[SimpleToken]],
DecodeResponse = [str], Info, ErrorResponse = {"error", "error_type"}; statuses 400 empty,
413 validation (batch size, over-long input), 422 bad request body, 424 backend, 429
overloaded), on the shared HTTP server (tests/conftest.py ``http_server``). Vectors are the
tei.v1 gRPC API's for the same request: one engine behind both."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest

from protos.tei.v1 import tei_pb2 as tei
from protos.tei.v1 import tei_pb2_grpc as tei_grpc
from tests.conftest import HTTP_MAX_BATCH, HTTP_TOKEN, HttpServerProcess

FOOD = "A man is eating food."
HEADERS = ("x-compute-type", "x-compute-time", "x-compute-characters", "x-compute-tokens", "x-total-time",
           "x-tokenization-time", "x-queue-time", "x-inference-time")  # fmt: skip
AUTH = (("authorization", f"Bearer {HTTP_TOKEN}"),)
LONG = "word " * 300  # 302 tokens with [CLS] and [SEP]: over the model's 256


@pytest.fixture(scope="module")
def http(http_server: HttpServerProcess) -> Iterator[httpx.Client]:
    base = f"http://127.0.0.1:{http_server.http_port}"
    with httpx.Client(base_url=base, headers=dict(AUTH), timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def embed_stub(http_server: HttpServerProcess) -> Iterator[tei_grpc.EmbedStub]:
    with grpc.insecure_channel(http_server.process.address) as channel:
        yield tei_grpc.EmbedStub(channel)


def _grpc(stub: tei_grpc.EmbedStub, **fields: object) -> np.ndarray:
    reply = stub.Embed(tei.EmbedRequest(**fields), metadata=AUTH, timeout=120)  # type: ignore[arg-type]
    return np.asarray(reply.embeddings, dtype=np.float32)


def _error(reply: httpx.Response, status: int, error_type: str) -> str:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == error_type, body
    return str(body["error"])


def test_embed_single_is_a_batch_of_one_with_teis_headers(
    http: httpx.Client, embed_stub: tei_grpc.EmbedStub
) -> None:
    reply = http.post("/embed", json={"inputs": FOOD})
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    (vector,) = np.asarray(reply.json(), dtype=np.float32)
    np.testing.assert_allclose(vector, _grpc(embed_stub, inputs=FOOD), atol=1e-6)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert all(reply.headers[h].isdigit() for h in HEADERS if h != "x-compute-type")
    assert reply.headers["x-compute-type"] == "cpu"
    assert reply.headers["x-compute-characters"] == str(len(FOOD))
    assert reply.headers["x-compute-tokens"] == "8"  # [CLS] a man is eating food . [SEP]


def test_embed_batch_normalize_dimensions_truncation(
    http: httpx.Client, embed_stub: tei_grpc.EmbedStub
) -> None:
    texts = ["first of a tei batch", "second of a tei batch", "third"]
    vectors = np.asarray(http.post("/embed", json={"inputs": texts}).json(), dtype=np.float32)
    assert vectors.shape == (3, 384)
    for text, vector in zip(texts, vectors, strict=True):
        np.testing.assert_allclose(vector, _grpc(embed_stub, inputs=text), atol=1e-6)
    raw = np.asarray(http.post("/embed", json={"inputs": texts[0], "normalize": False}).json()[0])
    np.testing.assert_allclose(raw, _grpc(embed_stub, inputs=texts[0], normalize=False), rtol=1e-5)
    assert np.linalg.norm(raw) > 1.5  # the pooled vector before the model's Normalize
    short = np.asarray(http.post("/embed", json={"inputs": texts[0], "dimensions": 32}).json()[0])
    assert short.shape == (32,) and np.linalg.norm(short) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(short, _grpc(embed_stub, inputs=texts[0], dimensions=32), atol=1e-6)
    for side, enum in (("left", tei.TRUNCATION_DIRECTION_LEFT), ("Right", tei.TRUNCATION_DIRECTION_RIGHT)):
        body = {"inputs": LONG + side, "truncate": True, "truncation_direction": side}
        got = np.asarray(http.post("/embed", json=body).json()[0])
        want = _grpc(embed_stub, inputs=LONG + side, truncate=True, truncation_direction=enum)
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_embed_errors_in_teis_shape_and_statuses(http: httpx.Client) -> None:
    assert "cannot be empty" in _error(http.post("/embed", json={"inputs": ""}), 400, "empty")
    _error(http.post("/embed", json={"inputs": []}), 400, "empty")
    message = _error(http.post("/embed", json={"inputs": LONG}), 413, "validation")  # truncate: false
    assert "must have less than 256 tokens" in message
    _error(http.post("/embed", json={"inputs": ["x"] * (HTTP_MAX_BATCH + 1)}), 413, "validation")
    _error(http.post("/embed", json={"inputs": "x", "dimensions": 0}), 422, "validation")
    _error(http.post("/embed", json={"inputs": "x", "prompt_name": "query"}), 422, "validation")
    _error(http.post("/embed", json={"inputs": "x", "truncation_direction": "up"}), 422, "validation")
    _error(http.post("/embed", json={"inputs": 5}), 422, "validation")
    _error(
        http.post("/embed", content=b"{nope", headers={"content-type": "application/json"}), 422, "validation"
    )
    _error(httpx.post(f"{http.base_url}/embed", json={"inputs": "x"}), 401, "unauthorized")  # no token


def test_tokenize_gives_teis_tokens_with_byte_offsets(http: httpx.Client) -> None:
    reply = http.post("/tokenize", json={"inputs": "café au lait"})
    assert reply.status_code == 200
    (tokens,) = reply.json()
    assert tokens[0] == {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None}
    assert tokens[-1]["text"] == "[SEP]" and tokens[-1]["special"]
    words = [t for t in tokens if not t["special"]]
    assert all(set(t) == {"id", "text", "special", "start", "stop"} for t in tokens)
    assert words[-1]["stop"] == len("café au lait".encode())  # UTF-8 bytes, as TEI
    plain = http.post("/tokenize", json={"inputs": ["café au lait", "x"], "add_special_tokens": False}).json()
    assert len(plain) == 2 and [t["id"] for t in plain[0]] == [t["id"] for t in words]
    _error(http.post("/tokenize", json={"inputs": ""}), 400, "empty")


def test_decode(http: httpx.Client) -> None:
    assert http.post("/decode", json={"ids": [101, 7592, 2088, 102]}).json() == ["hello world"]
    two = http.post("/decode", json={"ids": [[7592], [2088]], "skip_special_tokens": False}).json()
    assert two == ["hello", "world"]


def test_info_health_metrics(http: httpx.Client) -> None:
    info = http.get("/info").json()
    assert info["model_id"] == "all-MiniLM-L6-v2" and info["max_input_length"] == 256
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_client_batch_size"] == HTTP_MAX_BATCH
    assert {"model_sha", "model_dtype", "max_concurrent_requests", "max_batch_tokens", "version",
            "tokenization_workers"} <= set(info)  # fmt: skip
    open_client = httpx.Client(base_url=http.base_url)  # no token: health and metrics stay open
    with open_client:
        health = open_client.get("/health")
        assert health.status_code == 200 and health.content == b""
        metrics = open_client.get("/metrics")
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        assert 'embed_requests_total{code="200",method="POST /embed"}' in metrics.text
        _error(open_client.get("/info"), 401, "unauthorized")


def test_bodies_json_decodes_but_the_model_cannot_take_are_422_never_500(http: httpx.Client) -> None:
    """Kinds a generic client sends: a lone surrogate (valid JSON, ``\\ud800``), bytes that are
    not UTF-8, nesting FastAPI will not parse, and JSON types serde would refuse (TEI is Rust:
    ``"truncate": "no"`` is not a bool, ``64.0`` not an int)."""
    json_type = {"content-type": "application/json"}
    for route in ("/embed", "/tokenize", "/embed_all"):
        reply = http.post(route, content=b'{"inputs": "a\\ud800b"}', headers=json_type)
        assert "lone surrogate" in _error(reply, 422, "validation"), route
        reply = http.post(route, content=b'{"inputs": ["fine", "\\udc00"]}', headers=json_type)
        assert "lone surrogate" in _error(reply, 422, "validation"), route
    message = _error(
        http.post("/embed", content=b'{"inputs": "a\xffb"}', headers=json_type), 422, "validation"
    )
    assert "UTF-8" in message
    deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    _error(http.post("/embed", content=deep, headers=json_type), 422, "validation")
    for loose in ({"truncate": "no"}, {"normalize": 1}, {"dimensions": 64.0}, {"dimensions": "64"}):
        _error(http.post("/embed", json={"inputs": "x", **loose}), 422, "validation")
    assert http.get("/health").status_code == 200  # and the server is still up
