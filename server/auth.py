"""Optional bearer-token authentication for every service except health and reflection.

With ``--auth-token-file`` (or ``EMBED_AUTH_TOKEN``, or ``--auth-token``) set, a call must
carry ``authorization: Bearer <token>`` metadata or it ends with UNAUTHENTICATED before reaching
a servicer (one log line, rate-limited: server.call_log). Load balancers and grpcurl keep working:
grpc.health.v1 and server reflection stay open.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from server.call_log import FAILURES

OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


def bearer_token_matches(header: bytes, token: str) -> bool:
    """Whether an ``authorization`` value carries ``token``: ``Bearer <token>``, the scheme name
    in any case (RFC 7235 section 2.1), the token compared in constant time."""
    scheme, _, given = header.strip().partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token.encode())


def _deny(method: str, message: str) -> Callable[..., Any]:
    async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
        FAILURES.record(method, "UNAUTHENTICATED", message)  # one line, rate-limited
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return behavior


class BearerAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Ends every call without the right ``authorization: Bearer <token>`` metadata (health and
    reflection excepted) with UNAUTHENTICATED. The token comes from ``--auth-token-file`` or
    ``EMBED_AUTH_TOKEN`` (private) or ``--auth-token`` (visible in ``ps``)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def _allowed(self, details: grpc.HandlerCallDetails) -> bool:
        if details.method.startswith(OPEN_PREFIXES):
            return True
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else bytes(value)
                return bearer_token_matches(given, self._token)
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or self._allowed(details):
            return handler
        deny = _deny(
            details.method, "missing or wrong bearer token: send metadata 'authorization: Bearer <token>'"
        )
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(deny, **kwargs)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(deny, **kwargs)
        return grpc.stream_stream_rpc_method_handler(deny, **kwargs)
