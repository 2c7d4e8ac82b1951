"""One watchfiles thread per directory for the whole process, shared by every token source.

The kubelet swaps a `..data` symlink by rename; a watch on the token file itself follows the old
inode and goes silent, so we watch the directory, non-recursively, for `..data` and the file's own
name. The watcher is only an accelerator: sources also `stat` before each use.
"""

from __future__ import annotations

__all__ = ["Subscription", "subscribe", "watcher_thread_count"]

import logging
import os
import threading
from collections.abc import Callable

import watchfiles

logger = logging.getLogger("sat_oauth_client")

DEBOUNCE_MS = 20
STEP_MS = 20
_THREAD_PREFIX = "sat-oauth-watch:"


class _DirectoryWatcher:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.callbacks: dict[int, tuple[frozenset[str], Callable[[], None]]] = {}
        self.stop_event = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name=_THREAD_PREFIX + directory, daemon=True
        )

    def _interesting(self, _change: watchfiles.Change, path: str) -> bool:
        name = os.path.basename(path)
        return any(name in names for names, _ in list(self.callbacks.values()))

    def _run(self) -> None:
        try:
            for changes in watchfiles.watch(
                self.directory,
                watch_filter=self._interesting,
                debounce=DEBOUNCE_MS,
                step=STEP_MS,
                rust_timeout=200,
                yield_on_timeout=False,
                stop_event=self.stop_event,
                recursive=False,
                raise_interrupt=False,
            ):
                names = {os.path.basename(path) for _, path in changes}
                for wanted, callback in list(self.callbacks.values()):
                    if names & wanted:
                        try:
                            callback()
                        except Exception:  # a bad file must never kill the watcher
                            logger.debug("token watcher callback failed", exc_info=True)
        except Exception as exc:  # e.g. the directory vanished: stat checks still keep us correct
            logger.warning(
                "token directory watch stopped; falling back to stat checks",
                extra={"directory": self.directory, "error": type(exc).__name__},
            )


_registry: dict[str, _DirectoryWatcher] = {}
_registry_lock = threading.Lock()
_next_id = 0


class Subscription:
    """Returned by `subscribe`; `close()` is idempotent; the last one stops the thread."""

    def __init__(self, directory: str, key: int) -> None:
        self._directory = directory
        self._key = key
        self._closed = False

    @property
    def alive(self) -> bool:
        """Whether a live thread still watches for us (it dies if the directory is missing)."""
        watcher = _registry.get(self._directory)
        return (
            not self._closed
            and watcher is not None
            and self._key in watcher.callbacks
            and (watcher.thread.ident is None or watcher.thread.is_alive())
        )

    def close(self) -> None:
        with _registry_lock:
            if self._closed:
                return
            self._closed = True
            watcher = _registry.get(self._directory)
            if watcher is None:
                return
            watcher.callbacks.pop(self._key, None)
            if watcher.callbacks:
                return
            del _registry[self._directory]
            watcher.stop_event.set()
        if watcher.thread is not threading.current_thread():
            watcher.thread.join(timeout=5)


def subscribe(directory: str, names: frozenset[str], callback: Callable[[], None]) -> Subscription:
    """Call `callback` (on the watcher thread) when an entry named in `names` changes."""
    global _next_id
    directory = os.path.abspath(directory)
    with _registry_lock:
        watcher = _registry.get(directory)
        if watcher is not None and not watcher.thread.is_alive():
            watcher.stop_event.set()  # it died (directory missing, fork): start a fresh one
            watcher = None
        start = watcher is None
        if watcher is None:
            watcher = _registry[directory] = _DirectoryWatcher(directory)
        _next_id += 1
        watcher.callbacks[_next_id] = (names, callback)
        if start:
            watcher.thread.start()
        return Subscription(directory, _next_id)


def watcher_thread_count() -> int:
    """How many watcher threads are alive (for tests and diagnostics)."""
    return sum(
        1 for t in threading.enumerate() if t.name.startswith(_THREAD_PREFIX) and t.is_alive()
    )
