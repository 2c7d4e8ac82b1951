"""Shared fixtures: test mode on (no backoff sleeps), a fake clock, the public testing helpers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sat_oauth_client.testing import testing_mode

# Our own plugin is turned off by name in pyproject's addopts and loaded here instead: an entry-
# point plugin is imported before pytest-cov starts, which would hide our module-level lines from
# coverage. Users get it through the entry point (test_smoke checks it is registered).
pytest_plugins = ["sat_oauth_client.testing._plugin"]


@pytest.fixture(autouse=True)
def _no_backoff_waits() -> Iterator[None]:
    with testing_mode():
        yield


class FakeClock:
    """A clock tests move by hand: `clock()` reads it, `clock.advance(s)` moves it."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return "asyncio"
