"""The OpenAI-compatible HTTP API, driven by the real ``openai`` client against a real server
(real model) whose gRPC API answers the same inputs: every vector must be gRPC ``Embed``'s.

One server (tests/conftest.py ``http_server``, shared with tests/test_http_tei.py: a bearer token,
small size limits so 413 is cheap to reach); a second one, with TLS, is started in the test that
watches start-up (503 until SERVING)."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedcore.transport import ClientCredentials, open_channel
from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1 import embedding_pb2_grpc as pb_grpc
from server.launch import serve_command
from tests._certs import make_pki
from tests.conftest import HTTP_BODY_LIMIT as BODY_LIMIT
from tests.conftest import HTTP_MAX_BATCH as MAX_BATCH
from tests.conftest import HTTP_MAX_INPUT_CHARS as MAX_INPUT_CHARS
from tests.conftest import HTTP_TOKEN as TOKEN
from tests.conftest import HttpServerProcess
from tests.server_harness import FAST_START, ServerProcess, free_port

FOOD = "A man is eating food."
TEXTS = ["The cat sits on the mat.", "Quantum tunnelling in semiconductors.", "A recipe for bread.", FOOD]


@pytest.fixture(scope="module")
def server(http_server: HttpServerProcess) -> tuple[ServerProcess, int]:
    return http_server.process, http_server.http_port


@pytest.fixture(scope="module")
def base_url(server: tuple[ServerProcess, int]) -> str:
    return f"http://127.0.0.1:{server[1]}"


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key=TOKEN, max_retries=0, timeout=120) as opened:
        yield opened


@pytest.fixture(scope="module")
def channel(server: tuple[ServerProcess, int]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server[0].address) as ch:
        yield ch


def _grpc(channel: grpc.Channel, texts: list[str], dimensions: int | None = None) -> np.ndarray:
    """gRPC Embed's float32 vectors of ``texts`` (the reference)."""
    options = pb.EmbedOptions(dimensions=dimensions) if dimensions else pb.EmbedOptions()
    reply = pb_grpc.EmbeddingServiceStub(channel).Embed(
        pb.EmbedRequest(inputs=texts, options=options),
        metadata=(("authorization", f"Bearer {TOKEN}"),),
        timeout=120,
    )
    return np.stack([np.frombuffer(v.data, "<f4") for v in reply.embeddings])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    return np.asarray(
        (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1), dtype=np.float64
    )


AUTH = {"authorization": f"Bearer {TOKEN}"}


def _post(base_url: str, path: str, body: object) -> httpx.Response:
    return httpx.post(f"{base_url}{path}", json=body, headers=AUTH, timeout=120)


def test_single_input_is_grpc_embeds_vector(client: openai.OpenAI, channel: grpc.Channel) -> None:
    reply = client.embeddings.create(input="single input over http", model="m", encoding_format="float")
    assert reply.object == "list" and reply.model == "all-MiniLM-L6-v2"
    (item,) = reply.data
    assert item.object == "embedding" and item.index == 0 and len(item.embedding) == 384
    vector = np.asarray(item.embedding, dtype=np.float32)
    assert _cosines(vector, _grpc(channel, ["single input over http"]))[0] >= 0.9999
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    # [CLS] single input over http [SEP]: 6 tokens; a repeat (a query-cache hit) counts them too.
    assert (reply.usage.prompt_tokens, reply.usage.total_tokens) == (6, 6)
    again = client.embeddings.create(input="single input over http", model="m", encoding_format="float")
    assert again.usage.prompt_tokens == 6
    np.testing.assert_array_equal(np.asarray(again.data[0].embedding, dtype=np.float32), vector)


def test_batch_in_order_each_vector_grpc_embeds(client: openai.OpenAI, channel: grpc.Channel) -> None:
    # No encoding_format: the openai client asks for base64 and decodes it itself.
    reply = client.embeddings.create(input=TEXTS, model="text-embedding-3-small", user="someone")
    assert [d.index for d in reply.data] == list(range(len(TEXTS)))
    got = np.asarray([d.embedding for d in reply.data], dtype=np.float32)
    assert _cosines(got, _grpc(channel, TEXTS)).min() >= 0.9999
    assert reply.usage.prompt_tokens == reply.usage.total_tokens > 4 * len(TEXTS)


def test_base64_is_little_endian_float32_of_the_float_answer(base_url: str) -> None:
    body = {"input": ["base64 check", "second base64 check"], "model": "m"}
    floats = _post(base_url, "/v1/embeddings", {**body, "encoding_format": "float"}).json()
    packed = _post(base_url, "/v1/embeddings", {**body, "encoding_format": "base64"}).json()
    for f, p in zip(floats["data"], packed["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(p["embedding"]), dtype="<f4")
        np.testing.assert_array_equal(decoded, np.asarray(f["embedding"], dtype=np.float32))


def test_token_id_inputs(client: openai.OpenAI, base_url: str, channel: grpc.Channel) -> None:
    text = "token ids decode to this text"
    tokens = _post(base_url, "/tokenize", {"inputs": text, "add_special_tokens": False}).json()[0]
    ids = [t["id"] for t in tokens]
    one = client.embeddings.create(input=ids, model="m", encoding_format="float")
    two = client.embeddings.create(input=[ids, ids[:3]], model="m", encoding_format="float")
    prefix = _post(base_url, "/decode", {"ids": ids[:3]}).json()[0]
    assert text.startswith(prefix) and 0 < len(prefix) < len(text)
    reference = _grpc(channel, [text, prefix])
    assert _cosines(np.asarray(one.data[0].embedding), reference[0])[0] >= 0.9999
    got = np.asarray([d.embedding for d in two.data], dtype=np.float32)
    assert _cosines(got, reference).min() >= 0.9999
    with pytest.raises(openai.BadRequestError, match="vocabulary"):
        client.embeddings.create(input=[10**9], model="m")


def test_dimensions_truncate_and_renormalize_as_grpc(client: openai.OpenAI, channel: grpc.Channel) -> None:
    reply = client.embeddings.create(input=TEXTS[:2], model="m", dimensions=64, encoding_format="float")
    got = np.asarray([d.embedding for d in reply.data], dtype=np.float32)
    assert got.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert _cosines(got, _grpc(channel, TEXTS[:2], dimensions=64)).min() >= 0.9999
    for bad in (0, 385):
        with pytest.raises(openai.BadRequestError) as info:
            client.embeddings.create(input="x", model="m", dimensions=bad)
        assert info.value.body["param"] == "dimensions"  # type: ignore[index]


def test_wrong_or_missing_token_is_401_before_the_body_is_read(base_url: str) -> None:
    wrong = openai.OpenAI(base_url=f"{base_url}/v1", api_key="not-the-token", max_retries=0)
    with wrong, pytest.raises(openai.AuthenticationError) as info:
        wrong.embeddings.create(input="x", model="m")
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
    for token in ("nope", None):  # a body that is not even JSON: still 401, not 400
        reply = httpx.post(
            f"{base_url}/v1/embeddings",
            content=b"{not json",
            headers={"authorization": f"Bearer {token}"} if token else {},
        )
        assert reply.status_code == 401, reply.text
        assert reply.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(f"{base_url}/health").status_code == 200  # open, as grpc.health.v1


def test_empty_input_is_400_naming_the_field(client: openai.OpenAI) -> None:
    for empty, field in (("", "input[0]"), ([], "input"), (["fine", ""], "input[1]")):
        with pytest.raises(openai.BadRequestError) as info:
            client.embeddings.create(input=empty, model="m")
        assert info.value.status_code == 400
        body = info.value.body
        assert isinstance(body, dict) and body["param"] == field and "empty" in body["message"]


def test_malformed_requests_are_400_in_openais_shape(base_url: str) -> None:
    for body in ({"model": "m"}, {"input": ["a", 1], "model": "m"}, {"input": "a"},
                 {"input": "a", "model": "m", "encoding_format": "int8"}):  # fmt: skip
        reply = _post(base_url, "/v1/embeddings", body)
        assert reply.status_code == 400, (body, reply.text)
        error = reply.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    json_type = {**AUTH, "content-type": "application/json"}
    reply = httpx.post(f"{base_url}/v1/embeddings", content=b"{oops", headers=json_type)
    assert reply.status_code == 400 and "not valid JSON" in reply.json()["error"]["message"]
    reply = httpx.post(f"{base_url}/v1/embeddings", content=b'{"input": "a", "model": "m"}', headers=AUTH)
    assert reply.status_code == 400 and "Content-Type: application/json" in reply.json()["error"]["message"]


def test_too_large_is_413(client: openai.OpenAI, base_url: str) -> None:
    with pytest.raises(openai.APIStatusError) as info:  # one input over --max-input-chars
        client.embeddings.create(input="word " * (MAX_INPUT_CHARS // 5 + 1), model="m")
    assert info.value.status_code == 413 and "--max-input-chars" in info.value.message
    with pytest.raises(openai.APIStatusError) as info:  # more inputs than --max-client-batch-size
        client.embeddings.create(input=["x"] * (MAX_BATCH + 1), model="m")
    assert info.value.status_code == 413 and "--max-client-batch-size" in info.value.message
    big = {"input": ["y" * 1000] * (BODY_LIMIT // 1000 + 10), "model": "m"}  # the body itself
    reply = _post(base_url, "/v1/embeddings", big)
    assert reply.status_code == 413 and reply.json()["error"]["param"] == "body"

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while it is read
        yield b'{"model": "m", "input": ["'
        for _ in range(BODY_LIMIT // 65536 + 2):
            yield b"z" * 65536
        yield b'"]}'

    reply = httpx.post(
        f"{base_url}/v1/embeddings",
        content=chunks(),
        headers=AUTH,
        timeout=120,
    )
    assert reply.status_code == 413


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    (model,) = client.models.list().data
    assert model.id == "all-MiniLM-L6-v2" and model.object == "model"


def test_metrics_count_http_and_grpc_in_one_registry(base_url: str, channel: grpc.Channel) -> None:
    _grpc(channel, ["metrics line"])
    _post(base_url, "/v1/embeddings", {"input": "metrics line", "model": "m"})
    text = httpx.get(f"{base_url}/metrics").text
    assert 'embed_requests_total{code="200",method="POST /v1/embeddings"}' in text
    assert 'method="/embedding.v1.EmbeddingService/Embed"' in text
    assert "embed_query_cache_hits_total" in text


def test_tls_and_503_until_serving(tmp_path: Path) -> None:
    """Over TLS (the gRPC certificate and key): while the server starts, /health and
    /v1/embeddings are 503 naming the start-up phase; once gRPC health says SERVING, /health is
    200 and the openai client gets vectors over https."""
    pki = make_pki(tmp_path / "pki")
    port, http_port = free_port(), free_port()
    argv = serve_command(port, tmp_path / "data", *FAST_START, "--http-port", str(http_port),
                         "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))  # fmt: skip
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    url = f"https://localhost:{http_port}"
    credentials = ClientCredentials(tls_ca=str(pki.ca), tls_server_name="localhost")
    trust = ssl.create_default_context(cafile=pki.ca)
    try:
        with open_channel(f"localhost:{port}", credentials) as channel:
            grpc.channel_ready_future(channel).result(timeout=300)  # bound (HTTP was bound before)
            with httpx.Client(verify=trust, timeout=30) as http:
                health = http.get(f"{url}/health")
                assert health.status_code == 503, health.text
                assert health.json()["error_type"] == "unhealthy"
                reply = http.post(f"{url}/v1/embeddings", json={"input": "x", "model": "m"})
                assert reply.status_code == 503, reply.text
                assert "the server is starting (" in reply.json()["error"]["message"]
                watch = health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest(), timeout=300
                )
                next(r for r in watch if r.status == health_pb2.HealthCheckResponse.SERVING)
                watch.cancel()
                assert http.get(f"{url}/health").status_code == 200
        with openai.OpenAI(
            base_url=f"{url}/v1",
            api_key="unused",
            max_retries=0,
            http_client=openai.DefaultHttpxClient(verify=trust),
        ) as tls:
            assert len(tls.embeddings.create(input="over tls", model="m").data[0].embedding) == 384
        with pytest.raises(httpx.TransportError):  # plaintext is not served on the TLS port
            httpx.get(f"http://127.0.0.1:{http_port}/health")
    finally:
        process.terminate()
        assert process.wait(60) == 0, log_path.read_text()[-3000:]


def test_the_listening_socket_turns_nagle_off_on_every_connection() -> None:
    """asyncio disables Nagle only on connections of an IPPROTO_TCP listener; with protocol 0
    (socket.create_server) every keep-alive response waited 44 ms for a delayed ACK."""
    from server.http.server import bind
    from server.settings import Settings

    sock = bind(Settings(http_port=free_port()))
    with sock:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_inputs_the_model_cannot_take_are_400_naming_where(base_url: str) -> None:
    """A lone surrogate decodes from valid JSON; a value of no accepted form names the forms and
    the position; the bearer scheme is case-insensitive (RFC 7235)."""
    reply = httpx.post(
        f"{base_url}/v1/embeddings",
        content=b'{"model": "m", "input": ["ok", "a\\ud800b"]}',
        headers={**AUTH, "content-type": "application/json"},
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == "input[1]" and "lone surrogate" in error["message"]
    for body, where in (({"input": [1.5]}, "input[0]"), ({"input": [[1, "a"]]}, "input[0][1]"),
                        ({"input": {"a": 1}}, "input")):  # fmt: skip
        reply = _post(base_url, "/v1/embeddings", {"model": "m", **body})
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert error["param"] == where and "list[int]" in error["message"], error
    reply = _post(base_url, "/v1/embeddings", {"model": "m", "input": "x", "dimensions": 64.0})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "dimensions"
    lower = {"authorization": f"bearer {TOKEN}"}
    reply = httpx.post(
        f"{base_url}/v1/embeddings", json={"model": "m", "input": "x"}, headers=lower, timeout=60
    )
    assert reply.status_code == 200, reply.text
