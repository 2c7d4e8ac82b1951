"""The `sat-oauth-client` command line (also `python -m sat_oauth_client`).

- `token`   one access token on stdout (`$(sat-oauth-client token)`), `--json` for the whole shape;
- `inspect` the platform token's claims, decoded WITHOUT verifying and without sending it anywhere,
  with what known authorization servers will dislike about it;
- `demo`    the whole flow on this machine: a fake kubelet rotating a short-lived token, a local
  authorization server issuing short-lived access tokens, and a client calling a protected
  resource through `BearerAuth`, shown live.

Thin by design (STYLE 12): argparse, configuration from flags over `SAT_OAUTH_*`, one call into the
package, and one mapping from the exception tree to exit codes::

    0 ok   2 usage or configuration   3 token file   4 the AS refused   5 transport

Nothing here ever prints a platform token or its signature; `token` prints the access token
because that is its job, and only on stdout.
"""

from __future__ import annotations

__all__ = ["main"]

import argparse
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TextIO

from ._claims import KEYCLOAK_MAX_AGE, SatClaims, fingerprint, sat_warnings
from ._claims import _number as _claim_number
from ._config import GRANTS, LEGACY_API_SERVER_TOKEN, env_config
from ._exceptions import (
    ConfigurationError,
    SatOAuthError,
    TokenFileError,
)
from ._source import FileTokenSource

if TYPE_CHECKING:
    from .testing import FakeKubelet, LocalAuthorizationServer

PROG = "sat-oauth-client"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2  # the others: each exception's `exit_code` (3 token file, 4 refused, 5 transport)
EXIT_INTERRUPTED = 130

_LOGGER_NAME = "sat_oauth_client"
_ENTRA_AUDIENCE = "api://AzureADTokenExchange"  # also in _claims.EXCHANGE_AUDIENCES
_ENTRA_HOSTS = ("login.microsoftonline.com", "sts.windows.net", "login.microsoftonline.us")
_RACE_WINDOW = 1.0  # demo: a request this soon after a rotation may carry the previous SAT
_GRANT_NAMES = {
    "client_credentials": "client_credentials",
    "urn:ietf:params:oauth:grant-type:jwt-bearer": "jwt_bearer",
    "urn:ietf:params:oauth:grant-type:token-exchange": "token_exchange",
}

_EPILOG = """\
configuration: each flag has a SAT_OAUTH_<NAME> variable (SAT_OAUTH_TOKEN_FILE,
SAT_OAUTH_TOKEN_ENDPOINT, SAT_OAUTH_ISSUER, SAT_OAUTH_CLIENT_ID, SAT_OAUTH_SCOPE,
SAT_OAUTH_RESOURCE, SAT_OAUTH_AUDIENCE, SAT_OAUTH_GRANT, SAT_OAUTH_TIMEOUT); flags win.

exit codes: 0 ok, 2 usage or configuration, 3 token file, 4 the authorization server refused,
5 transport (no usable answer from the token endpoint or the metadata).

examples:
  export SAT_OAUTH_TOKEN_FILE=/var/run/secrets/tokens/oauth SAT_OAUTH_ISSUER=https://as.example
  curl -H "Authorization: Bearer $(sat-oauth-client token)" https://api.example/things
  sat-oauth-client inspect --issuer https://as.example
  sat-oauth-client demo --duration 25
"""


# -- entry point -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: argparse printed them
        return _exit_code(exc.code)
    if args.command is None:
        parser.print_usage(sys.stderr)
        _error("choose a command: token, inspect or demo (see --help)")
        return EXIT_USAGE
    run: Callable[[argparse.Namespace], int] = args.run
    with _logging_to_stderr(args.verbose):
        try:
            return run(args)
        except SatOAuthError as exc:
            return _error(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            return _error("interrupted", EXIT_INTERRUPTED)


def _exit_code(code: object) -> int:
    if code is None:
        return EXIT_OK
    return code if isinstance(code, int) else EXIT_USAGE


def _error(message: str, code: int = EXIT_FAILED) -> int:
    """One line on stderr. Our exception messages never hold a token; nothing is added here."""
    one_line = " ".join(message.split())
    print(f"{PROG}: error: {one_line}", file=sys.stderr)
    return code


@contextlib.contextmanager
def _logging_to_stderr(verbosity: int) -> Iterator[None]:
    """-v: INFO, -vv: DEBUG of the package logger on stderr; undone afterwards (tests call main
    many times in one process). Without -v, a NullHandler keeps logging's last-resort handler
    from printing the package's retry warnings: errors stay one line."""
    logger = logging.getLogger(_LOGGER_NAME)
    if verbosity <= 0:
        quiet = logging.NullHandler()
        logger.addHandler(quiet)
        try:
            yield
        finally:
            logger.removeHandler(quiet)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


# -- parser ----------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="OAuth 2.0 access tokens for workloads, with the platform's rotating service "
        "account token (SAT) as an RFC 7523 client assertion. No client secret.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log to stderr (-v INFO, -vv DEBUG)"
    )
    parser.set_defaults(command=None)
    # -v also after the command name; SUPPRESS keeps an absent one from resetting the count.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    token = commands.add_parser(
        "token",
        parents=[common],
        help="print an access token (for $(...) in scripts)",
        description="Read the platform token once, make one token request (with retries) and "
        "print the access token alone on stdout. Flags win over SAT_OAUTH_* variables.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = token.add_argument_group("authorization server (one of)")
    where.add_argument("--token-endpoint", metavar="URL", help="token endpoint URL")
    where.add_argument(
        "--issuer", metavar="URL", help="AS issuer; the endpoint is found by RFC 8414 discovery"
    )
    token.add_argument("--token-file", metavar="PATH", help="the projected service account token")
    token.add_argument("--client-id", metavar="ID", help="send client_id (Entra requires it)")
    token.add_argument(
        "--scope", action="append", metavar="SCOPE", help="repeatable or space-separated"
    )
    token.add_argument(
        "--resource", action="append", metavar="URI", help="RFC 8707 resource (repeatable)"
    )
    token.add_argument("--audience", action="append", metavar="AUD", help="audience (repeatable)")
    token.add_argument("--grant", choices=GRANTS, help="default client_credentials")
    token.add_argument("--timeout", type=_positive_float, metavar="SECONDS", help="per request")
    token.add_argument(
        "--allow-insecure-http",
        action="store_true",
        default=None,
        help="allow plain http to a non-loopback host (test networks only)",
    )
    token.add_argument(
        "--json", action="store_true", help="print the whole response as JSON (token included)"
    )
    token.set_defaults(command="token", run=_cmd_token)

    inspect = commands.add_parser(
        "inspect",
        parents=[common],
        help="decode the platform token (locally; nothing is sent) and check it",
        description="Decode the platform token's header and claims without verifying the "
        "signature and without sending the token anywhere; warn about what known authorization "
        "servers will refuse. The token itself is never printed.",
    )
    inspect.add_argument("--token-file", metavar="PATH", help="default $SAT_OAUTH_TOKEN_FILE")
    inspect.add_argument(
        "--issuer", metavar="URL", help="the AS issuer, to check aud (default $SAT_OAUTH_ISSUER)"
    )
    inspect.add_argument(
        "--client-id", metavar="ID", help="the client_id you send (default $SAT_OAUTH_CLIENT_ID)"
    )
    inspect.add_argument("--json", action="store_true", help="print claims and warnings as JSON")
    inspect.set_defaults(command="inspect", run=_cmd_inspect)

    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="run the whole flow locally (fake kubelet, local AS), live",
        description="A fake kubelet rotates a short-lived service account token, a local "
        "authorization server on 127.0.0.1 issues short-lived access tokens, and a client calls "
        "a protected resource through TokenManager + BearerAuth. Ctrl-C stops it.",
    )
    demo.add_argument(
        "--duration", type=_positive_float, default=30.0, metavar="SECONDS", help="default 30"
    )
    demo.add_argument(
        "--sat-lifetime",
        type=_positive_float,
        default=12.0,
        metavar="SECONDS",
        help="service account token lifetime; rotated at 80%% (default 12)",
    )
    demo.add_argument(
        "--token-lifetime",
        type=_positive_float,
        default=8.0,
        metavar="SECONDS",
        help="access token lifetime (default 8)",
    )
    demo.add_argument(
        "--interval",
        type=_positive_float,
        default=0.5,
        metavar="SECONDS",
        help="pause between resource calls (default 0.5)",
    )
    demo.add_argument("--quiet", action="store_true", help="print only the summary")
    demo.set_defaults(command="demo", run=_cmd_demo)
    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


# -- token -----------------------------------------------------------------------------------------


def token_config(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Keywords for `fetch_token`: `SAT_OAUTH_*` first, flags win. An endpoint flag (either kind)
    replaces both endpoint variables, so `--issuer` works over SAT_OAUTH_TOKEN_ENDPOINT."""
    config = env_config(environ)
    flags: dict[str, Any] = {
        "token_endpoint": args.token_endpoint,
        "issuer": args.issuer,
        "token_file": args.token_file,
        "client_id": args.client_id,
        "grant": args.grant,
        "timeout": args.timeout,
        "allow_insecure_http": args.allow_insecure_http,
        "scope": _words(args.scope),
        "resource": args.resource,
        "audience": args.audience,
    }
    if args.token_endpoint is not None or args.issuer is not None:
        config.pop("token_endpoint", None)
        config.pop("issuer", None)
    config.update({name: value for name, value in flags.items() if value is not None})
    if not config.get("token_file"):
        raise ConfigurationError(
            "no token file: pass --token-file PATH or set SAT_OAUTH_TOKEN_FILE "
            "(the projected service account token)"
        )
    if not config.get("token_endpoint") and not config.get("issuer"):
        raise ConfigurationError(
            "no authorization server: pass --token-endpoint URL or --issuer URL "
            "(or set SAT_OAUTH_TOKEN_ENDPOINT or SAT_OAUTH_ISSUER)"
        )
    return config


def _words(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [word for value in values for word in value.split()]


def _cmd_token(args: argparse.Namespace) -> int:
    from ._api import fetch_token

    token = fetch_token(**token_config(args))
    out = sys.stdout
    if args.json:
        json.dump(token.as_dict(), out, indent=2, sort_keys=False)
        out.write("\n")
    else:
        out.write(token.access_token + "\n")
    out.flush()
    return EXIT_OK


# -- inspect ---------------------------------------------------------------------------------------


def _header(token: str, path: str) -> dict[str, Any]:
    import jwt

    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenFileError(path, f"does not hold a JWT ({type(exc).__name__})") from None
    return dict(header)


@dataclasses.dataclass
class Inspection:
    """What `inspect` found: safe to print (claims, header fields, sentences), never the token."""

    path: str
    header: dict[str, Any]
    claims: SatClaims
    now: float
    warnings: list[str]
    notes: list[str]

    def as_dict(self) -> dict[str, Any]:
        exp, iat = self.claims.exp, self.claims.iat
        return {
            "token_file": self.path,
            "fingerprint": self.claims.fingerprint,
            "signature_verified": False,
            "header": {k: self.header.get(k) for k in ("alg", "kid", "typ") if k in self.header},
            "claims": dict(self.claims.raw),
            "expires_in": None if exp is None else round(exp - self.now, 3),
            "expired": exp is not None and exp <= self.now,
            "age": None if iat is None else round(self.now - iat, 3),
            "warnings": self.warnings,
            "notes": self.notes,
        }


def inspect_token_file(
    path: str, *, issuer: str | None, client_id: str | None, now: float
) -> Inspection:
    """Read and decode the token file and collect warnings (from `sat_warnings`, plus expiry and
    the interop rules of known authorization servers). Sends nothing anywhere."""
    with FileTokenSource(path, watch=False) as source:
        snapshot = source.peek()  # expired tokens are shown too: that is what inspect is for
    claims = snapshot.claims
    header = _header(snapshot.value, path)
    # Entra wants aud api://AzureADTokenExchange, not its issuer: the issuer check does not apply
    # there (the Entra notes check aud instead).
    checked_issuer = None if _is_entra(claims, issuer) else issuer
    warnings = sat_warnings(claims, issuer=checked_issuer, now=now)
    warnings += _lifetime_warnings(claims, now)
    notes = _interop_notes(claims, issuer=issuer, client_id=client_id, path=path, now=now)
    return Inspection(path, header, claims, now, warnings, notes)


def _is_entra(claims: SatClaims, issuer: str | None) -> bool:
    return _ENTRA_AUDIENCE in claims.aud or _host(issuer) in _ENTRA_HOSTS


def _lifetime_warnings(claims: SatClaims, now: float) -> list[str]:
    warnings: list[str] = []
    exp, iat = claims.exp, claims.iat
    nbf = claims.nbf
    if exp is not None and exp <= now:
        warnings.append(
            f"the token EXPIRED {_ago(now - exp)} ago; the kubelet should have rotated it at 80 % "
            "of its lifetime: is the volume a subPath mount (never updated), or is the kubelet "
            "unable to reach the API server?"
        )
    elif exp is not None and iat is not None and exp > iat and (now - iat) > 0.9 * (exp - iat):
        warnings.append(
            "the token is past 90 % of its lifetime; the kubelet rotates at 80 %: "
            "check that rotation works"
        )
    if nbf is not None and nbf > now + 60:
        warnings.append(f"nbf is {_ago(nbf - now)} in the future; the AS will refuse the token")
    if "kubernetes.io" not in claims.raw and claims.iss == "kubernetes/serviceaccount":
        warnings.append(
            "this is a legacy secret-based service account token (no expiry, API audience); "
            "use a projected serviceAccountToken volume instead"
        )
    return warnings


def _interop_notes(
    claims: SatClaims, *, issuer: str | None, client_id: str | None, path: str, now: float
) -> list[str]:
    """DESIGN "What real authorization servers demand", where it applies to this token."""
    notes: list[str] = []
    aud = claims.aud
    entra = _is_entra(claims, issuer)
    keycloak = issuer is not None and "/realms/" in issuer
    exp, iat = claims.exp, claims.iat
    if entra:
        if list(aud) != [_ENTRA_AUDIENCE]:
            notes.append(
                f"Microsoft Entra: aud must be exactly {_ENTRA_AUDIENCE}; it is {list(aud)}"
            )
        if client_id is None:
            notes.append(
                "Microsoft Entra: client_id is required (the app registration's id): "
                "pass --client-id or set SAT_OAUTH_CLIENT_ID"
            )
        notes.append(
            f"Microsoft Entra: the federated identity credential must match iss {claims.iss!r} "
            f"and sub {claims.sub!r} exactly"
        )
    else:
        young = iat is None or now - iat <= KEYCLOAK_MAX_AGE  # else sat_warnings already says
        if exp is not None and iat is not None and exp - iat > KEYCLOAK_MAX_AGE and young:
            notes.append(
                f"Keycloak refuses tokens issued more than 3600 s ago; this one lives "
                f"{int(exp - iat)} s and is rotated only at 80 % of that: set the projected "
                "volume's expirationSeconds to 3600 or less"
            )
        if client_id is not None and client_id != claims.sub:
            notes.append(
                f"Keycloak: a client_id form field, if sent, must equal sub ({claims.sub}); "
                f"{client_id!r} does not: best omit it"
            )
        elif keycloak and client_id is not None:
            notes.append("Keycloak: client_id is not needed (sub identifies the client); omit it")
    if issuer is None and not entra:
        notes.append("pass --issuer (or set SAT_OAUTH_ISSUER) to check aud against the AS issuer")
    if os.path.normpath(path) == LEGACY_API_SERVER_TOKEN:
        notes.append(
            "this path holds the Kubernetes API token; it must not be sent to another party: "
            "mount a projected serviceAccountToken with the AS as its audience"
        )
    return notes


def _host(url: str | None) -> str | None:
    if not url:
        return None
    import httpx

    try:
        return httpx.URL(url).host or None
    except (httpx.InvalidURL, TypeError):
        return None


def _iso(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _ago(seconds: float) -> str:
    """`42 s`, `12 min 5 s`, `3 h 2 min`, `4 d 1 h`."""
    s = int(abs(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _cmd_inspect(args: argparse.Namespace) -> int:
    env = env_config()
    path = args.token_file or env.get("token_file")
    if not path:
        raise ConfigurationError(
            "no token file: pass --token-file PATH or set SAT_OAUTH_TOKEN_FILE"
        )
    report = inspect_token_file(
        path,
        issuer=args.issuer or env.get("issuer"),
        client_id=args.client_id or env.get("client_id"),
        now=time.time(),
    )
    out = sys.stdout
    if args.json:
        json.dump(report.as_dict(), out, indent=2, default=str)
        out.write("\n")
    else:
        out.write(_render_inspection(report))
    out.flush()
    return EXIT_OK


def _render_inspection(report: Inspection) -> str:
    claims, now = report.claims, report.now
    raw = claims.raw
    lines: list[str] = [f"token file   {report.path}  (fingerprint {claims.fingerprint})"]

    def row(label: str, value: object) -> None:
        lines.append(f"  {label:<14} {value}")

    row("alg", report.header.get("alg", "(none)"))
    row("kid", report.header.get("kid", "(none)"))
    row("iss", claims.iss or "(none)")
    row("sub", claims.sub or "(none)")
    aud = claims.aud
    row("aud", ", ".join(aud) if aud else "(none)")
    exp, iat = claims.exp, claims.iat
    if exp is None:
        row("exp", "(none: the token never expires)")
    elif exp <= now:
        row("exp", f"{_iso(exp)}  EXPIRED {int(now - exp)} s ago")
    else:
        row("exp", f"{_iso(exp)}  in {_ago(exp - now)}")
    if iat is None:
        row("iat", "(none)")
    else:
        lifetime = f", lifetime {_ago(exp - iat)}" if exp is not None and exp > iat else ""
        row("iat", f"{_iso(iat)}  age {_ago(now - iat)}{lifetime}")
    nbf = _claim_number(raw.get("nbf"))
    row("nbf", "(none)" if nbf is None else _iso(nbf))
    row("jti", "present" if raw.get("jti") else "absent")
    k8s = raw.get("kubernetes.io")
    if isinstance(k8s, dict):
        row("namespace", k8s.get("namespace", "(none)"))
        for key in ("pod", "serviceaccount", "node"):
            item = k8s.get(key)
            if isinstance(item, dict):
                row(key, item.get("name", "(none)"))
            elif key != "node":
                row(key, "(none)")
    else:
        row("kubernetes.io", "(absent: not a Kubernetes bound token)")
    lines.append("")
    lines.append(
        "signature NOT verified (the client holds no key; the authorization server verifies it)"
    )
    if report.warnings:
        lines.append("")
        lines.append("warnings:")
        lines += [f"  ! {warning}" for warning in report.warnings]
    else:
        lines.append("no warnings")
    if report.notes:
        lines.append("")
        lines.append("interop notes:")
        lines += [f"  - {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


# -- demo ------------------------------------------------------------------------------------------


class _Style:
    """ANSI colour on a terminal (unless NO_COLOR), plain text otherwise."""

    CODES: ClassVar[dict[str, str]] = {
        "dim": "2",
        "bold": "1",
        "red": "31",
        "green": "32",
        "yellow": "33",
        "blue": "34",
        "magenta": "35",
        "cyan": "36",
    }

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        isatty = getattr(stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.colour = (
            self.tty and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
        )
        self._status = ""

    def __call__(self, text: str, *styles: str) -> str:
        if not self.colour or not styles:
            return text
        codes = ";".join(self.CODES[s] for s in styles)
        return f"\x1b[{codes}m{text}\x1b[0m"

    def line(self, text: str) -> None:
        """A permanent line; on a terminal the live status line is redrawn under it."""
        if self.tty and self._status:
            self.stream.write("\r\x1b[2K")
        self.stream.write(text + "\n")
        if self.tty and self._status:
            self.stream.write(self._status)
        self.stream.flush()

    def status(self, text: str) -> None:
        """A transient line (terminals only): overwritten by the next status or line."""
        if not self.tty:
            return
        self._status = text
        self.stream.write("\r\x1b[2K" + text)
        self.stream.flush()

    def clear_status(self) -> None:
        if self.tty and self._status:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
        self._status = ""


@dataclasses.dataclass
class _Rotation:
    at: float
    fingerprint: str
    number: int


class _DemoEvents:
    """Collects what happened since the last look, from three places: the kubelet's rotations,
    the AS's records, and the client's resource calls. Tokens become fingerprints at once."""

    def __init__(self, local_as: LocalAuthorizationServer) -> None:
        self.local_as = local_as
        self.sat_lifetime = 0.0
        self.rotations: list[_Rotation] = []
        self.requests_seen = 0
        self.issued_seen: set[str] = set()
        self.access_tokens: dict[str, int] = {}  # access-token fingerprint -> number
        self.stale_requests = 0
        self.calls = 0
        self.calls_ok = 0
        self.failures = 0
        self._lock = threading.Lock()

    def record_rotation(self, token: str, at: float) -> None:
        with self._lock:
            self.rotations.append(_Rotation(at, fingerprint(token), len(self.rotations) + 1))

    def sat_at(self, moment: float) -> _Rotation | None:
        with self._lock:
            current = None
            for rotation in self.rotations:
                if rotation.at <= moment:
                    current = rotation
            return current

    def sat_number(self, fp: str) -> int | None:
        with self._lock:
            return next((r.number for r in self.rotations if r.fingerprint == fp), None)


def _demo_kubelet(
    directory: str, audience: str, lifetime: float, on_rotate: Callable[[str, float], None]
) -> FakeKubelet:
    """A fake kubelet that reports each rotation (its token, and the moment before the write, so
    that any request carrying the new token arrives after that moment)."""
    from .testing import FakeKubelet

    class DemoKubelet(FakeKubelet):
        def rotate(self, token: str | None = None, **claims: Any) -> str:
            token = self.mint(**claims) if token is None else token
            on_rotate(token, time.time())
            return super().rotate(token)

    return DemoKubelet(
        directory,
        audience=[audience],
        lifetime=lifetime,
        namespace="demo",
        service_account="billing-worker",
        pod="billing-worker-5c7d9-x2kqp",
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        import cryptography  # noqa: F401  (the fake kubelet signs with it)
    except ImportError:
        raise ConfigurationError(
            "the demo needs the 'cryptography' package for the fake kubelet's keys: "
            "pip install 'sat-oauth-client[testing]'"
        ) from None
    import httpx

    from ._auth import BearerAuth
    from ._manager import TokenManager
    from .testing import LocalAuthorizationServer

    style = _Style(sys.stdout)
    quiet: bool = args.quiet
    start = time.time()
    deadline = start + args.duration
    stop = threading.Event()
    interrupted = False

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="sat-oauth-demo-"))
        local_as = stack.enter_context(LocalAuthorizationServer(token_lifetime=args.token_lifetime))
        events = _DemoEvents(local_as)
        kubelet = _demo_kubelet(
            os.path.join(tmp, "token-volume"),
            local_as.issuer,
            args.sat_lifetime,
            events.record_rotation,
        )
        events.sat_lifetime = kubelet.lifetime
        local_as.trust(kubelet)
        stack.callback(kubelet.stop)
        demo = _DemoView(style, events, start, quiet)
        demo.banner(args, kubelet.token_path)
        kubelet.start_rotation()  # writes the first token now, then rotates at 80 % of its life
        manager = stack.enter_context(
            TokenManager(token_endpoint=local_as.token_endpoint, token_file=kubelet.token_path)
        )
        client = stack.enter_context(
            httpx.Client(
                auth=BearerAuth(manager),
                timeout=5.0,
                event_hooks={"request": [demo.request_hook]},
            )
        )
        try:
            while True:
                demo.call(client, local_as.resource_url)
                demo.collect()
                remaining = deadline - time.time()
                if remaining <= 0:
                    break
                stop.wait(min(args.interval, remaining))
        except KeyboardInterrupt:
            interrupted = True
        try:
            demo.collect()
        except KeyboardInterrupt:
            interrupted = True
    style.clear_status()
    return demo.summary(time.time() - start, interrupted)


class _DemoView:
    """Turns the demo's events into compact live lines and the final summary."""

    def __init__(self, style: _Style, events: _DemoEvents, start: float, quiet: bool) -> None:
        self.s = style
        self.events = events
        self.start = start
        self.quiet = quiet
        self.rotations_shown = 0
        self.last_run: tuple[str, int] | None = None  # (access-token fp, status) of the last call
        self.run_length = 0
        self.statuses: dict[str, int] = {}
        self._seen: list[str] = []

    def _emit(self, at: float, who: str, text: str, colour: str) -> None:
        if self.quiet:
            return
        s = self.s
        stamp = s(f"{at - self.start:+7.2f}s", "dim")
        self.s.line(f"{stamp}  {s(f'{who:<8}', colour, 'bold')}  {text}")

    def banner(self, args: argparse.Namespace, path: str) -> None:
        if self.quiet:
            return
        s = self.s
        sat, at = args.sat_lifetime, args.token_lifetime
        self.s.line(
            s("sat-oauth-client demo", "bold") + "  (no cluster: everything runs on this machine)"
        )
        self.s.line(
            f"  kubelet   writes a {sat:g} s service account token to {path},"
            f" rotating it every {sat * 0.8:g} s"
        )
        self.s.line(
            f"  AS        {self.events.local_as.issuer} trusts the kubelet's key and issues"
            f" {at:g} s access tokens"
        )
        self.s.line(
            f"  client    TokenManager + BearerAuth, GET /resource every {args.interval:g} s"
            f" for {args.duration:g} s (Ctrl-C stops)"
        )
        self.s.line(
            s("  tokens are shown only as fingerprints: sat:<sha256[:12]>, at:<sha256[:12]>", "dim")
        )
        self.s.line("")

    # -- the client side: one resource call ------------------------------------------------------

    def request_hook(self, request: Any) -> None:
        """httpx request hook: which access token (fingerprint) BearerAuth put on the call."""
        header = request.headers.get("Authorization", "")
        self._seen.append(fingerprint(header.partition(" ")[2]) if header else "-")

    def call(self, client: Any, url: str) -> None:
        import httpx

        seen: list[str] = []
        self._seen = seen
        at = time.time()
        self.events.calls += 1
        try:
            status = client.get(url).status_code
        except SatOAuthError as exc:
            self.events.failures += 1
            self.collect()
            self._emit(at, "client", self.s(f"no access token: {exc}", "red"), "red")
            self.last_run = None
            return
        except httpx.HTTPError as exc:
            self.events.failures += 1
            self.collect()
            text = self.s(f"GET /resource failed: {type(exc).__name__}", "red")
            self._emit(at, "client", text, "red")
            self.last_run = None
            return
        done = time.time()
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        if status == 200:
            self.events.calls_ok += 1
        else:
            self.events.failures += 1
        self.collect()  # the token request this call may have waited for comes first
        used = seen[-1] if seen else "-"
        key = (used, status)
        if key != self.last_run:
            number = self.events.access_tokens.get(used)
            label = f"at:{used}" + (f" (#{number})" if number else "")
            ok = status == 200
            shown = self.s(str(status), "green" if ok else "red", "bold")
            text = f"GET /resource -> {shown} with {label}"
            if len(seen) > 1:
                text += " after one 401 and a fresh token"
            if self.last_run is not None and self.run_length > 1:
                text += self.s(f"  (the previous token served {self.run_length} calls)", "dim")
            self._emit(done, "resource", text, "green" if ok else "red")
            self.last_run = key
            self.run_length = 1
        else:
            self.run_length += 1
        calls, ok_calls = self.events.calls, self.events.calls_ok
        failed = calls - ok_calls
        self.s.status(
            self.s(
                f"{done - self.start:+8.2f}s  resource calls: {calls}, {ok_calls} x 200"
                + (f", {failed} failed" if failed else "")
                + f"; this token: {self.run_length} call"
                + ("s" if self.run_length != 1 else ""),
                "dim",
            )
        )

    # -- the kubelet and AS side -----------------------------------------------------------------

    def collect(self) -> None:
        """Print rotations, token requests and issued tokens that happened since the last look,
        in time order."""
        ev = self.events
        pending: list[tuple[float, int, str, str, str]] = []
        with ev._lock:
            rotations = ev.rotations[self.rotations_shown :]
            self.rotations_shown += len(rotations)
        for rotation in rotations:
            exp = f"valid {ev.sat_lifetime:g} s"
            pending.append(
                (
                    rotation.at,
                    0,
                    "kubelet",
                    f"SAT #{rotation.number} {self.s('sat:' + rotation.fingerprint, 'cyan')}"
                    f" written ({exp})",
                    "cyan",
                )
            )
        requests = ev.local_as.requests[ev.requests_seen :]
        ev.requests_seen += len(requests)
        for request in requests:
            grant = _GRANT_NAMES.get(
                request.field("grant_type") or "", request.field("grant_type") or "?"
            )
            assertion = request.assertion
            fp = fingerprint(assertion) if assertion else None
            current = ev.sat_at(request.received_at)
            if fp is None:
                which = self.s("no SAT", "red")
            else:
                number = ev.sat_number(fp)
                name = self.s(f"sat:{fp}", "cyan") + (f" (#{number})" if number else "")
                if current is not None and current.fingerprint == fp:
                    which = f"{name}, the current SAT"
                elif (
                    current is not None
                    and number == current.number - 1
                    and request.received_at - current.at < _RACE_WINDOW
                ):
                    which = f"{name}, the previous SAT (a rotation raced this request)"
                else:
                    ev.stale_requests += 1
                    which = f"{name}, {self.s('NOT the current SAT', 'red', 'bold')}"
            pending.append(
                (request.received_at, 1, "AS", f"token request ({grant}) with {which}", "yellow")
            )
        issued = ev.local_as.issued.copy()
        lifetime = ev.local_as.token_lifetime
        for token, expires_at in issued.items():
            fp = fingerprint(token)
            if fp in ev.issued_seen:
                continue
            ev.issued_seen.add(fp)
            number = len(ev.access_tokens) + 1
            ev.access_tokens[fp] = number
            issued_at = expires_at - lifetime
            pending.append(
                (
                    issued_at,
                    2,
                    "AS",
                    f"issued access token #{number} {self.s('at:' + fp, 'magenta')}"
                    f" (expires in {lifetime:g} s, at {expires_at - self.start:+.2f}s)",
                    "yellow",
                )
            )
        for at, _, who, text, colour in sorted(pending, key=lambda item: (item[0], item[1])):
            self._emit(at, who, text, colour)

    def summary(self, elapsed: float, interrupted: bool) -> int:
        ev = self.events
        requests = ev.requests_seen
        all_ok = ev.failures == 0 and ev.stale_requests == 0 and ev.calls > 0
        s = self.s
        statuses = ", ".join(f"{n} x {code}" for code, n in sorted(self.statuses.items())) or "none"
        stale = (
            "all with the current SAT"
            if ev.stale_requests == 0
            else f"{ev.stale_requests} with a SAT that was no longer current"
        )
        verdict = s("all OK", "green", "bold") if all_ok else s("NOT all OK", "red", "bold")
        how = "interrupted" if interrupted else "done"
        if not self.quiet:
            self.s.line("")
        self.s.line(f"{s('summary', 'bold')} ({how} after {elapsed:.1f} s): {verdict}")
        self.s.line(f"  SAT rotations   {len(ev.rotations)} (the first one included)")
        self.s.line(f"  token requests  {requests}, {stale}")
        self.s.line(f"  access tokens   {len(ev.access_tokens)} issued")
        self.s.line(f"  resource calls  {ev.calls} ({statuses})")
        return EXIT_OK if all_ok else EXIT_FAILED
