"""The retry policy as tenacity settings, built once per configuration.

Retries transport errors and 408/429/500/502/503/504 with full-jitter exponential backoff,
honours `Retry-After`, and stops at the attempt limit or the time budget. Elapsed time counts the
waits tenacity planned (`idle_for`) as well as the wall clock, so the budget holds in test mode,
where waits are skipped.
"""

from __future__ import annotations

__all__ = ["RetryPolicy"]

import dataclasses
import random
import time
from collections.abc import Callable
from typing import Any

import httpx
import tenacity

from ._messages import TRANSIENT_STATUSES, retry_after_seconds


def _is_transient(response: object) -> bool:
    return isinstance(response, httpx.Response) and response.status_code in TRANSIENT_STATUSES


def _last_outcome_result(state: tenacity.RetryCallState) -> Any:
    """When the attempts run out, hand back the last response (or raise the last error)."""
    assert state.outcome is not None
    return state.outcome.result()


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    budget: float = 30.0
    base: float = 0.5
    cap: float = 10.0
    clock: Callable[[], float] = dataclasses.field(default=lambda: 0.0)
    rng: random.Random = dataclasses.field(default_factory=random.Random)

    def _remaining(self, state: tenacity.RetryCallState) -> float:
        elapsed = max(time.monotonic() - state.start_time, state.idle_for)
        return self.budget - elapsed

    def _retry_after(self, state: tenacity.RetryCallState) -> float | None:
        outcome = state.outcome
        if outcome is None or outcome.failed:
            return None
        response = outcome.result()
        if not isinstance(response, httpx.Response):
            return None
        return retry_after_seconds(response, self.clock())

    def attempt_timeout(self, state: tenacity.RetryCallState, timeout: float) -> float:
        """The request timeout for the next attempt: never past the budget (at least 0.1 s)."""
        return max(0.1, min(timeout, self._remaining(state)))

    def stop(self, state: tenacity.RetryCallState) -> bool:
        return state.attempt_number >= self.attempts or self._remaining(state) <= 0

    def wait(self, state: tenacity.RetryCallState) -> float:
        remaining = max(0.0, self._remaining(state))
        retry_after = self._retry_after(state)
        if retry_after is not None:
            return min(retry_after, remaining)
        ceiling = min(self.cap, self.base * 2 ** (state.attempt_number - 1))
        return min(self.rng.uniform(0, ceiling), remaining)

    def tenacity_kwargs(self) -> dict[str, Any]:
        """One set of settings for every `tenacity.Retrying` this policy drives."""
        return {
            "retry": (
                tenacity.retry_if_exception_type(httpx.TransportError)
                | tenacity.retry_if_result(_is_transient)
            ),
            "stop": self.stop,
            "wait": self.wait,
            "retry_error_callback": _last_outcome_result,
            "reraise": True,
        }
