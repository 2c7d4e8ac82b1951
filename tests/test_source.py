"""`FileTokenSource` against real files in `tmp_path`: rotations, bad files, the shared watcher.

Every rotation below goes through the same steps as the kubelet's AtomicWriter (`atomic_write`),
or through plain-file writers (rename, in-place rewrite, a non-atomic truncate-then-write).
No test asserts on timing: waits are bounded waits for a condition that the test can observe.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from sat_oauth_client import FileTokenSource, TokenFileError
from sat_oauth_client._source import MAX_TOKEN_BYTES
from sat_oauth_client._watch import watcher_thread_count
from sat_oauth_client.testing import FakeKubelet, atomic_write

WAIT_LIMIT = 5.0  # seconds: an upper bound for a condition wait, never a timing assertion


# -- helpers ----------------------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout: float = WAIT_LIMIT) -> bool:
    """Poll `condition` until it holds or `timeout` passes (a bounded wait, not a timing test)."""
    pause = threading.Event()
    deadline = int(timeout / 0.01)
    for _ in range(deadline):
        if condition():
            return True
        pause.wait(0.01)
    return condition()


def counter_of(token: str) -> int:
    return int(jwt.decode(token, options={"verify_signature": False})["counter"])


def assert_no_token_text(text: str, *tokens: str) -> None:
    """Neither a token nor any of its segments (header, payload, signature) appears in text."""
    for token in tokens:
        assert token not in text
        for part in token.split("."):
            if len(part) >= 8:
                assert part not in text


def watcher_threads_for(directory: str | os.PathLike[str]) -> list[threading.Thread]:
    name = "sat-oauth-watch:" + os.path.abspath(os.fspath(directory))
    return [t for t in threading.enumerate() if t.name == name and t.is_alive()]


def snapshot_value(source: FileTokenSource) -> str | None:
    """What the source holds right now, without reading the file (what the watcher pre-loaded)."""
    snapshot = source._snapshot
    return None if snapshot is None else snapshot.value


def ensure_watching(source: FileTokenSource, kubelet: FakeKubelet) -> str:
    """Rotate until the watcher pre-loads a rotation by itself (nobody calls `read()` here).

    The watch is set up asynchronously on the watcher thread, so a rotation made right after
    the source was created may come before the watch exists; this waits until it does.
    Returns the token that the watcher pre-loaded.
    """
    for _ in range(25):
        token = kubelet.rotate()
        if wait_for(lambda token=token: snapshot_value(source) == token, timeout=0.4):
            return token
    pytest.fail("the watcher never pre-loaded a rotated token")


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def kubelet(tmp_path: Path, clock: Callable[[], float]) -> Iterator[FakeKubelet]:
    """A fake kubelet (ES256: cheap to sign) writing `tmp_path/sat/token`, first token written."""
    k = FakeKubelet(tmp_path / "sat", algorithm="ES256", lifetime=600, clock=clock)
    k.rotate(counter=0)
    yield k
    k.stop()


@pytest.fixture
def make_source(clock: Callable[[], float]) -> Iterator[Callable[..., FileTokenSource]]:
    """Build sources on the test's fake clock; every one is closed at teardown."""
    sources: list[FileTokenSource] = []

    def make(path: str | os.PathLike[str], *, watch: bool = False) -> FileTokenSource:
        source = FileTokenSource(path, watch=watch, clock=clock)
        sources.append(source)
        return source

    yield make
    for source in sources:
        source.close()


@pytest.fixture(autouse=True)
def _no_leaked_watchers() -> Iterator[None]:
    before = watcher_thread_count()
    yield
    assert watcher_thread_count() == before, "a test left a watcher thread running"


# -- rotation through the atomic-writer layout --------------------------------------------------


def test_atomic_writer_layout_is_what_the_kubelet_writes(kubelet: FakeKubelet) -> None:
    directory = kubelet.directory
    assert os.path.islink(kubelet.token_path)
    assert os.readlink(kubelet.token_path) == os.path.join("..data", "token")
    assert os.path.islink(os.path.join(directory, "..data"))
    old_target = os.readlink(os.path.join(directory, "..data"))
    kubelet.rotate()
    new_target = os.readlink(os.path.join(directory, "..data"))
    assert new_target != old_target
    assert not os.path.exists(os.path.join(directory, old_target))  # old directory removed


@pytest.mark.parametrize("watch", [False, True], ids=["stat-only", "watching"])
def test_rotation_is_picked_up_by_read(
    kubelet: FakeKubelet, make_source: Callable[..., FileTokenSource], watch: bool
) -> None:
    source = make_source(kubelet.token_path, watch=watch)
    assert source.read() == kubelet.current_token
    for i in range(1, 20):
        token = kubelet.rotate(counter=i)
        # straight after the swap, before any watcher could have reacted: the stat decides
        assert source.read() == token
        assert source.read() == token  # and the cached answer is the same


@pytest.mark.parametrize("watch", [False, True], ids=["stat-only", "watching"])
def test_rotation_with_identical_length_tokens_is_picked_up(
    kubelet: FakeKubelet, make_source: Callable[..., FileTokenSource], watch: bool
) -> None:
    # same claims but the jti: same byte length, so only identity/time tell the files apart
    source = make_source(kubelet.token_path, watch=watch)
    seen = source.read()
    for _ in range(50):
        token = kubelet.rotate(counter=7)
        assert len(token) == len(seen)
        assert source.read() == token
        seen = token


def test_watcher_preloads_the_rotated_token(
    kubelet: FakeKubelet, make_source: Callable[..., FileTokenSource]
) -> None:
    source = make_source(kubelet.token_path, watch=True)
    ensure_watching(source, kubelet)
    before = source._snapshot
    assert before is not None
    token = kubelet.rotate(counter=99)
    # nobody calls read(): only the watcher can replace the snapshot
    assert wait_for(lambda: source._snapshot is not before and snapshot_value(source) == token)
    preloaded = source._snapshot
    assert source.read() == token
    assert source._snapshot is preloaded  # read() served the pre-loaded snapshot, no re-read


def test_without_watch_nothing_is_preloaded(
    kubelet: FakeKubelet, make_source: Callable[..., FileTokenSource]
) -> None:
    source = make_source(kubelet.token_path, watch=False)
    first = source.read()
    before = source._snapshot
    token = kubelet.rotate(counter=1)
    assert source._snapshot is before  # no thread touched it...
    assert source.read() == token != first  # ...yet the read is current
    assert watcher_threads_for(kubelet.directory) == []


# -- 1,000 swaps under a concurrent reader ------------------------------------------------------


@pytest.mark.parametrize("watch", [False, True], ids=["stat-only", "watching"])
def test_thousand_swaps_with_concurrent_reader(
    kubelet: FakeKubelet, make_source: Callable[..., FileTokenSource], watch: bool
) -> None:
    swaps = 1000
    tokens = [kubelet.mint(counter=i) for i in range(1, swaps + 1)]
    written = {token: counter_of(token) for token in tokens}
    written[kubelet.current_token or ""] = 0
    source = make_source(kubelet.token_path, watch=watch)

    reader_started = threading.Event()
    writer_done = threading.Event()
    reader_errors: list[str] = []
    writer_errors: list[str] = []
    reads: list[int] = []

    def reader() -> None:
        last = -1
        reader_started.set()
        while not writer_done.is_set():
            try:
                value = source.read()
            except Exception as exc:
                reader_errors.append(f"read raised {type(exc).__name__}: {exc}")
                return
            if value not in written:
                reader_errors.append(f"read a value nobody wrote (length {len(value)})")
                return
            counter = written[value]
            if counter < last:
                reader_errors.append(f"went backwards: {counter} after {last}")
                return
            last = counter
            reads.append(counter)

    def writer() -> None:
        try:
            for i, token in enumerate(tokens, start=1):
                atomic_write(kubelet.directory, {"token": token.encode()})
                # the swap has returned: the very next read must be this token, not an older one
                got = written.get(source.read(), -1)
                if got != i:
                    writer_errors.append(f"stale after swap {i}: read {got}")
                    return
        except Exception as exc:
            writer_errors.append(f"writer raised {type(exc).__name__}: {exc}")
        finally:
            writer_done.set()

    reader_thread = threading.Thread(target=reader, name="test-reader", daemon=True)
    writer_thread = threading.Thread(target=writer, name="test-writer", daemon=True)
    reader_thread.start()
    assert reader_started.wait(WAIT_LIMIT)
    writer_thread.start()
    writer_thread.join(60)
    reader_thread.join(60)
    assert not writer_thread.is_alive()
    assert not reader_thread.is_alive()

    assert writer_errors == []
    assert reader_errors == []
    assert reads, "the reader never read while the writer swapped"
    assert source.read() == tokens[-1]  # after the final swap: the final token


# -- plain files --------------------------------------------------------------------------------


def test_plain_file_replaced_by_rename(
    tmp_path: Path, kubelet: FakeKubelet, make_source: Callable[..., FileTokenSource]
) -> None:
    path = tmp_path / "token"
    path.write_text(kubelet.mint(counter=1))
    source = make_source(path)
    assert counter_of(source.read()) == 1
    for i in range(2, 30):
        token = kubelet.mint(counter=i)
        tmp = tmp_path / "token.tmp"
        tmp.write_text(token)
        os.replace(tmp, path)
        assert source.read() == token


def test_plain_file_rewritten_in_place(
    tmp_path: Path, kubelet: FakeKubelet, make_source: Callable[..., FileTokenSource]
) -> None:
    path = tmp_path / "token"
    path.write_text(kubelet.mint(counter=1))
    source = make_source(path)
    inode = os.stat(path).st_ino
    previous = source.read()
    for _ in range(30):
        token = kubelet.mint(counter=1)  # same length: only the timestamps tell the change
        assert len(token) == len(previous)
        with open(path, "w") as f:
            f.write(token)
        assert os.stat(path).st_ino == inode  # really in place
        assert source.read() == token
        previous = token


@pytest.mark.parametrize("watch", [False, True], ids=["stat-only", "watching"])
def test_plain_file_rewritten_in_place_while_watched(
    tmp_path: Path,
    kubelet: FakeKubelet,
    make_source: Callable[..., FileTokenSource],
    watch: bool,
) -> None:
    path = tmp_path / "token"
    path.write_text(kubelet.mint(counter=1))
    source = make_source(path, watch=watch)
    assert counter_of(source.read()) == 1
    token = kubelet.mint(counter=2)
    path.write_text(token)
    assert source.read() == token


# -- missing and bad files ------------------------------------------------------------------------


@pytest.mark.parametrize("watch", [False, True], ids=["stat-only", "watching"])
def test_missing_file_then_it_appears(
    tmp_path: Path,
    kubelet: FakeKubelet,
    make_source: Callable[..., FileTokenSource],
    watch: bool,
) -> None:
    path = tmp_path / "token"
    source = make_source(path, watch=watch)
    with pytest.raises(TokenFileError) as info:
        source.read()
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    assert "not found" in info.value.reason
    token = kubelet.mint(counter=5)
    path.write_text(token)
    assert source.read() == token  # the same source object, no restart


@pytest.mark.parametrize("watch", [False, True], ids=["stat-only", "watching"])
def test_file_removed_after_a_good_read(
    kubelet: FakeKubelet, make_source: Callable[..., FileTokenSource], watch: bool
) -> None:
    source = make_source(kubelet.token_path, watch=watch)
    token = source.read()
    os.remove(kubelet.token_path)  # the visible symlink goes away
    with pytest.raises(TokenFileError) as info:
        source.read()  # never the cached token for a file that is gone
    assert info.value.path == kubelet.token_path
    assert "not found" in info.value.reason
    assert_no_token_text(str(info.value), token)
    assert_no_token_text("".join(traceback.format_exception(info.value)), token)
    assert source.changed_since(token) is None  # an unreadable file is "no change", not an error
    fresh = kubelet.rotate(counter=6)  # the kubelet recreates the visible link
    assert source.read() == fresh


SECRET = "SeCrEtPaYlOaDxyzzy"


def _write_empty(path: Path) -> None:
    path.write_bytes(b"")


def _write_whitespace(path: Path) -> None:
    path.write_bytes(b"  \n\t\r\n")


def _write_not_jwt(path: Path) -> None:
    path.write_text(f"{SECRET}-this-is-not-a-jwt\n")


def _write_three_bad_parts(path: Path) -> None:
    path.write_text(f"{SECRET}AAAA.{SECRET}BBBB.{SECRET}CCCC")


def _write_non_ascii(path: Path) -> None:
    path.write_bytes(SECRET.encode() + "\u00e9\u00e9".encode() + b"\xff\xfe")


def _write_json_array_payload(path: Path) -> None:
    # a syntactically valid JWT whose payload is not an object
    header = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    payload = jwt.utils.base64url_encode(f'["{SECRET}"]'.encode()).decode()
    path.write_text(f"{header}.{payload}.")


def _write_too_large(path: Path) -> None:
    path.write_text(SECRET * (MAX_TOKEN_BYTES // len(SECRET) + 2))


def _make_directory(path: Path) -> None:
    path.mkdir()


BAD_FILES = {
    "empty": (_write_empty, "empty"),
    "whitespace-only": (_write_whitespace, "empty"),
    "not-a-jwt": (_write_not_jwt, "JWT"),
    "three-bad-parts": (_write_three_bad_parts, "JWT"),
    "non-ascii": (_write_non_ascii, "ASCII"),
    "payload-not-object": (_write_json_array_payload, "JWT"),
    "over-64KiB": (_write_too_large, "larger than"),
    "a-directory": (_make_directory, "directory"),
}


@pytest.mark.parametrize("case", list(BAD_FILES), ids=list(BAD_FILES))
def test_bad_file_is_an_error_naming_path_and_reason_never_content(
    tmp_path: Path, make_source: Callable[..., FileTokenSource], case: str
) -> None:
    create, reason_word = BAD_FILES[case]
    path = tmp_path / "token"
    create(path)
    source = make_source(path)
    with pytest.raises(TokenFileError) as info:
        source.read()
    error = info.value
    assert error.path == str(path)
    assert str(path) in str(error)
    assert reason_word in error.reason
    full = "".join(traceback.format_exception(error))  # what a log with exc_info would show
    assert SECRET not in full
    assert SECRET.lower() not in full.lower()


def test_file_exactly_at_the_size_limit_is_not_rejected_for_size(
    tmp_path: Path, kubelet: FakeKubelet, make_source: Callable[..., FileTokenSource]
) -> None:
    token = kubelet.mint(counter=1, padding="x" * 100)
    path = tmp_path / "token"
    path.write_text(token + " " * (MAX_TOKEN_BYTES - len(token)))
    assert os.path.getsize(path) == MAX_TOKEN_BYTES
    assert make_source(path).read() == token


def test_permission_denied(
    tmp_path: Path, kubelet: FakeKubelet, make_source: Callable[..., FileTokenSource]
) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod does not stop root from reading")
    token = kubelet.mint(counter=1)
    path = tmp_path / "token"
    path.write_text(token)
    path.chmod(0)
    try:
        source = make_source(path)
        with pytest.raises(TokenFileError) as info:
            source.read()
        assert info.value.path == str(path)
        assert "permission denied" in info.value.reason
        assert_no_token_text(str(info.value), token)
        path.chmod(0o600)
        assert source.read() == token  # once readable, the same source recovers
    finally:
        path.chmod(0o600)


PERMISSION_PROBE = """
import json, sys
from sat_oauth_client import FileTokenSource, TokenFileError
from sat_oauth_client._testmode import set_testing
set_testing(True)
try:
    FileTokenSource(sys.argv[1], watch=False).read()
except TokenFileError as exc:
    print(json.dumps({"path": exc.path, "reason": exc.reason, "message": str(exc)}))
else:
    print(json.dumps({"read": True}))
"""


def test_permission_denied_for_an_unprivileged_reader(kubelet: FakeKubelet) -> None:
    """As root, chmod does not stop us: let an unprivileged child process read instead."""
    if os.geteuid() != 0:
        pytest.skip("covered by test_permission_denied when not root")
    token = kubelet.mint(counter=1)
    directory = tempfile.mkdtemp(prefix="sat-perm-")
    try:
        os.chmod(directory, 0o755)  # the child may enter the directory but not read the file
        path = os.path.join(directory, "token")
        with open(path, "w") as f:
            f.write(token)
        os.chmod(path, 0o600)
        try:
            result = subprocess.run(
                [sys.executable, "-c", PERMISSION_PROBE, path],
                user=65534,
                group=65534,
                extra_groups=[],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except PermissionError:
            pytest.skip("cannot start a process as an unprivileged user here")
        if result.returncode != 0:
            pytest.skip(f"the unprivileged child could not run: {result.stderr[-300:]}")
        outcome = json.loads(result.stdout)
        assert outcome.get("path") == path
        assert "permission denied" in outcome["reason"]
        assert path in outcome["message"]
        assert_no_token_text(result.stdout + result.stderr, token)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- expiry --------------------------------------------------------------------------------------


def test_expired_token_is_an_error_until_the_kubelet_rotates(
    kubelet: FakeKubelet, make_source: Callable[..., FileTokenSource], clock: Any
) -> None:
    source = make_source(kubelet.token_path)
    old = source.read()
    exp = jwt.decode(old, options={"verify_signature": False})["exp"]
    clock.advance(kubelet.lifetime + 5)
    with pytest.raises(TokenFileError) as info:
        source.read()  # the cached token must not be served once expired
    error = info.value
    assert error.path == kubelet.token_path
    when = datetime.datetime.fromtimestamp(exp, tz=datetime.timezone.utc)
    assert when.isoformat() in error.reason  # says when it expired
    assert "rotat" in error.reason  # and that rotation is the suspect
    assert_no_token_text(str(error), old)
    assert source.changed_since(old) is None  # an expired file is never offered as a change

    fresh = kubelet.rotate(counter=1)  # minted at the (advanced) fake time: valid again
    assert jwt.decode(fresh, options={"verify_signature": False})["exp"] > exp
    assert source.read() == fresh


def test_expiry_boundary(
    kubelet: FakeKubelet, make_source: Callable[..., FileTokenSource], clock: Any
) -> None:
    source = make_source(kubelet.token_path)
    token = source.read()
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    clock.now = exp - 0.001
    assert source.read() == token
    clock.now = exp
    with pytest.raises(TokenFileError, match="expired"):
        source.read()


def test_token_without_exp_is_served(
    tmp_path: Path, kubelet: FakeKubelet, make_source: Callable[..., FileTokenSource]
) -> None:
    token = kubelet.mint(exp=None)  # a legacy secret-based token has no exp
    path = tmp_path / "token"
    path.write_text(token)
    assert make_source(path).read() == token


# -- content handling ---------------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["\n", "  ", "\r\n", "\n\n\t ", " \t\r\n"])
def test_surrounding_whitespace_is_stripped(
    tmp_path: Path,
    kubelet: FakeKubelet,
    make_source: Callable[..., FileTokenSource],
    padding: str,
) -> None:
    token = kubelet.mint(counter=1)
    path = tmp_path / "token"
    path.write_bytes((padding + token + padding).encode())
    source = make_source(path)
    assert source.read() == token
    assert source.snapshot().value == token


def test_whitespace_stripped_through_the_atomic_writer(
    kubelet: FakeKubelet, make_source: Callable[..., FileTokenSource]
) -> None:
    source = make_source(kubelet.token_path)
    token = kubelet.mint(counter=3)
    atomic_write(kubelet.directory, {"token": (token + "\n").encode()})
    assert source.read() == token


def test_snapshot_carries_the_claims(
    kubelet: FakeKubelet, make_source: Callable[..., FileTokenSource]
) -> None:
    token = kubelet.rotate(counter=42)
    snapshot = make_source(kubelet.token_path).snapshot()
    assert snapshot.value == token
    assert snapshot.claims.raw["counter"] == 42
    assert snapshot.claims.sub == kubelet.subject
    assert snapshot.claims.iss == kubelet.issuer


def test_changed_since(kubelet: FakeKubelet, make_source: Callable[..., FileTokenSource]) -> None:
    source = make_source(kubelet.token_path)
    first = source.read()
    assert source.changed_since(first) is None
    second = kubelet.rotate(counter=1)
    changed = source.changed_since(first)
    assert changed is not None
    assert changed.value == second
    assert changed.claims.raw["counter"] == 1
    assert source.changed_since(second) is None
    assert source.read() == second


def test_repr_never_shows_the_token(
    kubelet: FakeKubelet, make_source: Callable[..., FileTokenSource]
) -> None:
    for watch in (False, True):
        source = make_source(kubelet.token_path, watch=watch)
        token = source.read()
        assert kubelet.token_path in repr(source)
        assert_no_token_text(repr(source), token)
        assert_no_token_text(repr(source.snapshot()), token)
        assert_no_token_text(str(source.snapshot()), token)


# -- the shared watcher thread ------------------------------------------------------------------


def test_ten_sources_in_one_directory_share_one_watcher(
    tmp_path: Path, kubelet: FakeKubelet, make_source: Callable[..., FileTokenSource]
) -> None:
    before = watcher_thread_count()
    directory = tmp_path / "many"
    directory.mkdir()
    sources = []
    for i in range(10):
        path = directory / f"token-{i}"
        path.write_text(kubelet.mint(counter=i))
        sources.append(make_source(path, watch=True))
    assert watcher_thread_count() == before + 1
    assert len(watcher_threads_for(directory)) == 1
    for i, source in enumerate(sources):
        assert counter_of(source.read()) == i

    for source in sources[:-1]:
        source.close()
        assert watcher_thread_count() == before + 1  # others still use it
    sources[-1].close()  # closing joins the thread: no wait needed
    assert watcher_thread_count() == before
    assert watcher_threads_for(directory) == []

    sources[0].close()  # idempotent
    sources[-1].close()
    assert watcher_thread_count() == before
    assert counter_of(sources[3].read()) == 3  # a closed source still reads (stat only)


def test_close_is_idempotent_and_context_manager_closes(
    kubelet: FakeKubelet, make_source: Callable[..., FileTokenSource]
) -> None:
    before = watcher_thread_count()
    with FileTokenSource(kubelet.token_path, watch=True) as source:
        assert watcher_thread_count() == before + 1
        assert source.read() == kubelet.current_token
    assert watcher_thread_count() == before
    source.close()
    source.close()
    assert watcher_thread_count() == before


def test_sources_in_two_directories_have_two_watchers(
    tmp_path: Path, kubelet: FakeKubelet, make_source: Callable[..., FileTokenSource]
) -> None:
    before = watcher_thread_count()
    paths = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        path = tmp_path / name / "token"
        path.write_text(kubelet.mint(counter=1))
        paths.append(path)
    a1, a2 = make_source(paths[0], watch=True), make_source(paths[0], watch=True)
    b1 = make_source(paths[1], watch=True)
    assert watcher_thread_count() == before + 2
    assert len(watcher_threads_for(tmp_path / "a")) == 1
    assert len(watcher_threads_for(tmp_path / "b")) == 1
    a1.close()
    a2.close()
    assert watcher_threads_for(tmp_path / "a") == []
    assert len(watcher_threads_for(tmp_path / "b")) == 1
    b1.close()
    assert watcher_thread_count() == before


def test_closing_one_source_keeps_watching_for_the_others(
    kubelet: FakeKubelet, make_source: Callable[..., FileTokenSource]
) -> None:
    leaving = make_source(kubelet.token_path, watch=True)
    staying = make_source(kubelet.token_path, watch=True)
    ensure_watching(staying, kubelet)
    leaving.close()
    token = kubelet.rotate(counter=1000)
    assert wait_for(lambda: snapshot_value(staying) == token)
    assert len(watcher_threads_for(kubelet.directory)) == 1


def test_watch_restarts_after_the_last_user_closed(
    kubelet: FakeKubelet, make_source: Callable[..., FileTokenSource]
) -> None:
    first = make_source(kubelet.token_path, watch=True)
    first.close()
    assert watcher_threads_for(kubelet.directory) == []
    second = make_source(kubelet.token_path, watch=True)
    assert len(watcher_threads_for(kubelet.directory)) == 1
    ensure_watching(second, kubelet)


def test_bad_files_never_crash_the_watcher(
    kubelet: FakeKubelet, make_source: Callable[..., FileTokenSource]
) -> None:
    source = make_source(kubelet.token_path, watch=True)
    ensure_watching(source, kubelet)
    [thread] = watcher_threads_for(kubelet.directory)
    garbage: list[bytes] = [
        b"",
        b"not a jwt at all",
        b"\xff\xfe\x00binary",
        b"a.b.c",
        b"x" * (MAX_TOKEN_BYTES + 10),
    ]
    for content in garbage:
        atomic_write(kubelet.directory, {"token": content})
        # the watcher saw it: the bad content dropped the pre-loaded token
        assert wait_for(lambda: source._snapshot is None)
        with pytest.raises(TokenFileError):
            source.read()
        assert thread.is_alive()
    # the visible name itself becomes a directory, then disappears
    os.remove(kubelet.token_path)
    os.mkdir(kubelet.token_path)
    os.rmdir(kubelet.token_path)
    good = kubelet.rotate(counter=77)
    assert wait_for(lambda: snapshot_value(source) == good)
    assert source.read() == good
    assert thread.is_alive()
    assert watcher_threads_for(kubelet.directory) == [thread]


def test_unrelated_files_in_the_directory_do_not_disturb(
    kubelet: FakeKubelet, make_source: Callable[..., FileTokenSource]
) -> None:
    source = make_source(kubelet.token_path, watch=True)
    token = ensure_watching(source, kubelet)
    preloaded = source._snapshot
    atomic_write(kubelet.directory, {"ca.crt": b"garbage", "namespace": b"default"})
    marker = kubelet.rotate(counter=5)  # everything before it has been handled by then
    assert wait_for(lambda: snapshot_value(source) == marker)
    assert preloaded is not None
    assert preloaded.value == token
    assert source.read() == marker


# -- non-atomic writers -----------------------------------------------------------------------


def _cut_points(token: str) -> dict[str, int]:
    signature_start = token.rindex(".") + 1
    return {
        "half": len(token) // 2,
        "after-last-dot": signature_start,
        "in-signature": len(token) - 10,
        "signature-minus-4": len(token) - 4,
    }


CUTS = ["half", "after-last-dot", "in-signature", "signature-minus-4"]


@pytest.mark.parametrize("cut", CUTS)
def test_non_atomic_writer_concurrent_reads_never_partial(
    tmp_path: Path,
    kubelet: FakeKubelet,
    make_source: Callable[..., FileTokenSource],
    cut: str,
) -> None:
    """Truncate, write a part, flush, write the rest; a concurrent reader never sees a part."""
    path = tmp_path / "token"
    tokens = [kubelet.mint(counter=i) for i in range(1500)]
    full = set(tokens)
    path.write_text(tokens[0])
    source = make_source(path)
    stop = threading.Event()
    started = threading.Event()
    partial: list[int] = []
    unexpected: list[str] = []
    outcomes = {"ok": 0, "error": 0}

    def reader() -> None:
        started.set()
        while not stop.is_set():
            try:
                value = source.read()
            except TokenFileError:
                outcomes["error"] += 1
                continue
            except Exception as exc:
                unexpected.append(f"{type(exc).__name__}: {exc}")
                return
            if value in full:
                outcomes["ok"] += 1
            else:
                partial.append(len(value))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    assert started.wait(WAIT_LIMIT)
    try:
        for token in tokens[1:]:
            at = _cut_points(token)[cut]
            with open(path, "w") as f:
                f.write(token[:at])
                f.flush()
                f.write(token[at:])
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert unexpected == []
    assert partial == [], f"{len(partial)} partial tokens returned (lengths {partial[:5]}...)"
    assert source.read() == tokens[-1]


@pytest.mark.parametrize("cut", CUTS)
def test_non_atomic_writer_read_while_partial_is_never_returned(
    tmp_path: Path,
    kubelet: FakeKubelet,
    make_source: Callable[..., FileTokenSource],
    cut: str,
) -> None:
    """Lock-step version: every read happens exactly while the file holds only a prefix.

    With test mode on, the source's brief retries are instant, so the writer is "too slow":
    the read must end in TokenFileError, never in the prefix.
    """
    path = tmp_path / "token"
    first = kubelet.mint(counter=0)
    path.write_text(first)
    source = make_source(path)
    assert source.read() == first
    for i in range(1, 6):
        token = kubelet.mint(counter=i)
        at = _cut_points(token)[cut]
        with open(path, "w") as f:
            f.write(token[:at])
            f.flush()
            outcome: str | TokenFileError
            try:
                outcome = source.read()  # the writer is between its two writes
            except TokenFileError as exc:
                outcome = exc
            f.write(token[at:])
        if isinstance(outcome, TokenFileError):
            assert outcome.path == str(path)
            assert_no_token_text(str(outcome), token)
        else:
            complete = outcome in (token, first)
            assert complete, (
                f"returned a {len(outcome)}-character prefix of a {len(token)}-character token"
            )
        assert source.read() == token
