"""Test helpers for code that uses sat_oauth_client: no cluster, no real AS needed.

- `FakeKubelet`: signs Kubernetes-shaped service account tokens and writes them with the
  kubelet's atomic-writer layout; `rotate()`, `start_rotation()`, `issuer`, `jwks`.
- `LocalAuthorizationServer`: an AS on 127.0.0.1 that verifies those tokens as the WIMSE draft
  says, issues access tokens, serves RFC 8414 metadata, records requests and injects faults.
- `set_testing(True)` / `testing_mode()`: backoff waits are computed but not slept.
- A pytest plugin (loaded automatically) with the fixtures `fake_kubelet`, `local_as` and
  `sat_oauth_test_mode`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .._testmode import is_testing, set_testing
from ._kubelet import FakeKubelet, atomic_write
from ._server import Fault, LocalAuthorizationServer, RecordedRequest

__all__ = [
    "FakeKubelet",
    "Fault",
    "LocalAuthorizationServer",
    "RecordedRequest",
    "atomic_write",
    "is_testing",
    "set_testing",
    "testing_mode",
]


@contextlib.contextmanager
def testing_mode(enabled: bool = True) -> Iterator[None]:  # noqa: PT028 (not a test)
    """Within the block, retry and backoff waits are skipped (their lengths are still computed)."""
    previous = is_testing()
    set_testing(enabled)
    try:
        yield
    finally:
        set_testing(previous)
