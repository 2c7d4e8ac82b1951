from __future__ import annotations

import sat_oauth_client
from sat_oauth_client.testing import FakeKubelet, LocalAuthorizationServer


def test_public_namespace_matches_all() -> None:
    # a subpackage; the __future__ feature; "@" names come from pytest rewriting our plugin package
    ignored = {"testing", "annotations"}
    public = {n for n in dir(sat_oauth_client) if n[0] not in "_@"} - ignored
    assert public == set(sat_oauth_client.__all__)
    assert sat_oauth_client.__all__ == sorted(sat_oauth_client.__all__)


def test_fetch_token_end_to_end(
    fake_kubelet: FakeKubelet, local_as: LocalAuthorizationServer
) -> None:
    token = sat_oauth_client.fetch_token(
        token_endpoint=local_as.token_endpoint, token_file=fake_kubelet.token_path
    )
    assert token.access_token in local_as.issued
    assert token.access_token not in repr(token)
    assert local_as.requests[-1].assertion == fake_kubelet.current_token


def test_pytest_plugin_entry_point_is_registered() -> None:
    from importlib.metadata import entry_points

    plugins = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert plugins.get("sat_oauth_client") == "sat_oauth_client.testing._plugin"
