"""Every bundled client reaches a server that speaks mutual TLS and wants a bearer token at the
same time (embed-server ingest / search / eval, edge-client init / sync / search), each making
calls that embed; and each says in one line what is missing when it cannot."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_client.cli import main as edge_main
from embedcore.transport import ClientCredentials
from server.cli import main as server_main
from tests._certs import Pki, make_pki
from tests.server_harness import ServerProcess, running_server

TOKEN = "tls-test-token-7f3a"
DOCS = {
    "cat": "Cats are small domesticated felines that purr and chase mice.",
    "rust": "Rust is a systems programming language focused on memory safety.",
    "eiffel": "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
}
QUERIES = {
    "q-cat": ("which pet purrs and hunts mice", "cat"),
    "q-rust": ("memory-safe systems language", "rust"),
}


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Pki, Path]]:
    folder = tmp_path_factory.mktemp("tls")
    pki = make_pki(folder / "pki")
    token_file = folder / "token"
    token_file.write_text(TOKEN + "\n")
    args = ("--workers", "1", "--compile", "off", "--tls-cert", str(pki.server_cert),
            "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca),
            "--auth-token-file", str(token_file))  # fmt: skip
    probe = ClientCredentials(
        tls_ca=str(pki.ca), tls_client_cert=str(pki.client_cert), tls_client_key=str(pki.client_key)
    )
    with running_server(folder / "data", *args, credentials=probe) as server:
        yield server, pki, token_file


def _flags(pki: Pki, token_file: Path) -> list[str]:
    return ["--tls-ca", str(pki.ca), "--tls-client-cert", str(pki.client_cert),
            "--tls-client-key", str(pki.client_key), "--auth-token-file", str(token_file)]  # fmt: skip


def _dataset(folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in DOCS.items())
    )
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, (t, _) in QUERIES.items())
    )
    rows = "".join(f"{q}\t{doc}\t1\n" for q, (_, doc) in QUERIES.items())
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    return folder


def test_every_client_embeds_over_mutual_tls_with_a_bearer_token(
    tls_server: tuple[ServerProcess, Pki, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, pki, token_file = tls_server
    flags = _flags(pki, token_file)
    collection = f"tls-{uuid.uuid4().hex[:8]}"
    dataset = _dataset(tmp_path / "beir")

    # ingest: options as flags; every document embedded on the server.
    ingest = ["ingest", str(dataset / "corpus.jsonl"), "--collection", collection, "--server", server.address]
    assert server_main([*ingest, *flags]) == 0
    assert f"3 docs into {collection!r}: 3 embedded" in capsys.readouterr().out

    # search: the same options from the environment (the query is embedded on the server).
    with monkeypatch.context() as env:
        env.setenv("EMBED_TLS_CA", str(pki.ca))
        env.setenv("EMBED_TLS_CLIENT_CERT", str(pki.client_cert))
        env.setenv("EMBED_TLS_CLIENT_KEY", str(pki.client_key))
        env.setenv("EMBED_AUTH_TOKEN", TOKEN)
        search = ["search", "which pet purrs", "--collection", collection, "--server", server.address]
        assert server_main([*search, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["id"] == "cat"

    # eval: Ingest + Search (server path), Embed (STS), and the edge path through EdgeClient.
    sts = tmp_path / "sts.csv"
    sts.write_text(
        "g\tf\t2012\t1\t5.0\tA man is eating food.\tA man is eating a piece of bread.\n"
        "g\tf\t2012\t2\t0.0\tA man is eating food.\tThe new movie is awesome.\n"
        "g\tf\t2012\t3\t3.0\tA woman plays the guitar.\tA woman is playing a violin.\n"
    )
    results = tmp_path / "eval.json"
    evaluate = ["eval", "--dataset", str(dataset), "--sts", str(sts), "--server", server.address,
                "--json", str(results), "--configs", "server/full/float32", "edge-auto"]  # fmt: skip
    assert server_main([*evaluate, *flags]) == 0
    capsys.readouterr()
    rows = {(r["task"], r["label"]): r for r in json.loads(results.read_text())}
    assert rows["retrieval", "server/full/float32"]["ndcg@10"] == pytest.approx(1.0)
    assert rows["retrieval", "edge-auto"]["ndcg@10"] == pytest.approx(1.0)  # the edge path got through
    assert rows["sts", "server/full/float32"]["spearman"] == pytest.approx(1.0)

    # edge-client: init takes the options and remembers them (the token's file, never the token).
    home = tmp_path / "edge"
    assert edge_main(["init", "--server", server.address, "--home", str(home), "--no-progress", *flags]) == 0
    config = (home / "config.json").read_text()
    assert TOKEN not in config and str(token_file.resolve()) in config
    assert edge_main(["sync", "--collection", collection, "--home", str(home), "--no-progress"]) == 0
    capsys.readouterr()
    search = ["search", "which pet purrs", "--collection", collection, "--home", str(home), "--json"]
    assert edge_main([*search, "--mode", "server"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert (answer["source"], answer["degraded"], answer["results"][0]["id"]) == ("server", False, "cat")


def test_clients_say_in_one_line_what_tls_or_the_token_lacks(
    tls_server: tuple[ServerProcess, Pki, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, pki, _ = tls_server
    client = ["--tls-client-cert", str(pki.client_cert), "--tls-client-key", str(pki.client_key)]
    cases = [
        ([], "unreachable (it closed the connection: does it require TLS? pass --tls-ca FILE)"),
        (["--tls"], "has a TLS certificate this client does not trust: pass the CA that signed it"),
        (["--tls-ca", str(pki.ca)], "does it require a client certificate? pass --tls-client-cert FILE"),
        (["--tls-ca", str(pki.ca), *client], "refused the call: missing or wrong bearer token"),
        (["--tls-ca", str(pki.ca), *client, "--token", "wrong"], "missing or wrong bearer token"),
    ]
    search = ["search", "anything", "--collection", "none", "--server", server.address, "--timeout", "20"]
    for flags, expected in cases:
        assert server_main([*search, *flags]) == 1, flags
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (flags, lines)
        assert "failed to connect to all addresses" not in lines[0]
    # --verbose adds what gRPC itself said, on a line of its own.
    assert server_main([*search, "--verbose"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "failed to connect to all addresses" in lines[1]
    # An option that cannot be used fails before any call: exit 2, naming it.
    assert server_main([*search, "--tls-ca", str(tmp_path / "missing.pem")]) == 2
    assert f"--tls-ca {tmp_path / 'missing.pem'}: cannot read it" in capsys.readouterr().err
    # The edge client says it the same way.
    init = ["init", "--server", server.address, "--home", str(tmp_path / "edge"), "--no-progress"]
    assert edge_main(init) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "does it require TLS? pass --tls-ca FILE" in lines[0], lines
