"""Frozen settings built once from keywords (or `SAT_OAUTH_*` environment variables).

Every public entry point takes the same keywords; they are checked here, once, so that the rest
of the package can trust them.
"""

from __future__ import annotations

__all__ = ["GRANTS", "Settings", "build_settings", "env_config", "is_loopback_url"]

import dataclasses
import ipaddress
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import httpx

from ._exceptions import ConfigurationError

Grant = Literal["client_credentials", "jwt_bearer", "token_exchange"]
GRANTS: tuple[Grant, ...] = ("client_credentials", "jwt_bearer", "token_exchange")
LEGACY_API_SERVER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the request builder, the flow, the brain and the shells need to know."""

    token_file: str
    token_endpoint: str | None = None
    issuer: str | None = None
    client_id: str | None = None
    scope: str | None = None
    resource: tuple[str, ...] = ()
    audience: tuple[str, ...] = ()
    grant: Grant = "client_credentials"
    extra_params: Mapping[str, str] = dataclasses.field(default_factory=dict)
    http_client: httpx.Client | httpx.AsyncClient | None = None
    timeout: float = 10.0
    allow_insecure_http: bool = False
    clock: Callable[[], float] = time.time
    watch: bool = True
    # response
    default_expires_in: float = 300.0
    # refresh policy (see _state.RefreshPolicy)
    refresh_min_lead: float = 60.0
    refresh_lead_fraction: float = 0.2
    refresh_jitter_fraction: float = 0.1
    expiry_margin: float = 10.0
    failure_backoff_base: float = 5.0
    failure_backoff_cap: float = 60.0
    refusal_cache_seconds: float = 5.0
    # retry policy (see _retry)
    retry_attempts: int = 4
    retry_budget: float = 30.0
    retry_base: float = 0.5
    retry_cap: float = 10.0


_STRING_FIELDS = ("token_file", "token_endpoint", "issuer", "client_id")
_FLOAT_FIELDS = (
    "timeout",
    "default_expires_in",
    "refresh_min_lead",
    "refresh_lead_fraction",
    "refresh_jitter_fraction",
    "expiry_margin",
    "failure_backoff_base",
    "failure_backoff_cap",
    "refusal_cache_seconds",
    "retry_budget",
    "retry_base",
    "retry_cap",
)
_KNOWN = frozenset(f.name for f in dataclasses.fields(Settings))


def _as_tuple(name: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split()) if name == "scope" else (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigurationError(f"{name} must be a string or a list of strings")


def is_loopback_url(url: httpx.URL) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1: the only hosts plain http may go to by default."""
    host = url.host
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(name: str, value: str, allow_insecure_http: bool) -> None:
    """Refuse anything but https, except loopback or an explicit opt-in."""
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ConfigurationError(f"{name} is not a valid URL") from exc
    if url.scheme == "https" and url.host:
        return
    if url.scheme == "http" and url.host and (allow_insecure_http or is_loopback_url(url)):
        return
    if url.scheme == "http":
        raise ConfigurationError(
            f"{name} {value} uses plain http to a non-loopback host; use https "
            "(or allow_insecure_http=True, --allow-insecure-http, for a test network)"
        )
    raise ConfigurationError(f"{name} must be an https URL, got {value!r}")


def build_settings(**config: Any) -> Settings:
    """Check keywords once and freeze them. Raises `ConfigurationError` naming the bad keyword."""
    unknown = sorted(set(config) - _KNOWN)
    if unknown:
        raise ConfigurationError(f"unknown configuration keyword(s): {', '.join(unknown)}")
    values = {k: v for k, v in config.items() if v is not None}
    if isinstance(values.get("token_file"), os.PathLike):
        values["token_file"] = os.fspath(values["token_file"])
    for name in _STRING_FIELDS:
        if name in values and not (isinstance(values[name], str) and values[name].strip()):
            raise ConfigurationError(f"{name} must be a non-empty string")
    if "token_file" not in values:
        raise ConfigurationError(
            "token_file is required: the path of the projected service account token "
            "(SAT_OAUTH_TOKEN_FILE)"
        )
    values["token_file"] = os.fspath(values["token_file"])
    if os.path.normpath(values["token_file"]) == LEGACY_API_SERVER_TOKEN:
        raise ConfigurationError(
            f"{LEGACY_API_SERVER_TOKEN} is the Kubernetes API token; its audience is the API "
            "server and it must not be sent elsewhere. Mount a projected serviceAccountToken "
            "with the authorization server as its audience."
        )
    if ("token_endpoint" in values) == ("issuer" in values):
        raise ConfigurationError("set exactly one of token_endpoint or issuer")
    insecure = bool(values.get("allow_insecure_http", False))
    for name in ("token_endpoint", "issuer"):
        if name in values:
            check_url(name, values[name], insecure)
    grant = values.get("grant", "client_credentials")
    if grant not in GRANTS:
        raise ConfigurationError(f"grant must be one of {', '.join(GRANTS)}; got {grant!r}")
    scope = _as_tuple("scope", values.pop("scope", None))
    if scope:
        values["scope"] = " ".join(scope)
    values["resource"] = _as_tuple("resource", values.get("resource"))
    values["audience"] = _as_tuple("audience", values.get("audience"))
    extra = values.get("extra_params", {})
    if not isinstance(extra, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
    ):
        raise ConfigurationError("extra_params must be a mapping of strings to strings")
    values["extra_params"] = dict(extra)
    client = values.get("http_client")
    if client is not None and not isinstance(client, (httpx.Client, httpx.AsyncClient)):
        raise ConfigurationError("http_client must be an httpx.Client or httpx.AsyncClient")
    for name in _FLOAT_FIELDS:
        if name in values:
            try:
                values[name] = float(values[name])
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(f"{name} must be a number") from exc
            if values[name] < 0:
                raise ConfigurationError(f"{name} must not be negative")
    if values.get("timeout", 1.0) <= 0:
        raise ConfigurationError("timeout must be positive")
    if "retry_attempts" in values:
        attempts = values["retry_attempts"]
        if not isinstance(attempts, int) or attempts < 1:
            raise ConfigurationError("retry_attempts must be a whole number >= 1")
    if "clock" in values and not callable(values["clock"]):
        raise ConfigurationError("clock must be a callable returning epoch seconds")
    return Settings(**values)


_ENV_NAMES = (
    "token_endpoint",
    "issuer",
    "token_file",
    "client_id",
    "scope",
    "resource",
    "audience",
    "grant",
    "timeout",
)


def env_config(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The configuration keywords set by `SAT_OAUTH_<NAME>` variables, for any entry point:
    `fetch_token(**config_from_env(), scope="...")`. `resource` and `audience` may be
    space-separated lists."""
    environ = os.environ if environ is None else environ
    config: dict[str, Any] = {}
    for name in _ENV_NAMES:
        raw = environ.get(f"SAT_OAUTH_{name.upper()}", "").strip()
        if not raw:
            continue
        config[name] = raw.split() if name in ("resource", "audience") else raw
    return config


def merge_env(env: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword overrides win over the environment; an endpoint given either way (token_endpoint
    or issuer) replaces both of the environment's, since exactly one may be set."""
    merged = dict(env)
    if "token_endpoint" in overrides or "issuer" in overrides:
        merged.pop("token_endpoint", None)
        merged.pop("issuer", None)
    merged.update(overrides)
    return merged
