"""Unverified claims of a platform token, and what they say about its fitness for an AS.

The client holds no key and needs none: the AS verifies the signature. We decode only to schedule
(`exp`) and to warn early about tokens a known AS will refuse.
"""

from __future__ import annotations

__all__ = ["SatClaims", "decode_claims", "sat_warnings"]

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

import jwt

KUBERNETES_API_AUDIENCE_PREFIX = "https://kubernetes.default.svc"
KEYCLOAK_MAX_AGE = 3600.0
# Audiences that name a token-exchange service rather than the AS issuer, by design (Entra).
EXCHANGE_AUDIENCES = frozenset(("api://AzureADTokenExchange",))


@dataclasses.dataclass(frozen=True)
class SatClaims:
    """The claims we look at. `fingerprint` is a short hash, safe to log; never the token."""

    raw: Mapping[str, Any]
    fingerprint: str

    @property
    def exp(self) -> float | None:
        return _number(self.raw.get("exp"))

    @property
    def nbf(self) -> float | None:
        return _number(self.raw.get("nbf"))

    @property
    def iat(self) -> float | None:
        return _number(self.raw.get("iat"))

    @property
    def iss(self) -> str | None:
        value = self.raw.get("iss")
        return value if isinstance(value, str) else None

    @property
    def sub(self) -> str | None:
        value = self.raw.get("sub")
        return value if isinstance(value, str) else None

    @property
    def aud(self) -> tuple[str, ...]:
        value = self.raw.get("aud")
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list):
            return tuple(v for v in value if isinstance(v, str))
        return ()


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def fingerprint(token: str) -> str:
    """First 12 hex digits of SHA-256: tells tokens apart in logs, useless to an attacker."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def decode_claims(token: str) -> SatClaims:
    """Decode without verifying. `ValueError` (never echoing the token) if not a JWT."""
    if token.count(".") != 2:
        raise ValueError("expected three dot-separated parts")
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise ValueError(f"not a decodable JWT ({type(exc).__name__})") from None
    if not isinstance(claims, dict):
        raise ValueError("JWT payload is not a JSON object")
    return SatClaims(raw=claims, fingerprint=fingerprint(token))


def sat_warnings(claims: SatClaims, *, issuer: str | None, now: float) -> list[str]:
    """What a known AS will dislike about this token, as plain sentences (empty when nothing)."""
    warnings: list[str] = []
    aud = claims.aud
    if not aud:
        warnings.append("the token has no aud claim; every AS will refuse it")
    if len(aud) > 1:
        warnings.append(
            f"aud has {len(aud)} values; RFC 7523bis and Keycloak require exactly one "
            "(the AS issuer): give the projected token a single audience"
        )
    if any(a.startswith(KUBERNETES_API_AUDIENCE_PREFIX) for a in aud):
        warnings.append(
            "aud names the Kubernetes API server; a token for the API must not be sent to "
            "another party: project a token with the AS as its audience"
        )
    if issuer is not None and aud and issuer not in aud and not set(aud) & EXCHANGE_AUDIENCES:
        warnings.append(
            f"aud {list(aud)} does not contain the AS issuer {issuer}; "
            "RFC 7523bis requires aud to be the issuer"
        )
    if claims.exp is None:
        warnings.append("the token has no exp claim (a legacy secret-based token?)")
    iat = claims.iat
    if iat is not None and now - iat > KEYCLOAK_MAX_AGE:
        warnings.append(
            "the token was issued more than 3600 s ago; Keycloak refuses such tokens: "
            "keep expirationSeconds at 3600 or less"
        )
    return warnings
