"""The public test mode's switch: with it on, backoff pauses are skipped (but still computed)."""

from __future__ import annotations

__all__ = ["is_testing", "pause", "set_testing"]

import time

_testing = False


def set_testing(enabled: bool) -> None:
    """Turn waits off (True) or back on (False). Used by `sat_oauth_client.testing`."""
    global _testing
    _testing = enabled


def is_testing() -> bool:
    return _testing


def pause(seconds: float) -> None:
    """Blocking sleep, skipped in test mode."""
    if not _testing and seconds > 0:
        time.sleep(seconds)
