"""How a bundled client reaches the server: TLS, the bearer token, the channel, errors in words.

Every client (``embed-server ingest/search/eval``, ``edge-client``) takes the same options,
declared once here (:func:`add_arguments`, :func:`from_args`), each with an environment variable:

  --tls-ca FILE            PEM CA certificate(s) that signed the server's certificate; TLS on
  --tls                    TLS with the system's root certificates (a publicly signed server)
  --tls-client-cert FILE   PEM client certificate, for a server that requires one (mutual TLS)
  --tls-client-key FILE    its private key
  --tls-server-name NAME   host name expected in the server's certificate (default: --server's)
  --token TOKEN            bearer token (visible to every local user in ``ps``)
  --auth-token-file FILE   a file holding the bearer token (the way to pass it privately)

:func:`explain` turns a failed call into one line for a person (``server at HOST:PORT
unreachable (connection refused)``) and keeps gRPC's own text as the detail (``--verbose``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

ENV = {
    "tls_ca": "EMBED_TLS_CA",
    "tls": "EMBED_TLS",
    "tls_client_cert": "EMBED_TLS_CLIENT_CERT",
    "tls_client_key": "EMBED_TLS_CLIENT_KEY",
    "tls_server_name": "EMBED_TLS_SERVER_NAME",
    "token": "EMBED_AUTH_TOKEN",  # the same variables the server reads its token from
    "token_file": "EMBED_AUTH_TOKEN_FILE",
}
_TRUE = ("1", "true", "yes", "on")


class CredentialsError(ValueError):
    """A connection option cannot be used (unreadable file, key without certificate, ...);
    the message names the option and the file."""


def read_token_file(path: str | Path, option: str = "--auth-token-file") -> str:
    """The bearer token in ``path`` (surrounding whitespace and the final newline dropped).
    CredentialsError when the file is unreadable or holds no token."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CredentialsError(f"{option} {path}: cannot read the token file ({reason})") from exc
    if not token:
        raise CredentialsError(f"{option} {path}: the token file is empty")
    if any(c.isspace() for c in token):
        raise CredentialsError(f"{option} {path}: the token file holds more than one word")
    return token


def _read_pem(path: str, option: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CredentialsError(f"{option} {path}: cannot read it ({exc.strerror or exc})") from exc
    if b"-----BEGIN " not in data:
        raise CredentialsError(f"{option} {path}: not a PEM file (no '-----BEGIN' line)")
    return data


@dataclass(frozen=True)
class ClientCredentials:
    """TLS trust, an optional client certificate and the bearer token of one client.

    Paths are kept as given; files are read when a channel is opened (and by :meth:`check`).
    ``token_file`` records where ``token`` came from, so a client that remembers its settings
    (``edge-client init``) stores the path, never the token.
    """

    tls: bool = False  # TLS with the system's roots (implied by any other tls_* field)
    tls_ca: str | None = None
    tls_client_cert: str | None = None
    tls_client_key: str | None = None
    tls_server_name: str = ""
    token: str = dataclasses.field(default="", repr=False)
    token_file: str | None = None

    @property
    def use_tls(self) -> bool:
        return bool(self.tls or self.tls_ca or self.tls_client_cert)

    @property
    def is_empty(self) -> bool:
        return self == ClientCredentials()

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata that carries the bearer token (none without a token)."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """gRPC TLS credentials from the files; CredentialsError naming an unusable one."""
        if bool(self.tls_client_cert) != bool(self.tls_client_key):
            raise CredentialsError("--tls-client-cert and --tls-client-key must be given together")
        root = _read_pem(self.tls_ca, "--tls-ca") if self.tls_ca else None
        cert = _read_pem(self.tls_client_cert, "--tls-client-cert") if self.tls_client_cert else None
        key = _read_pem(self.tls_client_key, "--tls-client-key") if self.tls_client_key else None
        return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)

    def check(self) -> None:
        """Read every file now, so a bad option fails before any call (CredentialsError)."""
        if self.use_tls:
            self.channel_credentials()

    def overridden_by(self, other: ClientCredentials) -> ClientCredentials:
        """These credentials with every field ``other`` sets taken from ``other``."""
        changes = {
            f.name: getattr(other, f.name) for f in dataclasses.fields(other) if getattr(other, f.name)
        }
        if other.token and not other.token_file:
            changes["token_file"] = None  # a token given directly replaces the remembered file
        return dataclasses.replace(self, **changes)

    def to_config(self) -> dict[str, Any]:
        """What a client may write to disk: paths (made absolute) and flags, never the token."""
        absolute = {
            name: str(Path(value).resolve()) if value else None
            for name, value in (
                ("tls_ca", self.tls_ca),
                ("tls_client_cert", self.tls_client_cert),
                ("tls_client_key", self.tls_client_key),
                ("token_file", self.token_file),
            )
        }
        return {"tls": self.tls, "tls_server_name": self.tls_server_name, **absolute}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ClientCredentials:
        """The inverse of :meth:`to_config`; the token is read from its file again."""
        token_file = config.get("token_file") or None
        return cls(
            tls=bool(config.get("tls", False)),
            tls_ca=config.get("tls_ca") or None,
            tls_client_cert=config.get("tls_client_cert") or None,
            tls_client_key=config.get("tls_client_key") or None,
            tls_server_name=str(config.get("tls_server_name") or ""),
            token=read_token_file(token_file) if token_file else "",
            token_file=token_file,
        )


def open_channel(
    address: str, credentials: ClientCredentials, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A channel to ``HOST:PORT``: TLS when the credentials ask for it, else plaintext."""
    if not credentials.use_tls:
        return grpc.insecure_channel(address, options=list(options))
    extra = (
        [("grpc.ssl_target_name_override", credentials.tls_server_name)]
        if credentials.tls_server_name
        else []
    )
    return grpc.secure_channel(address, credentials.channel_credentials(), options=[*options, *extra])


# --- command-line options --------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The connection options (see the module docstring) and ``--verbose``."""
    group = parser.add_argument_group("connection (TLS, bearer token)")
    group.add_argument(
        "--tls-ca",
        metavar="FILE",
        default=None,
        help="PEM CA certificate(s) that signed the server's certificate; turns TLS on [env EMBED_TLS_CA]",
    )
    group.add_argument(
        "--tls",
        action="store_true",
        default=None,
        help="use TLS with the system's root certificates (a publicly signed server) [env EMBED_TLS]",
    )
    group.add_argument(
        "--tls-client-cert",
        metavar="FILE",
        default=None,
        help="PEM client certificate, for a server that requires one (mutual TLS) "
        "[env EMBED_TLS_CLIENT_CERT]",
    )
    group.add_argument(
        "--tls-client-key",
        metavar="FILE",
        default=None,
        help="PEM private key of --tls-client-cert [env EMBED_TLS_CLIENT_KEY]",
    )
    group.add_argument(
        "--tls-server-name",
        metavar="NAME",
        default=None,
        help="host name to expect in the server's certificate, when --server names it otherwise "
        "(an IP address) [env EMBED_TLS_SERVER_NAME]",
    )
    group.add_argument(
        "--token",
        default=None,
        help="bearer token, if the server requires one; a flag is visible to every local user in "
        "`ps`: prefer --auth-token-file or the environment [env EMBED_AUTH_TOKEN]",
    )
    group.add_argument(
        "--auth-token-file",
        metavar="FILE",
        default=None,
        help="file holding the bearer token (kept out of `ps`) [env EMBED_AUTH_TOKEN_FILE]",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="on a failed call, also print what gRPC itself reported"
    )


def from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ClientCredentials:
    """Credentials from the options of :func:`add_arguments`, then the environment, files read
    and checked. CredentialsError (one line naming the option) when something is unusable."""
    env = os.environ if environ is None else environ

    def value(name: str) -> Any:
        given = getattr(args, name, None)
        return given if given not in (None, "") else env.get(ENV[name]) or None

    flag_token, flag_file = getattr(args, "token", None), getattr(args, "auth_token_file", None)
    if flag_token and flag_file:
        raise CredentialsError("give --token or --auth-token-file, not both")
    if flag_token or flag_file:
        token, token_file = flag_token, flag_file
    else:
        token, token_file = env.get(ENV["token"]) or None, env.get(ENV["token_file"]) or None
        if token and token_file:
            raise CredentialsError(f"{ENV['token']} and {ENV['token_file']} are both set: unset one")
    tls = value("tls")
    credentials = ClientCredentials(
        tls=tls is True or str(tls).lower() in _TRUE,
        tls_ca=value("tls_ca"),
        tls_client_cert=value("tls_client_cert"),
        tls_client_key=value("tls_client_key"),
        tls_server_name=value("tls_server_name") or "",
        token=read_token_file(token_file) if token_file else (token or ""),
        token_file=token_file,
    )
    credentials.check()
    return credentials


# --- failed calls in words -------------------------------------------------------------------

# Texts gRPC's transport puts in a status it makes up itself (the server never answered).
_TRANSPORT = (
    "failed to connect to all addresses",
    "connections to all backends failing",
    "socket closed",
    "connection reset",
    "broken pipe",
    "dns resolution failed",
    "handshake failed",
)


@dataclass(frozen=True)
class CallFailure:
    """A failed call explained: ``summary`` is one line for a person; ``detail`` is gRPC's text."""

    code: str  # the status code's name, e.g. "UNAVAILABLE"
    summary: str
    detail: str
    unreachable: bool  # the server never answered (or not in time): a local fallback makes sense

    def __str__(self) -> str:
        return self.summary


def _tls_summary(address: str, detail: str) -> str | None:
    lower = detail.lower()
    if (
        "certificate_verify_failed" in lower
        or "self signed" in lower
        or "unable to get local issuer" in lower
    ):
        return (
            f"the server at {address} has a TLS certificate this client does not trust: pass the CA "
            "that signed it with --tls-ca FILE"
        )
    if "hostname verification" in lower:
        return (
            f"the TLS certificate of the server at {address} is for another host name: connect by "
            "the name in the certificate, or set --tls-server-name NAME"
        )
    if "wrong_version_number" in lower:
        return f"the server at {address} does not speak TLS: drop --tls / --tls-ca"
    if "certificate_required" in lower or "certificate required" in lower:
        return (
            f"the server at {address} requires a client certificate (mutual TLS): pass "
            "--tls-client-cert FILE and --tls-client-key FILE"
        )
    if "handshake failed" in lower or "ssl_error" in lower:
        return f"the TLS handshake with the server at {address} failed (see --verbose)"
    return None


def explain(
    exc: grpc.RpcError,
    address: str,
    *,
    timeout: float | None = None,
    credentials: ClientCredentials | None = None,
) -> CallFailure:
    """One line for a person about a failed call to ``address`` made with ``credentials``
    (a server that hangs up during set-up wants TLS from a plaintext client, or a client
    certificate from a TLS one)."""
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    name = code.name if code is not None else "UNKNOWN"
    detail = (exc.details() if callable(getattr(exc, "details", None)) else str(exc)) or ""
    lower = detail.lower()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        within = f"within {timeout:g} s" if timeout else "before the deadline"
        return CallFailure(name, f"server at {address} did not answer {within}", detail, True)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN) and any(t in lower for t in _TRANSPORT):
        summary = _tls_summary(address, detail)
        if summary is None:
            if "connection refused" in lower:
                why = " (connection refused)"
            elif "dns" in lower or "name or service not known" in lower:
                why = " (cannot resolve the host name)"
            elif "socket closed" in lower and credentials is not None and not credentials.use_tls:
                why = " (it closed the connection: does it require TLS? pass --tls-ca FILE)"
            elif "socket closed" in lower and credentials is not None and not credentials.tls_client_cert:
                why = (
                    " (it closed the connection during TLS set-up: does it require a client "
                    "certificate? pass --tls-client-cert FILE and --tls-client-key FILE)"
                )
            elif "socket closed" in lower and credentials is not None:
                why = (
                    " (it closed the connection during TLS set-up: is --tls-client-cert signed by "
                    "a CA the server trusts?)"
                )
            else:
                why = ""
            summary = f"server at {address} unreachable{why}"
        return CallFailure(name, summary, detail, True)
    if code == grpc.StatusCode.UNAVAILABLE:  # the server answered: starting, draining, a worker died
        return CallFailure(name, f"server at {address} unavailable: {detail}", detail, True)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        summary = (
            f"the server at {address} refused the call: missing or wrong bearer token (pass "
            "--auth-token-file FILE, EMBED_AUTH_TOKEN or --token)"
        )
        return CallFailure(name, summary, detail, False)
    return CallFailure(name, f"{name}: {detail}", detail, False)
