"""The examples in examples/ run, end to end, against the package's own testing helpers.

Each Python example is loaded from its file (examples/ is not a package) and its `main()` run
with `SAT_OAUTH_*` / `API_URL` set as a pod would set them; a few also run as real scripts in a
subprocess. The Kubernetes manifests are checked for the properties the SDK depends on.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sat_oauth_client.testing import FakeKubelet, LocalAuthorizationServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def load_example(name: str) -> ModuleType:
    """Import examples/<name>.py under a private module name (not added to sys.modules)."""
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def pod_env(
    monkeypatch: pytest.MonkeyPatch, fake_kubelet: FakeKubelet, local_as: LocalAuthorizationServer
) -> dict[str, str]:
    """The environment a pod from examples/kubernetes/deployment.yaml would have, pointed at the
    local AS and the fake kubelet's token. Anything SAT_OAUTH_* from the outside is removed."""
    for name in list(os.environ):
        if name.startswith("SAT_OAUTH_"):
            monkeypatch.delenv(name)
    env = {
        "SAT_OAUTH_TOKEN_ENDPOINT": local_as.token_endpoint,
        "SAT_OAUTH_TOKEN_FILE": fake_kubelet.token_path,
        "SAT_OAUTH_SCOPE": "orders.read",
        "API_URL": local_as.resource_url,
        "CALLS": "3",
        "CALL_INTERVAL": "0",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def assert_resource_calls_authorized(local_as: LocalAuthorizationServer, count: int) -> None:
    """`count` resource calls, each with a Bearer token this AS issued and that is still valid:
    exactly the calls the local resource answers with 200."""
    assert len(local_as.resource_requests) == count
    for request in local_as.resource_requests:
        header = request.headers.get("Authorization", "")
        assert header.startswith("Bearer ")
        expires_at = local_as.issued.get(header.removeprefix("Bearer "))
        assert expires_at is not None
        assert expires_at > local_as.clock()


def assert_assertions_sent(local_as: LocalAuthorizationServer, kubelet: FakeKubelet) -> None:
    """Every token request was the draft's client_credentials + client assertion, no client_id."""
    assert local_as.requests
    for request in local_as.requests:
        assert request.field("grant_type") == "client_credentials"
        assert request.field("client_assertion") == kubelet.current_token
        assert request.field("client_id") is None
        assert request.field("scope") == "orders.read"


# -- microservice.py --------------------------------------------------------------------------


def test_microservice_calls_the_api(
    pod_env: dict[str, str],
    fake_kubelet: FakeKubelet,
    local_as: LocalAuthorizationServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert load_example("microservice").main() == 0
    assert_resource_calls_authorized(local_as, 3)
    assert len(local_as.requests) == 1  # one token, cached for all three calls
    assert_assertions_sent(local_as, fake_kubelet)
    out, err = capsys.readouterr()
    assert fake_kubelet.current_token not in out + err


def test_microservice_gets_a_new_token_after_a_401(
    pod_env: dict[str, str], fake_kubelet: FakeKubelet, local_as: LocalAuthorizationServer
) -> None:
    local_as.resource_unauthorized = 1  # the API refuses the first token once
    assert load_example("microservice").main() == 0
    assert len(local_as.requests) == 2  # BearerAuth invalidated it and fetched another
    assert len(local_as.resource_requests) == 4  # 401, its one retry, then two more calls


def test_microservice_without_api_url_is_a_usage_error(
    pod_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, local_as: LocalAuthorizationServer
) -> None:
    monkeypatch.delenv("API_URL")
    assert load_example("microservice").main() == 2
    assert local_as.requests == []


def test_microservice_reports_a_refusal_without_the_token(
    pod_env: dict[str, str],
    fake_kubelet: FakeKubelet,
    local_as: LocalAuthorizationServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    local_as.register("system:serviceaccount:other:someone-else")  # ours is not registered
    assert load_example("microservice").main() == 4
    assert local_as.resource_requests == []
    _, err = capsys.readouterr()
    assert "invalid_client" in err
    assert fake_kubelet.current_token not in err


def test_microservice_overrides_win_over_the_environment(
    pod_env: dict[str, str], fake_kubelet: FakeKubelet, local_as: LocalAuthorizationServer
) -> None:
    assert load_example("microservice").main(client_id="orders-client") == 0
    assert {r.field("client_id") for r in local_as.requests} == {"orders-client"}


# -- async_service.py -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_async_service_calls_the_api(
    backend: str,
    pod_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    fake_kubelet: FakeKubelet,
    local_as: LocalAuthorizationServer,
) -> None:
    if backend == "trio":
        pytest.importorskip("trio")
    monkeypatch.setenv("ASYNC_BACKEND", backend)
    monkeypatch.setenv("CALLS", "2")
    monkeypatch.setenv("CONCURRENCY", "3")
    assert load_example("async_service").main() == 0
    assert_resource_calls_authorized(local_as, 6)
    assert len(local_as.requests) == 1  # three concurrent first calls shared one token request
    assert_assertions_sent(local_as, fake_kubelet)


def test_async_service_reports_a_missing_token_file(
    pod_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SAT_OAUTH_TOKEN_FILE", str(tmp_path / "nowhere" / "token"))
    assert load_example("async_service").main() == 3


# -- one_shot.py ------------------------------------------------------------------------------


def test_one_shot_prints_the_token_redacted_and_calls_once(
    pod_env: dict[str, str],
    fake_kubelet: FakeKubelet,
    local_as: LocalAuthorizationServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert load_example("one_shot").main() == 0
    assert_resource_calls_authorized(local_as, 1)
    assert len(local_as.requests) == 1
    assert_assertions_sent(local_as, fake_kubelet)
    out, _ = capsys.readouterr()
    assert "AccessToken(access_token=<redacted>" in out
    assert "HTTP 200" in out
    (token,) = local_as.issued
    assert token not in out
    assert fake_kubelet.current_token not in out


def test_one_shot_without_api_url_only_fetches(
    pod_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, local_as: LocalAuthorizationServer
) -> None:
    monkeypatch.delenv("API_URL")
    assert load_example("one_shot").main() == 0
    assert len(local_as.requests) == 1
    assert local_as.resource_requests == []


def test_one_shot_jwt_bearer_grant_from_the_environment(
    pod_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, local_as: LocalAuthorizationServer
) -> None:
    monkeypatch.setenv("SAT_OAUTH_GRANT", "jwt_bearer")
    assert load_example("one_shot").main() == 0
    (request,) = local_as.requests
    assert request.field("grant_type") == "urn:ietf:params:oauth:grant-type:jwt-bearer"


def test_one_shot_with_issuer_discovery(
    pod_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, local_as: LocalAuthorizationServer
) -> None:
    monkeypatch.delenv("SAT_OAUTH_TOKEN_ENDPOINT")
    monkeypatch.setenv("SAT_OAUTH_ISSUER", local_as.issuer)  # as in deployment.yaml
    assert load_example("one_shot").main() == 0
    assert len(local_as.requests) == 1


def test_one_shot_configuration_error(
    pod_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, local_as: LocalAuthorizationServer
) -> None:
    monkeypatch.setenv("SAT_OAUTH_ISSUER", local_as.issuer)  # both issuer and token_endpoint
    assert load_example("one_shot").main() == 2
    assert local_as.requests == []


# -- as scripts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "resource_calls"),
    [("one_shot.py", 1), ("microservice.py", 2), ("async_service.py", 2)],
)
def test_examples_run_as_scripts(
    script: str,
    resource_calls: int,
    pod_env: dict[str, str],
    fake_kubelet: FakeKubelet,
    local_as: LocalAuthorizationServer,
) -> None:
    env = {**os.environ, "CALLS": "2", "CONCURRENCY": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert_resource_calls_authorized(local_as, resource_calls)
    assert fake_kubelet.current_token not in result.stdout + result.stderr
    for token in local_as.issued:
        assert token not in result.stdout + result.stderr


# -- Kubernetes manifests ---------------------------------------------------------------------


def _load_manifests() -> dict[str, dict[str, Any]]:
    yaml = pytest.importorskip("yaml")
    documents: dict[str, dict[str, Any]] = {}
    for path in sorted((EXAMPLES / "kubernetes").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                documents[document["kind"]] = document
    return documents


def test_manifests_project_a_rotating_token_for_the_as() -> None:
    manifests = _load_manifests()
    service_account, deployment = manifests["ServiceAccount"], manifests["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == service_account["metadata"]["name"] != "default"
    assert deployment["metadata"]["namespace"] == service_account["metadata"]["namespace"]

    projected: dict[str, dict[str, Any]] = {}
    for volume in pod["volumes"]:
        for source in volume.get("projected", {}).get("sources", []):
            if "serviceAccountToken" in source:
                projected[volume["name"]] = source["serviceAccountToken"]
    assert len(projected) == 1
    ((volume_name, sat),) = projected.items()
    assert isinstance(sat["audience"], str)
    assert sat["audience"].startswith("https://")
    assert 600 <= sat["expirationSeconds"] <= 3600  # Keycloak refuses tokens older than 1 h
    assert sat["path"]

    (container,) = pod["containers"]
    mounts = [m for m in container["volumeMounts"] if m["name"] == volume_name]
    assert len(mounts) == 1
    assert "subPath" not in mounts[0]  # a subPath mount never sees a rotated token
    assert "subPathExpr" not in mounts[0]

    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SAT_OAUTH_TOKEN_FILE"] == f"{mounts[0]['mountPath'].rstrip('/')}/{sat['path']}"
    assert "SAT_OAUTH_ISSUER" in env or "SAT_OAUTH_TOKEN_ENDPOINT" in env
    if "SAT_OAUTH_ISSUER" in env:
        assert env["SAT_OAUTH_ISSUER"] == sat["audience"]  # aud must be the AS issuer
    assert env.get("SAT_OAUTH_SCOPE")
    assert "API_URL" in env
