"""Benchmark: sat_oauth_client vs Authlib's httpx OAuth2Client vs azure-identity's
WorkloadIdentityCredential, measured in one run on this machine, printed as one table.

    python benchmarks/run.py           # full run (about a minute on 2 cores)
    python benchmarks/run.py --quick   # smoke run: few iterations, smaller herds

Everything runs on 127.0.0.1: a fake kubelet writes the projected token with the atomic-writer
layout, `sat_oauth_client.testing.LocalAuthorizationServer` verifies it and issues tokens (plain
HTTP, for sat_oauth_client and Authlib) and a small HTTPS front with a self-signed certificate made
at start-up serves azure-identity's Entra-style token path from the same server logic and counter
(see `_lab.py`; the clients are set up in `_clients.py`).

This is not a test: nothing here asserts a timing. `sat_oauth_client.testing.testing_mode()` is
not used: no measurement below goes through a retry or backoff path, so it would change nothing
and should not be suspected of flattering the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import importlib.metadata
import os
import platform
import statistics
import sys
import threading
import time
import timeit
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import authlib.deprecate  # its import installs an "always" filter; ours must come after

# Authlib 1.9 prefers the `httpx2` package and warns when it falls back to `httpx`.
warnings.filterwarnings(
    "ignore",
    message="The httpx module is deprecated",
    category=authlib.deprecate.AuthlibDeprecationWarning,
)

import anyio  # noqa: E402
import httpx  # noqa: E402
import trio  # noqa: E402
from _clients import (  # noqa: E402
    HAVE_AIOHTTP,
    AsyncClient,
    SyncClient,
    authlib_async,
    authlib_sync,
    azure_async,
    azure_sync,
    ours_async,
    ours_sync,
)
from _lab import LOOPBACK, SCOPE, Lab  # noqa: E402

from sat_oauth_client import BearerAuth  # noqa: E402

AS_LATENCY = 0.02  # seconds the token endpoint takes to answer during herd measurements
CAE_CLAIMS = '{"access_token": {"nbf": {"essential": true, "value": "1"}}}'
NAMES = ("sat_oauth_client", "Authlib", "azure-identity")


@dataclasses.dataclass(frozen=True)
class Profile:
    rounds: int
    batches: int
    batch_seconds: float
    threads: int
    tasks: int
    rotations: int
    rps_rounds: int
    rps_requests: int


FULL = Profile(
    rounds=5,
    batches=5,
    batch_seconds=0.01,
    threads=64,
    tasks=1000,
    rotations=7,
    rps_rounds=5,
    rps_requests=1500,
)
QUICK = Profile(
    rounds=2,
    batches=3,
    batch_seconds=0.002,
    threads=16,
    tasks=100,
    rotations=2,
    rps_rounds=2,
    rps_requests=200,
)


@dataclasses.dataclass
class Row:
    metric: str
    values: dict[str, Any]  # library name -> number, text, or None (n/a)
    higher_is_better: bool = False
    fmt: str = "{:,.0f}"
    notes: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> footnote mark


# -- measuring helpers -----------------------------------------------------------------------------


def _calibrate(fn: Callable[[], Any], seconds: float) -> int:
    timer = timeit.Timer(fn)
    number = 1
    while True:
        if timer.timeit(number) >= seconds or number >= 1 << 22:
            return number
        number *= 2


def cached_sync_ns(clients: Sequence[SyncClient], profile: Profile) -> dict[str, float]:
    """Median over rounds of the median per-call time of `batches` timeit batches; the clients'
    rounds are interleaved so that drift (CPU frequency, other load) hits all of them alike."""
    numbers = {c.name: _calibrate(c.timed, profile.batch_seconds) for c in clients}
    medians: dict[str, list[float]] = {c.name: [] for c in clients}
    for _ in range(profile.rounds):
        for c in clients:
            n = numbers[c.name]
            totals = timeit.Timer(c.timed).repeat(repeat=profile.batches, number=n)
            medians[c.name].append(statistics.median(t / n * 1e9 for t in totals))
    return {name: statistics.median(values) for name, values in medians.items()}


async def _abatch(get: Callable[[], Any], number: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(number):
        await get()
    return (time.perf_counter_ns() - start) / number


async def cached_async_ns(clients: Sequence[AsyncClient], profile: Profile) -> dict[str, float]:
    numbers: dict[str, int] = {}
    for c in clients:
        number = 1
        while number < 1 << 22:
            if await _abatch(c.timed, number) * number / 1e9 >= profile.batch_seconds:
                break
            number *= 2
        numbers[c.name] = number
    medians: dict[str, list[float]] = {c.name: [] for c in clients}
    for _ in range(profile.rounds):
        for c in clients:
            gc_was_enabled = gc.isenabled()
            gc.disable()  # as timeit does
            try:
                per_call = [await _abatch(c.timed, numbers[c.name]) for _ in range(profile.batches)]
            finally:
                if gc_was_enabled:
                    gc.enable()
            medians[c.name].append(statistics.median(per_call))
    return {name: statistics.median(values) for name, values in medians.items()}


@dataclasses.dataclass
class Herd:
    requests: int  # token requests the server saw
    errors: list[str]  # exception type of each caller that failed

    def cell(self) -> int | str:
        if not self.errors:
            return self.requests
        kinds = ", ".join(sorted(set(self.errors)))
        return f"{self.requests} ({len(self.errors)} failed: {kinds})"


def thread_herd(lab: Lab, client: SyncClient, threads: int, *, at_expiry: bool) -> Herd:
    """Token requests the server saw, and callers that failed, for `threads` simultaneous
    `get()` calls on a cold client, or on a warm client whose token has just expired."""
    try:
        if at_expiry:
            lab.reset(lifetime=client.lifetime_for_expiry)
            client.get()
            client.expire()
        lab.reset(delay=AS_LATENCY)
        barrier = threading.Barrier(threads)
        errors: list[BaseException] = []

        def worker() -> None:
            barrier.wait()
            try:
                client.get()
            except Exception as exc:
                errors.append(exc)

        pool = [
            threading.Thread(target=worker, name=f"bench-herd-{i}", daemon=True)
            for i in range(threads)
        ]
        for t in pool:
            t.start()
        for t in pool:
            t.join(timeout=60)
        return Herd(lab.count, [type(e).__name__ for e in errors])
    finally:
        client.close()
        lab.reset()


async def task_herd(lab: Lab, client: AsyncClient, tasks: int, *, at_expiry: bool) -> Herd:
    """The same with `tasks` concurrent tasks (asyncio or trio, via anyio)."""
    try:
        if at_expiry:
            lab.reset(lifetime=client.lifetime_for_expiry)
            await client.get()
            await client.expire()
        lab.reset(delay=AS_LATENCY)
        errors: list[BaseException] = []

        async def one() -> None:
            try:
                await client.get()
            except Exception as exc:
                errors.append(exc)

        async with anyio.create_task_group() as group:
            for _ in range(tasks):
                group.start_soon(one)
        return Herd(lab.count, [type(e).__name__ for e in errors])
    finally:
        await client.aclose()
        lab.reset()


# -- the measurements ------------------------------------------------------------------------------


def measure_cached_sync(lab: Lab, profile: Profile) -> dict[str, float]:
    lab.reset()
    clients = [ours_sync(lab), authlib_sync(lab), azure_sync(lab)]
    try:
        for c in clients:
            c.get()  # warm: one token request each
        return cached_sync_ns(clients, profile)
    finally:
        for c in clients:
            c.close()


def measure_cached_async(lab: Lab, profile: Profile) -> dict[str, float]:
    async def main() -> dict[str, float]:
        clients = [ours_async(lab), authlib_async(lab), azure_async(lab, "asyncio")]
        try:
            for c in clients:
                await c.get()
            return await cached_async_ns(clients, profile)
        finally:
            for c in clients:
                await c.aclose()

    lab.reset()
    return asyncio.run(main())


def measure_thread_herds(lab: Lab, profile: Profile) -> dict[str, dict[str, Herd]]:
    out: dict[str, dict[str, Herd]] = {"cold": {}, "expiry": {}}
    for make in (ours_sync, authlib_sync, azure_sync):
        for kind in ("cold", "expiry"):
            client = make(lab, for_expiry=kind == "expiry")
            out[kind][client.name] = thread_herd(
                lab, client, profile.threads, at_expiry=kind == "expiry"
            )
    return out


def measure_task_herds(lab: Lab, profile: Profile, flavour: str) -> dict[str, dict[str, Herd]]:
    out: dict[str, dict[str, Herd]] = {"cold": {}, "expiry": {}}

    async def main() -> None:
        def azure(lab: Lab, *, for_expiry: bool) -> AsyncClient:
            return azure_async(lab, flavour, for_expiry=for_expiry)

        for make in (ours_async, authlib_async, azure):
            for kind in ("cold", "expiry"):
                client = make(lab, for_expiry=kind == "expiry")
                out[kind][client.name] = await task_herd(
                    lab, client, profile.tasks, at_expiry=kind == "expiry"
                )

    if flavour == "trio":
        trio.run(main)
    else:
        asyncio.run(main())
    return out


@dataclasses.dataclass
class Rotation:
    ms: dict[str, float | None]  # rotate() -> token request carrying the new SAT
    sent: dict[str, str]  # which SAT a refresh right after rotate() carried
    preload_ms: float | None  # sat_oauth_client watcher: rotate() -> new SAT loaded in memory


def measure_rotation(lab: Lab, profile: Profile) -> Rotation:
    """Rotate with the atomic writer, then refresh at once; see which SAT the request carried and
    how long after the start of `rotate()` it reached the server."""
    ms: dict[str, list[float]] = {name: [] for name in NAMES}
    sent: dict[str, list[bool]] = {name: [] for name in NAMES}
    preload: list[float] = []

    ours = ours_sync(lab)
    authlib = authlib_sync(lab)
    azure = azure_sync(lab)
    manager, oauth2_client, credential = ours.raw, authlib.raw, azure.raw

    def refresh_ours() -> None:
        manager.get_token(force_refresh=True)

    def refresh_authlib() -> None:
        oauth2_client.fetch_token()

    def refresh_azure() -> None:
        # A claims challenge bypasses azure-identity's token cache: a network request right now.
        credential.get_token(SCOPE, claims=CAE_CLAIMS)

    try:
        lab.reset()
        for c in (ours, authlib, azure):
            c.get()  # warm; azure-identity reads (and caches) the token file here
        for name, refresh in (
            ("sat_oauth_client", refresh_ours),
            ("Authlib", refresh_authlib),
            ("azure-identity", refresh_azure),
        ):
            for _ in range(profile.rotations):
                lab.reset()
                new_sat = lab.kubelet.mint()  # signing is the API server's work: not timed
                started = time.time()
                lab.kubelet.rotate(new_sat)
                refresh()
                assertion, received_at = lab.last_request()
                sent[name].append(assertion == new_sat)
                ms[name].append((received_at - started) * 1000)
                time.sleep(0.05)  # let the watcher settle before the next rotation

        # sat_oauth_client's directory watcher loads the new SAT before anyone asks. This polls a
        # private attribute (benchmark only): the public read() would load it itself.
        source = manager._source
        for _ in range(profile.rotations):
            new_sat = lab.kubelet.mint()
            started = time.perf_counter()
            lab.kubelet.rotate(new_sat)
            deadline = started + 2.0
            while time.perf_counter() < deadline:
                snapshot = source._snapshot
                if snapshot is not None and snapshot.value == new_sat:
                    preload.append((time.perf_counter() - started) * 1000)
                    break
                time.sleep(0.0005)
            time.sleep(0.05)
    finally:
        for c in (ours, authlib, azure):
            c.close()
        lab.reset()

    result_ms: dict[str, float | None] = {}
    result_sent: dict[str, str] = {}
    for name in NAMES:
        fresh = sum(sent[name])
        total = len(sent[name])
        if fresh == total:
            result_sent[name] = f"new ({fresh}/{total})"
            result_ms[name] = statistics.median(ms[name])
        else:
            result_sent[name] = f"OLD ({total - fresh}/{total})"
            result_ms[name] = None
    return Rotation(result_ms, result_sent, statistics.median(preload) if preload else None)


def measure_auth_overhead(lab: Lab, profile: Profile) -> dict[str, float]:
    """Requests/s through httpx.MockTransport: BearerAuth(TokenManager), Authlib's OAuth2Client
    (which is itself the httpx client) and a plain client with a static Authorization header."""
    url = f"http://{LOOPBACK}:9/resource"  # never dialled: MockTransport answers

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            return httpx.Response(
                200, json={"access_token": "at-mock", "token_type": "Bearer", "expires_in": 3600}
            )
        return httpx.Response(200, content=b"ok")

    lab.reset()
    ours = ours_sync(lab)
    ours.get()
    static = httpx.Client(
        transport=httpx.MockTransport(handler), headers={"Authorization": "Bearer at-static"}
    )
    with_bearer = httpx.Client(transport=httpx.MockTransport(handler), auth=BearerAuth(ours.raw))
    authlib = authlib_sync(
        lab, token_endpoint=f"http://{LOOPBACK}:9/token", transport=httpx.MockTransport(handler)
    )
    authlib.get()
    clients: dict[str, httpx.Client] = {
        "static": static,
        "sat_oauth_client": with_bearer,
        "Authlib": authlib.raw,
    }
    rates: dict[str, list[float]] = {name: [] for name in clients}
    try:
        for client in clients.values():
            for _ in range(50):
                client.get(url)
        for _ in range(profile.rps_rounds):
            for name, client in clients.items():
                n = profile.rps_requests
                start = time.perf_counter()
                for _ in range(n):
                    client.get(url)
                rates[name].append(n / (time.perf_counter() - start))
    finally:
        static.close()
        with_bearer.close()
        authlib.close()
        ours.close()
    return {name: statistics.median(values) for name, values in rates.items()}


# -- output ----------------------------------------------------------------------------------------


def environment() -> list[str]:
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 0
    dists = (
        "sat-oauth-client",
        "authlib",
        "azure-identity",
        "azure-core",
        "msal",
        "httpx",
        "anyio",
        "trio",
        "requests",
        "cryptography",
        "aiohttp",
    )
    return [
        f"python {platform.python_version()} ({platform.python_implementation()}) on "
        f"{platform.system()} {platform.machine()}, {cores} usable core(s)",
        "packages: " + ", ".join(f"{d} {version(d)}" for d in dists),
    ]


def _cell(value: Any, fmt: str, mark: str = "") -> str:
    if value is None:
        text = "n/a"
    elif isinstance(value, str):
        text = value
    else:
        text = fmt.format(value)
    return text + (f" [{mark}]" if mark else "")


def _factor(ours: Any, peer: Any, higher_is_better: bool) -> str:
    numeric = (int, float)
    if not isinstance(ours, numeric) or not isinstance(peer, numeric) or ours <= 0 or peer <= 0:
        return "n/a"
    factor = ours / peer if higher_is_better else peer / ours
    return f"{factor:,.3g}x" if factor < 1000 else f"{factor:,.0f}x"


def render(rows: Sequence[Row]) -> str:
    header = ["metric", *NAMES, "x vs Authlib", "x vs azure"]
    body = []
    for row in rows:
        ours = row.values.get("sat_oauth_client")
        body.append(
            [
                row.metric,
                *(_cell(row.values.get(n), row.fmt, row.notes.get(n, "")) for n in NAMES),
                _factor(ours, row.values.get("Authlib"), row.higher_is_better),
                _factor(ours, row.values.get("azure-identity"), row.higher_is_better),
            ]
        )
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return " | ".join((first, *rest))

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in body)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few iterations: a smoke run")
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    began = time.perf_counter()

    for text in environment():
        print(text)
    print(f"mode: {'quick (smoke run, numbers are rough)' if args.quick else 'full'}")
    print(flush=True)

    def step(what: str) -> None:
        elapsed = time.perf_counter() - began
        print(f"  [{elapsed:5.1f} s] measuring {what} ...", file=sys.stderr, flush=True)

    with Lab() as lab:
        step("cached get_token (sync)")
        sync_ns = measure_cached_sync(lab, profile)
        step("cached get_token (asyncio)")
        async_ns = measure_cached_async(lab, profile)
        step(f"herds of {profile.threads} threads")
        threads = measure_thread_herds(lab, profile)
        step(f"herds of {profile.tasks} asyncio tasks")
        asyncio_herds = measure_task_herds(lab, profile, "asyncio")
        step(f"herds of {profile.tasks} trio tasks")
        trio_herds = measure_task_herds(lab, profile, "trio")
        step("rotation pickup")
        rotation = measure_rotation(lab, profile)
        step("auth overhead through httpx.MockTransport")
        rps = measure_auth_overhead(lab, profile)

    azure_aio_mark = "c" if not HAVE_AIOHTTP else ""
    rows: list[Row] = [
        Row("1. cached get_token, sync (ns/call)", dict(sync_ns), notes={"Authlib": "a"}),
        Row(
            "2. cached get_token, asyncio (ns/call)",
            dict(async_ns),
            notes={"Authlib": "a", "azure-identity": azure_aio_mark},
        ),
    ]
    for label, result in (
        (f"3. herd {profile.threads} threads, cold: token requests", threads["cold"]),
        (f"3. herd {profile.threads} threads, at expiry: token requests", threads["expiry"]),
        (f"4. herd {profile.tasks} asyncio tasks, cold: requests", asyncio_herds["cold"]),
        (f"4. herd {profile.tasks} asyncio tasks, at expiry: requests", asyncio_herds["expiry"]),
        (f"4. herd {profile.tasks} trio tasks, cold: requests", trio_herds["cold"]),
        (f"4. herd {profile.tasks} trio tasks, at expiry: requests", trio_herds["expiry"]),
    ):
        values: dict[str, Any] = {name: herd.cell() for name, herd in result.items()}
        notes = {"azure-identity": azure_aio_mark} if label.startswith("4.") else {}
        if result["Authlib"].errors:
            notes["Authlib"] = "h"
        rows.append(Row(label, values, notes=notes))
    rows.append(
        Row(
            "5. SAT sent by a refresh right after rotate()",
            dict(rotation.sent),
            notes={"Authlib": "b", "azure-identity": "d"},
        )
    )
    rotation_ms: dict[str, Any] = dict(rotation.ms)
    if rotation_ms.get("azure-identity") is None:
        rotation_ms["azure-identity"] = "stale (<=600 s)"
    rows.append(
        Row(
            "5. rotate() -> request with new SAT (ms)",
            rotation_ms,
            fmt="{:,.2f}",
            notes={"Authlib": "b", "azure-identity": "d"},
        )
    )
    rows.append(
        Row(
            "5. watcher pre-loads new SAT after rotate() (ms)",
            {"sat_oauth_client": rotation.preload_ms, "Authlib": None, "azure-identity": None},
            fmt="{:,.1f}",
            notes={"sat_oauth_client": "e", "Authlib": "f", "azure-identity": "f"},
        )
    )
    rows.append(
        Row(
            "6. req/s through the auth (MockTransport)",
            {"sat_oauth_client": rps["sat_oauth_client"], "Authlib": rps["Authlib"]},
            higher_is_better=True,
            notes={"azure-identity": "g"},
        )
    )
    rows.append(
        Row(
            "6. req/s, same client, static Authorization header",
            {"sat_oauth_client": rps["static"], "Authlib": rps["static"]},
            higher_is_better=True,
            notes={"azure-identity": "g"},
        )
    )
    rows.append(
        Row(
            "6. auth throughput / static-header throughput",
            {
                "sat_oauth_client": rps["sat_oauth_client"] / rps["static"],
                "Authlib": rps["Authlib"] / rps["static"],
            },
            higher_is_better=True,
            fmt="{:.3f}",
            notes={"azure-identity": "g"},
        )
    )

    print(render(rows))
    print()
    print(
        "x vs <peer>: how many times better sat_oauth_client is (peer/ours for ns, ms and "
        "request counts; ours/peer for req/s and throughput ratios); above 1 = sat_oauth_client "
        "better. Timings: median over rounds of the median of timeit-style batches, peers "
        "interleaved. Herds: callers released together (threading.Barrier / one task group), "
        f"the token endpoint answering after {AS_LATENCY * 1000:.0f} ms; 'at expiry' = a warm "
        "client whose cached token has just become unusable (sat_oauth_client: injected clock "
        "jumped past it; Authlib: cached expires_at moved into the past; azure-identity: a 2 s "
        "token, waited out on the wall clock)."
    )
    footnotes = {
        "a": "Authlib has no get_token(): measured the wrapper a caller must write, "
        "`if not c.token: c.fetch_token()` else `c.ensure_active_token(c.token)`; the async one "
        "takes the client's anyio.Lock on every call. Cold herds: every caller that finds no "
        "token fetches one (Authlib raises MissingTokenError rather than fetching by itself).",
        "b": "token-file handling for Authlib is this benchmark's own client auth method "
        "(register_client_auth_method): it re-reads the file on every token request.",
        "c": "aiohttp is not installed, so azure.identity.aio.WorkloadIdentityCredential was "
        "given azure-core's AsyncioRequestsTransport / TrioRequestsTransport (requests run in "
        "worker threads) via transport=; the cached path does not touch the transport.",
        "d": "azure-identity re-reads the token file only when its copy is more than 600 s old "
        "(TokenFileMixin), so a refresh right after a rotation (forced here with a claims "
        "challenge, which bypasses its token cache) carries the previous SAT for up to 600 s "
        "(the row shows what was sent). The old SAT was still valid, so the AS accepted it.",
        "e": "sat_oauth_client's shared directory watcher (watchfiles, 20 ms debounce) loads the "
        "new SAT in the background; measured by polling a private attribute. Correctness does "
        "not depend on it: every token request stat()s the file first (row above).",
        "f": "no background watcher: Authlib (as configured here) reads the file on each token "
        "request; azure-identity on its 600 s schedule.",
        "g": "azure-identity has no httpx.Auth (it plugs into azure-core pipelines): n/a. The "
        "static-header baseline is one plain httpx.Client shared by both columns.",
        "h": "the number is the token requests that reached the AS. Every task that finds no "
        "token starts its own fetch_token(); the ones that fail wait in httpx's connection pool "
        "(100 connections; the pool's bookkeeping grows with the queue) and give up with "
        "PoolTimeout after the 10 s timeout (the same timeout sat_oauth_client uses by default).",
    }
    used = {mark for row in rows for mark in row.notes.values() if mark}
    for mark, text in footnotes.items():
        if mark in used:
            print(f"[{mark}] {text}")
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    # trio keeps idle worker threads (used by trio.to_thread / anyio.to_thread) in a process-wide
    # cache; they end by themselves after 10 s idle and there is no public call to stop them.
    trio_cache = [t for t in others if t.name.startswith("Trio thread")]
    stray = [t.name for t in others if t not in trio_cache]
    print(
        "cleanup: every client, server and benchmark thread closed"
        + (
            f"; {len(trio_cache)} idle trio worker thread(s) left to trio's cache"
            if trio_cache
            else ""
        )
        + (f"; STILL RUNNING: {', '.join(sorted(stray))}" if stray else "")
    )
    print(f"total runtime {time.perf_counter() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
