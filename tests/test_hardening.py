"""Regression tests for failure modes found in review: each fails on the code before its fix."""

from __future__ import annotations

import gzip
import threading
import traceback
from pathlib import Path

import httpx
import pytest
import respx

from sat_oauth_client import (
    OAuthError,
    SatOAuthError,
    TokenEndpointError,
    TokenManager,
    fetch_token,
)
from sat_oauth_client._watch import subscribe, watcher_thread_count
from sat_oauth_client.testing import FakeKubelet, LocalAuthorizationServer

ENDPOINT = "https://as.example/token"


def test_a_remembered_refusal_does_not_grow_its_traceback_per_raise(
    fake_kubelet: FakeKubelet, local_as: LocalAuthorizationServer
) -> None:
    local_as.fail(401, error="invalid_client")
    with TokenManager(
        token_endpoint=local_as.token_endpoint, token_file=fake_kubelet.token_path
    ) as m:
        sizes = []
        for _ in range(50):
            with pytest.raises(OAuthError) as caught:
                m.get_token()
            sizes.append(len(traceback.extract_tb(caught.value.__traceback__)))
    assert len(local_as.requests) == 1
    assert len(set(sizes[1:])) == 1  # replays do not grow the traceback with every raise


@respx.mock
def test_an_undecodable_body_is_a_token_endpoint_error(fake_kubelet: FakeKubelet) -> None:
    respx.post(ENDPOINT).mock(
        return_value=httpx.Response(
            200, headers={"Content-Encoding": "gzip"}, stream=httpx.ByteStream(b"not gzip")
        )
    )
    with pytest.raises(TokenEndpointError):
        fetch_token(token_endpoint=ENDPOINT, token_file=fake_kubelet.token_path)


@respx.mock
def test_a_gzip_body_is_decoded(fake_kubelet: FakeKubelet) -> None:
    body = gzip.compress(b'{"access_token": "at-1", "token_type": "bearer", "expires_in": 60}')
    respx.post(ENDPOINT).respond(200, headers={"Content-Encoding": "gzip"}, content=body)
    assert (
        fetch_token(token_endpoint=ENDPOINT, token_file=fake_kubelet.token_path).access_token
        == "at-1"
    )


@respx.mock
def test_the_callers_client_credentials_never_reach_the_token_endpoint(
    fake_kubelet: FakeKubelet,
) -> None:
    route = respx.post(ENDPOINT).respond(
        200, json={"access_token": "at-1", "token_type": "Bearer", "expires_in": 60}
    )
    with httpx.Client(
        headers={"Authorization": "Bearer API-KEY", "User-Agent": "my-service/1.0"},
        cookies={"session": "s3cret"},
    ) as client:
        fetch_token(token_endpoint=ENDPOINT, token_file=fake_kubelet.token_path, http_client=client)
    sent = route.calls.last.request
    assert "Authorization" not in sent.headers
    assert "Cookie" not in sent.headers
    assert sent.headers["User-Agent"] == "my-service/1.0"  # harmless defaults still apply


def test_no_token_request_after_close_while_a_refresh_waits_to_retry(
    fake_kubelet: FakeKubelet, local_as: LocalAuthorizationServer
) -> None:
    """close() cuts a retry wait short: the SAT is not sent again after close returns."""
    from sat_oauth_client.testing import testing_mode

    local_as.fail(503, times=100, retry_after="5")
    manager = TokenManager(
        token_endpoint=local_as.token_endpoint, token_file=fake_kubelet.token_path
    )
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            manager.get_token()
        except BaseException as exc:
            outcome.append(exc)

    with testing_mode(False):  # real waits: the refresh must be parked in its Retry-After wait
        caller = threading.Thread(target=call)
        caller.start()
        assert local_as.wait_for_requests(1)
        manager.close()
        seen_at_close = len(local_as.requests)
        caller.join(timeout=5)
    assert not caller.is_alive()
    assert isinstance(outcome[0], SatOAuthError)
    assert len(local_as.requests) == seen_at_close


def test_a_dead_directory_watcher_is_replaced(tmp_path: Path) -> None:
    missing = tmp_path / "not-yet"
    first = subscribe(str(missing), frozenset({"token"}), lambda: None)
    try:
        # the thread dies at once: the directory does not exist (bounded wait for that condition)
        for _ in range(500):
            if watcher_thread_count() == 0:
                break
            threading.Event().wait(0.01)
        assert watcher_thread_count() == 0
        missing.mkdir()
        second = subscribe(str(missing), frozenset({"token"}), lambda: None)
        try:
            assert watcher_thread_count() == 1
        finally:
            second.close()
    finally:
        first.close()
    assert watcher_thread_count() == 0


def test_the_local_as_refuses_a_multi_valued_audience(
    fake_kubelet: FakeKubelet, local_as: LocalAuthorizationServer
) -> None:
    fake_kubelet.rotate(aud=[local_as.issuer, "https://other.example"])
    with pytest.raises(OAuthError) as caught:
        fetch_token(token_endpoint=local_as.token_endpoint, token_file=fake_kubelet.token_path)
    assert caught.value.error == "invalid_client"


def test_each_attempt_timeout_is_capped_by_the_remaining_budget(
    fake_kubelet: FakeKubelet,
) -> None:
    from sat_oauth_client._config import build_settings
    from sat_oauth_client._exchange import Exchange, ReadSat, Send, Sleep
    from sat_oauth_client._source import FileTokenSource

    settings = build_settings(
        token_endpoint=ENDPOINT, token_file=fake_kubelet.token_path, timeout=10, retry_budget=12
    )
    snapshot = FileTokenSource(fake_kubelet.token_path, watch=False).snapshot()
    flow = Exchange(settings).flow()
    timeouts: list[float] = []
    action = next(flow)
    assert isinstance(action, ReadSat)
    action = flow.send(snapshot)
    for _ in range(3):
        assert isinstance(action, Send)
        timeouts.append(action.request.extensions["timeout"]["read"])
        busy = httpx.Response(503, headers={"Retry-After": "5"}, request=action.request)
        action = flow.send(busy)
        if not isinstance(action, Sleep):
            break
        action = flow.send(None)
    assert timeouts[0] == 10  # the configured timeout while the budget allows it
    assert timeouts[1] == pytest.approx(7, abs=0.5)  # 12 s budget - 5 s already waited


def test_an_interrupt_in_the_leading_caller_reaches_only_that_caller(
    fake_kubelet: FakeKubelet, local_as: LocalAuthorizationServer
) -> None:
    from sat_oauth_client._state import Decision

    manager = TokenManager(
        token_endpoint=local_as.token_endpoint, token_file=fake_kubelet.token_path
    )
    entered, release, joined = threading.Event(), threading.Event(), threading.Event()

    def interrupted_flow():  # type: ignore[no-untyped-def]
        entered.set()
        release.wait(5)
        raise KeyboardInterrupt
        yield  # a generator, like the real flow

    manager._exchange.flow = interrupted_flow  # type: ignore[method-assign]
    real_decide = manager._state.decide

    def spy(now: float) -> Decision:
        decision = real_decide(now)
        if decision is Decision.JOIN_IN_FLIGHT:
            joined.set()
        return decision

    manager._state.decide = spy  # type: ignore[method-assign]
    seen: dict[str, BaseException] = {}

    def call(name: str) -> None:
        try:
            manager.get_token()
        except BaseException as exc:
            seen[name] = exc

    leader = threading.Thread(target=call, args=("leader",))
    leader.start()
    assert entered.wait(5)
    waiter = threading.Thread(target=call, args=("waiter",))
    waiter.start()
    assert joined.wait(5)
    release.set()
    leader.join(5)
    waiter.join(5)
    manager.close()
    assert isinstance(seen["leader"], KeyboardInterrupt)
    assert isinstance(seen["waiter"], SatOAuthError)


def test_access_token_is_hashable_and_its_extra_read_only() -> None:
    from sat_oauth_client import AccessToken

    token = AccessToken("at-1", extra={"refresh_in": 30})
    assert hash(token) == hash(AccessToken("at-1", extra={"refresh_in": 30}))
    assert token == AccessToken("at-1", extra={"refresh_in": 30})
    with pytest.raises(TypeError):
        token.extra["refresh_in"] = 0  # type: ignore[index]


def test_a_source_made_before_its_volume_exists_starts_watching_once_it_appears(
    tmp_path: Path,
) -> None:
    from sat_oauth_client import FileTokenSource

    volume = tmp_path / "volume"
    kubelet = FakeKubelet(volume)
    source = FileTokenSource(volume / "token")
    try:
        for _ in range(500):  # the first watch dies at once: no directory yet
            if watcher_thread_count() == 0:
                break
            threading.Event().wait(0.01)
        assert watcher_thread_count() == 0
        token = kubelet.rotate()
        assert source.read() == token
        assert watcher_thread_count() == 1
    finally:
        source.close()
    assert watcher_thread_count() == 0
