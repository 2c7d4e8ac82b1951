"""The three clients under test, each behind the same small adapter.

`get()` is "give me a usable access token" in each library's own idiom:

- sat_oauth_client: `TokenManager.get_token()` / `await AsyncTokenManager.get_token()`.
- Authlib: `OAuth2Client` / `AsyncOAuth2Client` with `grant_type=client_credentials` and a client
  auth method registered with `register_client_auth_method` that reads the projected token file
  on every token request and sends it as `client_assertion`. Authlib has no `get_token()`: a
  caller must fetch the first token itself (`MissingTokenError` otherwise) and then calls
  `ensure_active_token()`, which refreshes an expired client_credentials token. That two-line
  wrapper is what is measured.
- azure-identity: `WorkloadIdentityCredential(...).get_token(scope)` against the loopback HTTPS
  front (`authority=`, `connection_verify=<self-signed cert>`). The aio credential defaults to
  aiohttp; when aiohttp is absent, azure-core's own `AsyncioRequestsTransport` /
  `TrioRequestsTransport` (requests run in worker threads) are passed as `transport=`.

`expire()` makes the cached token unusable: a jump of the injected clock for sat_oauth_client,
`expires_at` moved into the past for Authlib (its cache is a plain dict), and for azure-identity
(whose cache lives in MSAL's TokenCache and reads the wall clock) a real wait for a short-lived
token to run out.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import time
from collections.abc import Awaitable, Callable
from typing import Any

from _lab import CLIENT_ID, SCOPE, TENANT, Lab
from authlib.common.urls import add_params_to_qs

from sat_oauth_client import AsyncTokenManager, TokenManager

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
AUTH_METHOD = "k8s_sat_file"
HAVE_AIOHTTP = importlib.util.find_spec("aiohttp") is not None

# Server-side token lifetimes used to make a cached token expire (see `expire()`).
OURS_EXPIRY_LIFETIME = 600.0  # then the injected clock jumps 600 s (the SAT itself lives 3600 s)
AZURE_EXPIRY_LIFETIME = 2.0  # azure-identity: expires_on = int(request_time) + 2, wall clock


class JumpClock:
    """`time.time()` plus an offset that a benchmark can move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclasses.dataclass
class SyncClient:
    name: str
    get: Callable[[], Any]
    close: Callable[[], None]
    expire: Callable[[], None]
    lifetime_for_expiry: float = 3600.0
    raw: Any = None
    timed: Any = None  # what the cached-path timing calls (default: `get`)

    def __post_init__(self) -> None:
        if self.timed is None:
            self.timed = self.get


@dataclasses.dataclass
class AsyncClient:
    name: str
    get: Callable[[], Awaitable[Any]]
    aclose: Callable[[], Awaitable[None]]
    expire: Callable[[], Awaitable[None]]
    lifetime_for_expiry: float = 3600.0
    raw: Any = None
    timed: Any = None  # what the cached-path timing calls (default: `get`)

    def __post_init__(self) -> None:
        if self.timed is None:
            self.timed = self.get


def read_sat(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read().strip()


def authlib_assertion_auth(path: str) -> Callable[..., tuple[Any, Any, Any]]:
    """An Authlib client auth method: the current projected token as an RFC 7523 assertion."""

    def encode(client: Any, method: str, uri: str, headers: Any, body: str) -> tuple[Any, Any, Any]:
        body = add_params_to_qs(
            body or "",
            [
                ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                ("client_assertion", read_sat(path)),
            ],
        )
        if "Content-Length" in headers:
            headers["Content-Length"] = str(len(body))
        return uri, headers, body

    return encode


# -- sat_oauth_client ------------------------------------------------------------------------------


def ours_sync(lab: Lab, *, for_expiry: bool = False) -> SyncClient:
    """With `for_expiry`, the manager reads a `JumpClock` (an injected clock costs a Python call
    on the cached path, so the timing measurements use the default `time.time`)."""
    clock = JumpClock()
    manager = TokenManager(
        token_endpoint=lab.token_endpoint,
        token_file=lab.token_file,
        scope=SCOPE,
        clock=clock if for_expiry else None,
    )

    def expire() -> None:
        clock.offset += OURS_EXPIRY_LIFETIME

    return SyncClient(
        "sat_oauth_client",
        manager.get_token,
        manager.close,
        expire,
        OURS_EXPIRY_LIFETIME,
        manager,
    )


def ours_async(lab: Lab, *, for_expiry: bool = False) -> AsyncClient:
    clock = JumpClock()
    manager = AsyncTokenManager(
        token_endpoint=lab.token_endpoint,
        token_file=lab.token_file,
        scope=SCOPE,
        clock=clock if for_expiry else None,
    )

    async def expire() -> None:
        clock.offset += OURS_EXPIRY_LIFETIME

    return AsyncClient(
        "sat_oauth_client",
        manager.get_token,
        manager.aclose,
        expire,
        OURS_EXPIRY_LIFETIME,
        manager,
    )


# -- Authlib ---------------------------------------------------------------------------------------


def authlib_sync(lab: Lab, *, for_expiry: bool = False, **httpx_kwargs: Any) -> SyncClient:
    from authlib.integrations.httpx_client import OAuth2Client

    client = OAuth2Client(
        token_endpoint_auth_method=AUTH_METHOD,
        scope=SCOPE,
        token_endpoint=httpx_kwargs.pop("token_endpoint", lab.token_endpoint),
        grant_type="client_credentials",
        timeout=10.0,
        **httpx_kwargs,
    )
    client.register_client_auth_method((AUTH_METHOD, authlib_assertion_auth(lab.token_file)))

    def get() -> Any:
        if not client.token:
            client.fetch_token()
        else:
            client.ensure_active_token(client.token)
        return client.token

    def expire() -> None:
        client.token["expires_at"] = int(time.time()) - 1

    return SyncClient("Authlib", get, client.close, expire, 3600.0, client)


def authlib_async(lab: Lab, *, for_expiry: bool = False) -> AsyncClient:
    from authlib.integrations.httpx_client import AsyncOAuth2Client

    client = AsyncOAuth2Client(
        token_endpoint_auth_method=AUTH_METHOD,
        scope=SCOPE,
        token_endpoint=lab.token_endpoint,
        grant_type="client_credentials",
        timeout=10.0,
    )
    client.register_client_auth_method((AUTH_METHOD, authlib_assertion_auth(lab.token_file)))

    async def get() -> Any:
        if not client.token:
            await client.fetch_token()
        else:
            await client.ensure_active_token(client.token)
        return client.token

    async def expire() -> None:
        client.token["expires_at"] = int(time.time()) - 1

    return AsyncClient("Authlib", get, client.aclose, expire, 3600.0, client)


# -- azure-identity --------------------------------------------------------------------------------


def _wait_until(epoch: float) -> None:
    delay = epoch - time.time()
    if delay > 0:
        time.sleep(delay)


def azure_sync(lab: Lab, *, for_expiry: bool = False) -> SyncClient:
    from azure.identity import WorkloadIdentityCredential

    credential = WorkloadIdentityCredential(
        tenant_id=TENANT,
        client_id=CLIENT_ID,
        token_file_path=lab.token_file,
        authority=lab.authority,
        connection_verify=lab.ca_path,
    )
    state: dict[str, float] = {"expires_on": 0.0}

    def get() -> Any:
        token = credential.get_token(SCOPE)
        state["expires_on"] = float(token.expires_on)
        return token

    def expire() -> None:
        _wait_until(state["expires_on"] + 0.02)

    return SyncClient(
        "azure-identity",
        get,
        credential.close,
        expire,
        AZURE_EXPIRY_LIFETIME,
        credential,
        functools.partial(credential.get_token, SCOPE),
    )


def azure_async(lab: Lab, flavour: str = "asyncio", *, for_expiry: bool = False) -> AsyncClient:
    from azure.identity.aio import WorkloadIdentityCredential

    kwargs: dict[str, Any] = {}
    if not HAVE_AIOHTTP:
        Transport: type[Any]
        if flavour == "trio":
            from azure.core.pipeline.transport import TrioRequestsTransport as Transport
        else:
            from azure.core.pipeline.transport import AsyncioRequestsTransport as Transport
        kwargs["transport"] = Transport(connection_verify=lab.ca_path)
    credential = WorkloadIdentityCredential(
        tenant_id=TENANT,
        client_id=CLIENT_ID,
        token_file_path=lab.token_file,
        authority=lab.authority,
        connection_verify=lab.ca_path,
        **kwargs,
    )
    state: dict[str, float] = {"expires_on": 0.0}

    async def get() -> Any:
        token = await credential.get_token(SCOPE)
        state["expires_on"] = float(token.expires_on)
        return token

    async def expire() -> None:
        import anyio

        delay = state["expires_on"] + 0.02 - time.time()
        if delay > 0:
            await anyio.sleep(delay)

    return AsyncClient(
        "azure-identity",
        get,
        credential.close,
        expire,
        AZURE_EXPIRY_LIFETIME,
        credential,
        functools.partial(credential.get_token, SCOPE),
    )
