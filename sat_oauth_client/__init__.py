"""sat_oauth_client: OAuth 2.0 access tokens for workloads, with the platform's rotating service
account token as the only credential (RFC 7523 client assertion, as the IETF WIMSE draft
"Workload Identity Practices" describes). No client secret, ever.
"""

from __future__ import annotations

import logging as _logging

from ._api import afetch_token, fetch_token
from ._auth import BearerAuth
from ._config import env_config as config_from_env
from ._exceptions import (
    ConfigurationError,
    DiscoveryError,
    OAuthError,
    SatOAuthError,
    TokenEndpointError,
    TokenFileError,
)
from ._manager import AsyncTokenManager, TokenManager
from ._models import AccessToken
from ._source import FileTokenSource

__all__ = [
    "AccessToken",
    "AsyncTokenManager",
    "BearerAuth",
    "ConfigurationError",
    "DiscoveryError",
    "FileTokenSource",
    "OAuthError",
    "SatOAuthError",
    "TokenEndpointError",
    "TokenFileError",
    "TokenManager",
    "afetch_token",
    "config_from_env",
    "fetch_token",
]

__version__ = "0.1.0"

# A library adds no output of its own: applications choose where warnings go.
_logging.getLogger("sat_oauth_client").addHandler(_logging.NullHandler())

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("sat_oauth_client._"):
        _obj.__module__ = "sat_oauth_client"
del _name, _obj
