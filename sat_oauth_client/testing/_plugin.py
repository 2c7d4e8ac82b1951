"""pytest plugin (entry point `sat_oauth_client`): fixtures for tests of code that uses the SDK.

None is autouse: a project opts in by naming them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from . import FakeKubelet, LocalAuthorizationServer, testing_mode


@pytest.fixture
def sat_oauth_test_mode() -> Iterator[None]:
    """Skip retry/backoff waits for the duration of the test."""
    with testing_mode():
        yield


@pytest.fixture
def local_as() -> Iterator[LocalAuthorizationServer]:
    """A running local authorization server on 127.0.0.1."""
    with LocalAuthorizationServer() as server:
        yield server


@pytest.fixture
def fake_kubelet(tmp_path: Path, local_as: LocalAuthorizationServer) -> Iterator[FakeKubelet]:
    """A fake kubelet whose tokens `local_as` trusts, with a first token already written."""
    kubelet = FakeKubelet(tmp_path / "sat", audience=[local_as.issuer])
    local_as.trust(kubelet)
    kubelet.rotate()
    yield kubelet
    kubelet.stop()
