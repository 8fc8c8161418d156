"""Container health check: exit 0 when the server's grpc.health.v1 says SERVING, else 1.

Used by the server image's HEALTHCHECK and by compose (Kubernetes uses its native gRPC probes
instead). With no address it asks 127.0.0.1 on the server's own port, read from the same
settings the server reads (EMBED_PORT, else the default), so it follows the server's config.
A TLS server is checked with the options every bundled client takes (embedcore.transport:
``--tls-ca`` or EMBED_TLS_CA, a client certificate for mutual TLS, ``--tls-server-name`` when
the certificate does not name 127.0.0.1); health needs no bearer token.

    python grpc_health_check.py [HOST:PORT] [--service NAME] [--timeout SECONDS] [--tls-ca FILE ...]
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from embedcore import transport

if TYPE_CHECKING:
    from embedcore.transport import ClientCredentials


def default_target() -> str:
    from server.settings import Settings

    return f"127.0.0.1:{Settings.from_env().port}"


def check(
    target: str, service: str = "", timeout: float = 5.0, credentials: ClientCredentials | None = None
) -> tuple[bool, str]:
    """(serving, what was seen). Never raises for an unreachable or unhealthy server."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from embedcore.transport import ClientCredentials, open_channel

    with open_channel(target, credentials or ClientCredentials()) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return False, f"{target}: {exc.code().name}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{target}: {status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("target", nargs="?", default=None, help="HOST:PORT (default 127.0.0.1:EMBED_PORT)")
    parser.add_argument("--service", default="", help="service name ('' = the whole server)")
    parser.add_argument("--timeout", type=float, default=5.0)
    transport.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        credentials = transport.from_args(args)
    except transport.CredentialsError as exc:
        print(exc, file=sys.stderr)
        return 1
    serving, seen = check(args.target or default_target(), args.service, args.timeout, credentials)
    print(seen, file=sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
