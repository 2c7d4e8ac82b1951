"""Interop: sat_oauth_client against an authorization server built on Authlib's server code.

This is an independent implementation of the receiving side (Authlib's `AuthorizationServer`,
`ClientCredentialsGrant`, `JWTBearerClientAssertion`, `JWTBearerGrant`, `BearerTokenGenerator`,
`ResourceProtector`, RFC 8414 `AuthorizationServerMetadata`), served over real loopback HTTP by a
stdlib `http.server` (no Flask/Django integration needed: a minimal `AuthorizationServer`
subclass supplies `create_oauth2_request`/`handle_response`/`send_signal`).

Authlib's stock RFC 7523 code does not accept a Kubernetes service account token (SAT) as a
client credential: `JWTBearerClientAssertion` requires `iss == sub` and a single-use `jti`, and
`JWTBearerGrant` treats `iss` as the client. The server here is customised the way the WIMSE
draft describes (and as Keycloak does):

- trusted issuer = the cluster (`FakeKubelet.issuer`), its key from the cluster's JWKS;
- `sub` (`system:serviceaccount:<ns>:<name>`) of that issuer is mapped to a registered client;
- `iss == sub` is NOT required; the same SAT (same `jti`) may be presented many times;
- `aud` must be this server's issuer URL; `exp` is required.

The last tests show the stock behaviour (refusal) that motivates the customisation.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import secrets
import threading
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from authlib.oauth2 import AuthorizationServer, OAuth2Error, OAuth2Request, ResourceProtector
from authlib.oauth2.rfc6749 import (
    ClientCredentialsGrant,
    ClientMixin,
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    OAuth2Payload,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc6750 import BearerTokenGenerator, BearerTokenValidator
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion, JWTBearerGrant
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from joserfc import jwt as jose_jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from sat_oauth_client import (
    AsyncTokenManager,
    BearerAuth,
    OAuthError,
    TokenManager,
    afetch_token,
    fetch_token,
)
from sat_oauth_client.testing import FakeKubelet

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SAT_AUTH_METHOD = "workload_identity_jwt"  # our name for "a platform token as client assertion"
TOKEN_LIFETIME = 900

# -- the Authlib-based authorization server -----------------------------------------------------


@dataclasses.dataclass
class Client(ClientMixin):
    """A registered OAuth client, identified by a (trusted issuer, subject) pair."""

    client_id: str
    issuer: str
    subject: str
    grant_types: tuple[str, ...] = ("client_credentials", JWT_BEARER)
    scopes: tuple[str, ...] = ("orders.read", "orders.write")
    auth_method: str = SAT_AUTH_METHOD

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return ""
        return " ".join(s for s in scope.split() if s in self.scopes)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return False  # there are no secrets here

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint == "token" and method == self.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclasses.dataclass(frozen=True)
class TrustedIssuer:
    """A platform token issuer (a cluster) and its verification keys (its JWKS)."""

    issuer: str
    keys: KeySet


@dataclasses.dataclass
class IssuedToken:
    """What the server remembers about an access token (what `save_token` stored)."""

    client_id: str
    grant_type: str
    scope: str
    expires_at: float
    sat_jti: str | None

    def is_expired(self) -> bool:
        return self.expires_at <= time.time()

    def is_revoked(self) -> bool:
        return False

    def get_scope(self) -> str:
        return self.scope


class FormPayload(OAuth2Payload):
    """Form fields as Authlib wants them: `data` (first values) and `datalist` (all values)."""

    def __init__(self, form: dict[str, list[str]]) -> None:
        self._datalist = defaultdict(list, {k: list(v) for k, v in form.items()})
        self._data = {k: v[0] for k, v in form.items() if v}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class FormRequest(OAuth2Request):
    """An `OAuth2Request` from what `http.server` gives us (a framework integration's job)."""

    def __init__(
        self, method: str, uri: str, headers: dict[str, str], form: dict[str, list[str]]
    ) -> None:
        super().__init__(method, uri, headers=headers)
        self.payload = FormPayload(form)

    @property
    def form(self) -> dict[str, str]:
        return self.payload.data

    @property
    def args(self) -> dict[str, str]:
        return {}


class WorkloadClientAssertion(JWTBearerClientAssertion):
    """RFC 7523 §2.2 client authentication with a platform token, per the WIMSE draft.

    Differences from the stock `JWTBearerClientAssertion`:
    - the key comes from the token's issuer (a trusted cluster), not from the client;
    - the client is found by (`iss`, `sub`), and `iss == sub` is not required;
    - `jti` is not single-use (the kubelet hands the same token to every read until it rotates).
    Signature, `aud` (this server's issuer), `exp` and the `client_id` cross-check still apply.
    """

    CLIENT_AUTH_METHOD = SAT_AUTH_METHOD

    def __init__(self, server: WorkloadAuthorizationServer) -> None:
        super().__init__(validate_jti=False, leeway=30)
        self.server = server

    def get_audiences(self) -> list[str]:
        return [self.server.issuer]

    def __call__(self, query_client: Any, request: FormRequest) -> Client | None:
        form = request.form
        assertion = form.get("client_assertion")
        if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE or not assertion:
            return None  # not this method: let Authlib try the next one (or refuse)
        _, claims = self.extract_assertion(assertion)  # unverified, only to pick key and client
        iss = claims.get("iss")
        issuer = self.server.trusted.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise InvalidClientError(description="The assertion issuer is not trusted.")
        client = self.server.client_for(issuer.issuer, claims.get("sub"))
        if client is None:
            raise InvalidClientError(description="No client is registered for this subject.")
        claims = self.process_assertion_claims(assertion, issuer.keys)  # signature, claims
        sent_client_id = form.get("client_id")
        if sent_client_id is not None and sent_client_id != client.client_id:
            raise InvalidClientError(description="client_id does not match the assertion.")
        request.client = client
        request.sat_claims = claims
        return self.authenticate_client(client)

    def verify_claims(self, claims: dict[str, Any]) -> None:
        registry = jose_jwt.JWTClaimsRegistry(
            leeway=self.leeway,
            iss={"essential": True},
            sub={"essential": True},
            aud={"essential": True, "values": self.get_audiences()},
            exp={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise InvalidClientError(description=exc.description) from exc


class WorkloadClientCredentialsGrant(ClientCredentialsGrant):
    """The stock client_credentials grant; only the allowed client authentication changes."""

    TOKEN_ENDPOINT_AUTH_METHODS = [SAT_AUTH_METHOD]  # noqa: RUF012


class WorkloadJWTBearerGrant(JWTBearerGrant):
    """RFC 7523 §2.1 grant with a platform token: trusted issuer's key, `sub` -> client.

    The stock grant resolves the *client* from `iss` and treats `sub` as a user; for a SAT the
    issuer is the whole cluster, so here the issuer only supplies the key and `sub` names the
    client (as in the client-assertion flow).
    """

    CLAIMS_OPTIONS = {  # noqa: RUF012
        "iss": {"essential": True},
        "sub": {"essential": True},
        "aud": {"essential": True},
        "exp": {"essential": True},
    }
    LEEWAY = 30

    def get_audiences(self) -> list[str]:
        return [self.server.issuer]

    def resolve_issuer_client(self, issuer: str) -> TrustedIssuer | None:
        # called by the stock process_assertion_claims to find the verification key
        return self.server.trusted.get(issuer)

    def resolve_client_public_key(self, client: TrustedIssuer) -> KeySet:
        return client.keys

    def validate_token_request(self) -> None:
        assertion = self.request.form.get("assertion")
        if not assertion:
            raise InvalidRequestError("Missing 'assertion' in request")
        claims = self.process_assertion_claims(assertion)  # signature, iss, sub, aud, exp
        client = self.server.client_for(claims["iss"], claims["sub"])
        if client is None:
            raise InvalidGrantError(description="No client is registered for this subject.")
        sent_client_id = self.request.form.get("client_id")
        if sent_client_id is not None and sent_client_id != client.client_id:
            raise InvalidGrantError(description="client_id does not match the assertion.")
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError(f"grant_type={self.GRANT_TYPE} is not allowed")
        self.request.client = client
        self.request.sat_claims = claims
        self.validate_requested_scope()


class WorkloadAuthorizationServer(AuthorizationServer):
    """`authlib.oauth2.AuthorizationServer` with its framework hooks filled in for http.server,
    plus an RFC 8414 metadata document and a protected resource (Authlib's ResourceProtector)."""

    def __init__(self, *, workload_rules: bool = True) -> None:
        super().__init__(scopes_supported=["orders.read", "orders.write"])
        self.trusted: dict[str, TrustedIssuer] = {}
        self.clients: dict[str, Client] = {}
        self.tokens: dict[str, IssuedToken] = {}
        self.token_requests: list[dict[str, list[str]]] = []
        self.token_responses: list[tuple[int, dict[str, Any]]] = []
        self.resource_statuses: list[int] = []
        self._lock = threading.Lock()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self.register_token_generator(
            "default",
            BearerTokenGenerator(
                access_token_generator=lambda **_: secrets.token_urlsafe(32),
                expires_generator=lambda client, grant_type: TOKEN_LIFETIME,
            ),
        )
        self.resource_protector = ResourceProtector()
        self.resource_protector.register_token_validator(_Validator(self))
        if workload_rules:
            self.register_client_auth_method(SAT_AUTH_METHOD, WorkloadClientAssertion(self))
            self.register_grant(WorkloadClientCredentialsGrant)
            self.register_grant(WorkloadJWTBearerGrant)

    # configuration

    @property
    def issuer(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def token_endpoint(self) -> str:
        return self.issuer + "/oauth2/token"

    @property
    def resource_url(self) -> str:
        return self.issuer + "/api/orders"

    def trust(self, kubelet: FakeKubelet) -> None:
        """Trust a cluster: its issuer and the JWKS it publishes at /openid/v1/jwks."""
        self.trusted[kubelet.issuer] = TrustedIssuer(
            kubelet.issuer, KeySet.import_key_set(kubelet.jwks)
        )

    def register(self, client: Client) -> Client:
        self.clients[client.client_id] = client
        return client

    def client_for(self, issuer: str, subject: object) -> Client | None:
        for client in self.clients.values():
            if client.issuer == issuer and client.subject == subject:
                return client
        return None

    # what Authlib asks a framework integration / application to provide

    def query_client(self, client_id: str) -> Client | None:
        return self.clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: FormRequest) -> None:
        with self._lock:
            self.tokens[token["access_token"]] = IssuedToken(
                client_id=request.client.client_id,
                grant_type=request.payload.grant_type,
                scope=token.get("scope", ""),
                expires_at=time.time() + token["expires_in"],
                sat_jti=getattr(request, "sat_claims", {}).get("jti"),
            )

    def create_oauth2_request(self, request: FormRequest) -> FormRequest:
        return request

    def handle_response(
        self, status: int, body: dict[str, Any], headers: list[tuple[str, str]]
    ) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        return status, body, headers

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass

    def metadata(self) -> AuthorizationServerMetadata:
        metadata = AuthorizationServerMetadata(
            {
                "issuer": self.issuer,
                "token_endpoint": self.token_endpoint,
                "grant_types_supported": ["client_credentials", JWT_BEARER],
                "token_endpoint_auth_methods_supported": [SAT_AUTH_METHOD],
                "scopes_supported": self.scopes_supported,
                # RFC 8414 makes this member REQUIRED and Authlib refuses an empty list, though
                # this AS has no authorization endpoint; "none" is the closest honest value.
                "response_types_supported": ["none"],
            }
        )
        metadata.validate()
        return metadata

    # lifecycle

    def __enter__(self) -> WorkloadAuthorizationServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class _Validator(BearerTokenValidator):
    def __init__(self, server: WorkloadAuthorizationServer) -> None:
        super().__init__()
        self.server = server

    def authenticate_token(self, token_string: str) -> IssuedToken | None:
        return self.server.tokens.get(token_string)


@dataclasses.dataclass
class _HeaderRequest:
    headers: dict[str, str]


def _handler(server: WorkloadAuthorizationServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: Any, headers: list[tuple[str, str]]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            names = set()
            for name, value in headers:
                self.send_header(name, value)
                names.add(name.lower())
            if "content-type" not in names:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            if self.path == "/.well-known/oauth-authorization-server":
                self._send(200, dict(server.metadata()), [])
            elif self.path == "/api/orders":
                try:
                    server.resource_protector.validate_request(
                        ["orders.read"], _HeaderRequest(dict(self.headers.items()))
                    )
                except OAuth2Error as error:
                    status, body, headers = error()
                else:
                    status, body, headers = 200, {"orders": []}, []
                server.resource_statuses.append(status)
                self._send(status, body, headers)
            else:
                self._send(404, {"error": "not_found"}, [])

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode()
            if self.path != "/oauth2/token":
                self._send(404, {"error": "not_found"}, [])
                return
            if self.headers.get("Content-Type", "").split(";")[0] != (
                "application/x-www-form-urlencoded"
            ):
                self._send(400, {"error": "invalid_request"}, [])
                return
            form = urllib.parse.parse_qs(raw, keep_blank_values=True)
            request = FormRequest(
                "POST", server.issuer + self.path, dict(self.headers.items()), form
            )
            status, body, headers = server.create_token_response(request)
            with server._lock:
                server.token_requests.append(form)
                server.token_responses.append((status, body))
            self._send(status, body, headers)

    return Handler


# -- fixtures -----------------------------------------------------------------------------------

NAMESPACE, SERVICE_ACCOUNT = "orders", "orders-client"
SUBJECT = f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"


@pytest.fixture
def authlib_as() -> Iterator[WorkloadAuthorizationServer]:
    with WorkloadAuthorizationServer() as server:
        yield server


def cluster(directory: Path, server: WorkloadAuthorizationServer, **options: Any) -> FakeKubelet:
    """A fake kubelet projecting a SAT for `server` (aud = its issuer URL), first token written."""
    kubelet = FakeKubelet(
        directory,
        **{
            "issuer": "https://oidc.cluster-1.example.com",
            "audience": [server.issuer],
            "namespace": NAMESPACE,
            "service_account": SERVICE_ACCOUNT,
            **options,
        },
    )
    kubelet.rotate()
    return kubelet


@pytest.fixture
def kubelet(tmp_path: Path, authlib_as: WorkloadAuthorizationServer) -> FakeKubelet:
    """A cluster the AS trusts, whose service account `orders/orders-client` is a client."""
    kubelet = cluster(tmp_path / "tokens", authlib_as)
    authlib_as.trust(kubelet)
    authlib_as.register(Client("orders-client-app", issuer=kubelet.issuer, subject=SUBJECT))
    return kubelet


def config(
    server: WorkloadAuthorizationServer, kubelet: FakeKubelet, **extra: Any
) -> dict[str, Any]:
    return {
        "token_endpoint": server.token_endpoint,
        "token_file": kubelet.token_path,
        "scope": "orders.read",
        **extra,
    }


GRANTS = [
    pytest.param("client_credentials", "client_credentials", id="client-assertion"),
    pytest.param("jwt_bearer", JWT_BEARER, id="jwt-bearer-grant"),
]


# -- the SDK against it ------------------------------------------------------------------------


@pytest.mark.parametrize(("grant", "grant_type"), GRANTS)
def test_fetch_token(
    grant: str, grant_type: str, authlib_as: WorkloadAuthorizationServer, kubelet: FakeKubelet
) -> None:
    before = time.time()
    token = fetch_token(**config(authlib_as, kubelet, grant=grant))

    issued = authlib_as.tokens[token.access_token]
    assert issued.client_id == "orders-client-app"  # sub -> client, not iss, not sub itself
    assert issued.grant_type == grant_type
    assert token.token_type == "Bearer"
    assert token.scope == issued.scope == "orders.read"
    assert token.expires_at is not None
    assert before + TOKEN_LIFETIME - 1 <= token.expires_at <= time.time() + TOKEN_LIFETIME + 1
    (form,) = authlib_as.token_requests
    assert form["grant_type"] == [grant_type]
    if grant == "client_credentials":
        assert form["client_assertion_type"] == [CLIENT_ASSERTION_TYPE]
        assert form["client_assertion"] == [kubelet.current_token]
        assert "assertion" not in form
    else:
        assert form["assertion"] == [kubelet.current_token]
        assert "client_assertion" not in form
    assert "client_id" not in form  # the SAT's sub identifies the client


@pytest.mark.parametrize(("grant", "grant_type"), GRANTS)
def test_token_manager_and_bearer_auth(
    grant: str, grant_type: str, authlib_as: WorkloadAuthorizationServer, kubelet: FakeKubelet
) -> None:
    with (
        TokenManager(**config(authlib_as, kubelet, grant=grant)) as manager,
        httpx.Client(auth=BearerAuth(manager)) as api,
    ):
        first = manager.get_token()
        assert manager.get_token() is first  # cached: no second request
        assert [api.get(authlib_as.resource_url).status_code for _ in range(3)] == [200] * 3

        # The same SAT (same jti) again: a new access token, because jti reuse is allowed.
        second = manager.get_token(force_refresh=True)
        assert second.access_token != first.access_token
        assert api.get(authlib_as.resource_url).status_code == 200

        # After a rotation the manager sends the new SAT.
        kubelet.rotate()
        third = manager.get_token(force_refresh=True)
        assert third.access_token not in (first.access_token, second.access_token)

    assert [status for status, _ in authlib_as.token_responses] == [200, 200, 200]
    jtis = [t.sat_jti for t in authlib_as.tokens.values()]
    assert jtis[0] == jtis[1] != jtis[2]
    assert authlib_as.resource_statuses == [200] * 4


def test_bearer_auth_recovers_when_the_resource_rejects_a_token(
    authlib_as: WorkloadAuthorizationServer, kubelet: FakeKubelet
) -> None:
    with (
        TokenManager(**config(authlib_as, kubelet)) as manager,
        httpx.Client(auth=BearerAuth(manager)) as api,
    ):
        stale = manager.get_token()
        del authlib_as.tokens[stale.access_token]  # the AS forgot it (revoked, restarted ...)
        assert api.get(authlib_as.resource_url).status_code == 200
    assert authlib_as.resource_statuses == [401, 200]
    assert len(authlib_as.token_responses) == 2


@pytest.mark.anyio
@pytest.mark.parametrize(("grant", "grant_type"), GRANTS)
async def test_async_manager_and_afetch_token(
    grant: str, grant_type: str, authlib_as: WorkloadAuthorizationServer, kubelet: FakeKubelet
) -> None:
    token = await afetch_token(**config(authlib_as, kubelet, grant=grant))
    assert authlib_as.tokens[token.access_token].grant_type == grant_type
    async with (
        AsyncTokenManager(**config(authlib_as, kubelet, grant=grant)) as manager,
        httpx.AsyncClient(auth=BearerAuth(manager)) as api,
    ):
        response = await api.get(authlib_as.resource_url)
        assert response.status_code == 200
    assert [status for status, _ in authlib_as.token_responses] == [200, 200]


def test_discovery_from_authlib_metadata(
    authlib_as: WorkloadAuthorizationServer, kubelet: FakeKubelet
) -> None:
    """`issuer=`: the token endpoint comes from Authlib-validated RFC 8414 metadata, and the SAT's
    audience is exactly that issuer (no audience warning to give)."""
    token = fetch_token(issuer=authlib_as.issuer, token_file=kubelet.token_path)
    assert token.access_token in authlib_as.tokens


def test_client_id_is_accepted_when_it_matches_and_refused_otherwise(
    authlib_as: WorkloadAuthorizationServer, kubelet: FakeKubelet
) -> None:
    token = fetch_token(**config(authlib_as, kubelet, client_id="orders-client-app"))
    assert token.access_token in authlib_as.tokens
    with pytest.raises(OAuthError) as caught:
        fetch_token(**config(authlib_as, kubelet, client_id="someone-else"))
    assert caught.value.error == "invalid_client"


# -- what the server must refuse ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("grant", "error"),
    [("client_credentials", "invalid_client"), ("jwt_bearer", "invalid_grant")],
)
def test_wrong_audience_is_refused(
    grant: str, error: str, authlib_as: WorkloadAuthorizationServer, kubelet: FakeKubelet
) -> None:
    sat = kubelet.rotate(aud=["https://some-other-as.example.com"])
    with pytest.raises(OAuthError) as caught:
        fetch_token(**config(authlib_as, kubelet, grant=grant))
    assert caught.value.error == error
    assert caught.value.status_code == 400
    assert caught.value.error_description == "Invalid claim: 'aud'"
    assert sat not in str(caught.value)
    assert authlib_as.tokens == {}
    assert len(authlib_as.token_requests) == 1  # an unchanged SAT is not sent twice


@pytest.mark.parametrize("grant", ["client_credentials", "jwt_bearer"])
def test_token_for_the_kubernetes_api_is_refused(
    grant: str, authlib_as: WorkloadAuthorizationServer, kubelet: FakeKubelet
) -> None:
    kubelet.rotate(aud=["https://kubernetes.default.svc.cluster.local"])
    with pytest.raises(OAuthError):
        fetch_token(**config(authlib_as, kubelet, grant=grant))
    assert authlib_as.tokens == {}


@pytest.mark.parametrize("grant", ["client_credentials", "jwt_bearer"])
def test_signature_from_another_key_is_refused(
    grant: str, tmp_path: Path, authlib_as: WorkloadAuthorizationServer, kubelet: FakeKubelet
) -> None:
    impostor = cluster(tmp_path / "impostor", authlib_as)  # same iss and sub, another key
    with pytest.raises(OAuthError):
        fetch_token(**config(authlib_as, impostor, grant=grant))
    assert authlib_as.tokens == {}


@pytest.mark.parametrize("grant", ["client_credentials", "jwt_bearer"])
def test_untrusted_issuer_and_unknown_subject_are_refused(
    grant: str, tmp_path: Path, authlib_as: WorkloadAuthorizationServer, kubelet: FakeKubelet
) -> None:
    other_cluster = cluster(tmp_path / "other", authlib_as, issuer="https://oidc.cluster-2.example")
    with pytest.raises(OAuthError) as caught:
        fetch_token(**config(authlib_as, other_cluster, grant=grant))
    assert caught.value.error in ("invalid_client", "invalid_grant")

    kubelet.rotate(sub="system:serviceaccount:orders:intruder")  # validly signed, unregistered
    with pytest.raises(OAuthError) as caught:
        fetch_token(**config(authlib_as, kubelet, grant=grant))
    assert caught.value.error in ("invalid_client", "invalid_grant")
    assert authlib_as.tokens == {}


def test_grant_not_allowed_for_the_client_is_refused(
    authlib_as: WorkloadAuthorizationServer, kubelet: FakeKubelet
) -> None:
    authlib_as.clients["orders-client-app"].grant_types = ("client_credentials",)
    with pytest.raises(OAuthError) as caught:
        fetch_token(**config(authlib_as, kubelet, grant="jwt_bearer"))
    assert caught.value.error == "unauthorized_client"


# -- why the customisation is needed: Authlib's stock client assertion -------------------------


class StockClientAssertion(JWTBearerClientAssertion):
    """Authlib's JWTBearerClientAssertion with only the hooks it requires implemented: the
    client is looked up by `sub`, its key is the cluster's, `jti` is single-use."""

    def __init__(self, server: WorkloadAuthorizationServer, *, check_iss_is_sub: bool) -> None:
        super().__init__(validate_jti=True)
        self.server = server
        self.check_iss_is_sub = check_iss_is_sub
        self.used: set[str] = set()

    def get_audiences(self) -> list[str]:
        return [self.server.issuer]

    def resolve_client_public_key(self, client: Client) -> KeySet:
        return self.server.trusted[client.issuer].keys

    def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
        if jti in self.used:
            return False
        self.used.add(jti)
        return True

    def verify_claims(self, claims: dict[str, Any]) -> None:
        if self.check_iss_is_sub:
            super().verify_claims(claims)
            return
        # the stock checks with only the iss == sub rule taken out, jti still single-use
        super().verify_claims({**claims, "iss": claims["sub"]})


@pytest.fixture
def stock_as() -> Iterator[WorkloadAuthorizationServer]:
    """The same server without our rules: stock client_credentials + stock client assertion."""
    with WorkloadAuthorizationServer(workload_rules=False) as server:
        yield server


def _stock_setup(
    server: WorkloadAuthorizationServer, directory: Path, *, check_iss_is_sub: bool
) -> FakeKubelet:
    kubelet = cluster(directory, server)
    server.trust(kubelet)
    method = JWTBearerClientAssertion.CLIENT_AUTH_METHOD
    # the stock method finds the client by `sub`, so the client id must be the subject
    server.register(Client(SUBJECT, issuer=kubelet.issuer, subject=SUBJECT, auth_method=method))
    server.register_client_auth_method(
        method, StockClientAssertion(server, check_iss_is_sub=check_iss_is_sub)
    )

    class StockGrant(ClientCredentialsGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = [method]  # noqa: RUF012

    server.register_grant(StockGrant)
    return kubelet


def test_stock_authlib_client_assertion_refuses_a_sat(
    stock_as: WorkloadAuthorizationServer, tmp_path: Path
) -> None:
    kubelet = _stock_setup(stock_as, tmp_path, check_iss_is_sub=True)
    with pytest.raises(OAuthError) as caught:
        fetch_token(**config(stock_as, kubelet))
    assert caught.value.error == "invalid_client"
    assert caught.value.error_description == "Issuer and Subject MUST match."


def test_stock_single_use_jti_refuses_the_second_use_of_a_sat(
    stock_as: WorkloadAuthorizationServer, tmp_path: Path
) -> None:
    kubelet = _stock_setup(stock_as, tmp_path, check_iss_is_sub=False)
    assert fetch_token(**config(stock_as, kubelet)).access_token in stock_as.tokens
    with pytest.raises(OAuthError) as caught:  # same file, same SAT, same jti
        fetch_token(**config(stock_as, kubelet))
    assert caught.value.error == "invalid_client"
    assert caught.value.error_description == "JWT ID is used before."
    kubelet.rotate()  # only a fresh SAT gets through
    assert fetch_token(**config(stock_as, kubelet)).access_token in stock_as.tokens
