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

import pytest

from sat_oauth_client import (
    AccessToken,
    FileTokenSource,
    OAuthError,
    SatOAuthError,
    TokenEndpointError,
    TokenFileError,
    fetch_token,
)
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


@dataclasses.dataclass
class Env:
    kubelet: FakeKubelet
    server: LocalAuthorizationServer
    tmp_path: Path
    closed_port: int

    @property
    def sat(self) -> str:
        assert self.kubelet.current_token is not None
        return self.kubelet.current_token


@dataclasses.dataclass(frozen=True)
class Scenario:
    """Prepare the environment; return fetch_token keywords. `expect` None means success."""

    prepare: Callable[[Env], dict[str, Any]]
    expect: type[SatOAuthError] | None
    status_code: int | None = None


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
    "transport-error": Scenario(_transport_error, TokenEndpointError, None),
    "expired-sat": Scenario(_expired_sat, TokenFileError),
    "missing-file": Scenario(_missing_file, TokenFileError),
}


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _leaks(haystack: str, secrets: dict[str, str]) -> list[str]:
    """Which secrets (or long fragments of the JWT segments) occur in the text."""
    found = [name for name, value in secrets.items() if value and value in haystack]
    for name in ("sat payload", "sat signature"):
        value = secrets[name]
        for start in range(len(value) - FRAGMENT + 1):
            if value[start : start + FRAGMENT] in haystack:
                found.append(f"{FRAGMENT}-char fragment of the {name} at {start}")
                break
    return found


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_no_secret_leaks(
    name: str,
    fake_kubelet: FakeKubelet,
    local_as: LocalAuthorizationServer,
    tmp_path: Path,
    closed_port: int,
    logs: _Capture,
) -> None:
    scenario = SCENARIOS[name]
    env = Env(fake_kubelet, local_as, tmp_path, closed_port)
    config = scenario.prepare(env)
    sat = env.sat
    _header, payload, signature = sat.split(".")

    result: AccessToken | None = None
    error: SatOAuthError | None = None
    try:
        result = fetch_token(**config)
    except SatOAuthError as exc:
        error = exc

    # the scenario did what it says
    if scenario.expect is None:
        assert error is None, repr(error)
        assert result is not None
        assert result.access_token in local_as.issued
    else:
        assert isinstance(error, scenario.expect), repr(error)
        if isinstance(error, (OAuthError, TokenEndpointError)):
            assert error.status_code == scenario.status_code
    if scenario.expect is not TokenFileError and name != "transport-error":
        assert local_as.requests, "the scenario should have reached the AS"
        assert local_as.requests[-1].assertion == sat

    secrets = {"sat": sat, "sat payload": payload, "sat signature": signature}
    for index, access_token in enumerate(local_as.issued):
        secrets[f"access token #{index}"] = access_token

    surfaces: dict[str, str] = {"logs": logs.text}
    if result is not None:
        surfaces["repr(AccessToken)"] = repr(result)
        surfaces["str(AccessToken)"] = str(result)
        surfaces["f-string AccessToken"] = f"{result}"
    for depth, exc in enumerate(_chain(error)):
        surfaces[f"str(exc) depth {depth}"] = str(exc)
        surfaces[f"repr(exc) depth {depth}"] = repr(exc)
        surfaces[f"args(exc) depth {depth}"] = repr(exc.args)
        if depth == 0:
            surfaces["vars(exc)"] = repr(vars(exc))
    with FileTokenSource(env.kubelet.token_path, watch=False) as source:
        with contextlib.suppress(TokenFileError):  # expired: still nothing in the repr
            source.read()
        surfaces["repr(FileTokenSource)"] = repr(source)
        surfaces["str(FileTokenSource)"] = str(source)

    leaks = {where: found for where, text in surfaces.items() if (found := _leaks(text, secrets))}
    assert not leaks, f"secrets leaked: {leaks}"
    # the checks can see a token when one is there
    assert _leaks(f"x{sat}x", secrets)


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
