"""Bearer-token authentication for every path but ``/healthz`` (RFC 6750), via Starlette's middleware.

Liveness stays open so that an orchestrator can probe the process without a secret; everything
else (readiness included: it names the database and the disk) needs the token when one is set.
The comparison is constant-time.
"""

from __future__ import annotations

import hmac

from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    BaseUser,
    SimpleUser,
)
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response

OPEN_PATHS = frozenset({"/healthz"})


class BearerTokenBackend(AuthenticationBackend):
    """Accepts ``Authorization: Bearer <token>``; with an empty token every request is allowed."""

    def __init__(self, token: str) -> None:
        self._token = token.encode("utf-8")

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        if not self._token:
            return AuthCredentials(["authenticated"]), SimpleUser("anonymous")
        if conn.url.path in OPEN_PATHS:
            return None
        scheme, _, presented = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented:
            raise AuthenticationError("missing bearer token (Authorization: Bearer <token>)")
        if not hmac.compare_digest(presented.strip().encode("utf-8"), self._token):
            raise AuthenticationError("wrong bearer token")
        return AuthCredentials(["authenticated"]), SimpleUser("token")


def unauthorized(conn: HTTPConnection, exc: Exception) -> Response:
    """401 with the challenge RFC 6750 section 3 asks for."""
    return JSONResponse(
        {"error": str(exc)}, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="cxr-node"'}
    )
