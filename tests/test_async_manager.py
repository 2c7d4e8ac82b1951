"""`AsyncTokenManager` end to end on asyncio and trio: single flight across 1,000 tasks, the
advisory window, backoff, refusals, cancellation, lifecycle.

No sleeping: tasks pile up on `local_as.hold` (released from the test), the AS's request log is
awaited in a worker thread, and the fake clock is the only time that moves.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from sat_oauth_client import (
    AccessToken,
    AsyncTokenManager,
    ConfigurationError,
    OAuthError,
    SatOAuthError,
    TokenEndpointError,
    TokenFileError,
)
from sat_oauth_client._state import Decision
from sat_oauth_client._watch import watcher_thread_count
from sat_oauth_client.testing import FakeKubelet, LocalAuthorizationServer

pytestmark = pytest.mark.anyio

TIMEOUT = 30.0
LONG_SAT_LIFETIME = 10 * 365 * 86400.0  # signed on the real clock; never expired by the fake one
AT_LIFETIME = 3600.0  # refresh_at = t0 + 2880 (jitter off), usable_until = t0 + 3590
IN_ADVISORY_WINDOW = 3000.0


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class DecisionSpy:
    """Counts the brain's decisions (made synchronously inside `get_token`)."""

    def __init__(self, manager: AsyncTokenManager) -> None:
        self.decisions: list[Decision] = []
        original = manager._state.decide

        def decide(now: float) -> Decision:
            decision = original(now)
            self.decisions.append(decision)
            return decision

        manager._state.decide = decide  # type: ignore[method-assign]

    def count(self, decision: Decision) -> int:
        return self.decisions.count(decision)


async def wait_for_requests(server: LocalAuthorizationServer, count: int) -> bool:
    return await anyio.to_thread.run_sync(server.wait_for_requests, count)


async def wait_background_refresh(manager: AsyncTokenManager) -> None:
    flight = manager._flight
    if flight is not None:
        with anyio.fail_after(TIMEOUT):
            await flight.event.wait()
    assert not manager._state.in_flight


async def pile_up(
    count: int, call: Callable[[int], Any], server: LocalAuthorizationServer, requests: int
) -> list[Any]:
    """Run `count` tasks calling `call(i)`; once every task has made its decision (and so waits
    on the held request) and `requests` token requests arrived, release the AS."""
    assert server.hold is not None
    results: list[Any] = []
    started = 0
    all_started = anyio.Event()

    async def run(i: int) -> None:
        nonlocal started
        started += 1
        if started == count:
            all_started.set()
        # no checkpoint between the line above and the decision inside the call
        results.append(await call(i))

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(run, i)
            await all_started.wait()  # every task is parked on the flight (or returned)
            assert await wait_for_requests(server, requests)
            server.hold.set()
    return results


@pytest.fixture
def timed_as(tmp_path: Path, clock: Callable[[], float]) -> Iterator[LocalAuthorizationServer]:
    with LocalAuthorizationServer(clock=clock, token_lifetime=AT_LIFETIME) as server:
        kubelet = FakeKubelet(
            tmp_path / "sat", audience=[server.issuer], lifetime=LONG_SAT_LIFETIME
        )
        server.trust(kubelet)
        kubelet.rotate()
        server.kubelet = kubelet  # type: ignore[attr-defined]
        try:
            yield server
        finally:
            if server.hold is not None:
                server.hold.set()


def timed_manager(server: LocalAuthorizationServer, clock: Any, **config: Any) -> AsyncTokenManager:
    return AsyncTokenManager(
        token_endpoint=server.token_endpoint,
        token_file=server.kubelet.token_path,  # type: ignore[attr-defined]
        clock=clock,
        refresh_jitter_fraction=0.0,
        **config,
    )


def local_manager(server: LocalAuthorizationServer, kubelet: FakeKubelet) -> AsyncTokenManager:
    return AsyncTokenManager(token_endpoint=server.token_endpoint, token_file=kubelet.token_path)


# -- single flight --------------------------------------------------------------------------------


async def test_cold_manager_1000_tasks_make_one_request(
    local_as: LocalAuthorizationServer, fake_kubelet: FakeKubelet
) -> None:
    manager = local_manager(local_as, fake_kubelet)
    spy = DecisionSpy(manager)
    local_as.hold = threading.Event()
    try:
        results = await pile_up(1000, lambda _: manager.get_token(), local_as, 1)
    finally:
        local_as.hold.set()
        await manager.aclose()
    assert len(local_as.requests) == 1
    assert len(results) == 1000
    assert {token.access_token for token in results} == set(local_as.issued)
    assert spy.count(Decision.REFRESH_AND_WAIT) == 1
    assert spy.count(Decision.JOIN_IN_FLIGHT) == 999


@pytest.mark.parametrize("mode", ["force_refresh", "invalidate", "mixed"])
async def test_burst_of_force_refresh_and_invalidate_makes_one_request(
    local_as: LocalAuthorizationServer, fake_kubelet: FakeKubelet, mode: str
) -> None:
    manager = local_manager(local_as, fake_kubelet)
    try:
        old = await manager.get_token()
        spy = DecisionSpy(manager)
        local_as.hold = threading.Event()

        async def call(i: int) -> AccessToken:
            if mode == "force_refresh" or (mode == "mixed" and i % 2 == 0):
                return await manager.get_token(force_refresh=True)
            manager.invalidate()
            return await manager.get_token()

        results = await pile_up(200, call, local_as, 2)
    finally:
        if local_as.hold is not None:
            local_as.hold.set()
        await manager.aclose()
    assert len(local_as.requests) == 2
    assert len({token.access_token for token in results}) == 1
    assert results[0].access_token != old.access_token
    assert spy.count(Decision.REFRESH_AND_WAIT) == 1
    assert spy.count(Decision.JOIN_IN_FLIGHT) == 199


async def test_cancelled_caller_does_not_strand_the_others(
    local_as: LocalAuthorizationServer, fake_kubelet: FakeKubelet
) -> None:
    manager = local_manager(local_as, fake_kubelet)
    hold = local_as.hold = threading.Event()
    results: list[AccessToken] = []
    try:
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                leader = anyio.CancelScope()

                async def lead() -> None:
                    with leader:
                        await manager.get_token()

                async def follow() -> None:
                    results.append(await manager.get_token())

                tg.start_soon(lead)
                assert await wait_for_requests(local_as, 1)
                tg.start_soon(follow)
                await anyio.wait_all_tasks_blocked()
                leader.cancel()  # the caller that started the refresh goes away
                hold.set()
    finally:
        hold.set()
        await manager.aclose()
    assert len(results) == 1
    assert results[0].access_token in local_as.issued
    assert len(local_as.requests) == 1


# -- the advisory window --------------------------------------------------------------------------


async def test_advisory_window_serves_cached_without_waiting(
    timed_as: LocalAuthorizationServer, clock: Any
) -> None:
    server = timed_as
    manager = timed_manager(server, clock)
    hold = threading.Event()
    try:
        first = await manager.get_token()
        clock.advance(IN_ADVISORY_WINDOW)
        spy = DecisionSpy(manager)
        server.hold = hold
        results: list[AccessToken] = []

        async def call() -> None:
            results.append(await manager.get_token())

        with anyio.fail_after(TIMEOUT):  # all return while the refresh is held at the AS
            async with anyio.create_task_group() as tg:
                for _ in range(100):
                    tg.start_soon(call)
        assert not hold.is_set()
        assert len(results) == 100
        assert all(token is first for token in results)
        assert await wait_for_requests(server, 2)
        assert spy.count(Decision.REFRESH_IN_BACKGROUND) == 1
        # the others were served cached: by decide() or by the lock-free fast path
        assert spy.count(Decision.JOIN_IN_FLIGHT) == spy.count(Decision.REFRESH_AND_WAIT) == 0
        hold.set()
        await wait_background_refresh(manager)
        fresh = await manager.get_token()
        assert fresh.access_token != first.access_token
        assert len(server.requests) == 2
    finally:
        hold.set()
        await manager.aclose()


async def test_advisory_window_failed_refresh_backs_off(
    timed_as: LocalAuthorizationServer, clock: Any
) -> None:
    server = timed_as
    manager = timed_manager(server, clock, retry_attempts=1)
    try:
        first = await manager.get_token()
        clock.advance(IN_ADVISORY_WINDOW)
        server.fail(503, times=100)
        assert await manager.get_token() is first
        assert await wait_for_requests(server, 2)
        await wait_background_refresh(manager)
        assert manager._state.failures == 1
        for _ in range(50):
            assert await manager.get_token() is first
        assert len(server.requests) == 2
        clock.advance(manager._state.retry_not_before - clock() + 0.01)
        assert await manager.get_token() is first
        assert await wait_for_requests(server, 3)
        await wait_background_refresh(manager)
        for _ in range(20):
            assert await manager.get_token() is first
        assert len(server.requests) == 3
    finally:
        await manager.aclose()


async def test_past_expiry_with_as_down_raises(
    timed_as: LocalAuthorizationServer, clock: Any
) -> None:
    server = timed_as
    async with timed_manager(server, clock) as manager:
        await manager.get_token()
        clock.advance(AT_LIFETIME)
        server.fail(503, times=100)
        with pytest.raises(TokenEndpointError) as info:
            await manager.get_token()
        assert info.value.status_code == 503
        assert len(server.requests) == 1 + 4


async def test_permanent_refusal_is_cached(timed_as: LocalAuthorizationServer, clock: Any) -> None:
    server = timed_as
    async with timed_manager(server, clock) as manager:
        server.fail(401, times=100, error="invalid_client")
        for _ in range(2):
            with pytest.raises(OAuthError) as info:
                await manager.get_token()
            assert info.value.error == "invalid_client"
        assert len(server.requests) == 1
        clock.advance(5.1)
        with pytest.raises(OAuthError):
            await manager.get_token()
        assert len(server.requests) == 2


# -- lifecycle ------------------------------------------------------------------------------------


async def test_async_context_manager_closes(
    local_as: LocalAuthorizationServer, fake_kubelet: FakeKubelet
) -> None:
    baseline = watcher_thread_count()
    async with local_manager(local_as, fake_kubelet) as manager:
        assert watcher_thread_count() == baseline + 1
        assert (await manager.get_token()).access_token in local_as.issued
    assert watcher_thread_count() == baseline
    with pytest.raises(SatOAuthError, match="closed"):
        await manager.get_token(force_refresh=True)


async def test_closed_manager_raises_even_with_a_cached_token(
    local_as: LocalAuthorizationServer, fake_kubelet: FakeKubelet
) -> None:
    manager = local_manager(local_as, fake_kubelet)
    await manager.get_token()
    await manager.aclose()
    with pytest.raises(SatOAuthError, match="closed"):
        await manager.get_token()
    assert len(local_as.requests) == 1


async def test_closed_cold_manager_raises(
    local_as: LocalAuthorizationServer, fake_kubelet: FakeKubelet
) -> None:
    manager = local_manager(local_as, fake_kubelet)
    await manager.aclose()
    with pytest.raises(SatOAuthError, match="closed"):
        await manager.get_token()
    assert local_as.requests == []


async def test_missing_token_file_fails_only_in_get_token(
    tmp_path: Path, local_as: LocalAuthorizationServer
) -> None:
    path = tmp_path / "absent" / "token"
    manager = AsyncTokenManager(token_endpoint=local_as.token_endpoint, token_file=str(path))
    try:
        assert local_as.requests == []
        with pytest.raises(TokenFileError) as info:
            await manager.get_token()
        assert info.value.path == str(path)
        assert local_as.requests == []
    finally:
        await manager.aclose()


async def test_from_env_overrides_win(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    local_as: LocalAuthorizationServer,
    fake_kubelet: FakeKubelet,
) -> None:
    monkeypatch.setenv("SAT_OAUTH_TOKEN_ENDPOINT", "https://as.invalid/token")
    monkeypatch.setenv("SAT_OAUTH_TOKEN_FILE", fake_kubelet.token_path)
    monkeypatch.setenv("SAT_OAUTH_SCOPE", "from-env")
    async with AsyncTokenManager.from_env(
        token_endpoint=local_as.token_endpoint, scope="override"
    ) as manager:
        assert isinstance(manager, AsyncTokenManager)
        token = await manager.get_token()
    assert token.scope == "override"
    assert local_as.requests[0].field("scope") == "override"
    assert local_as.requests[0].assertion == fake_kubelet.current_token


def test_sync_http_client_is_refused(tmp_path: Path) -> None:
    with httpx.Client() as client, pytest.raises(ConfigurationError):
        AsyncTokenManager(
            token_endpoint="https://as.example/token",
            token_file=str(tmp_path / "token"),
            http_client=client,
        )
