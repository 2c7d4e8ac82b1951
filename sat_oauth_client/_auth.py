"""`BearerAuth`: an `httpx.Auth` that puts the manager's access token on every request."""

from __future__ import annotations

__all__ = ["BearerAuth"]

from collections.abc import AsyncGenerator, Generator

import httpx

from ._exceptions import ConfigurationError
from ._manager import AsyncTokenManager, TokenManager
from ._models import AccessToken


def _authorize(request: httpx.Request, token: AccessToken) -> httpx.Request:
    if token.token_type != "Bearer":  # e.g. N_A from a token exchange, or DPoP
        raise ConfigurationError(
            f"the authorization server issued a {token.token_type!r} token; "
            "BearerAuth can only send Bearer tokens"
        )
    request.headers["Authorization"] = f"Bearer {token.access_token}"
    return request


class BearerAuth(httpx.Auth):
    """`Authorization: Bearer <token>` from a `TokenManager` (with `httpx.Client`) or an
    `AsyncTokenManager` (with `httpx.AsyncClient`).

    On a 401 it drops that token (only that one) and retries once with a fresh one; never more,
    so a resource that refuses every token costs exactly two requests. API response bodies are
    never read.
    """

    requires_request_body = True  # the one retry must be able to send the body again

    def __init__(self, manager: TokenManager | AsyncTokenManager) -> None:
        if not isinstance(manager, (TokenManager, AsyncTokenManager)):
            raise TypeError("BearerAuth needs a TokenManager or an AsyncTokenManager")
        self.manager = manager

    def __repr__(self) -> str:
        return f"BearerAuth({self.manager!r})"

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        manager = self.manager
        if not isinstance(manager, TokenManager):
            raise TypeError(
                "BearerAuth(AsyncTokenManager) works with httpx.AsyncClient; "
                "use a TokenManager with httpx.Client"
            )
        token = manager.get_token()
        response = yield _authorize(request, token)
        if response.status_code == 401:
            manager.invalidate(token)
            yield _authorize(request, manager.get_token())

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        manager = self.manager
        if not isinstance(manager, AsyncTokenManager):
            raise TypeError(
                "BearerAuth(TokenManager) works with httpx.Client; "
                "use an AsyncTokenManager with httpx.AsyncClient"
            )
        token = await manager.get_token()
        response = yield _authorize(request, token)
        if response.status_code == 401:
            manager.invalidate(token)
            yield _authorize(request, await manager.get_token())
