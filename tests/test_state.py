"""Table-driven tests of the pure refresh brain (`_state`): floats for time, no I/O, no sleeping."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sat_oauth_client import AccessToken, OAuthError, TokenEndpointError, TokenFileError
from sat_oauth_client._state import CacheEntry, Decision, RefreshPolicy, TokenState

T0 = 1_000_000.0
POLICY = RefreshPolicy()


def token(
    lifetime: float | None, *, t0: float = T0, name: str = "at-1", **extra: object
) -> AccessToken:
    return AccessToken(
        access_token=name, expires_at=None if lifetime is None else t0 + lifetime, extra=extra
    )


# -- RefreshPolicy.schedule -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lifetime", "jitter", "refresh_offset", "usable_offset"),
    [
        # L=3600: lead max(60, 720) = 720, margin 10, jitter up to 10 % of L = 360
        (3600.0, 0.0, 3600.0 - 720.0, 3590.0),
        (3600.0, 0.999, 3600.0 - 720.0 - 0.999 * 360.0, 3590.0),
        (3600.0, 0.5, 3600.0 - 720.0 - 180.0, 3590.0),
        # L=120: lead max(60, 24) = 60 (= L/2, so the clamp does not bite), jitter up to 12
        (120.0, 0.0, 60.0, 110.0),
        (120.0, 0.999, 60.0 - 0.999 * 12.0, 110.0),
        # L=600: the 60 s floor does not apply (L/5 = 120)
        (600.0, 0.0, 480.0, 590.0),
        # L=20: lead clamped to L/2 = 10, margin clamped to L/4 = 5, jitter up to 2
        (20.0, 0.0, 10.0, 15.0),
        (20.0, 0.999, 10.0 - 0.999 * 2.0, 15.0),
        # L=4: lead 2, margin 1
        (4.0, 0.0, 2.0, 3.0),
    ],
)
def test_schedule_table(
    lifetime: float, jitter: float, refresh_offset: float, usable_offset: float
) -> None:
    entry = POLICY.schedule(token(lifetime), T0, jitter)
    assert entry.refresh_at == pytest.approx(T0 + refresh_offset)
    assert entry.usable_until == pytest.approx(T0 + usable_offset)
    # the design's formula, written independently
    lead = min(max(60.0, lifetime / 5), lifetime / 2)
    assert entry.refresh_at == pytest.approx(T0 + lifetime - lead - jitter * 0.1 * lifetime)
    assert T0 < entry.refresh_at <= entry.usable_until < T0 + lifetime


@pytest.mark.parametrize("lifetime", [1.0, 4.0, 20.0, 45.0, 120.0, 300.0, 3600.0, 86400.0])
@pytest.mark.parametrize("jitter", [0.0, 0.25, 0.999])
def test_schedule_clamps_keep_short_tokens_fresh_for_a_while(
    lifetime: float, jitter: float
) -> None:
    entry = POLICY.schedule(token(lifetime), T0, jitter)
    exp = T0 + lifetime
    assert exp - entry.usable_until <= min(10.0, lifetime / 4) + 1e-9  # margin <= L/4
    assert entry.refresh_at >= T0 + lifetime / 2 - 0.1 * lifetime - 1e-9  # lead <= L/2
    assert entry.refresh_at > T0  # not due from birth
    assert entry.refresh_at <= entry.usable_until


def test_schedule_zero_or_negative_lifetime_is_never_fresh() -> None:
    entry = POLICY.schedule(token(0.0), T0, 0.0)
    assert entry.refresh_at <= T0
    assert entry.usable_until <= T0
    past = POLICY.schedule(token(-30.0), T0, 0.0)
    assert past.usable_until <= T0
    assert past.refresh_at <= past.usable_until


def test_schedule_without_expiry_never_refreshes() -> None:
    entry = POLICY.schedule(token(None), T0, 0.999)
    assert entry.refresh_at == math.inf
    assert entry.usable_until == math.inf
    state = TokenState(POLICY, random.Random(1))
    state.succeeded(token(None), T0)
    for now in (T0, T0 + 3600.0, T0 + 10.0**9):
        assert state.decide(now) is Decision.USE_CACHED


@pytest.mark.parametrize(
    ("hint", "expected_offset"),
    [
        (100.0, 100.0),  # earlier than the policy's 2880: wins
        ("100", 100.0),  # numeric string
        (0, 0.0),  # "refresh now"
        (2000, 2000.0),
        (3000.0, 2880.0),  # later than the policy: ignored
        (10**9, 2880.0),
        (-5, 2880.0),  # nonsense hints are ignored
        ("soon", 2880.0),
        (True, 2880.0),
        (None, 2880.0),
        (float("nan"), 2880.0),
    ],
)
def test_refresh_in_hint_earlier_wins_later_ignored(hint: object, expected_offset: float) -> None:
    extra = {} if hint is None else {"refresh_in": hint}
    entry = POLICY.schedule(token(3600.0, **extra), T0, 0.0)
    assert entry.refresh_at == pytest.approx(T0 + expected_offset)
    assert entry.usable_until == pytest.approx(T0 + 3590.0)


def test_refresh_in_hint_never_moves_refresh_past_usable_until() -> None:
    entry = POLICY.schedule(token(20.0, refresh_in=19), T0, 0.0)
    assert entry.refresh_at <= entry.usable_until


def test_schedule_uses_configured_knobs() -> None:
    policy = RefreshPolicy(min_lead=10.0, lead_fraction=0.5, jitter_fraction=0.0, expiry_margin=1.0)
    entry = policy.schedule(token(100.0), T0, 0.999)
    assert entry.refresh_at == pytest.approx(T0 + 50.0)
    assert entry.usable_until == pytest.approx(T0 + 99.0)


# -- TokenState.decide ----------------------------------------------------------------------------


def fresh_state(seed: int = 7) -> TokenState:
    """A state holding one 3600 s token obtained at T0, refresh_at T0+2880 (no jitter)."""
    state = TokenState(RefreshPolicy(jitter_fraction=0.0), random.Random(seed))
    state.succeeded(token(3600.0), T0)
    assert state.entry is not None
    assert state.entry.refresh_at == pytest.approx(T0 + 2880.0)
    return state


ADVISORY = T0 + 3000.0  # between refresh_at (T0+2880) and usable_until (T0+3590)
EXPIRED = T0 + 3595.0  # inside the 10 s expiry margin


def test_decide_table() -> None:
    state = fresh_state()
    cases = [
        (T0, Decision.USE_CACHED),
        (T0 + 2879.9, Decision.USE_CACHED),
        (T0 + 2880.0, Decision.REFRESH_IN_BACKGROUND),
        (ADVISORY, Decision.REFRESH_IN_BACKGROUND),
        (T0 + 3589.9, Decision.REFRESH_IN_BACKGROUND),
        (T0 + 3590.0, Decision.REFRESH_AND_WAIT),
        (EXPIRED, Decision.REFRESH_AND_WAIT),
        (T0 + 3600.0, Decision.REFRESH_AND_WAIT),
        (T0 + 10**6, Decision.REFRESH_AND_WAIT),
    ]
    for now, expected in cases:
        assert state.decide(now) is expected, now


def test_decide_is_pure() -> None:
    state = fresh_state()
    for _ in range(3):
        assert state.decide(ADVISORY) is Decision.REFRESH_IN_BACKGROUND
    assert not state.in_flight


def test_decide_without_entry_refreshes_and_waits() -> None:
    state = TokenState(POLICY, random.Random(0))
    assert state.decide(T0) is Decision.REFRESH_AND_WAIT


def test_advisory_with_refresh_in_flight_uses_cached() -> None:
    state = fresh_state()
    assert state.decide(ADVISORY) is Decision.REFRESH_IN_BACKGROUND
    state.begin()
    assert state.decide(ADVISORY) is Decision.USE_CACHED
    assert state.decide(T0) is Decision.USE_CACHED


@pytest.mark.parametrize("now", [EXPIRED, T0 + 3600.0, T0 + 10**5])
def test_expired_with_refresh_in_flight_joins(now: float) -> None:
    state = fresh_state()
    state.begin()
    assert state.decide(now) is Decision.JOIN_IN_FLIGHT


def test_no_entry_with_refresh_in_flight_joins() -> None:
    state = TokenState(POLICY, random.Random(0))
    state.begin()
    assert state.decide(T0) is Decision.JOIN_IN_FLIGHT


def test_advisory_after_failed_refresh_backs_off() -> None:
    state = fresh_state()
    state.begin()
    state.failed(TokenEndpointError("down", status_code=503), ADVISORY)
    assert not state.in_flight
    assert state.failures == 1
    pause = state.retry_not_before - ADVISORY
    assert 2.5 <= pause <= 5.0  # base 5 s, half-jittered
    assert state.decide(ADVISORY) is Decision.USE_CACHED
    assert state.decide(state.retry_not_before - 0.001) is Decision.USE_CACHED
    assert state.decide(state.retry_not_before) is Decision.REFRESH_IN_BACKGROUND
    # the backoff never delays a caller that has no usable token
    assert state.decide(EXPIRED) is Decision.REFRESH_AND_WAIT
    assert state.refusal is None


def test_success_clears_backoff_and_failures() -> None:
    state = fresh_state()
    state.begin()
    state.failed(TokenEndpointError("down"), ADVISORY)
    state.begin()
    state.succeeded(token(3600.0, t0=ADVISORY, name="at-2"), ADVISORY)
    assert state.failures == 0
    assert state.retry_not_before == -math.inf
    assert state.entry is not None
    assert state.entry.token.access_token == "at-2"
    assert state.decide(ADVISORY + 1) is Decision.USE_CACHED


# -- refusals (negative cache) --------------------------------------------------------------------


@pytest.mark.parametrize(
    "error", ["invalid_client", "unauthorized_client", "invalid_scope", "invalid_grant"]
)
def test_permanent_refusal_is_remembered_for_refusal_seconds(error: str) -> None:
    state = TokenState(RefreshPolicy(refusal_seconds=5.0), random.Random(3))
    state.begin()
    refusal = OAuthError(error, status_code=401)
    state.failed(refusal, T0)
    assert state.refusal is refusal
    assert state.decide(T0) is Decision.RAISE_REFUSAL
    assert state.decide(T0 + 4.999) is Decision.RAISE_REFUSAL
    assert state.decide(T0 + 5.0) is Decision.REFRESH_AND_WAIT
    assert state.decide(T0 + 60.0) is Decision.REFRESH_AND_WAIT


def test_refusal_seconds_is_configurable() -> None:
    state = TokenState(RefreshPolicy(refusal_seconds=30.0), random.Random(3))
    state.begin()
    state.failed(OAuthError("invalid_client"), T0)
    assert state.decide(T0 + 29.0) is Decision.RAISE_REFUSAL
    assert state.decide(T0 + 30.0) is Decision.REFRESH_AND_WAIT


def test_refusal_does_not_hide_a_usable_token() -> None:
    state = fresh_state()
    state.begin()
    failed_at = T0 + 3588.0  # late in the advisory window
    state.failed(OAuthError("invalid_client", status_code=401), failed_at)
    assert state.decide(failed_at + 1.0) is Decision.USE_CACHED  # cached token still usable
    assert state.decide(failed_at + 3.0) is Decision.RAISE_REFUSAL  # expired; refusal < 5 s old
    assert state.decide(failed_at + 5.0) is Decision.REFRESH_AND_WAIT


def test_refusal_with_refresh_in_flight_joins() -> None:
    state = TokenState(POLICY, random.Random(3))
    state.begin()
    state.failed(OAuthError("invalid_client"), T0)
    state.begin()
    assert state.decide(T0 + 1) is Decision.JOIN_IN_FLIGHT


def test_success_clears_refusal() -> None:
    state = TokenState(POLICY, random.Random(3))
    state.begin()
    state.failed(OAuthError("invalid_client"), T0)
    state.begin()
    state.succeeded(token(3600.0, t0=T0 + 1), T0 + 1)
    assert state.refusal is None
    assert state.decide(T0 + 2) is Decision.USE_CACHED
    state.invalidate()
    assert state.decide(T0 + 2) is Decision.REFRESH_AND_WAIT


@pytest.mark.parametrize(
    "error",
    [
        TokenEndpointError("down", status_code=503),
        TokenEndpointError("unreachable"),
        OAuthError("temporarily_unavailable", status_code=400),
        OAuthError("server_error", status_code=400),
        OAuthError("slow_down", status_code=400),
        TokenFileError("/var/run/token", "is empty"),
    ],
    ids=lambda e: f"{type(e).__name__}-{getattr(e, 'error', '')}",
)
def test_transient_errors_do_not_create_a_refusal(error: Exception) -> None:
    state = TokenState(POLICY, random.Random(3))
    state.begin()
    state.failed(error, T0)
    assert state.refusal is None
    assert state.decide(T0) is Decision.REFRESH_AND_WAIT


# -- backoff --------------------------------------------------------------------------------------


def test_backoff_grows_exponentially_and_is_capped() -> None:
    policy = RefreshPolicy(failure_backoff_base=5.0, failure_backoff_cap=60.0)
    low = [policy.backoff(n, 0.0, None) for n in range(1, 9)]
    high = [policy.backoff(n, 0.999, None) for n in range(1, 9)]
    assert low == pytest.approx([2.5, 5.0, 10.0, 20.0, 30.0, 30.0, 30.0, 30.0])
    assert high == pytest.approx([0.9995 * c for c in (5, 10, 20, 40, 60, 60, 60, 60)])
    assert all(b <= 60.0 for b in high)


def test_backoff_honours_retry_after() -> None:
    assert POLICY.backoff(1, 0.0, 42.0) == pytest.approx(42.0)
    assert POLICY.backoff(1, 0.999, 1.0) == pytest.approx(0.9995 * 5.0)  # never shorter
    assert POLICY.backoff(1, 0.0, 0.0) == pytest.approx(2.5)


def test_state_backoff_grows_over_consecutive_failures() -> None:
    state = TokenState(POLICY, random.Random(11))
    pauses = []
    now = T0
    for _ in range(8):
        state.begin()
        state.failed(TokenEndpointError("down"), now)
        pauses.append(state.retry_not_before - now)
        now = state.retry_not_before
    ceilings = [min(60.0, 5.0 * 2**n) for n in range(8)]
    for pause, ceiling in zip(pauses, ceilings):
        assert ceiling / 2 <= pause <= ceiling
    assert pauses[3] > pauses[0]
    assert state.failures == 8


def test_state_backoff_is_deterministic_with_a_seed() -> None:
    def run(seed: int) -> list[float]:
        state = TokenState(POLICY, random.Random(seed))
        out = []
        for _ in range(4):
            state.begin()
            state.failed(TokenEndpointError("down"), T0)
            out.append(state.retry_not_before)
        return out

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_state_backoff_honours_error_retry_after() -> None:
    state = fresh_state()
    state.begin()
    state.failed(TokenEndpointError("busy", status_code=429, retry_after=120.0), ADVISORY)
    assert state.retry_not_before == pytest.approx(ADVISORY + 120.0)
    assert state.decide(ADVISORY + 119.0) is Decision.USE_CACHED
    assert state.decide(ADVISORY + 120.0) is Decision.REFRESH_IN_BACKGROUND


def test_jitter_spreads_a_fleet() -> None:
    rng = random.Random(1234)
    refresh = set()
    for _ in range(50):
        state = TokenState(POLICY, rng)
        state.succeeded(token(3600.0), T0)
        assert state.entry is not None
        assert T0 + 2520.0 <= state.entry.refresh_at <= T0 + 2880.0
        refresh.add(round(state.entry.refresh_at, 3))
    assert len(refresh) > 40


# -- invalidate -----------------------------------------------------------------------------------


def test_invalidate_compare_and_clear() -> None:
    state = fresh_state()
    assert state.invalidate("some-other-token") is False
    assert state.entry is not None
    assert state.invalidate(AccessToken("some-other-token")) is False
    assert state.entry is not None
    assert state.decide(T0) is Decision.USE_CACHED
    assert state.invalidate("at-1") is True
    assert state.entry is None
    assert state.decide(T0) is Decision.REFRESH_AND_WAIT


def test_invalidate_with_access_token_object() -> None:
    state = fresh_state()
    assert state.invalidate(token(3600.0)) is True
    assert state.entry is None


def test_invalidate_without_token_drops() -> None:
    state = fresh_state()
    assert state.invalidate() is True
    assert state.entry is None
    assert state.invalidate() is False  # nothing left to drop
    assert state.decide(T0) is Decision.REFRESH_AND_WAIT


def test_invalidate_during_flight_joins_it() -> None:
    state = fresh_state()
    state.begin()
    state.invalidate()
    assert state.decide(T0) is Decision.JOIN_IN_FLIGHT


def test_succeeded_returns_the_entry() -> None:
    state = TokenState(POLICY, random.Random(0))
    state.begin()
    entry = state.succeeded(token(3600.0), T0)
    assert isinstance(entry, CacheEntry)
    assert entry is state.entry
    assert not state.in_flight


# -- the published fast path agrees with decide() ------------------------------------------------


@given(
    lifetime=st.floats(min_value=1, max_value=86_400),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["begin", "ok", "fail", "refuse", "invalidate"]),
            st.floats(min_value=0, max_value=1.5),
        ),
        max_size=8,
    ),
    probe=st.floats(min_value=0, max_value=1.5),
)
def test_fast_path_says_cached_exactly_when_decide_does(
    lifetime: float, steps: list[tuple[str, float]], probe: float
) -> None:
    """The shells' lock-free check (`now < state.fast[1]`) must never serve a token that
    decide() would refresh, and should serve whenever decide() says USE_CACHED."""
    t0 = 1_000_000.0
    state = TokenState(RefreshPolicy(), rng=random.Random(7))
    state.succeeded(AccessToken("at", expires_at=t0 + lifetime), t0)
    for action, fraction in steps:
        now = t0 + fraction * lifetime
        if action == "begin":
            state.begin()
        elif action == "ok":
            state.succeeded(AccessToken("at2", expires_at=now + lifetime), now)
        elif action == "fail":
            state.failed(TokenEndpointError("down", status_code=503), now)
        elif action == "refuse":
            state.failed(OAuthError("invalid_client", status_code=401), now)
        else:
            state.invalidate()
    now = t0 + probe * lifetime
    fast_says_cached = state.fast is not None and now < state.fast[1]
    assert fast_says_cached == (state.decide(now) is Decision.USE_CACHED)
    if fast_says_cached:
        assert state.entry is not None
        assert state.fast is not None
        assert state.fast[0] is state.entry.token
