"""One access token, once: for a CronJob, an init container or a migration script.

`fetch_token()` reads the projected token once, makes one token request (retrying transient
failures) and returns an `AccessToken`. Nothing is left running. Printing the AccessToken is safe:
its repr shows the type, expiry and scope, never the token itself.

Environment:
    SAT_OAUTH_TOKEN_FILE        the projected token (required)
    SAT_OAUTH_ISSUER or SAT_OAUTH_TOKEN_ENDPOINT
    SAT_OAUTH_SCOPE, SAT_OAUTH_CLIENT_ID, SAT_OAUTH_RESOURCE, SAT_OAUTH_AUDIENCE,
    SAT_OAUTH_GRANT, SAT_OAUTH_TIMEOUT (optional)
    API_URL                     optional: call it once with the token

Run:    python examples/one_shot.py
Import: `main(**overrides)` returns an exit code; keyword overrides win over the environment.
Exit codes as microservice.py.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import httpx

from sat_oauth_client import (
    SatOAuthError,
    config_from_env,
    fetch_token,
)


def main(**overrides: Any) -> int:
    try:
        token = fetch_token(**{**config_from_env(), **overrides})
    except SatOAuthError as exc:  # messages never contain the SAT or an access token
        print(f"no access token: {exc}", file=sys.stderr)
        return exc.exit_code
    print(token)  # AccessToken(access_token=<redacted>, token_type='Bearer', expires_at=...)

    api_url = os.environ.get("API_URL", "").strip()
    if not api_url:
        return 0
    try:
        response = httpx.get(
            api_url,
            headers={"Authorization": f"{token.token_type} {token.access_token}"},
            timeout=10.0,
        )
    except httpx.HTTPError as exc:
        print(f"API call failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 5
    print(f"{api_url}: HTTP {response.status_code}")
    return 0 if response.is_success else 1


if __name__ == "__main__":
    sys.exit(main())
