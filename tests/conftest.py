"""Shared fixtures: test mode on (no backoff sleeps), a fake clock, the public testing helpers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jwt
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


HS_KEY = "a-test-hmac-key-that-is-at-least-32-bytes-long"


@pytest.fixture
def write_sat(tmp_path: Path) -> Callable[[str], tuple[str, str]]:
    """For respx tests, which need no verifiable signature: write an HS256 token shaped like a
    service account token (with a trailing newline, as some writers leave) and return
    (token, path)."""

    def write(audience: str) -> tuple[str, str]:
        now = int(time.time())
        claims = {
            "iss": "https://oidc.cluster.example",
            "sub": "system:serviceaccount:ns:app",
            "aud": audience,
            "iat": now,
            "exp": now + 3600,
        }
        token = jwt.encode(claims, HS_KEY, algorithm="HS256")
        path = tmp_path / "token"
        path.write_text(token + "\n")
        return token, str(path)

    return write
