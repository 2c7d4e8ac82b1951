"""`TokenManager` and `AsyncTokenManager`: thin shells around the refresh brain.

They lock, read the clock, start refreshes and wait; every rule lives in `_state`, every
request detail in `_exchange`. The cached path takes no lock: one attribute read, one clock
read, one comparison.
"""

from __future__ import annotations

__all__ = ["AsyncTokenManager", "TokenManager"]

import logging
import threading
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import anyio
import httpx

from ._config import Settings, build_settings, env_config, merge_env
from ._drive import drive_async, drive_sync
from ._exceptions import ConfigurationError, SatOAuthError
from ._exchange import Exchange
from ._models import AccessToken
from ._source import FileTokenSource
from ._state import Decision, RefreshPolicy, TokenState
from ._testmode import is_testing

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger("sat_oauth_client")


class _Event(Protocol):
    def set(self) -> None: ...


E = TypeVar("E", bound=_Event)


class _Flight(Generic[E]):
    """One refresh that any number of callers can wait for; all get its token or its error."""

    def __init__(self, event: E) -> None:
        self.event = event
        self.token: AccessToken | None = None
        self.error: BaseException | None = None

    def finish(self, token: AccessToken | None, error: BaseException | None) -> None:
        self.token, self.error = token, error
        self.traceback = error.__traceback__ if error is not None else None
        self.event.set()

    def outcome(self) -> AccessToken:
        if self.error is not None:
            # every waiter raises the same object: reset its traceback so it cannot grow per raise
            raise self.error.with_traceback(self.traceback)
        assert self.token is not None
        return self.token


def _policy(settings: Settings) -> RefreshPolicy:
    return RefreshPolicy(
        min_lead=settings.refresh_min_lead,
        lead_fraction=settings.refresh_lead_fraction,
        jitter_fraction=settings.refresh_jitter_fraction,
        expiry_margin=settings.expiry_margin,
        failure_backoff_base=settings.failure_backoff_base,
        failure_backoff_cap=settings.failure_backoff_cap,
        refusal_seconds=settings.refusal_cache_seconds,
    )


class _ManagerBase(Generic[E]):
    """What both shells share: settings, the brain, the token source, the bookkeeping."""

    _client_type: type[httpx.Client] | type[httpx.AsyncClient]

    def __init__(self, **config: Any) -> None:
        self._settings = build_settings(**config)
        client = self._settings.http_client
        if client is not None and not isinstance(client, self._client_type):
            raise ConfigurationError(
                f"{type(self).__name__} needs an httpx.{self._client_type.__name__} "
                f"as http_client, not {type(client).__name__}"
            )
        self._clock = self._settings.clock
        self._exchange = Exchange(self._settings)
        self._state = TokenState(_policy(self._settings))
        self._lock = threading.Lock()  # only ever held for brain calls: never across I/O or await
        self._flight: _Flight[E] | None = None
        self._closed = False
        self._stopping = threading.Event()  # set by close(): interrupts retry waits
        self._source = FileTokenSource(
            self._settings.token_file, watch=self._settings.watch, clock=self._clock
        )

    @classmethod
    def from_env(cls, **overrides: Any) -> Self:
        """Configuration from `SAT_OAUTH_*` variables; keyword overrides win."""
        return cls(**merge_env(env_config(), overrides))

    def __repr__(self) -> str:
        s = self._settings
        where = s.token_endpoint or s.issuer
        return f"{type(self).__name__}(endpoint={where!r}, token_file={s.token_file!r})"

    def invalidate(self, token: AccessToken | str | None = None) -> None:
        """Drop the cached token so the next call gets a new one. With `token`, only if the cache
        still holds that token (a newer one that another caller already fetched is kept)."""
        with self._lock:
            self._state.invalidate(token)

    def _mark_closed(self) -> None:
        """From now on every call raises; dropping the entry sends even the cached path there."""
        with self._lock:
            self._closed = True
            self._state.invalidate()
        self._stopping.set()

    def _decide(self, force_refresh: bool, make_event: type[E]) -> tuple[Decision, Any]:
        """Under the lock: ask the brain, start a flight if it says so. Returns the decision and
        either the cached token (USE_CACHED, REFRESH_IN_BACKGROUND) or the flight to wait on."""
        with self._lock:
            if self._closed:
                raise SatOAuthError(f"{type(self).__name__} is closed")
            if force_refresh:
                self._state.invalidate()
            decision = self._state.decide(self._clock())
            entry = self._state.entry
            if decision is Decision.USE_CACHED:
                assert entry is not None
                return decision, entry.token
            if decision is Decision.RAISE_REFUSAL:
                assert self._state.refusal is not None
                raise self._state.refusal.with_traceback(None)
            if decision is Decision.JOIN_IN_FLIGHT:
                return decision, self._flight
            self._state.begin()
            self._flight = _Flight(make_event())
            if decision is Decision.REFRESH_IN_BACKGROUND:
                assert entry is not None
                return decision, (entry.token, self._flight)
            return decision, self._flight

    def _settle(
        self,
        flight: _Flight[E],
        obtained_at: float,
        token: AccessToken | None,
        error: BaseException | None,
        background: bool,
    ) -> None:
        """Record a refresh's outcome in the brain and wake its waiters."""
        with self._lock:
            if token is not None:
                self._state.succeeded(token, obtained_at)
            else:
                assert error is not None
                self._state.failed(error, self._clock())
            if self._closed:
                self._state.invalidate()  # a refresh that outlived close() must not revive it
            if self._flight is flight:
                self._flight = None
        if error is not None and background and not self._closed:
            logger.warning(
                "background token refresh failed; serving the cached token until it expires",
                extra={
                    "error": type(error).__name__,
                    "retry_in": round(self._state.retry_not_before - self._clock(), 1),
                },
            )
        flight.finish(token, error)


class TokenManager(_ManagerBase[threading.Event]):
    """A long-lived, thread-safe access-token cache for one configuration.

    `get_token()` returns the cached token (well under a microsecond), refreshes ahead of expiry
    in a background thread, shares one request among concurrent callers, and keeps serving the
    cached token through an outage until it expires. Constructing it makes no request.
    """

    _client_type = httpx.Client

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self._client: httpx.Client | None = self._settings.http_client  # type: ignore[assignment]
        self._owns_client = self._client is None
        self._threads: set[threading.Thread] = set()

    def get_token(self, force_refresh: bool = False) -> AccessToken:
        """A usable access token. `force_refresh=True` drops the cache first."""
        fast = self._state.fast  # lock-free: fresh, or a refresh already running or backing off
        if not force_refresh and fast is not None and self._clock() < fast[1]:
            return fast[0]
        decision, value = self._decide(force_refresh, threading.Event)
        if decision is Decision.USE_CACHED:
            return value  # type: ignore[no-any-return]
        if decision is Decision.REFRESH_IN_BACKGROUND:
            token, flight = value
            thread = threading.Thread(
                target=self._refresh, args=(flight, True), name="sat-oauth-refresh", daemon=True
            )
            self._threads.add(thread)
            try:
                thread.start()
            except RuntimeError as exc:  # e.g. at interpreter shutdown: never leave a flight open
                self._threads.discard(thread)
                self._settle(flight, self._clock(), None, exc, background=True)
            return token  # type: ignore[no-any-return]
        flight = value
        if decision is Decision.REFRESH_AND_WAIT:
            self._refresh(flight, False)  # this caller leads; the others join its flight
        flight.event.wait()
        return flight.outcome()  # type: ignore[no-any-return]

    def _pause(self, seconds: float) -> None:
        """A retry wait that close() cuts short (no token request goes out after close)."""
        if is_testing():
            seconds = 0.0
        if self._stopping.wait(seconds) or self._closed:
            raise SatOAuthError(f"{type(self).__name__} is closed")

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self._settings.timeout)
            return self._client

    def _refresh(self, flight: _Flight[threading.Event], background: bool) -> None:
        obtained_at = self._clock()
        token: AccessToken | None = None
        error: BaseException | None = None
        try:
            if self._closed:
                raise SatOAuthError(f"{type(self).__name__} is closed")
            token = drive_sync(self._exchange.flow(), self._http(), self._source, self._pause)
        except BaseException as exc:  # waiters must always be woken, whatever happened
            error = exc
        finally:
            # a KeyboardInterrupt belongs to this thread alone: the waiters get a plain error
            shared = error
            if error is not None and not isinstance(error, Exception):
                shared = SatOAuthError("token refresh was interrupted")
            self._settle(flight, obtained_at, token, shared, background)
            self._threads.discard(threading.current_thread())
        if error is not None and not isinstance(error, Exception):
            raise error

    def close(self) -> None:
        """Stop the watcher, wait for a background refresh, close the HTTP client we opened."""
        self._mark_closed()
        for thread in list(self._threads):
            thread.join(timeout=self._settings.timeout + 1)
        self._source.close()
        if self._owns_client and self._client is not None:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncTokenManager(_ManagerBase[anyio.Event]):
    """`TokenManager` for async code on asyncio or trio.

    Refreshes run in tasks the manager owns (not in a caller's task), so a cancelled caller never
    strands the others. Async primitives are made on first use, so it can be built outside a loop.
    """

    _client_type = httpx.AsyncClient

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self._client: httpx.AsyncClient | None = self._settings.http_client  # type: ignore[assignment]
        self._owns_client = self._client is None
        self._scopes: set[anyio.CancelScope] = set()

    async def get_token(self, force_refresh: bool = False) -> AccessToken:
        """A usable access token. `force_refresh=True` drops the cache first."""
        fast = self._state.fast  # lock-free: fresh, or a refresh already running or backing off
        if not force_refresh and fast is not None and self._clock() < fast[1]:
            return fast[0]
        decision, value = self._decide(force_refresh, anyio.Event)
        if decision is Decision.USE_CACHED:
            return value  # type: ignore[no-any-return]
        if decision is Decision.REFRESH_IN_BACKGROUND:
            token, flight = value
            _spawn(self._refresh, flight, True)
            return token  # type: ignore[no-any-return]
        flight = value
        if decision is Decision.REFRESH_AND_WAIT:
            _spawn(self._refresh, flight, False)
        await flight.event.wait()
        return flight.outcome()  # type: ignore[no-any-return]

    async def _refresh(self, flight: _Flight[anyio.Event], background: bool) -> None:
        obtained_at = self._clock()
        token: AccessToken | None = None
        error: BaseException | None = None
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            if self._closed:  # aclose() ran before this task started
                scope.cancel()
            try:
                if self._client is None:
                    self._client = httpx.AsyncClient(timeout=self._settings.timeout)
                token = await drive_async(self._exchange.flow(), self._client, self._source)
            except Exception as exc:
                error = exc
            finally:
                self._scopes.discard(scope)
                if token is None and error is None:
                    error = SatOAuthError("token refresh was cancelled")
                self._settle(flight, obtained_at, token, error, background)

    async def aclose(self) -> None:
        """Cancel a refresh in flight, stop the watcher, close the HTTP client we opened."""
        self._mark_closed()
        for scope in list(self._scopes):
            scope.cancel()
        self._source.close()
        if self._owns_client and self._client is not None:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


_background_tasks: set[Any] = set()


def _spawn(fn: Any, *args: Any) -> None:
    """Start `fn(*args)` detached from the caller's task (asyncio task or trio system task)."""
    import sniffio

    if sniffio.current_async_library() == "trio":
        import trio

        trio.lowlevel.spawn_system_task(fn, *args)
        return
    import asyncio

    task = asyncio.get_running_loop().create_task(fn(*args))
    _background_tasks.add(task)  # keep a reference until done (asyncio holds only weak ones)
    task.add_done_callback(_background_tasks.discard)
