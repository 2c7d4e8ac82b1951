"""The package's exception tree, and the one place where foreign errors are translated.

::

    SatOAuthError
    ├── ConfigurationError      bad keywords or environment; fix the configuration
    ├── TokenFileError          the platform token file is missing, unreadable or unusable
    ├── OAuthError              the authorization server answered with an RFC 6749 error
    ├── TokenEndpointError      no usable answer: transport failure or malformed response
    └── DiscoveryError          RFC 8414 / OpenID metadata could not be used

No message built here ever contains a token: callers pass only paths, reasons, error codes and
short, scrubbed excerpts.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "DiscoveryError",
    "OAuthError",
    "SatOAuthError",
    "TokenEndpointError",
    "TokenFileError",
    "scrub",
]

import re
from collections.abc import Iterable


class SatOAuthError(Exception):
    """Base of every error this package raises on purpose.

    `exit_code` is what the command line exits with for it, so that scripts and orchestrators
    built on the package can tell failures apart the same way.
    """

    exit_code: int = 1


class ConfigurationError(SatOAuthError, ValueError):
    """The configuration cannot work (missing endpoint, plain http to a remote host, ...)."""

    exit_code = 2


class TokenFileError(SatOAuthError):
    """The platform token file cannot be used. Names the path and the reason, never the content."""

    exit_code = 3

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"token file {path}: {reason}")


class OAuthError(SatOAuthError):
    """The authorization server refused the request (RFC 6749 section 5.2 error response)."""

    exit_code = 4

    def __init__(
        self,
        error: str,
        error_description: str | None = None,
        error_uri: str | None = None,
        status_code: int | None = None,
    ) -> None:
        self.error = error
        self.error_description = error_description
        self.error_uri = error_uri
        self.status_code = status_code
        message = f"authorization server refused the token request: {error}"
        if error_description:
            message += f" ({error_description})"
        if status_code is not None:
            message += f" [HTTP {status_code}]"
        super().__init__(message)


class TokenEndpointError(SatOAuthError):
    """No usable token response: a transport failure, or a response that is not RFC 6749.

    `status_code` is the HTTP status when a response came (even 200 for a malformed body) and
    None when none came. `retry_after` is the server's Retry-After, in seconds, when it sent one.
    """

    exit_code = 5

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        self.status_code = status_code
        self.retry_after = retry_after
        super().__init__(message)


class DiscoveryError(SatOAuthError):
    """Authorization server metadata could not be fetched or does not match the issuer."""

    exit_code = 5


_MIN_SECRET_PART = 8
_TOKEN_RUN = re.compile(r"[A-Za-z0-9_-]{8,}")


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Remove every secret, every dot-separated part of one (a JWT's segments), and every run of
    token characters that is a piece of one, from text."""
    whole = tuple(s for s in secrets if s)
    parts: set[str] = set()
    for secret in whole:
        parts.add(secret)
        parts.update(p for p in secret.split(".") if len(p) >= _MIN_SECRET_PART)
    for part in sorted(parts, key=len, reverse=True):
        text = text.replace(part, "[redacted]")
    # an echo cut short (by the server, or by our excerpt) leaves a piece of a segment
    return _TOKEN_RUN.sub(
        lambda m: "[redacted]" if any(m.group() in s for s in whole) else m.group(), text
    )
