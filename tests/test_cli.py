"""The command line, called as `main([...])` against the local AS and the fake kubelet."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time

import jwt
import pytest

from sat_oauth_client import __version__
from sat_oauth_client._cli import main
from sat_oauth_client.testing import FakeKubelet, LocalAuthorizationServer

ENV_NAMES = (
    "TOKEN_ENDPOINT",
    "ISSUER",
    "TOKEN_FILE",
    "CLIENT_ID",
    "SCOPE",
    "RESOURCE",
    "AUDIENCE",
    "GRANT",
    "TIMEOUT",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own SAT_OAUTH_* must not leak into these tests."""
    for name in ENV_NAMES:
        monkeypatch.delenv(f"SAT_OAUTH_{name}", raising=False)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _assert_one_error_line(err: str, out: str, *secrets: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sat-oauth-client: error: ")
    assert out == ""
    for secret in secrets:
        assert secret not in err
        assert secret not in out


def _sat_secrets(kubelet: FakeKubelet) -> tuple[str, str]:
    token = kubelet.current_token
    assert token is not None
    return token, token.rsplit(".", 1)[1]


# -- token -------------------------------------------------------------------------------------


def test_token_prints_exactly_the_access_token(
    fake_kubelet: FakeKubelet,
    local_as: LocalAuthorizationServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        [
            "token",
            "--token-endpoint",
            local_as.token_endpoint,
            "--token-file",
            fake_kubelet.token_path,
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0
    assert err == ""
    assert out.endswith("\n")
    assert out.strip() in local_as.issued
    assert list(local_as.issued) == [out.strip()]
    assert local_as.requests[-1].assertion == fake_kubelet.current_token


def test_token_json_has_the_whole_response(
    fake_kubelet: FakeKubelet,
    local_as: LocalAuthorizationServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        [
            "token",
            "--json",
            "--token-endpoint",
            local_as.token_endpoint,
            "--token-file",
            fake_kubelet.token_path,
            "--scope",
            "read write",
            "--scope",
            "admin",
        ]
    )
    out, _ = capsys.readouterr()
    assert code == 0
    body = json.loads(out)
    assert body["access_token"] in local_as.issued
    assert body["token_type"] == "Bearer"
    assert isinstance(body["expires_at"], float)
    assert body["scope"] == "read write admin"
    assert local_as.requests[-1].field("scope") == "read write admin"


def test_token_from_env_and_a_flag_overrides_it(
    fake_kubelet: FakeKubelet,
    local_as: LocalAuthorizationServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SAT_OAUTH_TOKEN_ENDPOINT", local_as.token_endpoint)
    monkeypatch.setenv("SAT_OAUTH_TOKEN_FILE", fake_kubelet.token_path)
    monkeypatch.setenv("SAT_OAUTH_GRANT", "jwt_bearer")
    monkeypatch.setenv("SAT_OAUTH_RESOURCE", "https://env.example/a https://env.example/b")
    assert main(["token"]) == 0
    first = local_as.requests[-1]
    assert first.field("grant_type") == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert first.form["resource"] == ["https://env.example/a", "https://env.example/b"]

    assert main(["token", "--grant", "token_exchange", "--resource", "https://flag.example"]) == 0
    second = local_as.requests[-1]
    assert second.field("grant_type") == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert second.form["resource"] == ["https://flag.example"]
    out, _ = capsys.readouterr()
    assert out.split() == list(local_as.issued)


def test_an_issuer_flag_replaces_an_endpoint_from_env(
    fake_kubelet: FakeKubelet,
    local_as: LocalAuthorizationServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SAT_OAUTH_TOKEN_ENDPOINT", f"http://127.0.0.1:{_closed_port()}/token")
    monkeypatch.setenv("SAT_OAUTH_TOKEN_FILE", fake_kubelet.token_path)
    assert main(["token", "--issuer", local_as.issuer]) == 0  # discovery finds the endpoint
    out, _ = capsys.readouterr()
    assert out.strip() in local_as.issued


# -- exit codes --------------------------------------------------------------------------------


def test_exit_2_without_an_endpoint(
    fake_kubelet: FakeKubelet, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "--token-file", fake_kubelet.token_path]) == 2
    out, err = capsys.readouterr()
    _assert_one_error_line(err, out, *_sat_secrets(fake_kubelet))
    assert "--token-endpoint" in err
    assert "SAT_OAUTH_ISSUER" in err


def test_exit_2_without_a_token_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--token-endpoint", "https://as.example/token"]) == 2
    out, err = capsys.readouterr()
    _assert_one_error_line(err, out)
    assert "--token-file" in err


def test_exit_2_for_plain_http_to_a_remote_host(
    fake_kubelet: FakeKubelet, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "token",
            "--token-endpoint",
            "http://as.example/token",
            "--token-file",
            fake_kubelet.token_path,
        ]
    )
    out, err = capsys.readouterr()
    assert code == 2
    _assert_one_error_line(err, out, *_sat_secrets(fake_kubelet))
    assert "https" in err


def test_exit_2_for_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--grant", "password"]) == 2
    assert main(["token", "--timeout", "-1"]) == 2
    assert main([]) == 2
    assert main(["no-such-command"]) == 2
    _, err = capsys.readouterr()
    assert "invalid choice" in err
    assert "Traceback" not in err


def test_exit_3_for_a_missing_token_file(
    tmp_path: os.PathLike[str], capsys: pytest.CaptureFixture[str]
) -> None:
    missing = os.path.join(tmp_path, "nothing-here", "token")
    code = main(["token", "--token-endpoint", "https://as.example/token", "--token-file", missing])
    out, err = capsys.readouterr()
    assert code == 3
    _assert_one_error_line(err, out)
    assert missing in err


def test_exit_4_when_the_as_refuses(
    fake_kubelet: FakeKubelet,
    local_as: LocalAuthorizationServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    local_as.fail(401, error="invalid_client")
    code = main(
        [
            "token",
            "--token-endpoint",
            local_as.token_endpoint,
            "--token-file",
            fake_kubelet.token_path,
        ]
    )
    out, err = capsys.readouterr()
    assert code == 4
    _assert_one_error_line(err, out, *_sat_secrets(fake_kubelet))
    assert "invalid_client" in err
    assert len(local_as.requests) == 1


def test_exit_5_when_the_endpoint_is_unreachable(
    fake_kubelet: FakeKubelet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # as in a plain shell: no handler anywhere, so logging's last resort would print warnings
    monkeypatch.setattr(logging.root, "handlers", [])
    endpoint = f"http://127.0.0.1:{_closed_port()}/token"
    code = main(["token", "--token-endpoint", endpoint, "--token-file", fake_kubelet.token_path])
    out, err = capsys.readouterr()
    assert code == 5
    _assert_one_error_line(err, out, *_sat_secrets(fake_kubelet))


def test_verbose_logs_without_tokens(
    fake_kubelet: FakeKubelet,
    local_as: LocalAuthorizationServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["token", "--token-endpoint", local_as.token_endpoint]
    code = main(["-vv", *args, "--token-file", fake_kubelet.token_path])
    out, err = capsys.readouterr()
    assert code == 0
    for secret in (*_sat_secrets(fake_kubelet), out.strip()):
        assert secret not in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


# -- inspect -----------------------------------------------------------------------------------


def test_inspect_shows_claims_and_never_the_token(
    fake_kubelet: FakeKubelet,
    local_as: LocalAuthorizationServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["inspect", "--token-file", fake_kubelet.token_path, "--issuer", local_as.issuer])
    out, err = capsys.readouterr()
    assert code == 0
    assert err == ""
    for expected in (
        fake_kubelet.subject,
        fake_kubelet.issuer,
        local_as.issuer,
        fake_kubelet.namespace,
        fake_kubelet.pod,
        fake_kubelet.service_account,
        fake_kubelet.kid,
        "RS256",
        "NOT verified",
        "no warnings",
    ):
        assert expected in out
    for secret in _sat_secrets(fake_kubelet):
        assert secret not in out
    assert local_as.requests == []  # nothing was sent


def test_inspect_reads_env_and_warns_about_a_multi_valued_aud(
    fake_kubelet: FakeKubelet,
    local_as: LocalAuthorizationServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_kubelet.rotate(aud=[local_as.issuer, "https://other.example"])
    monkeypatch.setenv("SAT_OAUTH_TOKEN_FILE", fake_kubelet.token_path)
    monkeypatch.setenv("SAT_OAUTH_ISSUER", local_as.issuer)
    assert main(["inspect"]) == 0
    out, _ = capsys.readouterr()
    assert "aud has 2 values" in out
    for secret in _sat_secrets(fake_kubelet):
        assert secret not in out


def test_inspect_warns_about_a_kubernetes_api_audience(
    fake_kubelet: FakeKubelet, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_kubelet.rotate(aud=["https://kubernetes.default.svc.cluster.local"])
    assert main(["inspect", "--token-file", fake_kubelet.token_path]) == 0
    out, _ = capsys.readouterr()
    assert "Kubernetes API server" in out
    assert "--issuer" in out  # suggests passing the issuer to check aud


def test_inspect_an_expired_token_with_keycloak_and_entra_notes(
    fake_kubelet: FakeKubelet, capsys: pytest.CaptureFixture[str]
) -> None:
    now = int(fake_kubelet.clock())
    fake_kubelet.rotate(iat=now - 7300, nbf=now - 7300, exp=now - 100)
    assert main(["inspect", "--token-file", fake_kubelet.token_path]) == 0
    out, _ = capsys.readouterr()
    assert "EXPIRED 100 s ago" in out or "EXPIRED 101 s ago" in out
    assert "3600" in out  # Keycloak: issued too long ago, and lives too long

    fake_kubelet.rotate(aud=["api://AzureADTokenExchange"])
    assert main(["inspect", "--token-file", fake_kubelet.token_path]) == 0
    out, _ = capsys.readouterr()
    assert "client_id is required" in out
    entra = "https://login.microsoftonline.com/tenant/v2.0"
    args = ["inspect", "--token-file", fake_kubelet.token_path, "--issuer", entra]
    assert main([*args, "--client-id", "app"]) == 0
    out = capsys.readouterr().out
    assert "client_id is required" not in out
    assert "does not contain the AS issuer" not in out  # Entra's aud is not its issuer
    assert "no warnings" in out


def test_inspect_json(fake_kubelet: FakeKubelet, capsys: pytest.CaptureFixture[str]) -> None:
    fake_kubelet.rotate(aud=["a", "b"])
    assert main(["inspect", "--json", "--token-file", fake_kubelet.token_path]) == 0
    out, _ = capsys.readouterr()
    body = json.loads(out)
    assert body["claims"]["sub"] == fake_kubelet.subject
    assert body["claims"]["kubernetes.io"]["namespace"] == fake_kubelet.namespace
    assert body["signature_verified"] is False
    assert body["expired"] is False
    assert any("aud has 2 values" in w for w in body["warnings"])
    for secret in _sat_secrets(fake_kubelet):
        assert secret not in out


def test_inspect_exit_codes(tmp_path: os.PathLike[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect"]) == 2
    missing = os.path.join(tmp_path, "token")
    assert main(["inspect", "--token-file", missing]) == 3
    with open(missing, "w") as f:
        f.write("not-a-jwt-but-secret-looking-text\n")
    assert main(["inspect", "--token-file", missing]) == 3
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 3
    assert "secret-looking" not in err


# -- python -m and the demo --------------------------------------------------------------------


def test_python_m_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sat_oauth_client", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for command in ("token", "inspect", "demo"):
        assert command in result.stdout


# A 2.5 s SAT rotates at 2 s, and the 1 s access token is refreshed every 0.5 s, so a 3.5 s run
# sees SAT #2 written and then carried by a token request.
DEMO_ARGS = [
    "--sat-lifetime",
    "2.5",
    "--token-lifetime",
    "1",
    "--interval",
    "0.1",
    "--duration",
    "3.5",
]


def test_demo_runs_end_to_end_with_rotations_and_refreshes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    code = main(["demo", *DEMO_ARGS])
    elapsed = time.monotonic() - started
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert elapsed < 8, elapsed
    assert "\x1b[" not in out  # no colour when stdout is not a terminal

    # the kubelet rotated: a second SAT was written, and the client's next request carried it
    assert re.search(r"kubelet +SAT #1 sat:[0-9a-f]{12} written \(valid 2\.5 s\)", out), out
    assert re.search(r"kubelet +SAT #2 sat:[0-9a-f]{12} written \(valid 2\.5 s\)", out), out
    assert "SAT #3" not in out
    with_sat = re.findall(r"token request \(client_credentials\) with sat:\w+ \(#(\d)\), (.*)", out)
    assert {number for number, _ in with_sat} == {"1", "2"}, out
    assert {which for _, which in with_sat} == {"the current SAT"}, out

    # the 1 s access token was replaced several times, always before the old one ran out
    issued = [int(n) for n in re.findall(r"issued access token #(\d+) at:[0-9a-f]{12}", out)]
    assert issued == list(range(1, len(issued) + 1))
    assert len(issued) >= 3, out
    used = set(re.findall(r"GET /resource -> \d+ with at:[0-9a-f]{12} \(#(\d+)\)", out))
    assert len(used) >= 3, out  # the client moved on to new tokens, not just the AS issuing them

    # only 200s, no failed call, no stale SAT, and the verdict says so
    statuses = re.findall(r"GET /resource -> (\d+)", out)
    assert statuses, out
    assert set(statuses) == {"200"}, out
    for bad in ("no access token", "failed", "NOT the current SAT", "NOT all OK", "after one 401"):
        assert bad not in out, bad
    summary = re.search(r"summary \(done after [\d.]+ s\): (.*)", out)
    assert summary is not None, out
    assert summary.group(1) == "all OK"
    assert "  SAT rotations   2 (the first one included)" in out
    assert f"  access tokens   {len(issued)} issued" in out
    assert f"  token requests  {len(with_sat)}, all with the current SAT" in out
    calls = re.search(r"  resource calls  (\d+) \((\d+) x 200\)$", out, re.MULTILINE)
    assert calls is not None, out
    assert calls.group(1) == calls.group(2)
    assert int(calls.group(1)) >= 15  # about one every 0.1 s for 3.5 s


@pytest.mark.parametrize("lifetime", [1.5, 3.0])
def test_demo_kubelet_tokens_outlive_their_rotation(
    tmp_path: os.PathLike[str], lifetime: float
) -> None:
    """What `demo --sat-lifetime 1.5` (accepted, and shown as "valid 1.5 s") runs into: the
    token lives at most int(1.5) = 1 s, so every call between its expiry and the rotation at
    1.2 s fails with "no access token" and the demo ends NOT all OK."""
    from sat_oauth_client import _cli

    now = 1_800_000_000.9  # late in a second: the floored iat costs 0.9 s
    kubelet = _cli._demo_kubelet(
        os.path.join(tmp_path, "sat"), "http://127.0.0.1:1", lifetime, lambda *_: None
    )
    kubelet.clock = lambda: now
    claims = jwt.decode(kubelet.mint(), options={"verify_signature": False})
    assert claims["iat"] == int(now)
    assert claims["exp"] - now > 0.8 * lifetime  # still valid when start_rotation replaces it


def test_demo_ctrl_c_ends_cleanly_with_a_summary(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sat_oauth_client import _cli

    real_call = _cli._DemoView.call
    calls = []

    def call_then_interrupt(self: _cli._DemoView, client: object, url: str) -> None:
        calls.append(url)
        if len(calls) > 1:
            raise KeyboardInterrupt
        real_call(self, client, url)

    monkeypatch.setattr(_cli._DemoView, "call", call_then_interrupt)
    before = {t.name for t in threading.enumerate()}
    assert main(["demo", "--duration", "30", "--interval", "0.01"]) == 0
    out, _ = capsys.readouterr()
    assert "interrupted after" in out
    assert "all OK" in out
    assert "resource calls  1 (1 x 200)" in out
    leftover = {t.name for t in threading.enumerate()} - before
    assert not leftover & {"fake-kubelet-rotation", "local-authorization-server"}
