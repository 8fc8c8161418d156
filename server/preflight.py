"""Start-up checks: a configuration that cannot work is named in one line before the port is bound.

``embed-server serve`` prints a :class:`StartupError` as ``embed-server serve: MESSAGE`` and
exits 2, instead of a traceback (or gRPC's C-core log lines) for an everyday mistake: a TLS key
that is not the certificate's, a missing file, a port in use, a data directory that cannot be
used or that another server holds.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from pathlib import Path

from server.settings import Settings


class StartupError(Exception):
    """The server cannot start as configured. The message is one line that names the option,
    the file or the port, and the reason (``embed-server serve`` prints it and exits 2)."""


def read_file(option: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise StartupError(f"{option} {path}: cannot read it ({exc.strerror or exc})") from None


def _encrypted_key(option: str, path: str) -> Callable[[], bytes]:
    def refuse() -> bytes:
        raise StartupError(f"{option} {path} is encrypted; gRPC needs an unencrypted PEM private key")

    return refuse


def check_tls(settings: Settings) -> None:
    """The TLS files exist, parse, and the key is the certificate's (gRPC itself only says
    "failed to bind" for a key that does not match). StartupError otherwise."""
    if not settings.tls_cert:
        return
    for option, path in (
        ("--tls-cert", settings.tls_cert),
        ("--tls-key", settings.tls_key),
        ("--tls-client-ca", settings.tls_client_ca),
    ):
        if path:
            read_file(option, path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(
            settings.tls_cert, settings.tls_key, password=_encrypted_key("--tls-key", settings.tls_key)
        )
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise StartupError(
                f"--tls-key {settings.tls_key} is not the private key of the certificate in "
                f"--tls-cert {settings.tls_cert}"
            ) from None
        raise StartupError(
            f"--tls-cert {settings.tls_cert} / --tls-key {settings.tls_key}: not a PEM certificate and "
            f"its private key ({exc.reason or exc})"
        ) from None
    if settings.tls_client_ca:
        try:
            context.load_verify_locations(cafile=settings.tls_client_ca)
        except ssl.SSLError as exc:
            raise StartupError(
                f"--tls-client-ca {settings.tls_client_ca}: not a PEM CA certificate ({exc.reason or exc})"
            ) from None


def check_store(settings: Settings) -> None:
    """Blocking: open the store once and close it, so a data directory that cannot be used (not
    writable, not a directory, held by another server) is reported before the port is bound,
    in one line, instead of a server that binds, says NOT_SERVING and dies."""
    import lmdb

    from server.store import StoreError, open_store

    if settings.data_dir.exists() and not settings.data_dir.is_dir():
        raise StartupError(f"--data-dir {settings.data_dir} is a file, not a directory")
    try:
        store = open_store(settings.data_dir, map_size=settings.store_map_size_mb << 20)
    except StoreError as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        where = exc.filename or settings.data_dir
        raise StartupError(
            f"--data-dir {settings.data_dir}: cannot use {where} ({exc.strerror or exc})"
        ) from None
    except lmdb.Error as exc:
        raise StartupError(f"--data-dir {settings.data_dir}: cannot open the store ({exc})") from None
    store.close()


def check_ports(settings: Settings) -> None:
    """A listener already on ``host:port`` makes gRPC log three lines of C-core errors and raise
    "failed to bind" (and the metrics server a traceback); find it first and say so. Port 0
    picks a free port: nothing to check."""
    ports = (
        ("--port", settings.port),
        ("--metrics-port", settings.metrics_port),
        ("--http-port", settings.http_port),
    )
    for option, port in ports:
        if port:
            _check_port(option, settings.host, port)


def _check_port(option: str, host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
            try:
                probe.bind(address)
            except OSError as exc:
                raise StartupError(
                    f"{option} {port}: cannot listen on {host}:{port} ({exc.strerror or exc}; "
                    f"another server there? pick another {option})"
                ) from None
