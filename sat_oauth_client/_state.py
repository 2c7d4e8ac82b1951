"""The refresh brain: pure, clock-free, lock-free. Given the time, it says what a caller does.

The shells (`TokenManager`, `AsyncTokenManager`) hold a lock around these calls, read the clock,
and do the I/O; every rule of DESIGN "Refresh policy" lives here and is tested with floats.

Timeline of one token with lifetime L obtained at t0::

    t0 ........ refresh_at ............ usable_until ..... expires_at
       fresh       advisory window:        mandatory:
       (cached)    cached + one            callers wait for
                   background refresh      one shared refresh
"""

from __future__ import annotations

__all__ = ["CacheEntry", "Decision", "RefreshPolicy", "TokenState"]

import dataclasses
import enum
import math
import random

from ._exceptions import OAuthError
from ._models import AccessToken

# RFC 6749 errors that say "try again later" rather than "this will never work".
_TRANSIENT_OAUTH_ERRORS = frozenset(("temporarily_unavailable", "server_error", "slow_down"))


class Decision(enum.Enum):
    USE_CACHED = "use the cached token"
    REFRESH_IN_BACKGROUND = "use the cached token; start one background refresh"
    JOIN_IN_FLIGHT = "wait for the refresh already in flight"
    REFRESH_AND_WAIT = "start a refresh and wait for it"
    RAISE_REFUSAL = "raise the remembered refusal without a request"


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """A token and the two instants that govern it (epoch seconds)."""

    token: AccessToken
    refresh_at: float
    usable_until: float


@dataclasses.dataclass(frozen=True)
class RefreshPolicy:
    """DESIGN defaults. Lead and margin are clamped for very short lifetimes (L/2 and L/4) so
    that a 20-second token is still served for a while instead of being 'due' from birth."""

    min_lead: float = 60.0
    lead_fraction: float = 0.2
    jitter_fraction: float = 0.1
    expiry_margin: float = 10.0
    failure_backoff_base: float = 5.0
    failure_backoff_cap: float = 60.0
    refusal_seconds: float = 5.0

    def schedule(self, token: AccessToken, obtained_at: float, jitter: float) -> CacheEntry:
        """When to refresh and until when to serve. `jitter` is uniform in [0, 1)."""
        if token.expires_at is None:
            return CacheEntry(token, math.inf, math.inf)
        lifetime = max(0.0, token.expires_at - obtained_at)
        lead = min(max(self.min_lead, lifetime * self.lead_fraction), lifetime / 2)
        usable_until = token.expires_at - min(self.expiry_margin, lifetime / 4)
        refresh_at = token.expires_at - lead - jitter * self.jitter_fraction * lifetime
        hint = _refresh_in(token)
        if hint is not None:
            refresh_at = min(refresh_at, obtained_at + hint)
        return CacheEntry(token, min(refresh_at, usable_until), usable_until)

    def backoff(self, failures: int, jitter: float, retry_after: float | None) -> float:
        """Pause after the n-th consecutive failed refresh: exponential, half-jittered, never
        shorter than the server's Retry-After."""
        growth: float = 2.0 ** (failures - 1)
        ceiling = min(self.failure_backoff_cap, self.failure_backoff_base * growth)
        pause = ceiling * (0.5 + 0.5 * jitter)
        return max(pause, float(retry_after or 0.0))


def _refresh_in(token: AccessToken) -> float | None:
    value = token.extra.get("refresh_in")
    if isinstance(value, bool):
        return None
    try:
        hint = float(value) if isinstance(value, (int, float, str)) else None
    except ValueError:
        return None
    return hint if hint is not None and math.isfinite(hint) and hint >= 0 else None


def is_permanent(error: BaseException) -> bool:
    """A refusal that will not fix itself by asking again right away."""
    return isinstance(error, OAuthError) and error.error not in _TRANSIENT_OAUTH_ERRORS


class TokenState:
    """The cache and its bookkeeping. Not thread-safe on its own: the shells lock around it."""

    def __init__(self, policy: RefreshPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.rng = rng or random.Random()  # noqa: S311 (jitter, not cryptography)
        self.entry: CacheEntry | None = None
        self.in_flight = False
        self.failures = 0
        self.retry_not_before = -math.inf
        self.refusal: BaseException | None = None
        self.refusal_until = -math.inf
        # (token, until): before `until`, decide() would say USE_CACHED. Published as one tuple so
        # the shells' lock-free fast path reads token and deadline consistently.
        self.fast: tuple[AccessToken, float] | None = None

    def _publish(self) -> None:
        entry = self.entry
        if entry is None:
            self.fast = None
        elif self.in_flight:
            self.fast = (entry.token, entry.usable_until)
        else:
            until = min(entry.usable_until, max(entry.refresh_at, self.retry_not_before))
            self.fast = (entry.token, until)

    def decide(self, now: float) -> Decision:
        entry = self.entry
        if entry is not None and now < entry.usable_until:
            if now < entry.refresh_at or self.in_flight or now < self.retry_not_before:
                return Decision.USE_CACHED
            return Decision.REFRESH_IN_BACKGROUND
        if self.in_flight:
            return Decision.JOIN_IN_FLIGHT
        if self.refusal is not None and now < self.refusal_until:
            return Decision.RAISE_REFUSAL
        return Decision.REFRESH_AND_WAIT

    def begin(self) -> None:
        """A refresh starts (after REFRESH_IN_BACKGROUND or REFRESH_AND_WAIT)."""
        self.in_flight = True
        self._publish()

    def succeeded(self, token: AccessToken, obtained_at: float) -> CacheEntry:
        self.in_flight = False
        self.failures = 0
        self.retry_not_before = -math.inf
        self.refusal, self.refusal_until = None, -math.inf
        self.entry = self.policy.schedule(token, obtained_at, self.rng.random())
        self._publish()
        return self.entry

    def failed(self, error: BaseException, now: float) -> None:
        self.in_flight = False
        self.failures += 1
        retry_after = getattr(error, "retry_after", None)
        pause = self.policy.backoff(self.failures, self.rng.random(), retry_after)
        self.retry_not_before = now + pause
        if is_permanent(error):
            self.refusal, self.refusal_until = error, now + self.policy.refusal_seconds
        self._publish()

    def invalidate(self, token: AccessToken | str | None = None) -> bool:
        """Drop the cached token; with `token`, only if it is still that one (compare-and-clear)."""
        entry = self.entry
        if entry is None:
            return False
        if token is not None:
            value = token.access_token if isinstance(token, AccessToken) else token
            if entry.token.access_token != value:
                return False
        self.entry = None
        self._publish()
        return True
