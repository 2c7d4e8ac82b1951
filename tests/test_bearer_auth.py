"""`BearerAuth` with real httpx clients against the local AS's protected resource."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pytest

from sat_oauth_client import AsyncTokenManager, BearerAuth, TokenManager
from sat_oauth_client.testing import FakeKubelet, LocalAuthorizationServer


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def manager(
    local_as: LocalAuthorizationServer, fake_kubelet: FakeKubelet
) -> Iterator[TokenManager]:
    with TokenManager(
        token_endpoint=local_as.token_endpoint, token_file=fake_kubelet.token_path
    ) as made:
        yield made


@pytest.fixture
async def async_manager(
    local_as: LocalAuthorizationServer, fake_kubelet: FakeKubelet
) -> AsyncIterator[AsyncTokenManager]:
    async with AsyncTokenManager(
        token_endpoint=local_as.token_endpoint, token_file=fake_kubelet.token_path
    ) as made:
        yield made


def bearer_of(server: LocalAuthorizationServer, index: int) -> str:
    return server.resource_requests[index].headers["Authorization"]


# -- sync -----------------------------------------------------------------------------------------


def test_sync_sets_bearer_header(local_as: LocalAuthorizationServer, manager: TokenManager) -> None:
    with httpx.Client(auth=BearerAuth(manager)) as client:
        response = client.get(local_as.resource_url)
        assert response.status_code == 200
        token = manager.get_token()
        assert bearer_of(local_as, 0) == f"Bearer {token.access_token}"
        assert response.request.headers["Authorization"] == f"Bearer {token.access_token}"
        assert client.get(local_as.resource_url).status_code == 200  # cached token reused
    assert len(local_as.requests) == 1
    assert len(local_as.resource_requests) == 2


def test_sync_401_once_retries_with_a_fresh_token(
    local_as: LocalAuthorizationServer, manager: TokenManager
) -> None:
    local_as.resource_unauthorized = 1
    with httpx.Client(auth=BearerAuth(manager)) as client:
        response = client.get(local_as.resource_url)
    assert response.status_code == 200
    assert len(local_as.resource_requests) == 2
    assert len(local_as.requests) == 2
    first, second = bearer_of(local_as, 0), bearer_of(local_as, 1)
    assert first != second
    assert second == f"Bearer {manager.get_token().access_token}"
    assert len(local_as.requests) == 2


def test_sync_persistent_401_is_returned_after_two_attempts(
    local_as: LocalAuthorizationServer, manager: TokenManager
) -> None:
    local_as.resource_unauthorized = 100
    with httpx.Client(auth=BearerAuth(manager)) as client:
        response = client.get(local_as.resource_url)
    assert response.status_code == 401
    assert len(local_as.resource_requests) == 2
    assert len(local_as.requests) == 2


def test_sync_401_keeps_a_token_someone_else_already_refreshed(
    local_as: LocalAuthorizationServer, manager: TokenManager
) -> None:
    """The invalidation is compare-and-clear: only the token that got the 401 is dropped."""

    class Meddler(httpx.BaseTransport):
        """Answers 401 once, after another caller already swapped in a newer token."""

        def __init__(self) -> None:
            self.inner = httpx.HTTPTransport()
            self.done = False

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if not self.done:
                self.done = True
                manager.get_token(force_refresh=True)
                return httpx.Response(401, request=request)
            return self.inner.handle_request(request)

        def close(self) -> None:
            self.inner.close()

    with httpx.Client(auth=BearerAuth(manager), transport=Meddler()) as client:
        response = client.get(local_as.resource_url)
    assert response.status_code == 200
    assert len(local_as.requests) == 2  # the first token, then the meddler's refresh: no third


def test_sync_client_with_async_manager_is_a_type_error(
    local_as: LocalAuthorizationServer, fake_kubelet: FakeKubelet
) -> None:
    async_manager = AsyncTokenManager(
        token_endpoint=local_as.token_endpoint, token_file=fake_kubelet.token_path
    )
    try:
        with (
            httpx.Client(auth=BearerAuth(async_manager)) as client,
            pytest.raises(TypeError, match="AsyncClient"),
        ):
            client.get(local_as.resource_url)
    finally:
        anyio.run(async_manager.aclose)
    assert local_as.resource_requests == []
    assert local_as.requests == []


def test_not_a_manager_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        BearerAuth(object())  # type: ignore[arg-type]


def test_repr_does_not_show_a_token(
    local_as: LocalAuthorizationServer, manager: TokenManager
) -> None:
    token = manager.get_token()
    assert token.access_token not in repr(BearerAuth(manager))


# -- async ----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_sets_bearer_header(
    local_as: LocalAuthorizationServer, async_manager: AsyncTokenManager
) -> None:
    async with httpx.AsyncClient(auth=BearerAuth(async_manager)) as client:
        response = await client.get(local_as.resource_url)
        assert response.status_code == 200
        token = await async_manager.get_token()
        assert bearer_of(local_as, 0) == f"Bearer {token.access_token}"
        assert (await client.get(local_as.resource_url)).status_code == 200
    assert len(local_as.requests) == 1
    assert len(local_as.resource_requests) == 2


@pytest.mark.anyio
async def test_async_401_once_retries_with_a_fresh_token(
    local_as: LocalAuthorizationServer, async_manager: AsyncTokenManager
) -> None:
    local_as.resource_unauthorized = 1
    async with httpx.AsyncClient(auth=BearerAuth(async_manager)) as client:
        response = await client.get(local_as.resource_url)
    assert response.status_code == 200
    assert len(local_as.resource_requests) == 2
    assert len(local_as.requests) == 2
    assert bearer_of(local_as, 0) != bearer_of(local_as, 1)
    assert bearer_of(local_as, 1) == f"Bearer {(await async_manager.get_token()).access_token}"


@pytest.mark.anyio
async def test_async_persistent_401_is_returned_after_two_attempts(
    local_as: LocalAuthorizationServer, async_manager: AsyncTokenManager
) -> None:
    local_as.resource_unauthorized = 100
    async with httpx.AsyncClient(auth=BearerAuth(async_manager)) as client:
        response = await client.get(local_as.resource_url)
    assert response.status_code == 401
    assert len(local_as.resource_requests) == 2
    assert len(local_as.requests) == 2


@pytest.mark.anyio
async def test_async_client_with_sync_manager_is_a_type_error(
    local_as: LocalAuthorizationServer, manager: TokenManager
) -> None:
    async with httpx.AsyncClient(auth=BearerAuth(manager)) as client:
        with pytest.raises(TypeError, match=r"httpx\.Client"):
            await client.get(local_as.resource_url)
    assert local_as.resource_requests == []
    assert local_as.requests == []
