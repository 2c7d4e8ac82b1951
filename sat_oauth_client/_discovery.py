"""RFC 8414 / OpenID Connect discovery of the token endpoint: pure URL and parse helpers."""

from __future__ import annotations

__all__ = ["metadata_urls", "parse_metadata"]

import json

import httpx

from ._config import check_url
from ._exceptions import ConfigurationError, DiscoveryError

MAX_METADATA_BYTES = 1024 * 1024


def metadata_urls(issuer: str) -> list[str]:
    """RFC 8414 inserts the well-known path before the issuer's path; OpenID appends it."""
    url = httpx.URL(issuer)
    path = url.path.rstrip("/")
    rfc8414 = url.copy_with(path="/.well-known/oauth-authorization-server" + path, query=None)
    openid = url.copy_with(path=path + "/.well-known/openid-configuration", query=None)
    return [str(rfc8414), str(openid)]


def parse_metadata(
    response: httpx.Response, issuer: str, allow_insecure_http: bool, where: str = "metadata"
) -> str:
    """The token endpoint from a metadata response, after the RFC 8414 section 3.3 issuer check."""
    if response.status_code != 200:
        raise DiscoveryError(f"{where} answered HTTP {response.status_code}")
    if len(response.content) > MAX_METADATA_BYTES:
        raise DiscoveryError(f"{where}: metadata larger than 1 MiB")
    try:
        metadata = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        raise DiscoveryError(f"{where}: metadata is not JSON") from None
    if not isinstance(metadata, dict):
        raise DiscoveryError(f"{where}: metadata is not a JSON object")
    if metadata.get("issuer") != issuer:
        raise DiscoveryError(
            f"{where}: metadata issuer {metadata.get('issuer')!r} does not equal the configured "
            f"issuer {issuer!r}; RFC 8414 forbids using it"
        )
    endpoint = metadata.get("token_endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise DiscoveryError(f"{where}: metadata has no token_endpoint")
    if (
        httpx.URL(issuer).scheme == "https"
        and not endpoint.startswith("https://")
        and not allow_insecure_http
    ):
        raise DiscoveryError(f"{where}: token_endpoint {endpoint} downgrades https to plain http")
    try:
        check_url("discovered token_endpoint", endpoint, allow_insecure_http)
    except ConfigurationError as exc:
        raise DiscoveryError(str(exc)) from None
    return endpoint
