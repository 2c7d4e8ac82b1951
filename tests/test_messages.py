"""Pure unit tests of the token request builder and the token response parser (no I/O)."""

from __future__ import annotations

import datetime
import email.utils
import json
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sat_oauth_client import AccessToken, OAuthError, TokenEndpointError
from sat_oauth_client._config import build_settings
from sat_oauth_client._messages import (
    MAX_RESPONSE_BYTES,
    build_token_request,
    parse_token_response,
    retry_after_seconds,
)

ENDPOINT = "https://as.example/oauth2/token"
ASSERTION = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJlLXBhcnQtb2YtdGhlLWp3dA"
SECRET = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0"
    ".eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6bnM6YXBwIn0"
    ".U0lHTkFUVVJFLXNlY3JldC1zZWdtZW50LTAxMjM0NTY3ODk"
)
SECRET_PARTS = [SECRET, *SECRET.split(".")]
T0 = 1_800_000_000.0
HS_KEY = "a-test-hmac-key-that-is-at-least-32-bytes-long"

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _settings(**overrides: Any) -> Any:
    config: dict[str, Any] = {"token_file": "/tmp/not-read/token", "token_endpoint": ENDPOINT}
    config.update(overrides)
    return build_settings(**config)


def _form(request: httpx.Request) -> dict[str, list[str]]:
    body = request.read().decode("ascii")
    return parse_qs(body, keep_blank_values=True, strict_parsing=True)


def _response(
    status: int = 200,
    *,
    body: Any = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    if content is None:
        content = b"" if body is None else json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json"} if body is not None else {}
    all_headers.update(headers or {})
    return httpx.Response(status, content=content, headers=all_headers)


def _ok(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"access_token": "at-123", "token_type": "Bearer", "expires_in": 3600}
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


# --------------------------------------------------------------------------- requests


@pytest.mark.parametrize(
    ("grant", "expected"),
    [
        (
            "client_credentials",
            {
                "grant_type": ["client_credentials"],
                "client_assertion_type": [CLIENT_ASSERTION_TYPE],
                "client_assertion": [ASSERTION],
            },
        ),
        (
            "jwt_bearer",
            {
                "grant_type": ["urn:ietf:params:oauth:grant-type:jwt-bearer"],
                "assertion": [ASSERTION],
            },
        ),
        (
            "token_exchange",
            {
                "grant_type": ["urn:ietf:params:oauth:grant-type:token-exchange"],
                "subject_token": [ASSERTION],
                "subject_token_type": ["urn:ietf:params:oauth:token-type:jwt"],
            },
        ),
    ],
)
def test_each_grant_has_exactly_its_fields(grant: str, expected: dict[str, list[str]]) -> None:
    request = build_token_request(_settings(grant=grant), ENDPOINT, ASSERTION)
    assert _form(request) == expected


def test_default_grant_is_client_credentials() -> None:
    request = build_token_request(_settings(), ENDPOINT, ASSERTION)
    assert _form(request)["grant_type"] == ["client_credentials"]


def test_request_method_url_and_headers() -> None:
    request = build_token_request(_settings(), ENDPOINT, ASSERTION)
    assert request.method == "POST"
    assert str(request.url) == ENDPOINT
    assert request.headers["Accept"] == "application/json"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert "Authorization" not in request.headers


def test_endpoint_argument_is_used_not_settings() -> None:
    other = "https://discovered.example/token"
    request = build_token_request(_settings(), other, ASSERTION)
    assert str(request.url) == other


def test_client_id_only_when_set() -> None:
    without = _form(build_token_request(_settings(), ENDPOINT, ASSERTION))
    assert "client_id" not in without
    with_id = _form(build_token_request(_settings(client_id="app-1"), ENDPOINT, ASSERTION))
    assert with_id["client_id"] == ["app-1"]


def test_no_optional_fields_when_unset() -> None:
    form = _form(build_token_request(_settings(), ENDPOINT, ASSERTION))
    for name in ("scope", "resource", "audience", "client_id"):
        assert name not in form


@pytest.mark.parametrize(
    "scope",
    ["read write", ["read", "write"], ("read", "write"), "  read   write "],
)
def test_scope_is_space_joined(scope: Any) -> None:
    form = _form(build_token_request(_settings(scope=scope), ENDPOINT, ASSERTION))
    assert form["scope"] == ["read write"]


def test_single_scope() -> None:
    form = _form(build_token_request(_settings(scope="api"), ENDPOINT, ASSERTION))
    assert form["scope"] == ["api"]


def test_resource_repeated_in_order() -> None:
    resources = ["https://api.one.example", "https://api.two.example/x?y=1"]
    form = _form(build_token_request(_settings(resource=resources), ENDPOINT, ASSERTION))
    assert form["resource"] == resources


def test_single_resource_string() -> None:
    form = _form(
        build_token_request(_settings(resource="https://api.example"), ENDPOINT, ASSERTION)
    )
    assert form["resource"] == ["https://api.example"]


def test_audience_repeated() -> None:
    form = _form(
        build_token_request(
            _settings(grant="token_exchange", audience=["svc-a", "svc-b"]), ENDPOINT, ASSERTION
        )
    )
    assert form["audience"] == ["svc-a", "svc-b"]


def test_all_options_together_exact_form() -> None:
    request = build_token_request(
        _settings(
            client_id="cid",
            scope=["s1", "s2"],
            resource=["r1", "r2"],
            audience="aud1",
            extra_params={"tenant": "t-1", "x": "a b&c=d"},
        ),
        ENDPOINT,
        ASSERTION,
    )
    assert _form(request) == {
        "grant_type": ["client_credentials"],
        "client_assertion_type": [CLIENT_ASSERTION_TYPE],
        "client_assertion": [ASSERTION],
        "client_id": ["cid"],
        "scope": ["s1 s2"],
        "resource": ["r1", "r2"],
        "audience": ["aud1"],
        "tenant": ["t-1"],
        "x": ["a b&c=d"],
    }


def test_extra_params_cannot_override_the_grant_or_assertion() -> None:
    request = build_token_request(
        _settings(extra_params={"grant_type": "password", "client_assertion": "forged"}),
        ENDPOINT,
        ASSERTION,
    )
    form = _form(request)
    assert form["grant_type"] == ["client_credentials"]
    assert form["client_assertion"] == [ASSERTION]


def test_request_carries_the_configured_timeout() -> None:
    request = build_token_request(_settings(timeout=3.5), ENDPOINT, ASSERTION)
    assert request.extensions["timeout"]["read"] == 3.5
    assert request.extensions["timeout"]["connect"] == 3.5


# --------------------------------------------------------------------------- responses


def test_success() -> None:
    token = parse_token_response(
        _response(body=_ok(scope="read", issued_token_type="urn:x", id_token="idt")), T0
    )
    assert isinstance(token, AccessToken)
    assert token.access_token == "at-123"
    assert token.token_type == "Bearer"
    assert token.expires_at == T0 + 3600
    assert token.scope == "read"
    assert token.issued_token_type == "urn:x"
    assert dict(token.extra) == {"id_token": "idt"}
    assert "at-123" not in repr(token)
    assert "idt" not in str(token)


@pytest.mark.parametrize("token_type", ["bearer", "BEARER", "Bearer", "bEaReR"])
def test_token_type_bearer_any_case(token_type: str) -> None:
    token = parse_token_response(_response(body=_ok(token_type=token_type)), T0)
    assert token.token_type == "Bearer"


def test_other_token_type_kept() -> None:
    token = parse_token_response(_response(body=_ok(token_type="N_A")), T0)
    assert token.token_type == "N_A"


def test_oauth_error() -> None:
    body = {
        "error": "invalid_client",
        "error_description": "client assertion rejected",
        "error_uri": "https://as.example/errors/invalid_client",
    }
    with pytest.raises(OAuthError) as info:
        parse_token_response(_response(401, body=body), T0)
    exc = info.value
    assert exc.error == "invalid_client"
    assert exc.error_description == "client assertion rejected"
    assert exc.error_uri == "https://as.example/errors/invalid_client"
    assert exc.status_code == 401
    assert "invalid_client" in str(exc)


def test_oauth_error_minimal() -> None:
    with pytest.raises(OAuthError) as info:
        parse_token_response(_response(400, body={"error": "invalid_scope"}), T0)
    assert info.value.error == "invalid_scope"
    assert info.value.error_description is None
    assert info.value.error_uri is None
    assert info.value.status_code == 400


def test_oauth_error_wrongly_typed_optional_fields_are_dropped() -> None:
    body = {"error": "invalid_request", "error_description": 5, "error_uri": ["x"]}
    with pytest.raises(OAuthError) as info:
        parse_token_response(_response(400, body=body), T0)
    assert info.value.error_description is None
    assert info.value.error_uri is None


def test_html_200_is_token_endpoint_error_with_short_excerpt() -> None:
    html = (
        b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>"
        + b"<p>Please log in</p>" * 500
        + b"</body></html>"
    )
    response = _response(200, content=html, headers={"Content-Type": "text/html"})
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(response, T0)
    exc = info.value
    assert exc.status_code == 200
    message = str(exc)
    assert "<!DOCTYPE html>" in message
    assert "text/html" in message
    assert len(message) < 400
    assert message.count("Please log in") < 10


@pytest.mark.parametrize("status", [200, 400])
def test_empty_body(status: int) -> None:
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(_response(status, content=b""), T0)
    assert info.value.status_code == status


@pytest.mark.parametrize("content", [b"[]", b'"a string"', b"42", b"null"])
def test_json_that_is_not_an_object(content: bytes) -> None:
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(_response(200, content=content), T0)
    assert info.value.status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        _ok(access_token=5),
        _ok(access_token=["x"]),
        _ok(access_token=""),
        {"token_type": "Bearer", "expires_in": 60},
        {"access_token": "at", "expires_in": 60},
        _ok(token_type=1),
        _ok(expires_in=True),
        _ok(expires_in=False),
        _ok(expires_in=-1),
        _ok(expires_in="soon"),
        _ok(expires_in="-5"),
        _ok(expires_in=[60]),
        _ok(expires_in="nan"),
        _ok(expires_in="inf"),
        _ok(scope=["a", "b"]),
        _ok(issued_token_type=3),
    ],
)
def test_wrong_types_are_token_endpoint_errors(body: dict[str, Any]) -> None:
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(_response(200, body=body), T0)
    assert info.value.status_code == 200


def test_expires_in_null_is_rejected() -> None:
    content = b'{"access_token": "at", "token_type": "Bearer", "expires_in": null}'
    with pytest.raises(TokenEndpointError):
        parse_token_response(_response(200, content=content), T0)


@pytest.mark.parametrize(
    ("expires_in", "lifetime"), [("3600", 3600.0), (" 120 ", 120.0), ("90.5", 90.5), (0, 0.0)]
)
def test_numeric_expires_in(expires_in: Any, lifetime: float) -> None:
    token = parse_token_response(_response(body=_ok(expires_in=expires_in)), T0)
    assert token.expires_at == T0 + lifetime


def test_expires_in_counts_from_request_time() -> None:
    token = parse_token_response(_response(body=_ok(expires_in=60)), 1000.0)
    assert token.expires_at == 1060.0


def test_missing_expires_in_uses_jwt_exp() -> None:
    exp = int(T0) + 1234
    access = jwt.encode({"sub": "x", "exp": exp}, HS_KEY, algorithm="HS256")
    token = parse_token_response(
        _response(body={"access_token": access, "token_type": "Bearer"}), T0, 300.0
    )
    assert token.expires_at == float(exp)
    assert token.access_token == access


def test_missing_expires_in_opaque_token_uses_default() -> None:
    token = parse_token_response(
        _response(body={"access_token": "opaque", "token_type": "bearer"}), T0, 300.0
    )
    assert token.expires_at == T0 + 300.0


def test_missing_expires_in_default_is_configurable() -> None:
    token = parse_token_response(
        _response(body={"access_token": "opaque", "token_type": "bearer"}), T0, 42.0
    )
    assert token.expires_at == T0 + 42.0


def test_missing_expires_in_jwt_without_exp_uses_default() -> None:
    access = jwt.encode({"sub": "x"}, HS_KEY, algorithm="HS256")
    token = parse_token_response(
        _response(body={"access_token": access, "token_type": "Bearer"}), T0, 300.0
    )
    assert token.expires_at == T0 + 300.0


def test_explicit_expires_in_wins_over_jwt_exp() -> None:
    access = jwt.encode({"exp": int(T0) + 99999}, HS_KEY, algorithm="HS256")
    token = parse_token_response(
        _response(body={"access_token": access, "token_type": "Bearer", "expires_in": 60}), T0
    )
    assert token.expires_at == T0 + 60


def test_body_over_one_mib() -> None:
    padding = " " * (MAX_RESPONSE_BYTES + 10)
    content = ('{"access_token": "at", "token_type": "Bearer"' + padding + "}").encode()
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(_response(200, content=content), T0)
    assert info.value.status_code == 200
    assert "1 MiB" in str(info.value)
    assert len(str(info.value)) < 400


def test_body_of_exactly_one_mib_is_accepted() -> None:
    prefix = b'{"access_token": "at", "token_type": "Bearer"'
    content = prefix + b" " * (MAX_RESPONSE_BYTES - len(prefix) - 1) + b"}"
    assert len(content) == MAX_RESPONSE_BYTES
    token = parse_token_response(_response(200, content=content), T0)
    assert token.access_token == "at"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_is_token_endpoint_error(status: int) -> None:
    response = _response(status, headers={"Location": "https://elsewhere.example/login"})
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(response, T0)
    assert info.value.status_code == status
    message = str(info.value)
    assert "redirect" in message
    assert "https://elsewhere.example/login" in message


def test_redirect_with_token_shaped_json_is_still_an_error() -> None:
    response = _response(302, body=_ok(), headers={"Location": "https://elsewhere.example/"})
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(response, T0)
    assert info.value.status_code == 302


def test_503_without_json() -> None:
    response = _response(
        503, content=b"<html>Service Unavailable</html>", headers={"Content-Type": "text/html"}
    )
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(response, T0)
    assert info.value.status_code == 503
    assert "Service Unavailable" in str(info.value)


def test_503_with_json_error_is_not_an_oauth_error() -> None:
    response = _response(503, body={"error": "temporarily_unavailable"})
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(response, T0)
    assert not isinstance(info.value, OAuthError)
    assert info.value.status_code == 503
    assert "temporarily_unavailable" in str(info.value)


@pytest.mark.parametrize("status", [500, 502, 504, 408, 429, 507])
def test_server_errors_are_token_endpoint_errors(status: int) -> None:
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(_response(status, body={"error": "server_error"}), T0)
    assert info.value.status_code == status


def test_non_200_success_shape_is_an_error() -> None:
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(_response(201, body=_ok()), T0)
    assert info.value.status_code == 201


def test_4xx_non_rfc_json_is_token_endpoint_error() -> None:
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(_response(403, body={"message": "forbidden"}), T0)
    assert info.value.status_code == 403


def test_retry_after_seconds_on_503() -> None:
    response = _response(503, content=b"busy", headers={"Retry-After": "7"})
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(response, T0)
    assert info.value.retry_after == 7.0


def test_retry_after_http_date_on_429() -> None:
    when = datetime.datetime.fromtimestamp(T0 + 120, tz=datetime.timezone.utc)
    header = email.utils.format_datetime(when, usegmt=True)
    response = _response(429, content=b"slow down", headers={"Retry-After": header})
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(response, T0)
    assert info.value.retry_after == pytest.approx(120.0)


def test_no_retry_after() -> None:
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(_response(503, content=b"busy"), T0)
    assert info.value.retry_after is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("0", 0.0),
        ("30", 30.0),
        (" 5 ", 5.0),
        ("-3", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
        ("Wed, 15 Jan 2027 08:00:00", None),  # no zone: ambiguous, ignored
    ],
)
def test_retry_after_seconds_values(header: str, expected: float | None) -> None:
    response = httpx.Response(503, headers={"Retry-After": header})
    assert retry_after_seconds(response, T0) == expected


def test_retry_after_absent() -> None:
    assert retry_after_seconds(httpx.Response(503), T0) is None


def test_retry_after_date_in_the_past_is_zero() -> None:
    when = datetime.datetime.fromtimestamp(T0 - 600, tz=datetime.timezone.utc)
    response = httpx.Response(
        503, headers={"Retry-After": email.utils.format_datetime(when, usegmt=True)}
    )
    assert retry_after_seconds(response, T0) == 0.0


def test_retry_after_date_relative_to_now_argument() -> None:
    when = datetime.datetime.fromtimestamp(T0 + 45, tz=datetime.timezone.utc)
    response = httpx.Response(
        503, headers={"Retry-After": email.utils.format_datetime(when, usegmt=True)}
    )
    assert retry_after_seconds(response, T0) == pytest.approx(45.0)
    assert retry_after_seconds(response, T0 + 15) == pytest.approx(30.0)


@pytest.mark.parametrize("value", [b"\xb2", b"\xb9\xb3"])
def test_retry_after_unicode_digits_are_ignored_not_crashing(value: bytes) -> None:
    # Latin-1 superscript digits decode to str.isdigit() == True but are not float()-able.
    response = httpx.Response(503, headers=[(b"Retry-After", value)])
    assert retry_after_seconds(response, T0) is None
    with pytest.raises(TokenEndpointError):
        parse_token_response(response, T0)


def test_refresh_in_kept_in_extra() -> None:
    token = parse_token_response(_response(body=_ok(refresh_in=1800, ext_expires_in=7200)), T0)
    assert token.extra["refresh_in"] == 1800
    assert token.extra["ext_expires_in"] == 7200
    assert "expires_in" not in token.extra
    assert "access_token" not in token.extra


# --------------------------------------------------------------------------- robustness


def test_deeply_nested_json_is_token_endpoint_error() -> None:
    content = b"[" * 100_000
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(_response(200, content=content), T0)
    assert info.value.status_code == 200


def test_huge_integer_expires_in_is_token_endpoint_error() -> None:
    content = b'{"access_token": "at", "token_type": "Bearer", "expires_in": 1' + b"0" * 400 + b"}"
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(_response(200, content=content), T0)
    assert info.value.status_code == 200


def test_non_utf8_body() -> None:
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(_response(200, content=b"\xff\xfe\x00garbage\x80"), T0)
    assert info.value.status_code == 200


# --------------------------------------------------------------------------- secrets


def _assert_no_secret(text: str) -> None:
    for part in SECRET_PARTS:
        assert part not in text


def test_secret_scrubbed_from_error_description() -> None:
    body = {"error": "invalid_client", "error_description": f"bad assertion {SECRET} rejected"}
    with pytest.raises(OAuthError) as info:
        parse_token_response(_response(400, body=body), T0, secrets=(SECRET,))
    _assert_no_secret(str(info.value))
    _assert_no_secret(info.value.error_description or "")
    assert "bad assertion" in str(info.value)


def test_secret_segments_scrubbed_from_error_description() -> None:
    _header, payload, signature = SECRET.split(".")
    body = {
        "error": "invalid_client",
        "error_description": f"sig {signature} did not verify; payload was {payload}",
    }
    with pytest.raises(OAuthError) as info:
        parse_token_response(_response(400, body=body), T0, secrets=(SECRET,))
    _assert_no_secret(str(info.value))


def test_secret_scrubbed_from_non_json_excerpt() -> None:
    content = f"<html>rejected {SECRET}</html>".encode()
    response = _response(400, content=content, headers={"Content-Type": "text/html"})
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(response, T0, secrets=(SECRET,))
    _assert_no_secret(str(info.value))
    assert "rejected" in str(info.value)


def test_secret_segment_scrubbed_from_5xx_excerpt() -> None:
    signature = SECRET.split(".")[2]
    response = _response(502, content=f"proxy error for {signature}".encode())
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(response, T0, secrets=(SECRET,))
    _assert_no_secret(str(info.value))


def test_secret_straddling_the_excerpt_cut_does_not_leak_a_piece() -> None:
    # The excerpt is cut at a fixed length; a secret that starts just before the cut must not
    # leave a long prefix of one of its segments in the message.
    signature = SECRET.split(".")[2]
    content = ("x" * 100 + " " + signature).encode()
    response = _response(400, content=content, headers={"Content-Type": "text/plain"})
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(response, T0, secrets=(SECRET,))
    message = str(info.value)
    assert signature[:12] not in message


def test_secret_echoed_as_error_code_is_not_in_message() -> None:
    with pytest.raises(OAuthError) as info:
        parse_token_response(_response(400, body={"error": SECRET}), T0, secrets=(SECRET,))
    _assert_no_secret(str(info.value))


def test_secret_echoed_as_error_code_on_5xx_is_not_in_message() -> None:
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(_response(503, body={"error": SECRET}), T0, secrets=(SECRET,))
    _assert_no_secret(str(info.value))


# --------------------------------------------------------------------------- properties

_STATUSES = st.one_of(st.sampled_from([200, 302, 400, 401, 429, 500, 503]), st.integers(100, 599))


@settings(max_examples=300, deadline=None)
@given(status=_STATUSES, content=st.binary(max_size=600))
def test_parse_raises_only_documented_errors_for_arbitrary_bytes(
    status: int, content: bytes
) -> None:
    response = httpx.Response(status, content=content)
    error: OAuthError | TokenEndpointError | None = None
    try:
        token = parse_token_response(response, T0)
    except (OAuthError, TokenEndpointError) as exc:
        error = exc
    if error is None:
        assert status == 200
        assert isinstance(token.access_token, str)
        assert token.access_token
    else:
        assert error.status_code == status


_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_FIELDS = (
    "access_token",
    "token_type",
    "expires_in",
    "scope",
    "error",
    "error_description",
    "error_uri",
    "refresh_in",
)


@settings(max_examples=300, deadline=None)
@given(
    status=_STATUSES,
    body=st.dictionaries(st.sampled_from(_FIELDS), _JSON, max_size=6),
)
def test_parse_raises_only_documented_errors_for_json_objects(
    status: int, body: dict[str, Any]
) -> None:
    response = httpx.Response(status, json=body)
    error: OAuthError | TokenEndpointError | None = None
    try:
        parse_token_response(response, T0)
    except (OAuthError, TokenEndpointError) as exc:
        error = exc
    if error is not None:
        assert error.status_code == status


@settings(max_examples=300, deadline=None)
@given(
    status=_STATUSES,
    before=st.text(max_size=60),
    after=st.text(max_size=60),
    piece=st.sampled_from(SECRET_PARTS),
    carrier=st.sampled_from(["text", "error", "error_description", "error_uri", "other"]),
    base_ok=st.booleans(),
)
def test_secret_in_body_never_leaks(
    status: int, before: str, after: str, piece: str, carrier: str, base_ok: bool
) -> None:
    echoed = before + piece + after
    if carrier == "text":
        response = httpx.Response(status, content=echoed.encode("utf-8", "replace"))
    else:
        body: dict[str, Any] = _ok() if base_ok else {"error": "invalid_request"}
        body[carrier if carrier != "other" else "detail"] = echoed
        response = httpx.Response(status, json=body)
    error: OAuthError | TokenEndpointError | None = None
    try:
        parse_token_response(response, T0, secrets=(SECRET,))
    except (OAuthError, TokenEndpointError) as exc:
        error = exc
    if error is None:
        return
    texts = [str(error)]
    if isinstance(error, OAuthError):
        texts.append(error.error_description or "")
    for text in texts:
        for part in SECRET_PARTS:
            assert part not in text
