"""A fake kubelet: mints Kubernetes-shaped service account tokens and writes them the way the
real kubelet's AtomicWriter does (timestamped directory, `..data` symlink swapped by rename)."""

from __future__ import annotations

__all__ = ["FakeKubelet", "atomic_write"]

import base64
import datetime
import json
import math
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jwt

Algorithm = Literal["RS256", "ES256"]


def atomic_write(directory: str | os.PathLike[str], files: Mapping[str, bytes]) -> None:
    """Replay AtomicWriter's steps exactly: write a new `..<timestamp>.<rand>` directory, point
    `..data_tmp` at it, rename it over `..data`, make sure each visible name is a symlink into
    `..data`, then delete the old timestamped directory."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y_%m_%d_%H_%M_%S")
    new_dir_name = f"..{stamp}.{secrets.token_hex(4)}"
    new_dir = os.path.join(directory, new_dir_name)
    os.mkdir(new_dir)
    for name, content in files.items():
        with open(os.path.join(new_dir, name), "wb") as f:
            f.write(content)
        os.chmod(os.path.join(new_dir, name), 0o644)
    data_link = os.path.join(directory, "..data")
    old_dir_name = os.readlink(data_link) if os.path.islink(data_link) else None
    tmp_link = os.path.join(directory, "..data_tmp")
    os.symlink(new_dir_name, tmp_link)
    os.rename(tmp_link, data_link)
    for name in files:
        visible = os.path.join(directory, name)
        if not os.path.islink(visible):
            os.symlink(os.path.join("..data", name), visible)
    if old_dir_name:
        old_dir = os.path.join(directory, old_dir_name)
        for name in os.listdir(old_dir):
            os.remove(os.path.join(old_dir, name))
        os.rmdir(old_dir)


def _b64(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class FakeKubelet:
    """Signs SAT-shaped JWTs with its own key and keeps a projected token file current.

    `rotate()` writes a fresh token; `start_rotation()` rotates automatically at 80 % of the
    lifetime, as the kubelet does. `issuer`, `jwks` and `public_key` let an AS trust it.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        issuer: str = "https://kubernetes.default.svc.cluster.local",
        audience: str | Sequence[str] = ("https://as.example",),
        namespace: str = "default",
        service_account: str = "workload",
        pod: str = "workload-7d9f8-abcde",
        node: str = "node-1",
        lifetime: float = 3600.0,
        algorithm: Algorithm = "RS256",
        filename: str = "token",
        clock: Callable[[], float] = time.time,
    ) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        self.directory = os.fspath(directory)
        self.filename = filename
        self.issuer = issuer
        self.audience: list[str] = [audience] if isinstance(audience, str) else list(audience)
        self.namespace = namespace
        self.service_account = service_account
        self.pod = pod
        self.node = node
        self.lifetime = lifetime
        self.algorithm = algorithm
        self.clock = clock
        self.kid = secrets.token_hex(8)
        self._sa_uid = str(uuid.uuid4())
        self._pod_uid = str(uuid.uuid4())
        self._node_uid = str(uuid.uuid4())
        if algorithm == "RS256":
            self._private_key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            self._private_key = ec.generate_private_key(ec.SECP256R1())
        self.public_key: Any = self._private_key.public_key()
        self.current_token: str | None = None
        self.rotations = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def subject(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    @property
    def token_path(self) -> str:
        """The visible path a pod reads: a symlink to `..data/<filename>`."""
        return os.path.join(self.directory, self.filename)

    @property
    def jwks(self) -> dict[str, Any]:
        """The public key as a JWKS, as the API server serves at /openid/v1/jwks."""
        numbers = self.public_key.public_numbers()
        if self.algorithm == "RS256":
            key = {"kty": "RSA", "n": _b64(numbers.n), "e": _b64(numbers.e)}
        else:
            key = {"kty": "EC", "crv": "P-256", "x": _b64(numbers.x), "y": _b64(numbers.y)}
        return {"keys": [{**key, "kid": self.kid, "alg": self.algorithm, "use": "sig"}]}

    def mint(self, *, lifetime: float | None = None, **overrides: Any) -> str:
        """A signed token shaped like a bound service account token; claims can be overridden
        (pass a claim as None to drop it)."""
        now_exact = self.clock()
        now = int(now_exact)
        claims: dict[str, Any] = {
            "aud": list(self.audience),
            # rounded up: a 1.5 s token must not expire before its rotation at 80 %
            "exp": math.ceil(now_exact + (self.lifetime if lifetime is None else lifetime)),
            "iat": now,
            "iss": self.issuer,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {
                "namespace": self.namespace,
                "node": {"name": self.node, "uid": self._node_uid},
                "pod": {"name": self.pod, "uid": self._pod_uid},
                "serviceaccount": {"name": self.service_account, "uid": self._sa_uid},
            },
            "nbf": now,
            "sub": self.subject,
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(
            claims, self._private_key, algorithm=self.algorithm, headers={"kid": self.kid}
        )

    def rotate(self, token: str | None = None, **claims: Any) -> str:
        """Write a new token (minted unless given) with the atomic-writer layout; returns it."""
        token = self.mint(**claims) if token is None else token
        atomic_write(self.directory, {self.filename: token.encode()})
        self.current_token = token
        self.rotations += 1
        return token

    def start_rotation(self, fraction: float = 0.8) -> None:
        """Rotate in a background thread whenever the token reaches `fraction` of its lifetime."""
        if self._thread is not None:
            return
        if self.current_token is None:
            self.rotate()
        self._stop.clear()

        def run() -> None:
            while not self._stop.wait(self.lifetime * fraction):
                self.rotate()

        self._thread = threading.Thread(target=run, name="fake-kubelet-rotation", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop automatic rotation."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def claims_of(self, token: str) -> dict[str, Any]:
        """Verify one of our tokens with our key (handy in tests) and return its claims."""
        return dict(
            jwt.decode(
                token,
                self.public_key,
                algorithms=[self.algorithm],
                options={"verify_aud": False},
            )
        )

    def __repr__(self) -> str:
        return (
            f"FakeKubelet(issuer={self.issuer!r}, subject={self.subject!r}, "
            f"path={self.token_path!r})"
        )

    @staticmethod
    def describe(token: str) -> str:
        """Header and claims, pretty-printed, for debugging tests (never used by the library)."""
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
        return json.dumps({"header": header, "claims": claims}, indent=2, sort_keys=True)
