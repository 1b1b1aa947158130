"""client-go config/config_test.go TestValidateGRPCKeepAliveTimeout on our Config."""

from __future__ import annotations

import pytest
from tikv_pd.config import Config


def test_grpc_keepalive_timeout_floor_is_50ms() -> None:
    assert Config().grpc_keepalive_timeout == 3.0
    # config/client.go Valid(): at least 0.05 s; 0.05 itself is accepted.
    assert Config(grpc_keepalive_timeout=0.05).grpc_keepalive_timeout == 0.05
    with pytest.raises(ValueError, match=r"grpc_keepalive_timeout must be >= 0\.05, got 0\.04"):
        Config(grpc_keepalive_timeout=0.04)
