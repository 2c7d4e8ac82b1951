"""`FileTokenSource`: the platform token file, read safely through rotations.

Correctness never depends on the watcher: every read `stat`s the visible path (following the
`..data` symlink) and re-reads when the file behind it changed. The watcher only makes the new
content ready before anyone asks.
"""

from __future__ import annotations

__all__ = ["FileTokenSource", "SatSnapshot"]

import dataclasses
import datetime
import errno
import logging
import os
import threading
import time
from collections.abc import Callable

import jwt
import jwt.utils

from . import _testmode, _watch
from ._claims import SatClaims, decode_claims
from ._exceptions import TokenFileError

logger = logging.getLogger("sat_oauth_client")

# Non-atomic writers (spiffe-helper, the Windows kubelet) can show an empty, partial or missing
# file for a moment: retry briefly, well under a second in all, before calling it an error.
TRANSIENT_RETRY_DELAYS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
MAX_TOKEN_BYTES = 64 * 1024

_StatKey = tuple[int, int, int, int, int]


def _stat_key(st: os.stat_result) -> _StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclasses.dataclass(frozen=True)
class SatSnapshot:
    """One read of the file: its value, its unverified claims and the stat that identifies it."""

    value: str = dataclasses.field(repr=False)
    claims: SatClaims
    key: _StatKey


class _Transient(Exception):
    """A read that may succeed a moment later (non-atomic writer mid-write)."""


class FileTokenSource:
    """The current platform token from a file that the orchestrator rotates.

    `read()` returns the token; it re-reads after rotation, never returns an expired token, and
    raises `TokenFileError` (path and reason, never content). With `watch=True` the directory is
    watched by one shared thread per directory; `close()` releases it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        watch: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = os.fspath(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot: SatSnapshot | None = None
        self._subscription: _watch.Subscription | None = None
        self._watch = watch
        if watch:
            self._subscribe()

    def __repr__(self) -> str:
        return f"FileTokenSource(path={self.path!r}, watching={self._subscription is not None})"

    def read(self) -> str:
        """The current token (stripped). Cheap when nothing changed: one `stat`."""
        return self.snapshot().value

    def snapshot(self) -> SatSnapshot:
        """The current token with its claims; re-read when the file changed or the token expired."""
        cached = self._snapshot
        if cached is not None and not self._expired(cached) and self._current_key() == cached.key:
            return cached
        with self._lock:
            cached = self._snapshot  # another thread may have re-read while we waited
            if (
                cached is not None
                and not self._expired(cached)
                and self._current_key() == cached.key
            ):
                return cached
            snapshot = self._load()
            if self._expired(snapshot):
                snapshot = self._load()  # maybe rotated between the two reads
            if self._expired(snapshot):
                raise TokenFileError(self.path, self._expired_reason(snapshot))
            return snapshot

    def peek(self) -> SatSnapshot:
        """Read now (with the brief retries) even if the token expired: for diagnostics."""
        with self._lock:
            return self._load()

    def changed_since(self, value: str) -> SatSnapshot | None:
        """Re-read now; the new snapshot if the token differs from `value`, else None."""
        with self._lock:
            try:
                snapshot = self._load()
            except TokenFileError:
                return None
        if snapshot.value == value or self._expired(snapshot):
            return None
        return snapshot

    def close(self) -> None:
        """Stop watching (the shared thread ends with its last user). Idempotent."""
        self._watch = False
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            subscription.close()

    def __enter__(self) -> FileTokenSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------

    def _subscribe(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path)) or "."
        names = frozenset((os.path.basename(self.path), "..data"))
        self._subscription = _watch.subscribe(directory, names, self._on_change)

    def _rewatch_if_dead(self) -> None:
        """A watch started before the volume was mounted died; after a good read, start again."""
        subscription = self._subscription
        if self._watch and subscription is not None and not subscription.alive:
            subscription.close()
            self._subscribe()

    def _on_change(self) -> None:
        """Watcher thread: drop the cached token and pre-load the new one (errors wait for read)."""
        self._snapshot = None
        try:
            with self._lock:
                self._snapshot = self._read_once()
        except (_Transient, TokenFileError):
            self._snapshot = None

    def _current_key(self) -> _StatKey | None:
        try:
            return _stat_key(os.stat(self.path))
        except OSError:
            return None

    def _expired(self, snapshot: SatSnapshot) -> bool:
        exp = snapshot.claims.exp
        return exp is not None and exp <= self._clock()

    def _expired_reason(self, snapshot: SatSnapshot) -> str:
        exp = snapshot.claims.exp or 0.0
        when = datetime.datetime.fromtimestamp(exp, tz=datetime.timezone.utc).isoformat()
        return (
            f"the token expired at {when} ({int(self._clock() - exp)} s ago) and the file was not "
            "rotated; the kubelet may not be rotating it (a subPath mount never receives updates)"
        )

    def _load(self) -> SatSnapshot:
        """Read with brief retries for non-atomic writers; caller holds the lock."""
        for delay in (*TRANSIENT_RETRY_DELAYS, None):
            try:
                snapshot = self._read_once()
            except _Transient as exc:
                if delay is None:
                    raise TokenFileError(self.path, str(exc)) from None
                _testmode.pause(delay)
                continue
            self._snapshot = snapshot
            self._rewatch_if_dead()
            return snapshot
        raise AssertionError("unreachable")  # pragma: no cover

    def _read_once(self) -> SatSnapshot:
        try:
            with open(self.path, "rb") as file:
                before = os.fstat(file.fileno())
                data = file.read(MAX_TOKEN_BYTES + 1)
                after = os.fstat(file.fileno())
            key = _stat_key(after)
        except FileNotFoundError:
            raise _Transient("file not found (is the projected volume mounted?)") from None
        except IsADirectoryError:
            raise TokenFileError(self.path, "is a directory, not a token file") from None
        except PermissionError:
            raise TokenFileError(
                self.path, "permission denied (check the volume's mode and runAsUser)"
            ) from None
        except OSError as exc:
            reason = errno.errorcode.get(exc.errno or 0, "I/O error")
            raise TokenFileError(self.path, f"cannot be read ({reason})") from None
        if _stat_key(before) != key or (
            len(data) <= MAX_TOKEN_BYTES and len(data) != after.st_size
        ):
            raise _Transient("changed while being read (a non-atomic writer?)")
        if len(data) > MAX_TOKEN_BYTES:
            raise TokenFileError(self.path, f"is larger than {MAX_TOKEN_BYTES} bytes; not a token")
        try:
            value = data.decode("ascii").strip()
        except UnicodeDecodeError:
            raise _Transient("is not ASCII text; not a JWT") from None
        if not value:
            raise _Transient("is empty")
        try:
            claims = decode_claims(value)
            _check_signature_shape(value)
        except ValueError as exc:
            raise _Transient(f"does not hold a JWT: {exc}") from None
        return SatSnapshot(value=value, claims=claims, key=key)


# Signature sizes in bytes by algorithm; an RSA signature is as long as the key's modulus.
_SIGNATURE_BYTES = {"ES256": (64,), "ES384": (96,), "ES512": (132,), "EdDSA": (64, 114)}


def _check_signature_shape(token: str) -> None:
    """A platform token is always signed: a missing or short signature is a partial read (a
    non-atomic writer caught mid-write), not a token to send."""
    signature = token.rsplit(".", 1)[1]
    if not signature:
        raise ValueError("no signature (unsigned, or cut short)")
    try:
        size = len(jwt.utils.base64url_decode(signature))
    except (ValueError, TypeError):
        raise ValueError("signature is not base64url") from None
    if len(signature) != (4 * size + 2) // 3:
        raise ValueError("signature is cut short")
    alg = jwt.get_unverified_header(token).get("alg")
    if not isinstance(alg, str):
        return
    expected = _SIGNATURE_BYTES.get(alg)
    if expected is not None and size not in expected:
        raise ValueError(f"signature has {size} bytes; {alg} needs {expected[0]}")
    if alg[:2] in ("RS", "PS") and (size < 128 or size % 128):
        raise ValueError(f"signature has {size} bytes; not a whole RSA signature")
