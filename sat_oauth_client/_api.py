"""One-shot helpers: read the token file once, make one token request (with retries), return."""

from __future__ import annotations

__all__ = ["afetch_token", "fetch_token"]

import contextlib
from typing import Any

import httpx

from ._config import build_settings
from ._drive import drive_async, drive_sync
from ._exceptions import ConfigurationError
from ._exchange import Exchange
from ._models import AccessToken
from ._source import FileTokenSource


def fetch_token(**config: Any) -> AccessToken:
    """Get one access token now. Takes the configuration keywords; leaves no thread behind and
    closes only what it opened (a caller's `http_client` stays open)."""
    settings = build_settings(**config)
    if isinstance(settings.http_client, httpx.AsyncClient):
        raise ConfigurationError(
            "fetch_token needs an httpx.Client; use afetch_token for AsyncClient"
        )
    source = FileTokenSource(settings.token_file, watch=False, clock=settings.clock)
    with contextlib.ExitStack() as stack:
        client = settings.http_client or stack.enter_context(httpx.Client(timeout=settings.timeout))
        return drive_sync(Exchange(settings).flow(), client, source)


async def afetch_token(**config: Any) -> AccessToken:
    """`fetch_token` for async code (asyncio or trio)."""
    settings = build_settings(**config)
    if isinstance(settings.http_client, httpx.Client):
        raise ConfigurationError(
            "afetch_token needs an httpx.AsyncClient; use fetch_token for Client"
        )
    source = FileTokenSource(settings.token_file, watch=False, clock=settings.clock)
    async with contextlib.AsyncExitStack() as stack:
        client = settings.http_client
        if client is None:
            client = await stack.enter_async_context(httpx.AsyncClient(timeout=settings.timeout))
        return await drive_async(Exchange(settings).flow(), client, source)
