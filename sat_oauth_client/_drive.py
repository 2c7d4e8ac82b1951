"""The two thin shells that run an `Exchange` flow: one blocking, one async (anyio)."""

from __future__ import annotations

__all__ = ["drive_async", "drive_sync"]

import contextlib
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any, TypeVar, cast

import anyio
import anyio.to_thread
import httpx

from . import _testmode
from ._exchange import Action, ReadSat, Send, Sleep
from ._messages import MAX_RESPONSE_BYTES
from ._source import FileTokenSource, SatSnapshot

T = TypeVar("T")
_DROP_HEADERS = frozenset(("content-encoding", "content-length", "transfer-encoding"))
_CALLER_CREDENTIALS = ("Authorization", "Cookie", "Proxy-Authorization")


class _BodyLimit:
    """Collects decoded body chunks and says when to stop: at most one byte over the limit."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0

    def declared_too_large(self, streamed: httpx.Response) -> bool:
        """A Content-Length over the limit: no need to read a byte of it."""
        length = streamed.headers.get("Content-Length", "")
        if length.isascii() and length.isdigit() and int(length) > MAX_RESPONSE_BYTES:
            self.full(b"\0" * (MAX_RESPONSE_BYTES + 1))
            return True
        return False

    def full(self, chunk: bytes) -> bool:
        self.chunks.append(chunk)
        self.size += len(chunk)
        return self.size > MAX_RESPONSE_BYTES

    def response(self, streamed: httpx.Response) -> httpx.Response:
        headers = [
            (k, v) for k, v in streamed.headers.multi_items() if k.lower() not in _DROP_HEADERS
        ]
        return httpx.Response(
            streamed.status_code,
            headers=headers,
            content=b"".join(self.chunks)[: MAX_RESPONSE_BYTES + 1],
            request=streamed.request,
        )


def _prepare(client: httpx.Client | httpx.AsyncClient, request: httpx.Request) -> httpx.Request:
    """Merge the caller's client defaults (e.g. a User-Agent) into our request, but never its
    credentials: an API key or cookie meant for an API must not reach the token endpoint."""
    prepared = client.build_request(
        request.method,
        request.url,
        headers=request.headers,
        content=request.content,
        extensions=request.extensions,
    )
    for name in _CALLER_CREDENTIALS:
        if name not in request.headers:
            prepared.headers.pop(name, None)
    return prepared


def _read_sat(source: FileTokenSource, action: ReadSat) -> SatSnapshot | None:
    return source.snapshot() if action.previous is None else source.changed_since(action.previous)


def drive_sync(
    flow: Generator[Action, Any, T],
    client: httpx.Client,
    source: FileTokenSource,
    pause: Callable[[float], None] | None = None,
) -> T:
    """Run a flow with blocking I/O. Redirects are never followed; no client auth is applied."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            action = flow.throw(error) if error is not None else flow.send(reply)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        reply, error = None, None
        try:
            if isinstance(action, Send):
                request = _prepare(client, action.request)
                streamed = client.send(request, stream=True, auth=None, follow_redirects=False)
                try:
                    body = _BodyLimit()
                    if not body.declared_too_large(streamed):
                        for chunk in streamed.iter_bytes():
                            if body.full(chunk):
                                break
                    reply = body.response(streamed)
                finally:
                    streamed.close()
            elif isinstance(action, Sleep):
                (pause or _testmode.pause)(action.seconds)
            else:
                reply = _read_sat(source, action)
        except Exception as exc:  # handed to the flow, which decides
            error = exc


async def drive_async(
    flow: Generator[Action, Any, T], client: httpx.AsyncClient, source: FileTokenSource
) -> T:
    """The same, awaiting the network and sleeps; file reads run in a worker thread."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            action = flow.throw(error) if error is not None else flow.send(reply)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        reply, error = None, None
        try:
            if isinstance(action, Send):
                request = _prepare(client, action.request)
                streamed = await client.send(
                    request, stream=True, auth=None, follow_redirects=False
                )
                try:
                    body = _BodyLimit()
                    if not body.declared_too_large(streamed):
                        stream = cast(AsyncGenerator[bytes, None], streamed.aiter_bytes())
                        async with contextlib.aclosing(stream) as chunks:
                            async for chunk in chunks:
                                if body.full(chunk):
                                    break
                    reply = body.response(streamed)
                finally:
                    await streamed.aclose()
            elif isinstance(action, Sleep):
                if not _testmode.is_testing():
                    await anyio.sleep(action.seconds)
            else:
                reply = await anyio.to_thread.run_sync(_read_sat, source, action)
        except Exception as exc:
            error = exc
