"""Test certificates made with the openssl command line: a CA, a server certificate it signed
(for localhost and 127.0.0.1), a client certificate it signed, and a self-signed stranger."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # self-signed: trusted by nobody
    stranger_key: Path


def self_signed(folder: Path, name: str = "self") -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    names = "subjectAltName=DNS:localhost,IP:127.0.0.1"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
             "-addext", names, "-keyout", str(key), "-out", str(cert))  # fmt: skip
    return cert, key


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test CA",
             "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip

    def signed(name: str, extensions: str) -> tuple[Path, Path]:
        cert, key, csr, ext = (folder / f"{name}{s}" for s in (".pem", ".key", ".csr", ".ext"))
        ext.write_text(extensions + "\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key),
                 "-out", str(csr))  # fmt: skip
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
                 "-days", "1", "-extfile", str(ext), "-out", str(cert))  # fmt: skip
        return cert, key

    server_cert, server_key = signed("server", "subjectAltName=DNS:localhost,IP:127.0.0.1")
    client_cert, client_key = signed("client", "extendedKeyUsage=clientAuth")
    stranger_cert, stranger_key = self_signed(folder, "stranger")
    return Pki(ca, server_cert, server_key, client_cert, client_key, stranger_cert, stranger_key)
