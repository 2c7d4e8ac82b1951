"""Pure message functions: build the token request, read the token response. No I/O here."""

from __future__ import annotations

__all__ = [
    "MAX_RESPONSE_BYTES",
    "build_token_request",
    "parse_token_response",
    "retry_after_seconds",
]

import email.utils
import json
import math
from collections.abc import Iterable
from typing import Any

import httpx

from ._claims import decode_claims
from ._config import Settings
from ._exceptions import OAuthError, TokenEndpointError, scrub
from ._models import AccessToken

MAX_RESPONSE_BYTES = 1024 * 1024
EXCERPT_CHARS = 120

# Statuses worth another try (DESIGN "Retry policy"); all other 5xx are reported the same way.
TRANSIENT_STATUSES = frozenset((408, 429, 500, 502, 503, 504))
_NOT_JSON: Any = object()

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"


def build_token_request(settings: Settings, endpoint: str, assertion: str) -> httpx.Request:
    """The POST for the configured grant, with the platform token as its credential."""
    form: list[tuple[str, str]]
    if settings.grant == "client_credentials":
        form = [
            ("grant_type", "client_credentials"),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", assertion),
        ]
    elif settings.grant == "jwt_bearer":
        form = [("grant_type", JWT_BEARER_GRANT), ("assertion", assertion)]
    else:
        form = [
            ("grant_type", TOKEN_EXCHANGE_GRANT),
            ("subject_token", assertion),
            ("subject_token_type", JWT_TOKEN_TYPE),
        ]
    if settings.client_id:
        form.append(("client_id", settings.client_id))
    if settings.scope:
        form.append(("scope", settings.scope))
    form.extend(("resource", r) for r in settings.resource)
    form.extend(("audience", a) for a in settings.audience)
    taken = {name for name, _ in form}
    form.extend((k, v) for k, v in settings.extra_params.items() if k not in taken)
    return httpx.Request(
        "POST",
        endpoint,
        headers={"Accept": "application/json"},
        data=dict(_group(form)),
        extensions={"timeout": httpx.Timeout(settings.timeout).as_dict()},
    )


def _group(form: list[tuple[str, str]]) -> dict[str, str | list[str]]:
    """httpx encodes a list value as a repeated field (RFC 8707 `resource`)."""
    grouped: dict[str, str | list[str]] = {}
    for name, value in form:
        if name in grouped:
            previous = grouped[name]
            grouped[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            grouped[name] = value
    return grouped


def retry_after_seconds(response: httpx.Response, now: float) -> float | None:
    """`Retry-After` as seconds from now (delta-seconds or HTTP-date); None if absent or bad."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _excerpt(response: httpx.Response) -> str:
    """A short, printable piece of a non-JSON body: enough to recognise an HTML error page."""
    text = response.content[: EXCERPT_CHARS * 4].decode("utf-8", "replace")
    text = " ".join(text.split())[:EXCERPT_CHARS]
    return "".join(c if c.isprintable() else "?" for c in text)


def _fail(
    response: httpx.Response,
    what: str,
    now: float,
    excerpt: bool = False,
    secrets: Iterable[str] = (),
) -> TokenEndpointError:
    message = f"unusable token endpoint response (HTTP {response.status_code}): {what}"
    if excerpt and response.content:
        message += f"; body starts: {scrub(_excerpt(response), secrets)!r}"
    return TokenEndpointError(
        message,
        status_code=response.status_code,
        retry_after=retry_after_seconds(response, now),
    )


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    return value if isinstance(value, str) else None


def parse_token_response(
    response: httpx.Response,
    requested_at: float,
    default_expires_in: float = 300.0,
    *,
    secrets: Iterable[str] = (),
) -> AccessToken:
    """RFC 6749 section 5: an `AccessToken`, or `OAuthError` / `TokenEndpointError`.

    `requested_at` is when the request was sent: lifetimes count from then, so a slow answer
    never makes us think a token lives longer than it does. Error messages carry no part of the
    request and, for JSON bodies, no part of the body but error codes; `secrets` (the assertion
    that was sent) are scrubbed from anything the server echoed.
    """
    if len(response.content) > MAX_RESPONSE_BYTES:
        raise _fail(response, "body larger than 1 MiB", requested_at)
    if 300 <= response.status_code < 400:
        location = scrub(response.headers.get("Location", "?"), secrets)
        raise _fail(response, f"redirect to {location} not followed (check the URL)", requested_at)
    try:
        body = json.loads(response.content) if response.content else None
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        body = _NOT_JSON
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str):
        error = scrub(error, secrets)
    if response.status_code in TRANSIENT_STATUSES or response.status_code >= 500:
        what = "the server is unavailable or overloaded"
        if isinstance(error, str):
            what += f" (error {error!r})"
        raise _fail(response, what, requested_at, excerpt=body is _NOT_JSON, secrets=secrets)
    if body is _NOT_JSON:
        kind = response.headers.get("Content-Type", "no content type")
        raise _fail(
            response, f"body is not JSON ({kind})", requested_at, excerpt=True, secrets=secrets
        )
    if body is None:
        raise _fail(response, "empty body", requested_at)
    if not isinstance(body, dict):
        raise _fail(response, "JSON body is not an object", requested_at)
    if isinstance(error, str) and error:
        description = _optional_str(body, "error_description")
        raise OAuthError(
            error,
            scrub(description, secrets) if description else description,
            _optional_str(body, "error_uri"),
            response.status_code,
        )
    if response.status_code != 200:
        raise _fail(response, "not a token response and not an RFC 6749 error", requested_at)
    access_token = body.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise _fail(response, "access_token missing or not a string", requested_at)
    token_type = body.get("token_type")
    if not isinstance(token_type, str) or not token_type:
        raise _fail(response, "token_type missing or not a string", requested_at)
    if token_type.lower() == "bearer":
        token_type = "Bearer"
    expires_at: float | None
    if "expires_in" in body:
        expires_in = _number(body["expires_in"])
        if expires_in is None:
            raise _fail(response, "expires_in is not a non-negative number", requested_at)
        expires_at = requested_at + expires_in
    else:
        expires_at = _jwt_exp(access_token)
        if expires_at is None:
            expires_at = requested_at + default_expires_in
    for name in ("scope", "issued_token_type"):
        if name in body and not isinstance(body[name], str):
            raise _fail(response, f"{name} is not a string", requested_at)
    extra = {
        k: v
        for k, v in body.items()
        if k not in ("access_token", "token_type", "expires_in", "scope", "issued_token_type")
    }
    return AccessToken(
        access_token=access_token,
        token_type=token_type,
        expires_at=expires_at,
        scope=_optional_str(body, "scope"),
        issued_token_type=_optional_str(body, "issued_token_type"),
        extra=extra,
    )


def _jwt_exp(token: str) -> float | None:
    try:
        return decode_claims(token).exp
    except ValueError:
        return None
