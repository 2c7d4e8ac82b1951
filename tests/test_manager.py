"""`TokenManager` end to end against the local AS and the fake kubelet: single flight, the
advisory window, backoff, refusals, rotations, watcher threads, lifecycle.

No sleeping: callers pile up on `local_as.hold`, progress is observed through the AS's request
log (`wait_for_requests`), the brain's decisions (a spy on `TokenState.decide`), the refresh's
flight event, and thread joins with generous timeouts. Time moves only on the fake clock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from sat_oauth_client import (
    AccessToken,
    OAuthError,
    SatOAuthError,
    TokenEndpointError,
    TokenFileError,
    TokenManager,
)
from sat_oauth_client._state import Decision
from sat_oauth_client._watch import watcher_thread_count
from sat_oauth_client.testing import FakeKubelet, LocalAuthorizationServer

JOIN_TIMEOUT = 30.0
# The fake clock starts ahead of the wall clock the AS checks SAT `nbf`/`iat` against, so the
# kubelet signs on the real clock with a lifetime long enough that the fake clock never expires it.
LONG_SAT_LIFETIME = 10 * 365 * 86400.0
AT_LIFETIME = 3600.0  # refresh_at = t0 + 2880 (jitter off), usable_until = t0 + 3590
IN_ADVISORY_WINDOW = 3000.0
PAST_EXPIRY = 3600.0


class DecisionSpy:
    """Records every decision the brain makes (they are made under the manager's lock, so a
    recorded decision is final: a later refresh outcome cannot change it)."""

    def __init__(self, manager: TokenManager) -> None:
        self.decisions: list[Decision] = []
        self._cond = threading.Condition()
        state = manager._state
        original = state.decide

        def decide(now: float) -> Decision:
            decision = original(now)
            with self._cond:
                self.decisions.append(decision)
                self._cond.notify_all()
            return decision

        state.decide = decide  # type: ignore[method-assign]

    def wait_for(self, count: int, timeout: float = JOIN_TIMEOUT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.decisions) >= count, timeout)

    def count(self, decision: Decision) -> int:
        with self._cond:
            return self.decisions.count(decision)


def run_threads(
    count: int, target: Callable[[int], Any]
) -> tuple[list[threading.Thread], list[Any], list[BaseException]]:
    """Start `count` threads running target(i); results and errors are collected by index."""
    results: list[Any] = [None] * count
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        try:
            results[i] = target(i)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads, results, errors


def join_all(threads: list[threading.Thread], timeout: float = JOIN_TIMEOUT) -> None:
    for thread in threads:
        thread.join(timeout)
    stuck = [t for t in threads if t.is_alive()]
    assert not stuck, f"{len(stuck)} caller(s) still blocked"


def wait_background_refresh(manager: TokenManager) -> None:
    """Wait for the refresh the manager started in the background (its flight's event)."""
    flight = manager._flight
    if flight is not None:
        assert flight.event.wait(JOIN_TIMEOUT), "background refresh never finished"
    assert not manager._state.in_flight


@pytest.fixture
def managers() -> Iterator[list[TokenManager]]:
    """Managers a test made; closed at teardown (after any held AS response is released)."""
    made: list[TokenManager] = []
    yield made
    for manager in made:
        manager.close()


@pytest.fixture
def timed_as(tmp_path: Path, clock: Callable[[], float]) -> Iterator[tuple[Any, FakeKubelet]]:
    """An AS on the fake clock (issues 3600 s tokens) and a kubelet it trusts."""
    with LocalAuthorizationServer(clock=clock, token_lifetime=AT_LIFETIME) as server:
        kubelet = FakeKubelet(
            tmp_path / "sat", audience=[server.issuer], lifetime=LONG_SAT_LIFETIME
        )
        server.trust(kubelet)
        kubelet.rotate()
        try:
            yield server, kubelet
        finally:
            if server.hold is not None:
                server.hold.set()


@pytest.fixture
def make_timed(
    timed_as: tuple[LocalAuthorizationServer, FakeKubelet],
    clock: Callable[[], float],
    managers: list[TokenManager],
) -> Callable[..., TokenManager]:
    server, kubelet = timed_as

    def make(**config: Any) -> TokenManager:
        settings: dict[str, Any] = {
            "token_endpoint": server.token_endpoint,
            "token_file": kubelet.token_path,
            "clock": clock,
            "refresh_jitter_fraction": 0.0,
            **config,
        }
        manager = TokenManager(**settings)
        managers.append(manager)
        return manager

    return make


@pytest.fixture
def make_local(
    local_as: LocalAuthorizationServer,
    fake_kubelet: FakeKubelet,
    managers: list[TokenManager],
) -> Iterator[Callable[..., TokenManager]]:
    def make(**config: Any) -> TokenManager:
        manager = TokenManager(
            token_endpoint=local_as.token_endpoint, token_file=fake_kubelet.token_path, **config
        )
        managers.append(manager)
        return manager

    yield make
    if local_as.hold is not None:
        local_as.hold.set()  # never leave a caller (or close()) waiting on a held response


# -- single flight --------------------------------------------------------------------------------


def test_cold_manager_64_threads_make_one_request(
    local_as: LocalAuthorizationServer, make_local: Callable[..., TokenManager]
) -> None:
    manager = make_local()
    spy = DecisionSpy(manager)
    local_as.hold = threading.Event()

    threads, results, errors = run_threads(64, lambda _: manager.get_token())
    try:
        assert local_as.wait_for_requests(1)
        assert spy.wait_for(64), "not every caller reached a decision"
    finally:
        local_as.hold.set()
    join_all(threads)

    assert errors == []
    assert len(local_as.requests) == 1
    assert spy.count(Decision.REFRESH_AND_WAIT) == 1
    assert spy.count(Decision.JOIN_IN_FLIGHT) == 63
    assert {token.access_token for token in results} == set(local_as.issued)
    assert manager.get_token() is results[0]
    assert len(local_as.requests) == 1


@pytest.mark.parametrize("mode", ["force_refresh", "invalidate", "mixed"])
def test_burst_of_force_refresh_and_invalidate_makes_one_request(
    local_as: LocalAuthorizationServer,
    make_local: Callable[..., TokenManager],
    mode: str,
) -> None:
    manager = make_local()
    old = manager.get_token()
    assert len(local_as.requests) == 1
    spy = DecisionSpy(manager)
    local_as.hold = threading.Event()

    def call(i: int) -> AccessToken:
        if mode == "force_refresh" or (mode == "mixed" and i % 2 == 0):
            return manager.get_token(force_refresh=True)
        manager.invalidate()
        return manager.get_token()

    threads, results, errors = run_threads(64, call)
    try:
        assert local_as.wait_for_requests(2)
        assert spy.wait_for(64), "not every caller reached a decision"
    finally:
        local_as.hold.set()
    join_all(threads)

    assert errors == []
    assert len(local_as.requests) == 2
    assert spy.count(Decision.REFRESH_AND_WAIT) == 1
    assert spy.count(Decision.JOIN_IN_FLIGHT) == 63
    assert len({token.access_token for token in results}) == 1
    assert results[0].access_token != old.access_token


def test_invalidate_with_a_stale_token_keeps_the_newer_one(
    local_as: LocalAuthorizationServer, make_local: Callable[..., TokenManager]
) -> None:
    manager = make_local()
    first = manager.get_token()
    second = manager.get_token(force_refresh=True)
    assert second.access_token != first.access_token
    manager.invalidate(first)  # another caller's old token: the cache keeps the newer one
    manager.invalidate(first.access_token)
    assert manager.get_token() is second
    assert len(local_as.requests) == 2
    manager.invalidate(second)
    third = manager.get_token()
    assert third.access_token not in (first.access_token, second.access_token)
    assert len(local_as.requests) == 3


# -- the advisory window --------------------------------------------------------------------------


def test_advisory_window_serves_cached_without_waiting(
    timed_as: tuple[LocalAuthorizationServer, FakeKubelet],
    make_timed: Callable[..., TokenManager],
    clock: Any,
) -> None:
    server, _ = timed_as
    manager = make_timed()
    first = manager.get_token()
    assert len(server.requests) == 1
    clock.advance(IN_ADVISORY_WINDOW)
    spy = DecisionSpy(manager)
    hold = server.hold = threading.Event()

    threads, results, errors = run_threads(16, lambda _: manager.get_token())
    try:
        # every caller returns while the refresh is still held at the AS
        join_all(threads)
        assert not hold.is_set()
        assert errors == []
        assert all(token is first for token in results)
        assert server.wait_for_requests(2)
        assert spy.count(Decision.REFRESH_IN_BACKGROUND) == 1
        # the others were served cached: by decide() or by the lock-free fast path
        assert spy.count(Decision.JOIN_IN_FLIGHT) == spy.count(Decision.REFRESH_AND_WAIT) == 0
        assert manager.get_token() is first  # still served while the refresh is held
    finally:
        hold.set()
    wait_background_refresh(manager)

    assert len(server.requests) == 2
    fresh = manager.get_token()
    assert fresh.access_token != first.access_token
    assert fresh.access_token in server.issued
    assert len(server.requests) == 2


def test_advisory_window_failed_refresh_backs_off(
    timed_as: tuple[LocalAuthorizationServer, FakeKubelet],
    make_timed: Callable[..., TokenManager],
    clock: Any,
) -> None:
    server, _ = timed_as
    manager = make_timed(retry_attempts=1)  # one request per refresh: requests count refreshes
    first = manager.get_token()
    clock.advance(IN_ADVISORY_WINDOW)
    server.fail(503, times=100)

    assert manager.get_token() is first  # notices the refresh is due; does not wait or raise
    assert server.wait_for_requests(2)
    wait_background_refresh(manager)
    assert manager._state.failures == 1
    retry_not_before = manager._state.retry_not_before
    assert retry_not_before > clock()

    for _ in range(50):  # during the backoff: the cached token, no new request, no error
        assert manager.get_token() is first
    assert len(server.requests) == 2
    clock.advance(retry_not_before - clock() - 0.01)
    assert manager.get_token() is first
    assert len(server.requests) == 2

    clock.advance(0.02)  # past retry_not_before: exactly one more attempt
    assert manager.get_token() is first
    assert server.wait_for_requests(3)
    wait_background_refresh(manager)
    for _ in range(20):
        assert manager.get_token() is first
    assert len(server.requests) == 3
    assert manager._state.failures == 2
    assert manager._state.retry_not_before > clock()

    # the AS recovers: after the (longer) backoff one refresh replaces the token
    with server._lock:
        server.faults.clear()
    clock.advance(manager._state.retry_not_before - clock() + 0.01)
    assert manager.get_token() is first
    assert server.wait_for_requests(4)
    wait_background_refresh(manager)
    fresh = manager.get_token()
    assert fresh.access_token != first.access_token
    assert len(server.requests) == 4


def test_advisory_window_default_retries_still_one_refresh(
    timed_as: tuple[LocalAuthorizationServer, FakeKubelet],
    make_timed: Callable[..., TokenManager],
    clock: Any,
) -> None:
    server, _ = timed_as
    manager = make_timed()  # default: up to 4 attempts inside one refresh
    first = manager.get_token()
    clock.advance(IN_ADVISORY_WINDOW)
    server.fail(503, times=100)
    assert manager.get_token() is first
    assert server.wait_for_requests(5)
    wait_background_refresh(manager)
    for _ in range(20):
        assert manager.get_token() is first
    assert len(server.requests) == 5  # 1 + one refresh of 4 attempts, then the backoff holds


def test_past_expiry_with_as_down_raises(
    timed_as: tuple[LocalAuthorizationServer, FakeKubelet],
    make_timed: Callable[..., TokenManager],
    clock: Any,
) -> None:
    server, _ = timed_as
    manager = make_timed()
    manager.get_token()
    clock.advance(PAST_EXPIRY)
    server.fail(503, times=100)
    with pytest.raises(TokenEndpointError) as info:
        manager.get_token()
    assert info.value.status_code == 503
    assert len(server.requests) == 1 + 4  # one refresh, four attempts
    with pytest.raises(TokenEndpointError):  # transient: not a cached refusal, asks again
        manager.get_token()
    assert len(server.requests) == 1 + 8


def test_expired_waiters_share_one_failure(
    timed_as: tuple[LocalAuthorizationServer, FakeKubelet],
    make_timed: Callable[..., TokenManager],
    clock: Any,
) -> None:
    server, _ = timed_as
    manager = make_timed(retry_attempts=1)
    manager.get_token()
    clock.advance(PAST_EXPIRY)
    spy = DecisionSpy(manager)
    server.fail(503, times=100)
    hold = server.hold = threading.Event()
    threads, results, errors = run_threads(16, lambda _: manager.get_token())
    try:
        assert server.wait_for_requests(2)
        assert spy.wait_for(16)
    finally:
        hold.set()
    join_all(threads)
    assert results == [None] * 16
    assert len(errors) == 16
    assert all(isinstance(e, TokenEndpointError) for e in errors)
    assert len(server.requests) == 2


def test_expiry_margin_makes_callers_wait(
    timed_as: tuple[LocalAuthorizationServer, FakeKubelet],
    make_timed: Callable[..., TokenManager],
    clock: Any,
) -> None:
    server, _ = timed_as
    manager = make_timed()
    first = manager.get_token()
    clock.advance(AT_LIFETIME - 5.0)  # not expired yet, but inside the 10 s margin
    second = manager.get_token()
    assert second.access_token != first.access_token
    assert len(server.requests) == 2


# -- refusals -------------------------------------------------------------------------------------


def test_permanent_refusal_is_cached_for_five_seconds(
    timed_as: tuple[LocalAuthorizationServer, FakeKubelet],
    make_timed: Callable[..., TokenManager],
    clock: Any,
) -> None:
    server, _ = timed_as
    manager = make_timed()
    server.fail(401, times=100, error="invalid_client")
    with pytest.raises(OAuthError) as first:
        manager.get_token()
    assert first.value.error == "invalid_client"
    with pytest.raises(OAuthError) as second:
        manager.get_token()
    assert second.value.error == "invalid_client"
    assert len(server.requests) == 1
    clock.advance(4.9)
    with pytest.raises(OAuthError):
        manager.get_token()
    assert len(server.requests) == 1
    clock.advance(0.2)  # past the 5 s refusal: one more request
    with pytest.raises(OAuthError):
        manager.get_token()
    assert len(server.requests) == 2
    with server._lock:
        server.faults.clear()
    clock.advance(5.1)
    assert manager.get_token().access_token in server.issued
    assert len(server.requests) == 3


def test_refusal_from_a_real_untrusted_issuer(
    tmp_path: Path, local_as: LocalAuthorizationServer, managers: list[TokenManager]
) -> None:
    stranger = FakeKubelet(tmp_path / "other", audience=[local_as.issuer], issuer="https://evil")
    stranger.rotate()
    manager = TokenManager(token_endpoint=local_as.token_endpoint, token_file=stranger.token_path)
    managers.append(manager)
    for _ in range(5):
        with pytest.raises(OAuthError) as info:
            manager.get_token()
        assert info.value.error == "invalid_client"
        assert info.value.status_code == 401
    assert len(local_as.requests) == 1


# -- rotation -------------------------------------------------------------------------------------


def test_rotations_always_send_the_current_sat(
    timed_as: tuple[LocalAuthorizationServer, FakeKubelet],
    make_timed: Callable[..., TokenManager],
    clock: Any,
) -> None:
    server, kubelet = timed_as
    manager = make_timed()
    assert kubelet.current_token is not None
    history = [kubelet.current_token]
    callers = 8

    def call(barrier: threading.Barrier) -> AccessToken:
        barrier.wait(JOIN_TIMEOUT)
        return manager.get_token()

    with ThreadPoolExecutor(callers) as pool:
        for round_ in range(31):
            if round_:
                history.append(kubelet.rotate())  # real atomic-writer swap
                clock.advance(AT_LIFETIME)  # the cached access token is now expired
            barrier = threading.Barrier(callers)
            futures = [pool.submit(call, barrier) for _ in range(callers)]
            tokens = {f.result(JOIN_TIMEOUT).access_token for f in futures}
            assert len(tokens) == 1
            assert len(server.requests) == round_ + 1, "one request per round"
            assert server.requests[round_].assertion == history[round_], f"round {round_}"
    assert kubelet.rotations == 31
    assert [r.assertion for r in server.requests] == history
    assert len(set(history)) == 31


def test_rotations_under_continuous_force_refresh(
    local_as: LocalAuthorizationServer,
    fake_kubelet: FakeKubelet,
    make_local: Callable[..., TokenManager],
) -> None:
    manager = make_local()
    assert fake_kubelet.current_token is not None
    history = [fake_kubelet.current_token]
    stop = threading.Event()

    def caller(_: int) -> int:
        n = 0
        while not stop.is_set():
            manager.get_token(force_refresh=True)
            n += 1
        return n

    threads, _, errors = run_threads(8, caller)
    try:
        for _ in range(30):
            seen = len(local_as.requests)
            new = fake_kubelet.rotate()
            history.append(new)
            # the new SAT reaches the AS within a few requests (requests already in flight may
            # carry the old one; none after the first with the new one may go back)
            while True:
                assert local_as.wait_for_requests(seen + 1), "callers stalled"
                if local_as.requests[seen].assertion == new:
                    break
                seen += 1
                assert seen < 1000
    finally:
        stop.set()
        join_all(threads)
    assert errors == []
    index = {sat: i for i, sat in enumerate(history)}
    sent = [index[r.assertion] for r in local_as.requests if r.assertion is not None]
    assert len(sent) == len(local_as.requests), "an assertion the kubelet never wrote"
    assert sent == sorted(sent), "an older SAT was sent after a newer one"


# -- watcher threads and lifecycle ----------------------------------------------------------------


def test_ten_managers_share_one_watcher_thread(
    local_as: LocalAuthorizationServer, fake_kubelet: FakeKubelet
) -> None:
    baseline = watcher_thread_count()
    made = [
        TokenManager(token_endpoint=local_as.token_endpoint, token_file=fake_kubelet.token_path)
        for _ in range(10)
    ]
    try:
        assert watcher_thread_count() - baseline <= 1
        assert watcher_thread_count() == baseline + 1
        assert made[3].get_token().access_token in local_as.issued
        for manager in made[:-1]:
            manager.close()
            assert watcher_thread_count() == baseline + 1
    finally:
        for manager in made:
            manager.close()
    assert watcher_thread_count() == baseline
    made[0].close()  # idempotent


def test_context_manager_closes(
    local_as: LocalAuthorizationServer, fake_kubelet: FakeKubelet
) -> None:
    baseline = watcher_thread_count()
    with TokenManager(
        token_endpoint=local_as.token_endpoint, token_file=fake_kubelet.token_path
    ) as manager:
        assert watcher_thread_count() == baseline + 1
        assert manager.get_token().access_token in local_as.issued
    assert watcher_thread_count() == baseline
    assert manager._closed
    with pytest.raises(SatOAuthError):
        manager.get_token(force_refresh=True)


def test_closed_manager_raises_even_with_a_cached_token(
    local_as: LocalAuthorizationServer, fake_kubelet: FakeKubelet
) -> None:
    manager = TokenManager(
        token_endpoint=local_as.token_endpoint, token_file=fake_kubelet.token_path
    )
    manager.get_token()
    manager.close()
    with pytest.raises(SatOAuthError, match="closed"):
        manager.get_token()
    assert len(local_as.requests) == 1


def test_refresh_finishing_after_close_does_not_revive_the_cache(
    local_as: LocalAuthorizationServer, fake_kubelet: FakeKubelet
) -> None:
    """close() while a caller's refresh is still at the AS: when that refresh lands, the closed
    manager must not start serving its token from the cache again."""
    with httpx.Client() as http:  # caller-owned, so close() cannot break the held request
        manager = TokenManager(
            token_endpoint=local_as.token_endpoint,
            token_file=fake_kubelet.token_path,
            http_client=http,
        )
        hold = local_as.hold = threading.Event()
        threads, _, _ = run_threads(1, lambda _: manager.get_token())
        try:
            assert local_as.wait_for_requests(1)
            manager.close()  # the refresh runs in the caller's thread: close() does not wait
        finally:
            hold.set()
        join_all(threads)  # the caller gets its token (or an error): either is fine
        with pytest.raises(SatOAuthError, match="closed"):
            manager.get_token()
        assert len(local_as.requests) == 1


def test_closed_cold_manager_raises(
    local_as: LocalAuthorizationServer, fake_kubelet: FakeKubelet
) -> None:
    manager = TokenManager(
        token_endpoint=local_as.token_endpoint, token_file=fake_kubelet.token_path
    )
    manager.close()
    with pytest.raises(SatOAuthError, match="closed"):
        manager.get_token()
    assert local_as.requests == []


def test_missing_token_file_fails_only_in_get_token(
    tmp_path: Path, local_as: LocalAuthorizationServer, managers: list[TokenManager]
) -> None:
    directory = tmp_path / "not-mounted-yet"
    path = directory / "token"
    manager = TokenManager(token_endpoint=local_as.token_endpoint, token_file=str(path))
    managers.append(manager)
    assert local_as.requests == []
    with pytest.raises(TokenFileError) as info:
        manager.get_token()
    assert info.value.path == str(path)
    assert local_as.requests == []
    # the volume appears later: the same manager now works
    kubelet = FakeKubelet(directory, audience=[local_as.issuer])
    local_as.trust(kubelet)
    kubelet.rotate()
    assert manager.get_token().access_token in local_as.issued
    assert local_as.requests[-1].assertion == kubelet.current_token


def test_from_env(
    monkeypatch: pytest.MonkeyPatch,
    local_as: LocalAuthorizationServer,
    fake_kubelet: FakeKubelet,
    managers: list[TokenManager],
) -> None:
    monkeypatch.setenv("SAT_OAUTH_TOKEN_ENDPOINT", local_as.token_endpoint)
    monkeypatch.setenv("SAT_OAUTH_TOKEN_FILE", fake_kubelet.token_path)
    monkeypatch.setenv("SAT_OAUTH_CLIENT_ID", "from-env")
    manager = TokenManager.from_env()
    managers.append(manager)
    assert isinstance(manager, TokenManager)
    assert manager.get_token().access_token in local_as.issued
    assert local_as.requests[-1].field("client_id") == "from-env"
    assert local_as.requests[-1].assertion == fake_kubelet.current_token


def test_from_env_overrides_win(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    local_as: LocalAuthorizationServer,
    fake_kubelet: FakeKubelet,
    managers: list[TokenManager],
) -> None:
    monkeypatch.setenv("SAT_OAUTH_TOKEN_ENDPOINT", "https://as.invalid/token")
    monkeypatch.setenv("SAT_OAUTH_TOKEN_FILE", str(tmp_path / "nothing-here"))
    monkeypatch.setenv("SAT_OAUTH_CLIENT_ID", "from-env")
    manager = TokenManager.from_env(
        token_endpoint=local_as.token_endpoint,
        token_file=fake_kubelet.token_path,
        client_id="override",
    )
    managers.append(manager)
    assert manager.get_token().access_token in local_as.issued
    assert len(local_as.requests) == 1
    assert local_as.requests[0].field("client_id") == "override"
    assert local_as.requests[0].assertion == fake_kubelet.current_token
