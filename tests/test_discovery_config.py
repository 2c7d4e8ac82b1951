"""Discovery of the token endpoint (RFC 8414 / OpenID) and the checks on configuration."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx

from sat_oauth_client import (
    ConfigurationError,
    DiscoveryError,
    afetch_token,
    fetch_token,
)
from sat_oauth_client._config import Settings, build_settings, env_config, merge_env
from sat_oauth_client._discovery import metadata_urls

ISSUER = "https://as.example/realms/demo"
RFC8414_URL = "https://as.example/.well-known/oauth-authorization-server/realms/demo"
OPENID_URL = "https://as.example/realms/demo/.well-known/openid-configuration"
TOKEN_ENDPOINT = "https://as.example/realms/demo/protocol/openid-connect/token"
OK_BODY: dict[str, Any] = {"access_token": "at-1", "token_type": "Bearer", "expires_in": 300}
LEGACY = "/var/run/secrets/kubernetes.io/serviceaccount/token"


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


def _metadata(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "issuer": ISSUER,
        "token_endpoint": TOKEN_ENDPOINT,
        "jwks_uri": "https://as.example/realms/demo/certs",
    }
    body.update(overrides)
    return body


# --------------------------------------------------------------------------- metadata_urls


@pytest.mark.parametrize(
    ("issuer", "expected"),
    [
        (
            "https://as.example",
            [
                "https://as.example/.well-known/oauth-authorization-server",
                "https://as.example/.well-known/openid-configuration",
            ],
        ),
        (
            "https://as.example/",
            [
                "https://as.example/.well-known/oauth-authorization-server",
                "https://as.example/.well-known/openid-configuration",
            ],
        ),
        (ISSUER, [RFC8414_URL, OPENID_URL]),
        (
            "https://login.example.com:8443/tenant-1/v2.0",
            [
                "https://login.example.com:8443/.well-known/oauth-authorization-server/tenant-1/v2.0",
                "https://login.example.com:8443/tenant-1/v2.0/.well-known/openid-configuration",
            ],
        ),
        (
            "https://as.example/realms/demo/",
            [RFC8414_URL, OPENID_URL],
        ),
        (
            "http://127.0.0.1:9000/issuer",
            [
                "http://127.0.0.1:9000/.well-known/oauth-authorization-server/issuer",
                "http://127.0.0.1:9000/issuer/.well-known/openid-configuration",
            ],
        ),
    ],
)
def test_metadata_urls(issuer: str, expected: list[str]) -> None:
    assert metadata_urls(issuer) == expected


# --------------------------------------------------------------------------- discovery


def test_rfc8414_metadata_is_used(mock: respx.MockRouter, sat_file: str, sat: str) -> None:
    rfc = mock.get(RFC8414_URL).respond(200, json=_metadata())
    openid = mock.get(OPENID_URL).respond(200, json=_metadata(token_endpoint="https://wrong/"))
    token_route = mock.post(TOKEN_ENDPOINT).respond(200, json=OK_BODY)
    token = fetch_token(issuer=ISSUER, token_file=sat_file)
    assert token.access_token == "at-1"
    assert rfc.call_count == 1
    assert openid.called is False
    assert token_route.call_count == 1
    form = parse_qs(token_route.calls.last.request.content.decode())
    assert form["client_assertion"] == [sat]
    assert rfc.calls.last.request.headers["Accept"] == "application/json"


def test_404_falls_back_to_openid(mock: respx.MockRouter, sat_file: str) -> None:
    rfc = mock.get(RFC8414_URL).respond(404)
    openid = mock.get(OPENID_URL).respond(200, json=_metadata())
    token_route = mock.post(TOKEN_ENDPOINT).respond(200, json=OK_BODY)
    token = fetch_token(issuer=ISSUER, token_file=sat_file)
    assert token.access_token == "at-1"
    assert rfc.call_count == 1
    assert openid.call_count == 1
    assert token_route.call_count == 1


@pytest.mark.anyio
async def test_async_discovery_fallback(mock: respx.MockRouter, sat_file: str) -> None:
    mock.get(RFC8414_URL).respond(404)
    mock.get(OPENID_URL).respond(200, json=_metadata())
    token_route = mock.post(TOKEN_ENDPOINT).respond(200, json=OK_BODY)
    token = await afetch_token(issuer=ISSUER, token_file=sat_file)
    assert token.access_token == "at-1"
    assert token_route.call_count == 1


def test_both_documents_missing(mock: respx.MockRouter, sat_file: str) -> None:
    mock.get(RFC8414_URL).respond(404)
    mock.get(OPENID_URL).respond(404)
    token_route = mock.post(TOKEN_ENDPOINT).respond(200, json=OK_BODY)
    with pytest.raises(DiscoveryError):
        fetch_token(issuer=ISSUER, token_file=sat_file)
    assert token_route.called is False


@pytest.mark.parametrize(
    "metadata_issuer", ["https://evil.example/realms/demo", ISSUER + "/", None, 5]
)
def test_issuer_mismatch(mock: respx.MockRouter, sat_file: str, metadata_issuer: Any) -> None:
    mock.get(RFC8414_URL).respond(200, json=_metadata(issuer=metadata_issuer))
    mock.get(OPENID_URL).respond(200, json=_metadata(issuer=metadata_issuer))
    token_route = mock.post(TOKEN_ENDPOINT).respond(200, json=OK_BODY)
    with pytest.raises(DiscoveryError) as info:
        fetch_token(issuer=ISSUER, token_file=sat_file)
    assert "issuer" in str(info.value)
    assert token_route.called is False


def test_issuer_mismatch_on_openid_fallback(mock: respx.MockRouter, sat_file: str) -> None:
    mock.get(RFC8414_URL).respond(404)
    mock.get(OPENID_URL).respond(200, json=_metadata(issuer="https://other.example"))
    token_route = mock.post(TOKEN_ENDPOINT).respond(200, json=OK_BODY)
    with pytest.raises(DiscoveryError):
        fetch_token(issuer=ISSUER, token_file=sat_file)
    assert token_route.called is False


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://as.example/realms/demo/token",
        "http://127.0.0.1/token",
        "ftp://as.example/token",
    ],
)
def test_plain_http_token_endpoint_for_https_issuer(
    mock: respx.MockRouter, sat_file: str, endpoint: str
) -> None:
    mock.get(RFC8414_URL).respond(200, json=_metadata(token_endpoint=endpoint))
    downgraded = mock.route(url__startswith=endpoint.split("/token")[0])
    with pytest.raises(DiscoveryError):
        fetch_token(issuer=ISSUER, token_file=sat_file)
    assert downgraded.called is False


@pytest.mark.parametrize("token_endpoint", [None, "", 42])
def test_metadata_without_token_endpoint(
    mock: respx.MockRouter, sat_file: str, token_endpoint: Any
) -> None:
    mock.get(RFC8414_URL).respond(200, json=_metadata(token_endpoint=token_endpoint))
    with pytest.raises(DiscoveryError):
        fetch_token(issuer=ISSUER, token_file=sat_file)


@pytest.mark.parametrize(
    ("content", "content_type"),
    [(b"<html>hi</html>", "text/html"), (b"[1, 2]", "application/json"), (b"", "text/plain")],
)
def test_metadata_not_a_json_object(
    mock: respx.MockRouter, sat_file: str, content: bytes, content_type: str
) -> None:
    mock.get(RFC8414_URL).respond(200, content=content, headers={"Content-Type": content_type})
    with pytest.raises(DiscoveryError):
        fetch_token(issuer=ISSUER, token_file=sat_file)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_discovery_redirect_not_followed(
    mock: respx.MockRouter, sat_file: str, status: int
) -> None:
    target = mock.route(host="elsewhere.example").respond(
        200, json={"issuer": ISSUER, "token_endpoint": "https://elsewhere.example/token"}
    )
    mock.get(RFC8414_URL).respond(
        status, headers={"Location": "https://elsewhere.example/metadata"}
    )
    openid = mock.get(OPENID_URL).respond(
        status, headers={"Location": "https://elsewhere.example/metadata"}
    )
    token_route = mock.post(TOKEN_ENDPOINT).respond(200, json=OK_BODY)
    with pytest.raises(DiscoveryError):
        fetch_token(issuer=ISSUER, token_file=sat_file)
    assert target.called is False
    assert openid.called is False
    assert token_route.called is False


def test_discovery_transport_error(mock: respx.MockRouter, sat_file: str) -> None:
    rfc = mock.get(RFC8414_URL).mock(side_effect=httpx.ConnectError)
    with pytest.raises(DiscoveryError):
        fetch_token(issuer=ISSUER, token_file=sat_file)
    assert rfc.call_count == 4


def test_discovery_allow_insecure_http_issuer(mock: respx.MockRouter, sat_file: str) -> None:
    issuer = "http://as.internal"
    mock.get("http://as.internal/.well-known/oauth-authorization-server").respond(
        200, json={"issuer": issuer, "token_endpoint": "http://as.internal/token"}
    )
    token_route = mock.post("http://as.internal/token").respond(200, json=OK_BODY)
    token = fetch_token(issuer=issuer, token_file=sat_file, allow_insecure_http=True)
    assert token.access_token == "at-1"
    assert token_route.call_count == 1


# --------------------------------------------------------------------------- configuration


def _settings(**config: Any) -> Any:
    return build_settings(**config)


@pytest.mark.parametrize(
    "url",
    [
        "http://as.example/token",
        "http://10.0.0.5/token",
        "http://localhost.evil.example/token",
        "http://[2001:db8::1]/token",
    ],
)
def test_plain_http_refused_for_remote_hosts(url: str, sat_file: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        _settings(token_endpoint=url, token_file=sat_file)
    assert "http" in str(info.value)
    with pytest.raises(ConfigurationError):
        _settings(issuer=url, token_file=sat_file)


def test_plain_http_refused_by_fetch_token_before_any_request(
    mock: respx.MockRouter, sat_file: str
) -> None:
    route = mock.route().respond(200, json=OK_BODY)
    with pytest.raises(ConfigurationError):
        fetch_token(token_endpoint="http://as.example/token", token_file=sat_file)
    assert route.called is False


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/token",
        "http://127.1.2.3/token",
        "http://localhost/token",
        "http://localhost:9000/oauth/token",
        "http://[::1]:8443/token",
    ],
)
def test_plain_http_allowed_for_loopback(url: str, sat_file: str) -> None:
    assert _settings(token_endpoint=url, token_file=sat_file).token_endpoint == url
    assert _settings(issuer=url, token_file=sat_file).issuer == url


def test_plain_http_allowed_with_opt_in(sat_file: str) -> None:
    settings = _settings(
        token_endpoint="http://as.example/token", token_file=sat_file, allow_insecure_http=True
    )
    assert settings.token_endpoint == "http://as.example/token"
    assert settings.allow_insecure_http is True


def test_fetch_token_over_loopback_http(mock: respx.MockRouter, sat_file: str) -> None:
    route = mock.post("http://127.0.0.1:8080/token").respond(200, json=OK_BODY)
    assert fetch_token(token_endpoint="http://127.0.0.1:8080/token", token_file=sat_file)
    assert route.call_count == 1


@pytest.mark.parametrize("url", ["ftp://as.example/token", "as.example/token", "https://"])
def test_non_http_urls_refused(url: str, sat_file: str) -> None:
    with pytest.raises(ConfigurationError):
        _settings(token_endpoint=url, token_file=sat_file, allow_insecure_http=True)


def test_neither_endpoint_nor_issuer(sat_file: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        _settings(token_file=sat_file)
    assert "token_endpoint" in str(info.value)


def test_both_endpoint_and_issuer(sat_file: str) -> None:
    with pytest.raises(ConfigurationError):
        _settings(token_endpoint="https://as.example/token", issuer=ISSUER, token_file=sat_file)


def test_missing_token_file() -> None:
    with pytest.raises(ConfigurationError) as info:
        _settings(token_endpoint="https://as.example/token")
    assert "token_file" in str(info.value)


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_token_file(value: str) -> None:
    with pytest.raises(ConfigurationError):
        _settings(token_endpoint="https://as.example/token", token_file=value)


def test_missing_token_file_via_fetch_token(mock: respx.MockRouter) -> None:
    route = mock.route().respond(200, json=OK_BODY)
    with pytest.raises(ConfigurationError):
        fetch_token(token_endpoint="https://as.example/token")
    assert route.called is False


@pytest.mark.parametrize(
    "path",
    [
        LEGACY,
        "/var/run/secrets/kubernetes.io/serviceaccount//token",
        "/var/run/secrets/kubernetes.io/serviceaccount/./token",
        "/var/run/secrets/kubernetes.io/other/../serviceaccount/token",
    ],
)
def test_legacy_api_server_token_refused(path: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        _settings(token_endpoint="https://as.example/token", token_file=path)
    assert "Kubernetes API" in str(info.value)


def test_token_file_may_be_a_path_object(tmp_path: Path) -> None:
    path = tmp_path / "token"
    settings = _settings(token_endpoint="https://as.example/token", token_file=path)
    assert settings.token_file == str(path)


@pytest.mark.parametrize("keyword", ["client_secret", "tokenEndpoint", "scopes"])
def test_unknown_keyword_refused(keyword: str, sat_file: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        _settings(token_endpoint="https://as.example/token", token_file=sat_file, **{keyword: "x"})
    assert keyword in str(info.value)


def test_unknown_keyword_refused_by_fetch_token(sat_file: str) -> None:
    with pytest.raises(ConfigurationError):
        fetch_token(
            token_endpoint="https://as.example/token", token_file=sat_file, client_secret="s"
        )


@pytest.mark.parametrize("grant", ["password", "authorization_code", "CLIENT_CREDENTIALS", ""])
def test_bad_grant_refused(grant: str, sat_file: str) -> None:
    with pytest.raises(ConfigurationError):
        _settings(token_endpoint="https://as.example/token", token_file=sat_file, grant=grant)


@pytest.mark.parametrize("grant", ["client_credentials", "jwt_bearer", "token_exchange"])
def test_good_grants_accepted(grant: str, sat_file: str) -> None:
    settings = _settings(
        token_endpoint="https://as.example/token", token_file=sat_file, grant=grant
    )
    assert settings.grant == grant


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("timeout", 0),
        ("timeout", -1),
        ("timeout", "soon"),
        ("retry_attempts", 0),
        ("resource", [1, 2]),
        ("scope", 5),
        ("extra_params", {"a": 1}),
        ("extra_params", ["a"]),
        ("http_client", object()),
        ("clock", 5),
        ("client_id", ""),
    ],
)
def test_bad_values_refused(keyword: str, value: Any, sat_file: str) -> None:
    with pytest.raises(ConfigurationError):
        _settings(
            token_endpoint="https://as.example/token", token_file=sat_file, **{keyword: value}
        )


def test_settings_normalise_values(sat_file: str) -> None:
    settings = _settings(
        token_endpoint="https://as.example/token",
        token_file=sat_file,
        scope=["a", "b"],
        resource="https://r.example",
        audience=["x", "y"],
        timeout="2.5",
    )
    assert settings.scope == "a b"
    assert settings.resource == ("https://r.example",)
    assert settings.audience == ("x", "y")
    assert settings.timeout == 2.5
    assert settings.grant == "client_credentials"


# --------------------------------------------------------------------------- environment


ENV = {
    "SAT_OAUTH_TOKEN_ENDPOINT": "https://as.example/token",
    "SAT_OAUTH_TOKEN_FILE": "/var/run/secrets/tokens/oauth",
    "SAT_OAUTH_CLIENT_ID": "app-1",
    "SAT_OAUTH_SCOPE": "read write",
    "SAT_OAUTH_RESOURCE": "https://api1.example  https://api2.example",
    "SAT_OAUTH_AUDIENCE": "aud-1 aud-2",
    "SAT_OAUTH_GRANT": "token_exchange",
    "SAT_OAUTH_TIMEOUT": "3",
    "SAT_OAUTH_UNRELATED": "ignored",
    "OTHER_VAR": "ignored",
}


def test_env_config_from_mapping() -> None:
    assert env_config(ENV) == {
        "token_endpoint": "https://as.example/token",
        "token_file": "/var/run/secrets/tokens/oauth",
        "client_id": "app-1",
        "scope": "read write",
        "resource": ["https://api1.example", "https://api2.example"],
        "audience": ["aud-1", "aud-2"],
        "grant": "token_exchange",
        "timeout": "3",
    }


def test_env_config_builds_settings() -> None:
    settings = build_settings(**env_config(ENV))
    assert settings.token_endpoint == "https://as.example/token"
    assert settings.resource == ("https://api1.example", "https://api2.example")
    assert settings.audience == ("aud-1", "aud-2")
    assert settings.scope == "read write"
    assert settings.grant == "token_exchange"
    assert settings.timeout == 3.0
    assert settings.client_id == "app-1"


def test_env_config_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SAT_OAUTH_ISSUER", ISSUER)
    monkeypatch.setenv("SAT_OAUTH_TOKEN_FILE", "/tokens/t")
    monkeypatch.setenv("SAT_OAUTH_RESOURCE", " https://one.example ")
    monkeypatch.setenv("SAT_OAUTH_CLIENT_ID", "   ")
    assert env_config() == {
        "issuer": ISSUER,
        "token_file": "/tokens/t",
        "resource": ["https://one.example"],
    }


def settings_from_env(overrides: dict[str, str]) -> Settings:
    return build_settings(**merge_env(env_config(), overrides))


def test_endpoint_override_replaces_the_environment_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SAT_OAUTH_TOKEN_ENDPOINT", "https://as.example/token")
    monkeypatch.setenv("SAT_OAUTH_TOKEN_FILE", "/var/run/secrets/tokens/token")
    settings = settings_from_env({"issuer": "https://issuer.example"})
    assert settings.issuer == "https://issuer.example"
    assert settings.token_endpoint is None


def test_env_config_empty() -> None:
    assert env_config({}) == {}


def test_from_env_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(ENV):
        monkeypatch.setenv(name, ENV[name])
    settings = settings_from_env({"grant": "jwt_bearer", "client_id": "override"})
    assert settings.grant == "jwt_bearer"
    assert settings.client_id == "override"
    assert settings.resource == ("https://api1.example", "https://api2.example")


def test_env_legacy_token_file_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAT_OAUTH_TOKEN_ENDPOINT", "https://as.example/token")
    monkeypatch.setenv("SAT_OAUTH_TOKEN_FILE", LEGACY)
    with pytest.raises(ConfigurationError):
        settings_from_env({})
