"""A local authorization server on 127.0.0.1 that verifies platform tokens the way the WIMSE
draft says (trusted issuer's key, `aud` = this AS's issuer, `exp`, `sub` -> registered client),
plus a protected resource for end-to-end tests. Standard library only, one thread."""

from __future__ import annotations

__all__ = ["Fault", "LocalAuthorizationServer", "RecordedRequest"]

import dataclasses
import http.server
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import jwt

from ._kubelet import FakeKubelet

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """One request the server received (form fields as lists: `resource` may repeat)."""

    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, list[str]]
    received_at: float

    def field(self, name: str) -> str | None:
        values = self.form.get(name)
        return values[0] if values else None

    @property
    def assertion(self) -> str | None:
        """The platform token the client sent, whichever grant carried it."""
        return (
            self.field("client_assertion") or self.field("assertion") or self.field("subject_token")
        )


@dataclasses.dataclass
class Fault:
    """What to answer instead of a token: a status, headers, a raw body, an optional delay."""

    status: int = 503
    body: bytes = b'{"error": "temporarily_unavailable"}'
    content_type: str = "application/json"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay: float = 0.0


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # http.server's default (5) resets clients under concurrent load


class LocalAuthorizationServer:
    """An OAuth AS on loopback for tests and the demo.

    `trust(kubelet)` adds an issuer and its key; `register(sub, client_id=...)` maps a token
    subject to a client (by default every subject of a trusted issuer is accepted). Faults:
    `fail(status, times=..., retry_after=...)`, `respond(fault)`, `hold` (a threading.Event the
    token endpoint waits on), `delay`. `requests` records every token request.
    """

    def __init__(
        self,
        *,
        token_lifetime: float = 3600.0,
        clock: Callable[[], float] = time.time,
        include_expires_in: bool = True,
        refresh_in: float | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.token_lifetime = token_lifetime
        self.clock = clock
        self.include_expires_in = include_expires_in
        self.refresh_in = refresh_in
        self.requests: list[RecordedRequest] = []
        self.resource_requests: list[RecordedRequest] = []
        self.issued: dict[str, float] = {}
        self.faults: list[Fault] = []
        self.hold: threading.Event | None = None
        self.delay = 0.0
        self.resource_unauthorized = 0  # answer the next N resource calls with 401
        self._trusted: dict[str, Any] = {}
        self._clients: dict[str, str | None] = {}
        self._accept_any_subject = True
        self._lock = threading.Lock()
        self._request_seen = threading.Condition(self._lock)
        self._httpd = _HTTPServer((host, 0), self._handler_class())
        self._thread: threading.Thread | None = None

    # -- configuration ---------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        host, port = self._httpd.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{host}:{port}"

    @property
    def token_endpoint(self) -> str:
        return self.issuer + "/token"

    @property
    def resource_url(self) -> str:
        """A protected resource that accepts this server's access tokens."""
        return self.issuer + "/resource"

    def trust(self, kubelet: FakeKubelet) -> None:
        """Trust tokens signed by this fake kubelet (its issuer and public key)."""
        self._trusted[kubelet.issuer] = kubelet.public_key

    def register(self, subject: str, client_id: str | None = None) -> None:
        """Accept only registered subjects from now on; `client_id`, if given, must match."""
        self._accept_any_subject = False
        self._clients[subject] = client_id

    def fail(
        self,
        status: int = 503,
        *,
        times: int = 1,
        retry_after: str | None = None,
        error: str | None = None,
    ) -> None:
        """Answer the next `times` token requests with `status` (an RFC 6749 error body)."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        body = json.dumps(
            {"error": error or ("temporarily_unavailable" if status >= 500 else "invalid_request")}
        ).encode()
        with self._lock:
            self.faults.extend(
                Fault(status=status, body=body, headers=headers) for _ in range(times)
            )

    def respond(self, fault: Fault, *, times: int = 1) -> None:
        """Answer the next `times` token requests with this exact response (malformed bodies...)."""
        with self._lock:
            self.faults.extend(dataclasses.replace(fault) for _ in range(times))

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Block until at least `count` token requests arrived (an event, not a sleep)."""
        with self._request_seen:
            return self._request_seen.wait_for(lambda: len(self.requests) >= count, timeout)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> LocalAuthorizationServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="local-authorization-server",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> LocalAuthorizationServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 metadata."""
        return {
            "issuer": self.issuer,
            "token_endpoint": self.token_endpoint,
            "grant_types_supported": ["client_credentials", JWT_BEARER_GRANT, TOKEN_EXCHANGE_GRANT],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"],
        }

    # -- the token endpoint ----------------------------------------------------------------------

    def _verify(self, assertion: str | None) -> tuple[str, str] | None:
        """(error, description) if the platform token is not acceptable, else None."""
        if not assertion:
            return ("invalid_request", "no assertion")
        try:
            claims = jwt.decode(assertion, options={"verify_signature": False})
            key = self._trusted.get(str(claims.get("iss")))
            if key is None:
                return ("invalid_client", "untrusted issuer")
            jwt.decode(
                assertion,
                key,
                algorithms=["RS256", "ES256"],
                audience=self.issuer,
                options={"require": ["exp", "iss", "sub", "aud"]},
                leeway=0,
            )
        except jwt.ExpiredSignatureError:
            return ("invalid_client", "assertion expired")
        except jwt.InvalidAudienceError:
            return ("invalid_client", "aud must be this server's issuer")
        except jwt.PyJWTError as exc:
            return ("invalid_client", f"assertion rejected: {type(exc).__name__}")
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) != 1:  # as Keycloak and RFC 7523bis demand
            return ("invalid_client", "aud must be exactly one value: this server's issuer")
        sub = claims.get("sub")
        if not self._accept_any_subject and sub not in self._clients:
            return ("invalid_client", "unknown subject")
        return None

    def _token_response(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        def one(name: str) -> str | None:
            values = form.get(name)
            return values[0] if values else None

        grant = one("grant_type")
        if grant == "client_credentials":
            if one("client_assertion_type") != CLIENT_ASSERTION_TYPE:
                return 400, {"error": "invalid_client", "error_description": "no client assertion"}
            assertion = one("client_assertion")
        elif grant == JWT_BEARER_GRANT:
            assertion = one("assertion")
        elif grant == TOKEN_EXCHANGE_GRANT:
            if one("subject_token_type") != JWT_TOKEN_TYPE:
                return 400, {"error": "invalid_request", "error_description": "subject_token_type"}
            assertion = one("subject_token")
        else:
            return 400, {"error": "unsupported_grant_type"}
        problem = self._verify(assertion)
        if problem is not None:
            status = (
                400 if grant != "client_credentials" or problem[0] == "invalid_request" else 401
            )
            error = "invalid_grant" if grant != "client_credentials" else problem[0]
            return status, {"error": error, "error_description": problem[1]}
        sub = jwt.decode(assertion or "", options={"verify_signature": False})["sub"]
        wanted_client = self._clients.get(sub)
        if (
            one("client_id") is not None
            and wanted_client is not None
            and one("client_id") != wanted_client
        ):
            return 401, {"error": "invalid_client", "error_description": "client_id mismatch"}
        token = "at-" + secrets.token_urlsafe(24)
        with self._lock:
            self.issued[token] = self.clock() + self.token_lifetime
        body: dict[str, Any] = {"access_token": token, "token_type": "Bearer"}
        if self.include_expires_in:
            body["expires_in"] = self.token_lifetime
        if one("scope"):
            body["scope"] = one("scope")
        if grant == TOKEN_EXCHANGE_GRANT:
            body["issued_token_type"] = "urn:ietf:params:oauth:token-type:access_token"
        if self.refresh_in is not None:
            body["refresh_in"] = self.refresh_in
        return 200, body

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet: no tokens on stderr
                pass

            def _send(
                self,
                status: int,
                body: bytes,
                content_type: str = "application/json",
                headers: dict[str, str] | None = None,
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def _record(self, form: dict[str, list[str]]) -> RecordedRequest:
                return RecordedRequest(
                    method=self.command,
                    path=self.path,
                    headers=dict(self.headers.items()),
                    form=form,
                    received_at=server.clock(),
                )

            def do_GET(self) -> None:
                if self.path in (
                    "/.well-known/oauth-authorization-server",
                    "/.well-known/openid-configuration",
                ):
                    self._send(200, json.dumps(server.metadata()).encode())
                elif self.path == "/resource":
                    self._resource()
                else:
                    self._send(404, b'{"error": "not_found"}')

            def _resource(self) -> None:
                record = self._record({})
                with server._lock:
                    server.resource_requests.append(record)
                    forced = server.resource_unauthorized > 0
                    if forced:
                        server.resource_unauthorized -= 1
                header = self.headers.get("Authorization", "")
                token = header[7:] if header.startswith("Bearer ") else ""
                expires = server.issued.get(token)
                if forced or expires is None or expires <= server.clock():
                    self._send(
                        401,
                        b'{"error": "invalid_token"}',
                        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                    )
                else:
                    self._send(200, b'{"ok": true}')

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8", "replace")
                form = urllib.parse.parse_qs(raw, keep_blank_values=True)
                if self.path != "/token":
                    self._send(404, b'{"error": "not_found"}')
                    return
                with server._request_seen:
                    server.requests.append(self._record(form))
                    server._request_seen.notify_all()
                    fault = server.faults.pop(0) if server.faults else None
                    hold, delay = server.hold, server.delay
                if hold is not None:
                    hold.wait(timeout=30)
                if delay or (fault and fault.delay):
                    time.sleep(delay + (fault.delay if fault else 0.0))
                if fault is not None:
                    self._send(fault.status, fault.body, fault.content_type, fault.headers)
                    return
                status, body = server._token_response(form)
                self._send(status, json.dumps(body).encode())

        return Handler
