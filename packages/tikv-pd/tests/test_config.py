from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from tikv_pd.config import (
    LOCK_ALWAYS_WAIT,
    LOCK_NO_WAIT,
    Config,
    SecurityConfig,
    TransactionOptions,
)


def test_config_defaults_match_client_go() -> None:
    c = Config()
    assert c.pd_timeout == 3.0
    assert c.grpc_keepalive_time == 10.0
    assert c.grpc_keepalive_timeout == 3.0
    assert c.grpc_connection_count == 4
    assert c.max_batch_size == 128
    assert c.max_batch_wait_time == 0.0
    assert c.batch_wait_size == 8
    assert c.overload_threshold == 200
    assert c.region_cache_ttl == 600.0
    assert c.region_cache_ttl_jitter == 60.0
    assert c.store_liveness_timeout == 1.0
    assert c.committer_concurrency == 128
    assert c.txn_entry_size_limit == 6 * 1024 * 1024
    assert c.txn_total_size_limit == 100 * 1024 * 1024
    assert c.txn_scan_batch == 256
    assert c.batch_get_size == 5120
    assert c.raw_batch_put_size == 16 * 1024
    assert c.raw_batch_pair_count == 512
    assert c.raw_scan_max_limit == 10240
    assert c.resolve_lock_lite_threshold == 512
    assert c.async_commit_keys_limit == 256
    assert c.async_commit_total_key_size_limit == 4096
    assert c.async_commit_safe_window == 2.0
    assert c.async_commit_allowed_clock_drift == 0.5
    assert c.enable_batch_commands is True
    assert c.enable_async_commit is False
    assert c.enable_1pc is False
    assert c.max_txn_ttl_ms == 3_600_000
    assert c.managed_lock_ttl_ms == 20_000
    assert c.txn_commit_batch_size == 16 * 1024
    assert c.txn_pre_split_detect_threshold == 100_000
    assert c.txn_pre_split_size_threshold == 32 * 1024 * 1024
    assert c.low_resolution_ts_update_interval == 2.0
    assert c.commit_timeout == 41.0
    assert not c.security.enabled


def test_config_is_frozen_and_keyword_only() -> None:
    c = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.pd_timeout = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        Config(3.0)  # type: ignore[call-arg]
    d = dataclasses.replace(c, max_batch_size=64)
    assert d.max_batch_size == 64
    assert c.max_batch_size == 128


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"pd_timeout": 0}, ValueError, "pd_timeout"),
        ({"max_batch_size": 0}, ValueError, "max_batch_size"),
        ({"max_batch_size": 1.5}, TypeError, "max_batch_size"),
        ({"max_batch_size": True}, TypeError, "max_batch_size"),
        ({"grpc_keepalive_timeout": 0.01}, ValueError, "grpc_keepalive_timeout"),
        ({"region_cache_ttl": float("nan")}, ValueError, "region_cache_ttl"),
        ({"region_cache_ttl_jitter": -1}, ValueError, "region_cache_ttl_jitter"),
        ({"grpc_compression": "zstd"}, ValueError, "grpc_compression"),
        ({"batch_policy": "greedy"}, ValueError, "batch_policy"),
        ({"tso_max_batch_wait": 0.02}, ValueError, "tso_max_batch_wait"),
        ({"txn_entry_size_limit": 200 * 1024 * 1024}, ValueError, "txn_entry_size_limit"),
        ({"txn_local_latches_enabled": True}, ValueError, "txn_local_latches_capacity"),
        ({"enable_batch_commands": 1}, TypeError, "enable_batch_commands"),
        ({"security": "tls"}, TypeError, "security"),
        ({"raw_scan_max_limit": "10"}, TypeError, "raw_scan_max_limit"),
    ],
)
def test_config_validation(kwargs: dict[str, Any], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        Config(**kwargs)


def test_config_accepts_ints_for_durations() -> None:
    c = Config(pd_timeout=5, region_cache_ttl_jitter=0)
    assert c.pd_timeout == 5
    assert c.region_cache_ttl_jitter == 0


def test_security_validation() -> None:
    assert not SecurityConfig().enabled
    with pytest.raises(ValueError, match="together"):
        SecurityConfig(ca_path="ca.pem", cert_path="c.pem")
    with pytest.raises(ValueError, match="requires ca_path"):
        SecurityConfig(cert_path="c.pem", key_path="k.pem")
    with pytest.raises(ValueError, match="empty"):
        SecurityConfig(ca_path="")
    with pytest.raises(ValueError, match="cluster_verify_cn requires"):
        SecurityConfig(cluster_verify_cn=("tikv",))
    with pytest.raises(TypeError, match="cluster_verify_cn"):
        SecurityConfig(ca_path="ca.pem", cluster_verify_cn="tikv")  # type: ignore[arg-type]
    s = SecurityConfig(ca_path="ca.pem", cluster_verify_cn=["a", "b"])  # type: ignore[arg-type]
    assert s.cluster_verify_cn == ("a", "b")
    assert s.enabled


def test_security_read_files(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(b"CA")
    (tmp_path / "c.pem").write_bytes(b"CERT")
    (tmp_path / "k.pem").write_bytes(b"KEY")
    s = SecurityConfig(
        ca_path=str(tmp_path / "ca.pem"),
        cert_path=str(tmp_path / "c.pem"),
        key_path=tmp_path / "k.pem",  # type: ignore[arg-type]  # PathLike accepted
    )
    assert s.key_path == str(tmp_path / "k.pem")
    assert s.read_files() == (b"CA", b"CERT", b"KEY")
    assert SecurityConfig(ca_path=str(tmp_path / "ca.pem")).read_files() == (b"CA", None, None)
    missing = SecurityConfig(ca_path=str(tmp_path / "nope.pem"))
    with pytest.raises(ValueError, match=r"could not read ca certificate .*nope\.pem"):
        missing.read_files()
    with pytest.raises(ValueError, match="not configured"):
        SecurityConfig().read_files()


def test_transaction_options_constructors() -> None:
    opt = TransactionOptions.optimistic()
    assert opt.mode == "optimistic"
    assert not opt.is_pessimistic
    pes = TransactionOptions.pessimistic(lock_wait_timeout_ms=LOCK_NO_WAIT, isolation="RC")
    assert pes.is_pessimistic
    assert pes.lock_wait_timeout_ms == -1
    assert pes.isolation_level_value == 1
    with pytest.raises(ValueError, match="mode"):
        TransactionOptions.optimistic(mode="pessimistic")
    with pytest.raises(TypeError):
        TransactionOptions.optimistic(bogus=1)


def test_transaction_options_defaults() -> None:
    o = TransactionOptions()
    assert o.mode == "optimistic"
    assert o.try_one_pc is False
    assert o.async_commit is False
    assert o.isolation == "SI"
    assert o.lock_wait_timeout_ms == LOCK_ALWAYS_WAIT
    assert o.priority_value == 0
    assert o.assertion_level_value == 0
    assert o.disk_full_opt_value == 0
    assert o.pipelined_flush_concurrency == 128
    assert o.pipelined_resolve_lock_concurrency == 8
    assert o.replica_read == "leader"
    assert o.txn_scope == "global"
    # client-go txnkv/transaction/txn.go: no commit-wait constraint, 1 s wait.
    assert o.commit_wait_until_tso == 0
    assert o.commit_wait_until_tso_timeout == 1.0


def test_transaction_options_wire_values() -> None:
    o = TransactionOptions(
        priority="high",
        assertion_level="Strict",
        disk_full_opt="AllowedOnAlreadyFull",
        isolation="RCCheckTS",
    )
    assert (o.priority_value, o.assertion_level_value, o.disk_full_opt_value) == (2, 2, 2)
    assert o.isolation_level_value == 2


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"mode": "eager"}, ValueError, "mode"),
        ({"isolation": "SERIALIZABLE"}, ValueError, "isolation"),
        ({"priority": "urgent"}, ValueError, "priority"),
        ({"assertion_level": "off"}, ValueError, "assertion_level"),
        ({"disk_full_opt": "yes"}, ValueError, "disk_full_opt"),
        ({"replica_read": "any"}, ValueError, "replica_read"),
        ({"lock_wait_timeout_ms": -2}, ValueError, "lock_wait_timeout_ms"),
        ({"lock_wait_timeout_ms": 2**63}, ValueError, "lock_wait_timeout_ms"),
        ({"pipelined_write_throttle_ratio": 1.0}, ValueError, "throttle"),
        ({"pipelined_flush_concurrency": 0}, ValueError, "pipelined_flush_concurrency"),
        ({"pipelined": True, "async_commit": True}, ValueError, "pipelined"),
        ({"pipelined": True, "try_one_pc": True}, ValueError, "pipelined"),
        ({"start_ts": 0}, ValueError, "start_ts"),
        ({"scan_batch_size": 0}, ValueError, "scan_batch_size"),
        ({"entry_size_limit": 10, "total_size_limit": 5}, ValueError, "entry_size_limit"),
        ({"async_commit": "yes"}, TypeError, "async_commit"),
        ({"resource_group_tag": "tag"}, TypeError, "resource_group_tag"),
        ({"txn_scope": ""}, ValueError, "txn_scope"),
        ({"txn_source": -1}, ValueError, "txn_source"),
        ({"commit_wait_until_tso": -1}, ValueError, "commit_wait_until_tso"),
        ({"commit_wait_until_tso": 2**64}, ValueError, "commit_wait_until_tso"),
        ({"commit_wait_until_tso": 1.5}, TypeError, "commit_wait_until_tso"),
        ({"commit_wait_until_tso_timeout": -0.1}, ValueError, "commit_wait_until_tso_timeout"),
        ({"commit_wait_until_tso_timeout": float("inf")}, ValueError, "until_tso_timeout"),
        ({"commit_wait_until_tso_timeout": "1s"}, TypeError, "commit_wait_until_tso_timeout"),
    ],
)
def test_transaction_options_validation(
    kwargs: dict[str, Any], exc: type[Exception], match: str
) -> None:
    with pytest.raises(exc, match=match):
        TransactionOptions(**kwargs)
