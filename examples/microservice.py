"""A service that calls an OAuth-protected API with the pod's projected service account token.

No client secret anywhere: `TokenManager.from_env()` reads its configuration from `SAT_OAUTH_*`
variables (see kubernetes/deployment.yaml), gets an access token with the SAT as an RFC 7523
client assertion, caches it and refreshes it ahead of expiry in the background. `BearerAuth` puts
it on every request and, on a 401, retries once with a fresh token.

Environment:
    SAT_OAUTH_TOKEN_FILE        the projected token (required)
    SAT_OAUTH_ISSUER or SAT_OAUTH_TOKEN_ENDPOINT
    SAT_OAUTH_SCOPE, SAT_OAUTH_CLIENT_ID, SAT_OAUTH_RESOURCE, ... (optional)
    API_URL                     the API to call (required)
    CALLS                       how many calls to make (default 3; 0 = until stopped)
    CALL_INTERVAL               seconds between calls (default 5)

Run:    python examples/microservice.py
Import: `main(**overrides)` returns an exit code; keyword overrides go to `from_env`.

Exit codes (as the sat-oauth-client CLI): 0 ok, 1 the API answered with an error, 2 bad
configuration, 3 token file problem, 4 the authorization server refused, 5 network failure.
SIGTERM (what Kubernetes sends on shutdown) and Ctrl-C stop the loop cleanly.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any

import httpx

from sat_oauth_client import (
    BearerAuth,
    SatOAuthError,
    TokenManager,
)

log = logging.getLogger("microservice")


def run(
    api_url: str,
    *,
    calls: int,
    interval: float,
    stop: threading.Event,
    **overrides: Any,
) -> int:
    """Call `api_url` `calls` times (0: until `stop` is set). Returns an exit code."""
    failures = 0
    # Both context managers close on the way out: the manager stops its file watcher and waits
    # for a background refresh; the client closes its connections.
    with (
        TokenManager.from_env(**overrides) as manager,
        httpx.Client(auth=BearerAuth(manager), timeout=10.0) as client,
    ):
        done = 0
        while not stop.is_set() and (calls == 0 or done < calls):
            response = client.get(api_url)
            done += 1
            if response.is_success:
                log.info("call %d: HTTP %d", done, response.status_code)
            else:
                failures += 1
                log.warning("call %d: HTTP %d", done, response.status_code)
            if calls == 0 or done < calls:
                stop.wait(interval)  # returns at once when SIGTERM arrives
    return 1 if failures else 0


def main(stop: threading.Event | None = None, **overrides: Any) -> int:
    """Read the environment, run, map errors to exit codes. Never prints a token."""
    api_url = os.environ.get("API_URL", "").strip()
    if not api_url:
        print("API_URL is not set: the URL of the API to call", file=sys.stderr)
        return 2
    try:
        calls = int(os.environ.get("CALLS", "3"))
        interval = float(os.environ.get("CALL_INTERVAL", "5"))
    except ValueError:
        print("CALLS must be a whole number and CALL_INTERVAL a number of seconds", file=sys.stderr)
        return 2
    try:
        return run(
            api_url,
            calls=calls,
            interval=interval,
            stop=stop or threading.Event(),
            **overrides,
        )
    except SatOAuthError as exc:  # messages never contain the SAT or an access token
        print(f"no access token: {exc}", file=sys.stderr)
        return exc.exit_code
    except httpx.HTTPError as exc:
        print(f"API call failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 5


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    sys.exit(main(stopping))
