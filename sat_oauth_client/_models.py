"""`AccessToken`: what every public entry point returns."""

from __future__ import annotations

__all__ = ["AccessToken"]

import dataclasses
import types
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True, eq=True)
class AccessToken:
    """An access token and what the authorization server said about it.

    `expires_at` is epoch seconds (None when nothing said when it expires). `repr` and `str` never
    show `access_token` nor the values of `extra` (which may hold refresh or ID tokens).
    """

    access_token: str
    token_type: str = "Bearer"
    expires_at: float | None = None
    scope: str | None = None
    issued_token_type: str | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra", types.MappingProxyType(dict(self.extra)))

    def __hash__(self) -> int:  # `extra` is a mapping: hash the fields that identify the token
        return hash((self.access_token, self.token_type, self.expires_at, self.scope))

    def __repr__(self) -> str:
        return (
            f"AccessToken(access_token=<redacted>, token_type={self.token_type!r}, "
            f"expires_at={self.expires_at!r}, scope={self.scope!r}, "
            f"issued_token_type={self.issued_token_type!r}, extra_keys={sorted(self.extra)!r})"
        )

    __str__ = __repr__

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, token included (for `--json` output and callers that store it)."""
        return {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "expires_at": self.expires_at,
            "scope": self.scope,
            "issued_token_type": self.issued_token_type,
            **{k: v for k, v in self.extra.items() if k not in _CORE_FIELDS},
        }


_CORE_FIELDS = frozenset(("access_token", "token_type", "expires_at", "scope", "issued_token_type"))
