"""The async version of microservice.py: `AsyncTokenManager` + `httpx.AsyncClient`.

Runs under `anyio.run`, so it works on asyncio (the default here) and on trio
(`ASYNC_BACKEND=trio`, with trio installed). Concurrent calls share one cached token; when it is
due, exactly one refresh runs, in a task the manager owns.

Environment: as microservice.py (`SAT_OAUTH_*`, `API_URL`, `CALLS`, `CALL_INTERVAL`), plus
    CONCURRENCY                 calls made at the same time in each round (default 2)
    ASYNC_BACKEND               asyncio (default) or trio

Run:    python examples/async_service.py
Import: `main(**overrides)` returns an exit code; keyword overrides go to `from_env`.
Exit codes as microservice.py. SIGTERM and Ctrl-C stop it cleanly (cancellation unwinds the
`async with` blocks, which close the manager and the HTTP client).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

import anyio
import httpx

from sat_oauth_client import (
    AsyncTokenManager,
    BearerAuth,
    SatOAuthError,
)

log = logging.getLogger("async_service")


async def run(
    api_url: str, *, calls: int, interval: float, concurrency: int, **overrides: Any
) -> int:
    """`calls` rounds (0: until cancelled) of `concurrency` concurrent calls; an exit code."""
    statuses: list[int] = []
    errors: list[Exception] = []  # raised after the task group, so no ExceptionGroup to unwrap

    async with (
        AsyncTokenManager.from_env(**overrides) as manager,
        httpx.AsyncClient(auth=BearerAuth(manager), timeout=10.0) as client,
    ):

        async def call(n: int) -> None:
            try:
                response = await client.get(api_url)
            except (SatOAuthError, httpx.HTTPError) as exc:
                errors.append(exc)
                return
            statuses.append(response.status_code)
            log.info("call %d: HTTP %d", n, response.status_code)

        done = 0
        while calls == 0 or done < calls:
            done += 1
            async with anyio.create_task_group() as tg:
                for i in range(concurrency):
                    tg.start_soon(call, (done - 1) * concurrency + i + 1)
            if errors:
                raise errors[0]
            if calls == 0 or done < calls:
                await anyio.sleep(interval)
    return 0 if statuses and all(200 <= s < 300 for s in statuses) else 1


async def _run_until_signalled(**kwargs: Any) -> int:
    """Run, and cancel cleanly on SIGTERM/SIGINT (only used when started as a script)."""
    result = 0  # stopped by a signal: a clean shutdown, as in microservice.py
    errors: list[Exception] = []
    async with anyio.create_task_group() as tg:

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

        async def work() -> None:
            nonlocal result
            try:
                result = await run(**kwargs)
            except (SatOAuthError, httpx.HTTPError) as exc:
                errors.append(exc)
            tg.cancel_scope.cancel()

        tg.start_soon(watch_signals)
        tg.start_soon(work)
    if errors:
        raise errors[0]
    return result


def main(*, handle_signals: bool = False, **overrides: Any) -> int:
    """Read the environment, run under anyio, map errors to exit codes. Never prints a token."""
    api_url = os.environ.get("API_URL", "").strip()
    if not api_url:
        print("API_URL is not set: the URL of the API to call", file=sys.stderr)
        return 2
    try:
        calls = int(os.environ.get("CALLS", "3"))
        interval = float(os.environ.get("CALL_INTERVAL", "5"))
        concurrency = max(1, int(os.environ.get("CONCURRENCY", "2")))
    except ValueError:
        print("CALLS, CALL_INTERVAL and CONCURRENCY must be numbers", file=sys.stderr)
        return 2
    backend = os.environ.get("ASYNC_BACKEND", "asyncio")
    kwargs: dict[str, Any] = dict(
        api_url=api_url, calls=calls, interval=interval, concurrency=concurrency, **overrides
    )
    try:
        if handle_signals:
            return anyio.run(lambda: _run_until_signalled(**kwargs), backend=backend)
        return anyio.run(lambda: run(**kwargs), backend=backend)
    except SatOAuthError as exc:  # messages never contain the SAT or an access token
        print(f"no access token: {exc}", file=sys.stderr)
        return exc.exit_code
    except httpx.HTTPError as exc:
        print(f"API call failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 5


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    sys.exit(main(handle_signals=True))
