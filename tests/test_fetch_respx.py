"""`fetch_token` / `afetch_token` against a respx-mocked token endpoint (nothing leaves here)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx

from sat_oauth_client import (
    AccessToken,
    ConfigurationError,
    OAuthError,
    TokenEndpointError,
    _testmode,
    afetch_token,
    fetch_token,
)

ENDPOINT = "https://as.example/oauth2/token"
ISSUER = "https://as.example"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
OK_BODY: dict[str, Any] = {"access_token": "at-xyz", "token_type": "bearer", "expires_in": 600}


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sat_and_file(write_sat: Callable[[str], tuple[str, str]]) -> tuple[str, str]:
    return write_sat(ISSUER)


@pytest.fixture
def sat(sat_and_file: tuple[str, str]) -> str:
    return sat_and_file[0]


@pytest.fixture
def sat_file(sat_and_file: tuple[str, str]) -> str:
    return sat_and_file[1]


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        yield router


def _form(route: respx.Route) -> dict[str, list[str]]:
    request = route.calls.last.request
    return parse_qs(request.content.decode("ascii"), keep_blank_values=True, strict_parsing=True)


def _config(sat_file: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"token_endpoint": ENDPOINT, "token_file": sat_file}
    config.update(overrides)
    return config


def _expected_form(grant: str, sat: str) -> dict[str, list[str]]:
    if grant == "client_credentials":
        return {
            "grant_type": ["client_credentials"],
            "client_assertion_type": [CLIENT_ASSERTION_TYPE],
            "client_assertion": [sat],
        }
    if grant == "jwt_bearer":
        return {"grant_type": ["urn:ietf:params:oauth:grant-type:jwt-bearer"], "assertion": [sat]}
    return {
        "grant_type": ["urn:ietf:params:oauth:grant-type:token-exchange"],
        "subject_token": [sat],
        "subject_token_type": ["urn:ietf:params:oauth:token-type:jwt"],
    }


GRANTS = ["client_credentials", "jwt_bearer", "token_exchange"]


# --------------------------------------------------------------------------- success


@pytest.mark.parametrize("grant", GRANTS)
def test_fetch_token_success_each_grant(
    mock: respx.MockRouter, sat_file: str, sat: str, grant: str
) -> None:
    route = mock.post(ENDPOINT).respond(200, json=OK_BODY)
    before = time.time()
    token = fetch_token(**_config(sat_file, grant=grant))
    assert isinstance(token, AccessToken)
    assert token.access_token == "at-xyz"
    assert token.token_type == "Bearer"
    assert token.expires_at is not None
    assert before + 600 <= token.expires_at <= time.time() + 600
    assert route.call_count == 1
    assert _form(route) == _expected_form(grant, sat)
    request = route.calls.last.request
    assert request.method == "POST"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert "Authorization" not in request.headers


@pytest.mark.anyio
@pytest.mark.parametrize("grant", GRANTS)
async def test_afetch_token_success_each_grant(
    mock: respx.MockRouter, sat_file: str, sat: str, grant: str
) -> None:
    route = mock.post(ENDPOINT).respond(200, json=OK_BODY)
    token = await afetch_token(**_config(sat_file, grant=grant))
    assert token.access_token == "at-xyz"
    assert token.token_type == "Bearer"
    assert route.call_count == 1
    assert _form(route) == _expected_form(grant, sat)


def test_fetch_token_sends_optional_fields(mock: respx.MockRouter, sat_file: str, sat: str) -> None:
    route = mock.post(ENDPOINT).respond(200, json=OK_BODY)
    fetch_token(
        **_config(
            sat_file,
            client_id="app-1",
            scope=["a", "b"],
            resource=["https://r1.example", "https://r2.example"],
            audience="aud-x",
            extra_params={"tenant": "t1"},
        )
    )
    assert _form(route) == {
        **_expected_form("client_credentials", sat),
        "client_id": ["app-1"],
        "scope": ["a b"],
        "resource": ["https://r1.example", "https://r2.example"],
        "audience": ["aud-x"],
        "tenant": ["t1"],
    }


def test_fetch_token_retries_a_503_then_succeeds(
    mock: respx.MockRouter, sat_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    route = mock.post(ENDPOINT).mock(
        side_effect=[
            httpx.Response(503, text="busy", headers={"Retry-After": "1"}),
            httpx.Response(200, json=OK_BODY),
        ]
    )
    pauses: list[float] = []
    monkeypatch.setattr(_testmode, "pause", pauses.append)
    token = fetch_token(**_config(sat_file))
    assert token.access_token == "at-xyz"
    assert route.call_count == 2
    assert pauses == [1.0]  # the Retry-After wait was asked for (test mode skips sleeping it)


# --------------------------------------------------------------------------- refusals


def test_fetch_token_oauth_error(mock: respx.MockRouter, sat_file: str, sat: str) -> None:
    route = mock.post(ENDPOINT).respond(
        401,
        json={
            "error": "invalid_client",
            "error_description": f"assertion {sat} not trusted",
            "error_uri": "https://as.example/doc",
        },
    )
    with pytest.raises(OAuthError) as info:
        fetch_token(**_config(sat_file))
    exc = info.value
    assert exc.error == "invalid_client"
    assert exc.status_code == 401
    assert exc.error_uri == "https://as.example/doc"
    assert route.call_count == 1  # not retried: the token file did not change
    for part in [sat, *sat.split(".")]:
        assert part not in str(exc)


@pytest.mark.anyio
async def test_afetch_token_oauth_error(mock: respx.MockRouter, sat_file: str) -> None:
    route = mock.post(ENDPOINT).respond(400, json={"error": "invalid_scope"})
    with pytest.raises(OAuthError) as info:
        await afetch_token(**_config(sat_file))
    assert info.value.error == "invalid_scope"
    assert info.value.status_code == 400
    assert route.call_count == 1


@pytest.mark.parametrize(
    ("content", "content_type"),
    [(b"<html><body>Login required</body></html>", "text/html"), (b"", "application/json")],
)
def test_fetch_token_html_or_empty(
    mock: respx.MockRouter, sat_file: str, content: bytes, content_type: str
) -> None:
    mock.post(ENDPOINT).respond(200, content=content, headers={"Content-Type": content_type})
    with pytest.raises(TokenEndpointError) as info:
        fetch_token(**_config(sat_file))
    assert info.value.status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize("content", [b"<html>oops</html>", b""])
async def test_afetch_token_html_or_empty(
    mock: respx.MockRouter, sat_file: str, content: bytes
) -> None:
    mock.post(ENDPOINT).respond(200, content=content)
    with pytest.raises(TokenEndpointError) as info:
        await afetch_token(**_config(sat_file))
    assert info.value.status_code == 200


# --------------------------------------------------------------------------- redirects


def _redirect_routes(mock: respx.MockRouter) -> tuple[respx.Route, respx.Route]:
    target = mock.route(host="collector.example").respond(200, json=OK_BODY)
    token_route = mock.post(ENDPOINT).respond(
        302, headers={"Location": "https://collector.example/steal"}
    )
    return token_route, target


def test_fetch_token_redirect_not_followed(mock: respx.MockRouter, sat_file: str) -> None:
    token_route, target = _redirect_routes(mock)
    with pytest.raises(TokenEndpointError) as info:
        fetch_token(**_config(sat_file))
    assert info.value.status_code == 302
    assert "redirect" in str(info.value)
    assert token_route.call_count == 1
    assert target.called is False


@pytest.mark.anyio
async def test_afetch_token_redirect_not_followed(mock: respx.MockRouter, sat_file: str) -> None:
    token_route, target = _redirect_routes(mock)
    with pytest.raises(TokenEndpointError) as info:
        await afetch_token(**_config(sat_file))
    assert info.value.status_code == 302
    assert token_route.call_count == 1
    assert target.called is False


def test_fetch_token_redirect_not_followed_even_if_client_follows(
    mock: respx.MockRouter, sat_file: str
) -> None:
    _token_route, target = _redirect_routes(mock)
    with (
        httpx.Client(follow_redirects=True) as client,
        pytest.raises(TokenEndpointError) as info,
    ):
        fetch_token(**_config(sat_file, http_client=client))
    assert info.value.status_code == 302
    assert target.called is False


# --------------------------------------------------------------------------- size limit


def _huge_body() -> bytes:
    return b'{"access_token": "at", "token_type": "Bearer"' + b" " * (1024 * 1024 + 100) + b"}"


def test_fetch_token_body_over_one_mib(mock: respx.MockRouter, sat_file: str) -> None:
    mock.post(ENDPOINT).respond(200, content=_huge_body())
    with pytest.raises(TokenEndpointError) as info:
        fetch_token(**_config(sat_file))
    assert info.value.status_code == 200
    assert "1 MiB" in str(info.value)


@pytest.mark.anyio
async def test_afetch_token_body_over_one_mib(mock: respx.MockRouter, sat_file: str) -> None:
    mock.post(ENDPOINT).respond(200, content=_huge_body())
    with pytest.raises(TokenEndpointError) as info:
        await afetch_token(**_config(sat_file))
    assert info.value.status_code == 200


# --------------------------------------------------------------------------- caller's client


def test_caller_client_is_used_and_not_closed(mock: respx.MockRouter, sat_file: str) -> None:
    route = mock.post(ENDPOINT).respond(200, json=OK_BODY)
    with httpx.Client(headers={"X-Trace": "abc"}) as client:
        token = fetch_token(**_config(sat_file, http_client=client))
        assert token.access_token == "at-xyz"
        assert client.is_closed is False
        assert route.calls.last.request.headers["X-Trace"] == "abc"
        # still usable afterwards
        again = fetch_token(**_config(sat_file, http_client=client))
        assert again.access_token == "at-xyz"
        assert client.is_closed is False
    assert route.call_count == 2


def test_caller_client_not_closed_on_error(mock: respx.MockRouter, sat_file: str) -> None:
    mock.post(ENDPOINT).respond(400, json={"error": "invalid_client"})
    with httpx.Client() as client:
        with pytest.raises(OAuthError):
            fetch_token(**_config(sat_file, http_client=client))
        assert client.is_closed is False


@pytest.mark.anyio
async def test_caller_async_client_is_not_closed(mock: respx.MockRouter, sat_file: str) -> None:
    route = mock.post(ENDPOINT).respond(200, json=OK_BODY)
    async with httpx.AsyncClient(headers={"X-Trace": "def"}) as client:
        token = await afetch_token(**_config(sat_file, http_client=client))
        assert token.access_token == "at-xyz"
        assert client.is_closed is False
        assert route.calls.last.request.headers["X-Trace"] == "def"


@pytest.mark.anyio
async def test_fetch_token_refuses_async_client(mock: respx.MockRouter, sat_file: str) -> None:
    route = mock.post(ENDPOINT).respond(200, json=OK_BODY)
    async with httpx.AsyncClient() as client:
        with pytest.raises(ConfigurationError):
            fetch_token(**_config(sat_file, http_client=client))
    assert route.called is False


@pytest.mark.anyio
async def test_afetch_token_refuses_sync_client(mock: respx.MockRouter, sat_file: str) -> None:
    route = mock.post(ENDPOINT).respond(200, json=OK_BODY)
    with httpx.Client() as client, pytest.raises(ConfigurationError):
        await afetch_token(**_config(sat_file, http_client=client))
    assert route.called is False


# --------------------------------------------------------------------------- transport errors


def test_fetch_token_transport_error_after_retries(
    mock: respx.MockRouter, sat_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    route = mock.post(ENDPOINT).mock(side_effect=httpx.ConnectError)
    pauses: list[float] = []
    monkeypatch.setattr(_testmode, "pause", pauses.append)
    with pytest.raises(TokenEndpointError) as info:
        fetch_token(**_config(sat_file))
    assert info.value.status_code is None
    assert route.call_count == 4
    assert "ConnectError" in str(info.value)
    assert len(pauses) == 3  # three backoff waits between four attempts


@pytest.mark.anyio
async def test_afetch_token_transport_error_after_retries(
    mock: respx.MockRouter, sat_file: str, sat: str
) -> None:
    route = mock.post(ENDPOINT).mock(side_effect=httpx.ConnectTimeout)
    with pytest.raises(TokenEndpointError) as info:
        await afetch_token(**_config(sat_file))
    assert info.value.status_code is None
    assert route.call_count == 4
    assert sat not in str(info.value)


def test_fetch_token_persistent_503_gives_status(mock: respx.MockRouter, sat_file: str) -> None:
    route = mock.post(ENDPOINT).respond(503, text="down")
    with pytest.raises(TokenEndpointError) as info:
        fetch_token(**_config(sat_file))
    assert info.value.status_code == 503
    assert route.call_count == 4


def test_retry_attempts_knob(mock: respx.MockRouter, sat_file: str) -> None:
    route = mock.post(ENDPOINT).mock(side_effect=httpx.ConnectError)
    with pytest.raises(TokenEndpointError):
        fetch_token(**_config(sat_file, retry_attempts=2))
    assert route.call_count == 2
