"""Retry policy (DESIGN "Retry policy"), tested without sleeping.

Most tests drive the sans-I/O flow `Exchange(settings).flow()` by hand: every `Send` is answered
with a hand-made `httpx.Response` (or an `httpx.TransportError` thrown in), every `ReadSat` with a
real `SatSnapshot`, and every `Sleep` is only recorded. A few end-to-end tests run the real
`fetch_token` / `afetch_token` against the local authorization server on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import email.utils
import socket
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest

from sat_oauth_client import (
    AccessToken,
    FileTokenSource,
    OAuthError,
    TokenEndpointError,
    _testmode,
    afetch_token,
    fetch_token,
)
from sat_oauth_client._config import build_settings
from sat_oauth_client._exchange import Exchange, ReadSat, Send, Sleep
from sat_oauth_client._source import SatSnapshot
from sat_oauth_client.testing import FakeKubelet, LocalAuthorizationServer

ENDPOINT = "http://127.0.0.1:9/token"  # never contacted by the hand-driven tests

# --------------------------------------------------------------------------------------------
# The hand driver
# --------------------------------------------------------------------------------------------

Outcome = httpx.Response | BaseException
Reply = Callable[[httpx.Request], Outcome]


def status(code: int, *, error: str | None = None, **headers: str) -> Reply:
    """A JSON reply: an RFC 6749 error body for non-200, a token response for 200."""

    def reply(request: httpx.Request) -> httpx.Response:
        if code == 200:
            body: dict[str, Any] = {
                "access_token": "at-issued-by-hand",
                "token_type": "Bearer",
                "expires_in": 3600,
            }
        else:
            body = {"error": error or ("temporarily_unavailable" if code >= 500 else "bad")}
        hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
        return httpx.Response(code, json=body, headers=hdrs, request=request)

    return reply


def raising(exc_type: type[httpx.TransportError]) -> Reply:
    def reply(request: httpx.Request) -> BaseException:
        return exc_type("simulated transport failure", request=request)

    return reply


OK = status(200)


@dataclasses.dataclass
class Run:
    sends: list[httpx.Request] = dataclasses.field(default_factory=list)
    sleeps: list[float] = dataclasses.field(default_factory=list)
    reads: list[ReadSat] = dataclasses.field(default_factory=list)
    result: AccessToken | None = None
    error: BaseException | None = None

    def assertions(self) -> list[str | None]:
        """The client_assertion form field of every request sent, in order."""
        out = []
        for request in self.sends:
            form = urllib.parse.parse_qs(request.content.decode())
            out.append(form.get("client_assertion", [None])[0])
        return out

    @property
    def rereads(self) -> list[ReadSat]:
        """The ReadSat actions that asked "did it change since <previous>?"."""
        return [r for r in self.reads if r.previous is not None]


def drive(
    exchange: Exchange,
    replies: Sequence[Reply] | Callable[[int], Reply],
    snapshot: SatSnapshot,
    *,
    newer: Sequence[SatSnapshot | None] = (),
    max_actions: int = 1000,
) -> Run:
    """Run the flow to its end, answering from `replies` (a list, or a function of the attempt
    index for endless answers) and `newer` (answers to re-read questions; None when exhausted)."""
    run = Run()
    pending_newer = list(newer)
    flow = exchange.flow()
    reply: Any = None
    error: BaseException | None = None
    for _ in range(max_actions):
        try:
            action = flow.throw(error) if error is not None else flow.send(reply)
        except StopIteration as stop:
            run.result = stop.value
            return run
        except Exception as exc:
            run.error = exc
            return run
        reply, error = None, None
        if isinstance(action, Send):
            index = len(run.sends)
            run.sends.append(action.request)
            if callable(replies) and not isinstance(replies, Sequence):
                answer = replies(index)
            else:
                assert index < len(replies), f"unexpected request #{index + 1}"
                answer = replies[index]
            outcome = answer(action.request)
            if isinstance(outcome, BaseException):
                error = outcome
            else:
                reply = outcome
        elif isinstance(action, Sleep):
            assert action.seconds >= 0
            run.sleeps.append(action.seconds)
        elif isinstance(action, ReadSat):
            run.reads.append(action)
            if action.previous is None:
                reply = snapshot
            else:
                reply = pending_newer.pop(0) if pending_newer else None
        else:  # pragma: no cover
            raise AssertionError(f"unknown action {action!r}")
    raise AssertionError("flow did not finish")  # pragma: no cover


@pytest.fixture(scope="module")
def kubelet(tmp_path_factory: pytest.TempPathFactory) -> FakeKubelet:
    kubelet = FakeKubelet(tmp_path_factory.mktemp("sat"), audience=["http://127.0.0.1:9"])
    kubelet.rotate()
    return kubelet


@pytest.fixture
def snapshot(kubelet: FakeKubelet) -> SatSnapshot:
    return FileTokenSource(kubelet.token_path, watch=False).snapshot()


def make_exchange(kubelet: FakeKubelet, **config: Any) -> Exchange:
    return Exchange(
        build_settings(token_endpoint=ENDPOINT, token_file=kubelet.token_path, **config)
    )


def upper_jitter(exchange: Exchange, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the full-jitter draw deterministic: always the top of the interval."""
    monkeypatch.setattr(exchange.policy.rng, "uniform", lambda low, high: high)


# --------------------------------------------------------------------------------------------
# Backoff
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("repeat", range(25))
def test_503_503_200_succeeds_on_third_attempt_within_full_jitter_bounds(
    kubelet: FakeKubelet, snapshot: SatSnapshot, repeat: int
) -> None:
    run = drive(make_exchange(kubelet), [status(503), status(503), OK], snapshot)

    assert run.error is None
    assert run.result is not None
    assert run.result.access_token == "at-issued-by-hand"
    assert len(run.sends) == 3
    assert len(run.sleeps) == 2
    for n, seconds in enumerate(run.sleeps, start=1):
        assert 0 <= seconds <= 0.5 * 2 ** (n - 1)
    assert run.assertions() == [snapshot.value] * 3


def test_backoff_ceiling_doubles_from_half_a_second_and_caps_at_ten(
    kubelet: FakeKubelet, snapshot: SatSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    exchange = make_exchange(kubelet, retry_attempts=8, retry_budget=1000)
    upper_jitter(exchange, monkeypatch)

    run = drive(exchange, lambda _: status(503), snapshot)

    assert run.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert len(run.sends) == 8
    assert isinstance(run.error, TokenEndpointError)


def test_jitter_is_random_not_constant(kubelet: FakeKubelet, snapshot: SatSnapshot) -> None:
    firsts = {
        drive(make_exchange(kubelet), [status(503), OK], snapshot).sleeps[0] for _ in range(20)
    }
    assert len(firsts) > 1


# --------------------------------------------------------------------------------------------
# Retry-After
# --------------------------------------------------------------------------------------------


def test_429_retry_after_seconds_is_honoured_exactly(
    kubelet: FakeKubelet, snapshot: SatSnapshot
) -> None:
    run = drive(make_exchange(kubelet), [status(429, Retry_After="7"), OK], snapshot)

    assert run.sleeps == [7.0]
    assert len(run.sends) == 2
    assert run.result is not None


def test_retry_after_above_the_backoff_cap_is_still_honoured(
    kubelet: FakeKubelet, snapshot: SatSnapshot
) -> None:
    run = drive(make_exchange(kubelet), [status(503, Retry_After="15"), OK], snapshot)
    assert run.sleeps == [15.0]


def test_retry_after_http_date_uses_the_injected_clock(
    kubelet: FakeKubelet, snapshot: SatSnapshot, clock: Any
) -> None:
    when = email.utils.formatdate(clock() + 12, usegmt=True)
    run = drive(make_exchange(kubelet, clock=clock), [status(503, Retry_After=when), OK], snapshot)

    assert run.sleeps == [pytest.approx(12.0)]
    assert run.result is not None


def test_retry_after_http_date_in_the_past_means_no_wait(
    kubelet: FakeKubelet, snapshot: SatSnapshot, clock: Any
) -> None:
    when = email.utils.formatdate(clock() - 100, usegmt=True)
    run = drive(make_exchange(kubelet, clock=clock), [status(429, Retry_After=when), OK], snapshot)
    assert run.sleeps == [0.0]


def test_retry_after_beyond_the_remaining_budget_is_capped(
    kubelet: FakeKubelet, snapshot: SatSnapshot
) -> None:
    run = drive(make_exchange(kubelet), [status(429, Retry_After="120"), OK], snapshot)

    assert len(run.sleeps) == 1
    assert 29.0 < run.sleeps[0] <= 30.0
    assert run.result is not None


def test_endless_retry_after_beyond_budget_never_sleeps_more_than_the_budget(
    kubelet: FakeKubelet, snapshot: SatSnapshot
) -> None:
    run = drive(make_exchange(kubelet), lambda _: status(429, Retry_After="120"), snapshot)

    assert sum(run.sleeps) <= 30.0 + 1e-9  # float sums may round a hair over
    assert isinstance(run.error, TokenEndpointError)
    assert run.error.status_code == 429
    assert len(run.sends) <= 4


def test_malformed_retry_after_falls_back_to_jitter(
    kubelet: FakeKubelet, snapshot: SatSnapshot
) -> None:
    run = drive(make_exchange(kubelet), [status(503, Retry_After="soon"), OK], snapshot)
    assert len(run.sleeps) == 1
    assert 0 <= run.sleeps[0] <= 0.5


# --------------------------------------------------------------------------------------------
# Stop conditions
# --------------------------------------------------------------------------------------------


def test_never_ending_503_stops_after_four_attempts(
    kubelet: FakeKubelet, snapshot: SatSnapshot
) -> None:
    run = drive(make_exchange(kubelet), lambda _: status(503), snapshot)

    assert len(run.sends) == 4
    assert len(run.sleeps) == 3
    assert isinstance(run.error, TokenEndpointError)
    assert run.error.status_code == 503
    assert run.result is None


def test_time_budget_stops_before_many_attempts(
    kubelet: FakeKubelet, snapshot: SatSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    exchange = make_exchange(kubelet, retry_attempts=100, retry_budget=30)
    upper_jitter(exchange, monkeypatch)

    run = drive(exchange, lambda _: status(503), snapshot)

    # 0.5 + 1 + 2 + 4 + 8 + 10 = 25.5, then the last wait is cut to what is left of 30 s
    assert run.sleeps[:6] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert sum(run.sleeps) == pytest.approx(30.0, abs=0.01)
    assert sum(run.sleeps) <= 30.0 + 1e-9  # float sums may round a hair over
    assert len(run.sends) < 100
    assert len(run.sends) <= 9
    assert isinstance(run.error, TokenEndpointError)
    assert run.error.status_code == 503


@pytest.mark.parametrize("repeat", range(5))
def test_time_budget_with_random_jitter_never_exceeded(
    kubelet: FakeKubelet, snapshot: SatSnapshot, repeat: int
) -> None:
    run = drive(
        make_exchange(kubelet, retry_attempts=100, retry_budget=30),
        lambda _: status(503),
        snapshot,
    )
    assert sum(run.sleeps) <= 30.0 + 1e-9  # float sums may round a hair over
    assert isinstance(run.error, TokenEndpointError)
    assert run.error.status_code == 503


# --------------------------------------------------------------------------------------------
# What is retried and what is not
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [408, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(
    kubelet: FakeKubelet, snapshot: SatSnapshot, code: int
) -> None:
    run = drive(make_exchange(kubelet), [status(code), OK], snapshot)

    assert run.error is None
    assert run.result is not None
    assert len(run.sends) == 2
    assert len(run.sleeps) == 1


@pytest.mark.parametrize("code", [501, 505])
def test_other_5xx_are_not_retried(kubelet: FakeKubelet, snapshot: SatSnapshot, code: int) -> None:
    run = drive(make_exchange(kubelet), [status(code), OK], snapshot)

    assert len(run.sends) == 1
    assert run.sleeps == []
    assert isinstance(run.error, TokenEndpointError)
    assert run.error.status_code == code


def test_400_invalid_request_is_not_retried(kubelet: FakeKubelet, snapshot: SatSnapshot) -> None:
    run = drive(make_exchange(kubelet), [status(400, error="invalid_request"), OK], snapshot)

    assert len(run.sends) == 1
    assert run.sleeps == []
    assert isinstance(run.error, OAuthError)
    assert run.error.error == "invalid_request"
    assert run.error.status_code == 400


@pytest.mark.parametrize(
    ("code", "error"),
    [(401, "invalid_client"), (403, "access_denied"), (404, "not_found")],
)
def test_other_4xx_are_not_retried(
    kubelet: FakeKubelet, snapshot: SatSnapshot, code: int, error: str
) -> None:
    run = drive(make_exchange(kubelet), [status(code, error=error), OK], snapshot)

    assert len(run.sends) == 1
    assert run.sleeps == []
    assert isinstance(run.error, OAuthError)
    assert run.error.error == error
    assert run.error.status_code == code


@pytest.mark.parametrize("exc_type", [httpx.ConnectError, httpx.ReadTimeout])
def test_transport_error_then_success(
    kubelet: FakeKubelet, snapshot: SatSnapshot, exc_type: type[httpx.TransportError]
) -> None:
    run = drive(make_exchange(kubelet), [raising(exc_type), OK], snapshot)

    assert run.error is None
    assert run.result is not None
    assert len(run.sends) == 2
    assert len(run.sleeps) == 1
    assert 0 <= run.sleeps[0] <= 0.5


@pytest.mark.parametrize("exc_type", [httpx.ConnectError, httpx.ReadTimeout])
def test_endless_transport_errors_become_token_endpoint_error(
    kubelet: FakeKubelet, snapshot: SatSnapshot, exc_type: type[httpx.TransportError]
) -> None:
    run = drive(make_exchange(kubelet), lambda _: raising(exc_type), snapshot)

    assert len(run.sends) == 4
    assert len(run.sleeps) == 3
    assert isinstance(run.error, TokenEndpointError)
    assert run.error.status_code is None
    assert exc_type.__name__ in str(run.error)


# --------------------------------------------------------------------------------------------
# The re-read after a refusal that may come from a raced rotation
# --------------------------------------------------------------------------------------------


@pytest.fixture
def two_snapshots(kubelet: FakeKubelet) -> tuple[SatSnapshot, SatSnapshot]:
    source = FileTokenSource(kubelet.token_path, watch=False)
    first = source.snapshot()
    kubelet.rotate()
    second = source.snapshot()
    assert first.value != second.value
    return first, second


@pytest.mark.parametrize(
    ("code", "error"),
    [(401, "invalid_client"), (400, "invalid_request"), (400, "invalid_client")],
)
def test_refusal_after_a_raced_rotation_retries_once_with_the_new_token(
    kubelet: FakeKubelet,
    two_snapshots: tuple[SatSnapshot, SatSnapshot],
    code: int,
    error: str,
) -> None:
    old, new = two_snapshots
    run = drive(make_exchange(kubelet), [status(code, error=error), OK], old, newer=[new])

    assert run.error is None
    assert run.result is not None
    assert len(run.sends) == 2
    assert run.assertions() == [old.value, new.value]
    assert [r.previous for r in run.rereads] == [old.value]
    assert run.sleeps == []


@pytest.mark.parametrize(("code", "error"), [(401, "invalid_client"), (400, "invalid_request")])
def test_refusal_without_rotation_propagates(
    kubelet: FakeKubelet, snapshot: SatSnapshot, code: int, error: str
) -> None:
    run = drive(make_exchange(kubelet), [status(code, error=error), OK], snapshot, newer=[None])

    assert isinstance(run.error, OAuthError)
    assert run.error.error == error
    assert run.error.status_code == code
    assert len(run.sends) == 1
    assert [r.previous for r in run.rereads] == [snapshot.value]


def test_second_refusal_after_the_race_retry_is_not_retried_again(
    kubelet: FakeKubelet, two_snapshots: tuple[SatSnapshot, SatSnapshot]
) -> None:
    old, new = two_snapshots
    kubelet.rotate()
    newest = FileTokenSource(kubelet.token_path, watch=False).snapshot()
    run = drive(
        make_exchange(kubelet),
        [status(401, error="invalid_client"), status(401, error="invalid_client"), OK],
        old,
        newer=[new, newest],
    )

    assert isinstance(run.error, OAuthError)
    assert run.error.status_code == 401
    assert len(run.sends) == 2
    assert run.assertions() == [old.value, new.value]
    assert len(run.rereads) == 1


def test_race_retry_still_gets_transient_retries(
    kubelet: FakeKubelet, two_snapshots: tuple[SatSnapshot, SatSnapshot]
) -> None:
    old, new = two_snapshots
    run = drive(
        make_exchange(kubelet),
        [status(401, error="invalid_client"), status(503), OK],
        old,
        newer=[new],
    )
    assert run.result is not None
    assert run.assertions() == [old.value, new.value, new.value]


@pytest.mark.parametrize("code", [403, 404])
def test_no_reread_after_other_refusals(
    kubelet: FakeKubelet, two_snapshots: tuple[SatSnapshot, SatSnapshot], code: int
) -> None:
    old, new = two_snapshots
    run = drive(make_exchange(kubelet), [status(code, error="x"), OK], old, newer=[new])

    assert isinstance(run.error, OAuthError)
    assert len(run.sends) == 1


# --------------------------------------------------------------------------------------------
# End to end through fetch_token and the local authorization server (127.0.0.1)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def recorded_pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits the sync shell would have slept (test mode skips them anyway)."""
    pauses: list[float] = []
    monkeypatch.setattr(_testmode, "pause", pauses.append)
    return pauses


def test_e2e_two_503_then_success(
    fake_kubelet: FakeKubelet, local_as: LocalAuthorizationServer, recorded_pauses: list[float]
) -> None:
    local_as.fail(503, times=2)

    token = fetch_token(token_endpoint=local_as.token_endpoint, token_file=fake_kubelet.token_path)

    assert token.access_token in local_as.issued
    assert len(local_as.requests) == 3
    assert {r.assertion for r in local_as.requests} == {fake_kubelet.current_token}
    assert len(recorded_pauses) == 2
    assert 0 <= recorded_pauses[0] <= 0.5
    assert 0 <= recorded_pauses[1] <= 1.0


def test_e2e_retry_after_is_honoured(
    fake_kubelet: FakeKubelet, local_as: LocalAuthorizationServer, recorded_pauses: list[float]
) -> None:
    local_as.fail(429, retry_after="3")

    token = fetch_token(token_endpoint=local_as.token_endpoint, token_file=fake_kubelet.token_path)

    assert token.access_token in local_as.issued
    assert len(local_as.requests) == 2
    assert recorded_pauses == [3.0]


def test_e2e_endless_503_gives_up_after_four_requests(
    fake_kubelet: FakeKubelet, local_as: LocalAuthorizationServer
) -> None:
    local_as.fail(503, times=50)

    with pytest.raises(TokenEndpointError) as info:
        fetch_token(token_endpoint=local_as.token_endpoint, token_file=fake_kubelet.token_path)

    assert info.value.status_code == 503
    assert len(local_as.requests) == 4


def test_e2e_refusal_is_not_retried(
    fake_kubelet: FakeKubelet, local_as: LocalAuthorizationServer
) -> None:
    local_as.fail(401, error="invalid_client")

    with pytest.raises(OAuthError) as info:
        fetch_token(token_endpoint=local_as.token_endpoint, token_file=fake_kubelet.token_path)

    assert info.value.error == "invalid_client"
    assert info.value.status_code == 401
    assert len(local_as.requests) == 1


def test_e2e_rotation_race_retries_once_with_the_new_token(
    fake_kubelet: FakeKubelet, local_as: LocalAuthorizationServer
) -> None:
    first = fake_kubelet.current_token
    rotated: list[str] = []

    def rotate_on_first_token_response(response: httpx.Response) -> None:
        if response.request.url.path == "/token" and not rotated:
            rotated.append(fake_kubelet.rotate())

    local_as.fail(401, error="invalid_client")
    with httpx.Client(event_hooks={"response": [rotate_on_first_token_response]}) as client:
        token = fetch_token(
            token_endpoint=local_as.token_endpoint,
            token_file=fake_kubelet.token_path,
            http_client=client,
        )
        assert not client.is_closed  # the caller's client is left open

    assert token.access_token in local_as.issued
    assert len(rotated) == 1
    assert rotated[0] != first
    assert [r.assertion for r in local_as.requests] == [first, rotated[0]]


@pytest.mark.anyio
async def test_e2e_async_two_503_then_success(
    fake_kubelet: FakeKubelet, local_as: LocalAuthorizationServer
) -> None:
    local_as.fail(503, times=2)

    token = await afetch_token(
        token_endpoint=local_as.token_endpoint, token_file=fake_kubelet.token_path
    )

    assert token.access_token in local_as.issued
    assert len(local_as.requests) == 3


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_e2e_connection_refused_is_retried_then_reported(
    fake_kubelet: FakeKubelet, closed_port: int, recorded_pauses: list[float]
) -> None:
    with pytest.raises(TokenEndpointError) as info:
        fetch_token(
            token_endpoint=f"http://127.0.0.1:{closed_port}/token",
            token_file=fake_kubelet.token_path,
        )

    assert info.value.status_code is None
    assert len(recorded_pauses) == 3
