"""The benchmark's loopback lab: one fake kubelet, one token server process, two front doors.

- `LocalAuthorizationServer` (plain HTTP on 127.0.0.1) serves sat_oauth_client and Authlib.
- `EntraFront` is an HTTPS server on 127.0.0.1, with a self-signed certificate made at start-up,
  answering the Entra-style `POST /{tenant}/oauth2/v2.0/token` that azure-identity sends. It
  hands every request to the same `LocalAuthorizationServer` (`_token_response`), records it in
  the same `requests` list and honours the same `delay`/`hold`, so all three clients are judged
  by one server logic and one request counter.

The servers live in a child process (see `Lab`); nothing here listens on anything but 127.0.0.1.
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import multiprocessing
import os
import ssl
import tempfile
import threading
import time
import urllib.parse
from multiprocessing.connection import Connection
from typing import Any

from sat_oauth_client.testing import FakeKubelet, LocalAuthorizationServer, RecordedRequest

LOOPBACK = "127.0.0.1"
TENANT = "bench-tenant"
CLIENT_ID = "00000000-0000-0000-0000-0000000000b1"
SCOPE = "api://bench/.default"
# http.server's default listen backlog is 5: a herd of hundreds of concurrent connections then
# overflows the accept queue and clients see resets (httpx.ReadError) that no real AS would cause.
LISTEN_BACKLOG = 1024


def make_certificate(directory: str) -> tuple[str, str]:
    """A self-signed CA-capable certificate for 127.0.0.1 (P-256), written as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sat-oauth-bench loopback")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]),
            critical=False,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "loopback-cert.pem")
    key_path = os.path.join(directory, "loopback-key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG


class EntraFront:
    """HTTPS, Entra-shaped token endpoint in front of a `LocalAuthorizationServer`."""

    def __init__(self, backend: LocalAuthorizationServer, cert_path: str, key_path: str) -> None:
        self.backend = backend
        self._httpd = _Server((LOOPBACK, 0), self._handler_class())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread: threading.Thread | None = None

    @property
    def authority(self) -> str:
        port = self._httpd.server_address[1]
        return f"https://{LOOPBACK}:{port}"

    def start(self) -> EntraFront:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="bench-entra-front",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        backend = self.backend
        token_path = f"/{TENANT}/oauth2/v2.0/token"

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8", "replace")
                if urllib.parse.urlsplit(self.path).path != token_path:
                    self._send(404, {"error": "not_found"})
                    return
                form = urllib.parse.parse_qs(raw, keep_blank_values=True)
                record = RecordedRequest(
                    method=self.command,
                    path=self.path,
                    headers=dict(self.headers.items()),
                    form=form,
                    received_at=backend.clock(),
                )
                with backend._request_seen:
                    backend.requests.append(record)
                    backend._request_seen.notify_all()
                    hold, delay = backend.hold, backend.delay
                if hold is not None:
                    hold.wait(timeout=30)
                if delay:
                    time.sleep(delay)
                status, body = backend._token_response(form)
                self._send(status, body)

        return Handler


class _TrustedIssuer:
    """What `LocalAuthorizationServer.trust()` reads from a `FakeKubelet`: its issuer and key."""

    def __init__(self, issuer: str, public_key: Any) -> None:
        self.issuer = issuer
        self.public_key = public_key


def _serve(conn: Connection, cert_path: str, key_path: str) -> None:
    """The token-server process: both front doors, driven by commands over a pipe."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    las = LocalAuthorizationServer(host=LOOPBACK)
    # LocalAuthorizationServer keeps http.server's backlog of 5; widen it (same socket, the
    # kernel takes the new value) so that herds measure the clients, not the accept queue.
    las._httpd.socket.listen(LISTEN_BACKLOG)
    front = EntraFront(las, cert_path, key_path)
    las.start()
    front.start()
    try:
        conn.send((las.issuer, las.token_endpoint, front.authority))
        while True:
            try:
                command, *args = conn.recv()
            except (EOFError, OSError):  # the benchmark went away
                return
            if command == "trust":
                issuer, pem = args
                las.trust(_TrustedIssuer(issuer, load_pem_public_key(pem)))  # type: ignore[arg-type]
                conn.send(None)
            elif command == "reset":
                with las._lock:
                    las.requests.clear()
                las.token_lifetime, las.delay = args
                conn.send(None)
            elif command == "count":
                conn.send(len(las.requests))
            elif command == "last":
                last = las.requests[-1] if las.requests else None
                conn.send(None if last is None else (last.assertion, last.received_at))
            else:  # "stop"
                conn.send(None)
                return
    finally:
        front.stop()
        las.stop()


class Lab:
    """A fake kubelet here, the token servers in a child process, for the whole run.

    The servers run in their own process so that their threads never compete with the clients
    under test for this interpreter's GIL (a real AS is never in the client's process).
    `reset()` between measurements.
    """

    def __init__(self) -> None:
        from cryptography.hazmat.primitives import serialization

        self._tmp = tempfile.TemporaryDirectory(prefix="sat-oauth-bench-")
        self.ca_path, key_path = make_certificate(self._tmp.name)
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._lock = threading.Lock()
        self._process = context.Process(
            target=_serve,
            args=(child_conn, self.ca_path, key_path),
            name="bench-token-server",
            daemon=True,
        )
        self._process.start()
        child_conn.close()
        self.issuer, self.token_endpoint, self.authority = self._receive(timeout=60)
        self.kubelet = FakeKubelet(
            os.path.join(self._tmp.name, "sat"), audience=[self.issuer], lifetime=3600
        )
        pem = self.kubelet.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._call("trust", self.kubelet.issuer, pem)
        self.kubelet.rotate()

    def _receive(self, timeout: float = 30.0) -> Any:
        if not self._conn.poll(timeout):
            raise RuntimeError("the benchmark's token server did not answer")
        return self._conn.recv()

    def _call(self, *command: Any) -> Any:
        with self._lock:
            self._conn.send(command)
            return self._receive()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            if self._process.is_alive():
                self._call("stop")
        finally:
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(timeout=5)
            self._conn.close()
            self.kubelet.stop()
            self._tmp.cleanup()

    @property
    def token_file(self) -> str:
        return self.kubelet.token_path

    def reset(self, *, lifetime: float = 3600.0, delay: float = 0.0) -> None:
        """Forget recorded requests; set the issued tokens' lifetime and the AS latency."""
        self._call("reset", lifetime, delay)

    @property
    def count(self) -> int:
        """Token requests received since the last `reset()` (both front doors)."""
        return int(self._call("count"))

    def last_request(self) -> tuple[str | None, float]:
        """(the platform token the last request carried, when it arrived: epoch seconds)."""
        last = self._call("last")
        if last is None:
            raise RuntimeError("no token request was recorded")
        return last[0], float(last[1])
