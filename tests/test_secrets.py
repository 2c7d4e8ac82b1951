"""Security rules (DESIGN "Security rules"): the platform token (SAT) and access tokens never
appear in logs (any level), reprs or exception messages, whatever the authorization server does.

Every scenario runs the real `fetch_token` against the local authorization server on 127.0.0.1
(or a closed loopback port) with every logger captured at DEBUG, then searches everything a user
could see for the SAT, its payload and signature segments (and any long fragment of them), and
for every access token the server issued.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from sat_oauth_client import (
    AccessToken,
    DiscoveryError,
    FileTokenSource,
    OAuthError,
    SatOAuthError,
    TokenEndpointError,
    TokenFileError,
    TokenManager,
    fetch_token,
)
from sat_oauth_client._cli import main
from sat_oauth_client.testing import FakeKubelet, Fault, LocalAuthorizationServer

# A leaked run of this many characters of a segment counts as a leak of the segment ("never any
# part of the request"): a base64url run this long does not occur by chance in our output.
FRAGMENT = 16
LOGGERS = ("sat_oauth_client", "httpx", "httpcore")


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self._formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        # message, the full record (so `extra=` fields are searched) and any traceback text
        self.lines.append(
            f"{self._formatter.format(record)} {record.getMessage()} {record.__dict__!s}"
        )

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def logs() -> Iterator[_Capture]:
    handler = _Capture()
    root = logging.getLogger()
    saved = {name: logging.getLogger(name).level for name in ("", *LOGGERS)}
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    """What a scenario opens (an HTTP client, a respx router) is closed after the test."""
    with contextlib.ExitStack() as opened:
        yield opened


@dataclasses.dataclass
class Env:
    kubelet: FakeKubelet
    server: LocalAuthorizationServer
    tmp_path: Path
    closed_port: int
    stack: contextlib.ExitStack

    @property
    def sat(self) -> str:
        assert self.kubelet.current_token is not None
        return self.kubelet.current_token


@dataclasses.dataclass(frozen=True)
class Scenario:
    """Prepare the environment; return fetch_token keywords. `expect` None means success.

    `reaches_as`: the last request the local AS saw carries the current SAT. `check(env, logs)`:
    what else the scenario must have done (so a leak test cannot pass by testing nothing).
    """

    prepare: Callable[[Env], dict[str, Any]]
    expect: type[SatOAuthError] | None
    status_code: int | None = None
    reaches_as: bool = True
    check: Callable[[Env, str], None] | None = None
    message: str | None = None  # a piece of str(error) that shows the scenario's failure mode


def _defaults(env: Env, **more: Any) -> dict[str, Any]:
    return {
        "token_endpoint": env.server.token_endpoint,
        "token_file": env.kubelet.token_path,
        **more,
    }


def _success(env: Env) -> dict[str, Any]:
    return _defaults(env)


def _refused_401(env: Env) -> dict[str, Any]:
    env.server.fail(401, error="invalid_client")
    return _defaults(env)


def _refused_by_real_verification(env: Env) -> dict[str, Any]:
    # a genuine refusal: the AS does not trust the issuer (no fault injected)
    env.server._trusted.clear()
    return _defaults(env)


def _echo_in_description(env: Env) -> dict[str, Any]:
    body = {
        "error": "invalid_request",
        "error_description": f"assertion {env.sat} rejected; signature "
        f"{env.sat.split('.')[2]} does not verify for payload {env.sat.split('.')[1]}",
    }
    env.server.respond(Fault(status=400, body=json.dumps(body).encode()))
    return _defaults(env)


def _echo_cut_short_in_description(env: Env) -> dict[str, Any]:
    # some servers quote only the start of the assertion
    body = {"error": "invalid_client", "error_description": f"bad assertion '{env.sat[:140]}...'"}
    env.server.respond(Fault(status=401, body=json.dumps(body).encode()))
    return _defaults(env)


def _html_200_echo(env: Env) -> dict[str, Any]:
    body = f"<html><body><p>client_assertion={env.sat}</p></body></html>".encode()
    env.server.respond(Fault(status=200, body=body, content_type="text/html"))
    return _defaults(env)


def _html_200_echo_signature(env: Env) -> dict[str, Any]:
    sig = env.sat.split(".")[2]
    body = f"<html>bad signature {sig}</html>".encode()
    env.server.respond(Fault(status=200, body=body, content_type="text/html"))
    return _defaults(env)


def _html_503_echo(env: Env) -> dict[str, Any]:
    body = f"<html>overloaded while checking {env.sat}</html>".encode()
    env.server.respond(Fault(status=503, body=body, content_type="text/html"), times=10)
    return _defaults(env)


def _empty_body(env: Env) -> dict[str, Any]:
    env.server.respond(Fault(status=200, body=b"", content_type="application/json"))
    return _defaults(env)


def _unavailable_until_budget_ends(env: Env) -> dict[str, Any]:
    env.server.fail(503, times=200)
    return _defaults(env, retry_attempts=100, retry_budget=30)


def _transport_error(env: Env) -> dict[str, Any]:
    return _defaults(env, token_endpoint=f"http://127.0.0.1:{env.closed_port}/token")


def _expired_sat(env: Env) -> dict[str, Any]:
    env.kubelet.rotate(exp=int(time.time()) - 120)
    return _defaults(env)


def _missing_file(env: Env) -> dict[str, Any]:
    return _defaults(env, token_file=str(env.tmp_path / "no-such-dir" / "token"))


def _redirect_302(env: Env) -> dict[str, Any]:
    env.server.respond(
        Fault(status=302, body=b"", headers={"Location": "http://127.0.0.1:9/steal"})
    )
    return _defaults(env)


def _check_one_request(env: Env, logs: str) -> None:
    assert len(env.server.requests) == 1  # not retried, and the Location was not followed


def _over_one_mib(text: str) -> bytes:
    """`text` repeated until the body is just over the 1 MiB limit."""
    unit = text.encode()
    return unit * ((1024 * 1024) // len(unit) + 2)


def _html_200_over_1mib_echo(env: Env) -> dict[str, Any]:
    body = _over_one_mib(f"<p>client_assertion={env.sat}</p>")
    env.server.respond(Fault(status=200, body=body, content_type="text/html"))
    return _defaults(env)


def _oauth_400_over_1mib_echo(env: Env) -> dict[str, Any]:
    description = _over_one_mib(f"assertion {env.sat} rejected; ").decode()
    body = json.dumps({"error": "invalid_request", "error_description": description}).encode()
    env.server.respond(Fault(status=400, body=body))
    return _defaults(env)


def _streamed_over_1mib_echo(env: Env) -> dict[str, Any]:
    # no Content-Length (chunked): the limit has to stop reading instead of refusing up front
    def chunks() -> Iterator[bytes]:
        chunk = f"<p>client_assertion={env.sat}</p>".encode() * 1000
        for _ in range((1024 * 1024) // len(chunk) + 3):
            yield chunk

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=chunks(), headers={"Content-Type": "text/html"})

    client = env.stack.enter_context(httpx.Client(transport=httpx.MockTransport(handler)))
    return _defaults(env, http_client=client)


def _429_echo_then_success(env: Env) -> dict[str, Any]:
    body = f"<html>slow down, {env.sat}</html>".encode()
    env.server.respond(
        Fault(status=429, body=body, content_type="text/html", headers={"Retry-After": "2"})
    )
    return _defaults(env)


def _check_429_then_success(env: Env, logs: str) -> None:
    assert len(env.server.requests) == 2
    assert "'wait_seconds': 2.0" in logs  # Retry-After was honoured (test mode skips the sleep)


def _rotation_race(env: Env) -> dict[str, Any]:
    # the AS refuses the first SAT, quoting it, while the kubelet rotates the file
    old = env.sat
    body = {"error": "invalid_client", "error_description": f"assertion {old} expired"}
    env.server.respond(Fault(status=401, body=json.dumps(body).encode()))
    rotated: list[str] = []

    def rotate_on_first_token_response(response: httpx.Response) -> None:
        if response.request.url.path == "/token" and not rotated:
            rotated.append(env.kubelet.rotate())

    client = env.stack.enter_context(
        httpx.Client(event_hooks={"response": [rotate_on_first_token_response]})
    )
    return _defaults(env, http_client=client)


def _check_rotation_race(env: Env, logs: str) -> None:
    first, second = (r.assertion for r in env.server.requests)
    assert first != second == env.sat
    assert "token rotated while the request was in flight" in logs


def _discovery_issuer_mismatch(env: Env) -> dict[str, Any]:
    issuer = "https://as.example.test"
    router = env.stack.enter_context(respx.mock(assert_all_called=False, assert_all_mocked=True))
    router.get(f"{issuer}/.well-known/oauth-authorization-server").respond(
        200,
        json={"issuer": "https://evil.example.test", "token_endpoint": env.server.token_endpoint},
    )
    return {"issuer": issuer, "token_file": env.kubelet.token_path}


def _check_discovery_mismatch(env: Env, logs: str) -> None:
    assert env.server.requests == []  # the SAT never left: the metadata was refused first


SCENARIOS = {
    "success": Scenario(_success, None),
    "oauth-401-invalid_client": Scenario(_refused_401, OAuthError, 401),
    "oauth-401-untrusted-issuer": Scenario(_refused_by_real_verification, OAuthError, 401),
    "oauth-400-description-echoes-assertion": Scenario(_echo_in_description, OAuthError, 400),
    "oauth-401-description-echoes-assertion-cut-short": Scenario(
        _echo_cut_short_in_description, OAuthError, 401
    ),
    "html-200-echoes-assertion": Scenario(_html_200_echo, TokenEndpointError, 200),
    "html-200-echoes-signature": Scenario(_html_200_echo_signature, TokenEndpointError, 200),
    "html-503-echoes-assertion": Scenario(_html_503_echo, TokenEndpointError, 503),
    "empty-body": Scenario(_empty_body, TokenEndpointError, 200),
    "503-until-budget-ends": Scenario(_unavailable_until_budget_ends, TokenEndpointError, 503),
    "transport-error": Scenario(_transport_error, TokenEndpointError, None, reaches_as=False),
    "expired-sat": Scenario(_expired_sat, TokenFileError, reaches_as=False),
    "missing-file": Scenario(_missing_file, TokenFileError, reaches_as=False),
    "redirect-302": Scenario(
        _redirect_302,
        TokenEndpointError,
        302,
        check=_check_one_request,
        message="redirect to http://127.0.0.1:9/steal not followed",
    ),
    "html-200-over-1mib-echoes-assertion": Scenario(
        _html_200_over_1mib_echo, TokenEndpointError, 200, message="larger than 1 MiB"
    ),
    "oauth-400-over-1mib-echoes-assertion": Scenario(
        _oauth_400_over_1mib_echo, TokenEndpointError, 400, message="larger than 1 MiB"
    ),
    "chunked-200-over-1mib-echoes-assertion": Scenario(
        _streamed_over_1mib_echo,
        TokenEndpointError,
        200,
        reaches_as=False,
        message="larger than 1 MiB",
    ),
    "429-retry-after-echoes-assertion-then-success": Scenario(
        _429_echo_then_success, None, check=_check_429_then_success
    ),
    "rotation-race-401-echoes-old-sat-then-success": Scenario(
        _rotation_race, None, check=_check_rotation_race
    ),
    "discovery-issuer-mismatch": Scenario(
        _discovery_issuer_mismatch,
        DiscoveryError,
        reaches_as=False,
        check=_check_discovery_mismatch,
        message="does not equal the configured issuer",
    ),
}


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _sat_secrets(*sats: str | None) -> dict[str, str]:
    """Each distinct SAT, with its payload and signature segments (searched in fragments too)."""
    secrets: dict[str, str] = {}
    distinct = [sat for sat in dict.fromkeys(sats) if sat]
    for index, sat in enumerate(distinct):
        label = "sat" if index == 0 else f"sat #{index + 1}"
        _header, payload, signature = sat.split(".")
        secrets.update({label: sat, f"{label} payload": payload, f"{label} signature": signature})
    return secrets


def _all_secrets(server: LocalAuthorizationServer, *sats: str | None) -> dict[str, str]:
    """Every SAT the test knows of or the AS received, and every access token the AS issued."""
    secrets = _sat_secrets(*sats, *(r.assertion for r in server.requests))
    for index, access_token in enumerate(server.issued):
        secrets[f"access token #{index}"] = access_token
    return secrets


def _leaks(haystack: str, secrets: dict[str, str]) -> list[str]:
    """Which secrets (or long fragments of the JWT segments) occur in the text."""
    found = [name for name, value in secrets.items() if value and value in haystack]
    for name, value in secrets.items():
        if not name.endswith(("payload", "signature")):
            continue
        for start in range(len(value) - FRAGMENT + 1):
            if value[start : start + FRAGMENT] in haystack:
                found.append(f"{FRAGMENT}-char fragment of the {name} at {start}")
                break
    return found


def _error_surfaces(error: BaseException | None) -> dict[str, str]:
    surfaces: dict[str, str] = {}
    for depth, exc in enumerate(_chain(error)):
        surfaces[f"str(exc) depth {depth}"] = str(exc)
        surfaces[f"repr(exc) depth {depth}"] = repr(exc)
        surfaces[f"args(exc) depth {depth}"] = repr(exc.args)
        if depth == 0:
            surfaces["vars(exc)"] = repr(vars(exc))
    return surfaces


def _token_surfaces(result: AccessToken | None) -> dict[str, str]:
    if result is None:
        return {}
    return {
        "repr(AccessToken)": repr(result),
        "str(AccessToken)": str(result),
        "f-string AccessToken": f"{result}",
    }


def _assert_no_leaks(surfaces: dict[str, str], secrets: dict[str, str]) -> None:
    leaks = {where: found for where, text in surfaces.items() if (found := _leaks(text, secrets))}
    assert not leaks, f"secrets leaked: {leaks}"
    # the checks can see a token when one is there
    for name, value in secrets.items():
        assert _leaks(f"x{value}x", secrets), name


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_no_secret_leaks(
    name: str,
    fake_kubelet: FakeKubelet,
    local_as: LocalAuthorizationServer,
    tmp_path: Path,
    closed_port: int,
    stack: contextlib.ExitStack,
    logs: _Capture,
) -> None:
    scenario = SCENARIOS[name]
    env = Env(fake_kubelet, local_as, tmp_path, closed_port, stack)
    config = scenario.prepare(env)
    sat = env.sat

    result: AccessToken | None = None
    error: SatOAuthError | None = None
    try:
        result = fetch_token(**config)
    except SatOAuthError as exc:
        error = exc
    stack.close()  # a respx router stops here, before anything else talks HTTP

    # the scenario did what it says
    if scenario.expect is None:
        assert error is None, repr(error)
        assert result is not None
        assert result.access_token in local_as.issued
    else:
        assert isinstance(error, scenario.expect), repr(error)
        if isinstance(error, (OAuthError, TokenEndpointError)):
            assert error.status_code == scenario.status_code
    if scenario.message is not None:
        assert scenario.message in str(error)
    if scenario.reaches_as:
        assert local_as.requests, "the scenario should have reached the AS"
        assert local_as.requests[-1].assertion == env.sat
    if scenario.check is not None:
        scenario.check(env, logs.text)

    secrets = _all_secrets(local_as, sat, env.sat)
    surfaces: dict[str, str] = {"logs": logs.text}
    surfaces.update(_token_surfaces(result))
    surfaces.update(_error_surfaces(error))
    with FileTokenSource(env.kubelet.token_path, watch=False) as source:
        with contextlib.suppress(TokenFileError):  # expired: still nothing in the repr
            source.read()
        surfaces["repr(FileTokenSource)"] = repr(source)
        surfaces["str(FileTokenSource)"] = str(source)

    _assert_no_leaks(surfaces, secrets)


def test_logs_are_actually_captured(
    fake_kubelet: FakeKubelet, local_as: LocalAuthorizationServer, logs: _Capture
) -> None:
    """The harness sees DEBUG records of our logger and httpx, including `extra` fields."""
    local_as.fail(503)
    fetch_token(token_endpoint=local_as.token_endpoint, token_file=fake_kubelet.token_path)

    assert "token request" in logs.text  # sat_oauth_client DEBUG
    assert "wait_seconds" in logs.text  # an `extra=` field of the retry warning
    assert "HTTP Request" in logs.text  # httpx
    assert any(" httpcore" in line for line in logs.lines)


def test_watching_source_repr_has_no_token(fake_kubelet: FakeKubelet) -> None:
    with FileTokenSource(fake_kubelet.token_path) as source:
        value = source.read()
        assert value == fake_kubelet.current_token
        for text in (repr(source), str(source)):
            assert value not in text
            assert value.split(".")[2] not in text


def test_access_token_extra_values_are_not_shown() -> None:
    token = AccessToken(
        access_token="at-secret-value-123456",
        extra={"refresh_token": "rt-secret-value-123456", "id_token": "id-secret-value-1234"},
    )
    for text in (repr(token), str(token)):
        assert "at-secret-value-123456" not in text
        assert "rt-secret-value-123456" not in text
        assert "id-secret-value-1234" not in text


def test_redirect_location_echoing_the_assertion_is_scrubbed(
    fake_kubelet: FakeKubelet, local_as: LocalAuthorizationServer
) -> None:
    """A 302 whose Location quotes the assertion (a gateway bouncing the POST to a login page).

    Only the package's own error is searched: httpcore's DEBUG trace prints response headers
    verbatim, which no client library can prevent.
    """
    sat = fake_kubelet.current_token
    location = f"http://127.0.0.1:9/login?client_assertion={sat}"
    local_as.respond(Fault(status=302, body=b"", headers={"Location": location}))

    with pytest.raises(TokenEndpointError) as info:
        fetch_token(token_endpoint=local_as.token_endpoint, token_file=fake_kubelet.token_path)

    assert info.value.status_code == 302
    assert "127.0.0.1:9/login" in str(info.value)
    _assert_no_leaks(_error_surfaces(info.value), _all_secrets(local_as, sat))


# -- TokenManager: a background refresh that fails in the advisory window -------------------------

LONG_SAT_LIFETIME = 10 * 365 * 86400.0  # signed on the real clock; the fake clock never expires it
AT_LIFETIME = 3600.0
IN_ADVISORY_WINDOW = 0.85 * AT_LIFETIME  # past refresh_at (80 % with jitter off), before expiry


def test_no_secret_leaks_when_a_background_refresh_fails(
    tmp_path: Path, clock: Any, logs: _Capture
) -> None:
    with LocalAuthorizationServer(clock=clock, token_lifetime=AT_LIFETIME) as server:
        # the AS checks iat/nbf on the real clock, so the kubelet signs on it (as in test_manager)
        kubelet = FakeKubelet(
            tmp_path / "sat", audience=[server.issuer], lifetime=LONG_SAT_LIFETIME
        )
        server.trust(kubelet)
        sat = kubelet.rotate()
        manager = TokenManager(
            token_endpoint=server.token_endpoint,
            token_file=kubelet.token_path,
            clock=clock,
            refresh_jitter_fraction=0.0,
        )
        try:
            first = manager.get_token()
            assert len(server.requests) == 1
            clock.advance(IN_ADVISORY_WINDOW)
            # every attempt of the refresh: an overloaded AS quoting the assertion it got
            echo = f"<html>overloaded while checking {sat}</html>".encode()
            server.respond(Fault(status=503, body=echo, content_type="text/html"), times=100)

            assert manager.get_token() is first  # cached: the refresh runs in the background
            assert server.wait_for_requests(1 + 4)  # one refresh, four attempts
            flight = manager._flight
            if flight is not None:
                assert flight.event.wait(30), "background refresh never finished"
            assert manager._flight is None
            assert manager._state.failures == 1
            assert manager.get_token() is first  # still served through the outage
            assert len(server.requests) == 1 + 4

            assert "background token refresh failed" in logs.text
            assert "'error': 'TokenEndpointError'" in logs.text
            assert "token endpoint unavailable; retrying" in logs.text
            surfaces: dict[str, str] = {
                "logs": logs.text,
                "repr(TokenManager)": repr(manager),
                "str(TokenManager)": str(manager),
            }
            surfaces.update(_token_surfaces(first))
            refusal = manager._state.refusal
            surfaces.update(_error_surfaces(refusal))  # None for a transient failure: nothing
        finally:
            manager.close()
        assert {r.assertion for r in server.requests} == {sat}
        _assert_no_leaks(surfaces, _all_secrets(server, sat))


# -- the command line with -vv, when the token request fails --------------------------------------


def _cli_refused_with_echo(server: LocalAuthorizationServer, sat: str) -> dict[str, str]:
    body = {"error": "invalid_client", "error_description": f"bad assertion {sat}"}
    server.respond(Fault(status=401, body=json.dumps(body).encode()))
    return {}


def _cli_unavailable_with_echo(server: LocalAuthorizationServer, sat: str) -> dict[str, str]:
    echo = f"<html>overloaded while checking {sat}</html>".encode()
    server.respond(Fault(status=503, body=echo, content_type="text/html"), times=10)
    return {}


def _cli_redirect(server: LocalAuthorizationServer, sat: str) -> dict[str, str]:
    server.respond(Fault(status=302, body=b"", headers={"Location": "http://127.0.0.1:9/steal"}))
    return {}


def _cli_access_token_in_a_bad_response(
    server: LocalAuthorizationServer, sat: str
) -> dict[str, str]:
    # an access token inside a 200 that is not a token response (no token_type)
    access_token = "at-" + "s3cr3tValue" * 4
    body = {"access_token": access_token, "note": f"for {sat}"}
    server.respond(Fault(status=200, body=json.dumps(body).encode()))
    return {"access token in the bad response": access_token}


CLI_FAILURES = {
    "401-echoes-assertion": (_cli_refused_with_echo, 4, 1),
    "503-echoes-assertion-until-retries-end": (_cli_unavailable_with_echo, 5, 4),
    "302-redirect": (_cli_redirect, 5, 1),
    "200-without-token_type": (_cli_access_token_in_a_bad_response, 5, 1),
}


@pytest.mark.parametrize("name", list(CLI_FAILURES))
def test_cli_verbose_failure_shows_no_token(
    name: str,
    fake_kubelet: FakeKubelet,
    local_as: LocalAuthorizationServer,
    capsys: pytest.CaptureFixture[str],
    logs: _Capture,
) -> None:
    prepare, exit_code, requests = CLI_FAILURES[name]
    sat = fake_kubelet.current_token
    assert sat is not None
    extra_secrets = prepare(local_as, sat)

    code = main(
        [
            "-vv",
            "token",
            "--token-endpoint",
            local_as.token_endpoint,
            "--token-file",
            fake_kubelet.token_path,
        ]
    )
    out, err = capsys.readouterr()

    assert code == exit_code, err
    assert out == ""
    assert "sat-oauth-client: error: " in err
    assert "DEBUG sat_oauth_client: token request" in err  # -vv really logged to stderr
    assert len(local_as.requests) == requests
    assert {r.assertion for r in local_as.requests} == {sat}
    surfaces = {"stdout": out, "stderr": err, "logs": logs.text}
    _assert_no_leaks(surfaces, {**_all_secrets(local_as, sat), **extra_secrets})
