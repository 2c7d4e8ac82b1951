"""The token exchange as a sans-I/O flow: it yields what it needs, the shells do the I/O.

`Exchange.flow()` is a generator. It yields `Send(request)` (answered with an `httpx.Response`,
or an `httpx.TransportError` thrown in), `Sleep(seconds)` and `ReadSat(previous)` (answered with
a `SatSnapshot`, or None when asked whether the token changed since `previous` and it did not),
and returns an `AccessToken`. Sync and async shells drive the same flow, so there is one copy of
discovery, retries, the re-read after a raced rotation, and the error translation.
"""

from __future__ import annotations

__all__ = ["Action", "Exchange", "ReadSat", "Send", "Sleep"]

import dataclasses
import logging
import sys
import threading
from collections.abc import Generator
from typing import Any, Union

import httpx
import tenacity

from ._claims import sat_warnings
from ._config import Settings
from ._discovery import metadata_urls, parse_metadata
from ._exceptions import DiscoveryError, OAuthError, TokenEndpointError
from ._messages import build_token_request, parse_token_response
from ._models import AccessToken
from ._retry import RetryPolicy
from ._source import SatSnapshot

logger = logging.getLogger("sat_oauth_client")


@dataclasses.dataclass(frozen=True)
class Send:
    request: httpx.Request


@dataclasses.dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclasses.dataclass(frozen=True)
class ReadSat:
    previous: str | None = dataclasses.field(default=None, repr=False)


Action = Union[Send, Sleep, ReadSat]  # noqa: UP007 (a runtime alias on Python 3.10)
Flow = Generator[Action, Any, Any]

# A refusal with one of these may come from a token that rotated while the request was in flight
# (Entra says invalid_request, Keycloak invalid_client): worth one re-read, never more.
_RACE_STATUSES = (400, 401)


class Exchange:
    """One configured client of one token endpoint: remembers the discovered endpoint and which
    warnings it already logged. Safe to share between threads and tasks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.policy = RetryPolicy(
            attempts=settings.retry_attempts,
            budget=settings.retry_budget,
            base=settings.retry_base,
            cap=settings.retry_cap,
            clock=settings.clock,
        )
        self._retry_kwargs = self.policy.tenacity_kwargs()
        self.endpoint: str | None = settings.token_endpoint
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    @property
    def issuer(self) -> str | None:
        return self.settings.issuer

    def flow(self) -> Generator[Action, Any, AccessToken]:
        """Discover (once), read the token, request with retries; re-read once after a race."""
        sat: SatSnapshot = yield ReadSat()  # first: a bad file is the likelier, local problem
        self._warn_about(sat)
        endpoint = self.endpoint
        if endpoint is None:
            endpoint = yield from self._discover()
            self.endpoint = endpoint
        raced = False
        while True:
            requested_at = self.settings.clock()
            request = build_token_request(self.settings, endpoint, sat.value)
            logger.debug(
                "token request",
                extra={
                    "endpoint": endpoint,
                    "grant": self.settings.grant,
                    "sat": sat.claims.fingerprint,
                },
            )
            try:
                response = yield from self._send_with_retries(request)
            except httpx.RequestError as exc:  # transport errors after retries; undecodable bodies
                raise TokenEndpointError(
                    f"token endpoint {endpoint} failed: {type(exc).__name__}"
                    f"{': ' + str(exc) if str(exc) else ''}",
                ) from None
            try:
                token = parse_token_response(
                    response, requested_at, self.settings.default_expires_in, secrets=(sat.value,)
                )
            except OAuthError as exc:
                if raced or exc.status_code not in _RACE_STATUSES:
                    raise
                newer: SatSnapshot | None = yield ReadSat(previous=sat.value)
                if newer is None:
                    raise
                logger.info(
                    "token rotated while the request was in flight; retrying once with the new one",
                    extra={"error": exc.error, "sat": newer.claims.fingerprint},
                )
                sat, raced = newer, True
                continue
            logger.info(
                "access token obtained",
                extra={
                    "endpoint": endpoint,
                    "expires_in": None
                    if token.expires_at is None
                    else round(token.expires_at - requested_at, 1),
                    "sat": sat.claims.fingerprint,
                },
            )
            return token

    def _send_with_retries(self, request: httpx.Request) -> Generator[Action, Any, httpx.Response]:
        """tenacity's own sans-I/O loop (`iter` -> DoAttempt / DoSleep / result), with our I/O."""
        retrying = tenacity.Retrying(**self._retry_kwargs)
        retrying.begin()
        state = tenacity.RetryCallState(retrying, fn=None, args=(), kwargs={})
        while True:
            do = retrying.iter(state)
            if isinstance(do, tenacity.DoAttempt):
                timeout = self.policy.attempt_timeout(state, self.settings.timeout)
                request.extensions = {
                    **request.extensions,
                    "timeout": httpx.Timeout(timeout).as_dict(),
                }
                try:
                    response = yield Send(request)
                except httpx.TransportError:
                    state.set_exception(sys.exc_info())  # type: ignore[arg-type]
                else:
                    state.set_result(response)
            elif isinstance(do, tenacity.DoSleep):
                state.prepare_for_next_attempt()
                logger.warning(
                    "token endpoint unavailable; retrying",
                    extra={"url": str(request.url), "wait_seconds": round(float(do), 3)},
                )
                yield Sleep(float(do))
            else:
                assert isinstance(do, httpx.Response)
                return do

    def _discover(self) -> Generator[Action, Any, str]:
        issuer = self.settings.issuer
        assert issuer is not None
        urls = metadata_urls(issuer)
        for index, url in enumerate(urls):
            request = httpx.Request(
                "GET",
                url,
                headers={"Accept": "application/json"},
                extensions={"timeout": httpx.Timeout(self.settings.timeout).as_dict()},
            )
            try:
                response = yield from self._send_with_retries(request)
            except httpx.RequestError as exc:
                raise DiscoveryError(f"{url} failed: {type(exc).__name__}") from None
            last = index == len(urls) - 1
            if 400 <= response.status_code < 500 and not last:
                continue  # not served at the RFC 8414 location: try OpenID's
            endpoint = parse_metadata(response, issuer, self.settings.allow_insecure_http, url)
            logger.debug(
                "token endpoint discovered", extra={"issuer": issuer, "endpoint": endpoint}
            )
            return endpoint
        raise AssertionError("unreachable")  # pragma: no cover

    def _warn_about(self, sat: SatSnapshot) -> None:
        """Log, once per problem, what a known AS will dislike about the token."""
        for warning in sat_warnings(sat.claims, issuer=self.issuer, now=self.settings.clock()):
            with self._lock:
                if warning in self._warned:
                    continue
                self._warned.add(warning)
            logger.warning("platform token: %s", warning, extra={"path": self.settings.token_file})
