"""Client configuration: frozen keyword-only dataclasses with client-go's defaults.

:class:`Config` holds the client-wide knobs (PD, gRPC, batching, region cache, sizes of
batched requests, transaction limits); :class:`SecurityConfig` the TLS files;
:class:`TransactionOptions` the per-transaction choices (optimistic or pessimistic,
async commit, 1PC, isolation, priority, ...). Every default names the client-go file it
comes from. Durations are in seconds (``float``) unless the name ends in ``_ms``; sizes are
in bytes.

All classes validate in ``__post_init__`` and raise :class:`ValueError` (bad value) or
:class:`TypeError` (bad type) naming the field. Use :func:`dataclasses.replace` to derive
a changed copy.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

__all__ = [
    "ASSERTION_LEVELS",
    "COMMAND_PRIORITIES",
    "DISK_FULL_OPTS",
    "ISOLATION_LEVELS",
    "LOCK_ALWAYS_WAIT",
    "LOCK_NO_WAIT",
    "REPLICA_READ_TYPES",
    "AssertionLevel",
    "BatchPolicy",
    "CommandPriority",
    "Config",
    "DiskFullOpt",
    "IsolationLevel",
    "ReplicaReadType",
    "SecurityConfig",
    "TransactionOptions",
    "TxnMode",
    "check_commit_wait_until_tso",
    "check_commit_wait_until_tso_timeout",
]

KiB = 1024
MiB = 1024 * 1024

# --- Enumerations shared with the wire protocol -------------------------------------
# Names are the kvproto enum value names; the dicts give the wire numbers, so the request
# layer can fill kvrpcpb.Context without importing this module's users' strings blindly.

#: Transaction isolation (kvrpcpb.IsolationLevel): snapshot isolation, read committed,
#: read committed with a ts check.
IsolationLevel = Literal["SI", "RC", "RCCheckTS"]
ISOLATION_LEVELS: dict[str, int] = {"SI": 0, "RC": 1, "RCCheckTS": 2}

#: Request priority (kvrpcpb.CommandPri).
CommandPriority = Literal["normal", "low", "high"]
COMMAND_PRIORITIES: dict[str, int] = {"normal": 0, "low": 1, "high": 2}

#: Mutation existence assertion checking (kvrpcpb.AssertionLevel).
AssertionLevel = Literal["Off", "Fast", "Strict"]
ASSERTION_LEVELS: dict[str, int] = {"Off": 0, "Fast": 1, "Strict": 2}

#: Whether writes are allowed when a store's disk is (almost) full (kvrpcpb.DiskFullOpt).
DiskFullOpt = Literal["NotAllowedOnFull", "AllowedOnAlmostFull", "AllowedOnAlreadyFull"]
DISK_FULL_OPTS: dict[str, int] = {
    "NotAllowedOnFull": 0,
    "AllowedOnAlmostFull": 1,
    "AllowedOnAlreadyFull": 2,
}

#: Which replica serves reads (client-go ``kv/store_vars.go`` ReplicaReadType, in order).
ReplicaReadType = Literal["leader", "follower", "mixed", "learner", "prefer-leader"]
REPLICA_READ_TYPES: tuple[str, ...] = get_args(ReplicaReadType)

#: Transaction locking mode.
TxnMode = Literal["optimistic", "pessimistic"]

#: BatchCommands batching policy (client-go ``config/client.go``).
BatchPolicy = Literal["basic", "standard", "positive", "custom"]

#: Lock-wait timeout meaning "wait until the lock is released" (client-go ``kv/kv.go``
#: LockAlwaysWait = MaxInt64).
LOCK_ALWAYS_WAIT = 2**63 - 1
#: Lock-wait timeout meaning "fail at once when locked" (client-go LockNoWait = -1).
LOCK_NO_WAIT = -1


def _check_choice(owner: str, name: str, value: object, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{owner}.{name} must be a str, got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"{owner}.{name} must be one of {list(choices)}, got {value!r}")


def _check_number(owner: str, name: str, value: object, *, minimum: float, integer: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{owner}.{name} must be a number, got {type(value).__name__}")
    if integer and not isinstance(value, int):
        raise TypeError(f"{owner}.{name} must be an int, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{owner}.{name} must be finite, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}.{name} must be >= {minimum}, got {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class SecurityConfig:
    """TLS settings for PD and TiKV connections (client-go ``config/security.go``).

    TLS is on when ``ca_path`` is set. A client certificate needs both ``cert_path`` and
    ``key_path``; ``cluster_verify_cn`` lists the certificate common names the peer may
    present (checked by the transport).

    Attributes:
        ca_path: PEM file of the certificate authority, or ``None`` for plaintext.
        cert_path: PEM file of the client certificate.
        key_path: PEM file of the client private key.
        cluster_verify_cn: Accepted peer common names (empty = any).

    """

    ca_path: str | None = None
    cert_path: str | None = None
    key_path: str | None = None
    cluster_verify_cn: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("ca_path", "cert_path", "key_path"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, str | os.PathLike):
                raise TypeError(f"SecurityConfig.{name} must be a path, got {value!r}")
            if not os.fspath(value):
                raise ValueError(f"SecurityConfig.{name} must not be empty (use None)")
            object.__setattr__(self, name, os.fspath(value))
        if (self.cert_path is None) != (self.key_path is None):
            raise ValueError("SecurityConfig: cert_path and key_path must be set together")
        if self.cert_path is not None and self.ca_path is None:
            raise ValueError("SecurityConfig: a client certificate requires ca_path")
        cns: object = self.cluster_verify_cn
        if isinstance(cns, str) or not isinstance(cns, tuple | list):
            raise TypeError("SecurityConfig.cluster_verify_cn must be a tuple of str")
        if not all(isinstance(cn, str) and cn for cn in cns):
            raise ValueError("SecurityConfig.cluster_verify_cn entries must be non-empty str")
        object.__setattr__(self, "cluster_verify_cn", tuple(cns))
        if self.cluster_verify_cn and self.ca_path is None:
            raise ValueError("SecurityConfig: cluster_verify_cn requires TLS (ca_path)")

    @property
    def enabled(self) -> bool:
        """Whether TLS is configured."""
        return self.ca_path is not None

    def read_files(self) -> tuple[bytes, bytes | None, bytes | None]:
        """Read the PEM files, for building gRPC channel credentials.

        Returns:
            ``(ca, cert, key)``; ``cert`` and ``key`` are ``None`` without a client
            certificate.

        Raises:
            ValueError: TLS is not configured, or a file cannot be read (the message
                names the file and the reason).

        """
        if self.ca_path is None:
            raise ValueError("SecurityConfig: TLS is not configured (ca_path is None)")

        def read(name: str, path: str) -> bytes:
            try:
                with open(path, "rb") as fh:
                    return fh.read()
            except OSError as exc:
                raise ValueError(f"could not read {name} {path!r}: {exc.strerror}") from exc

        ca = read("ca certificate", self.ca_path)
        if self.cert_path is None or self.key_path is None:
            return ca, None, None
        return ca, read("client certificate", self.cert_path), read("client key", self.key_path)


# Minimum value of each numeric Config field: sizes and counts positive, waits >= 0.
_CONFIG_MINIMUMS: dict[str, float] = {
    "pd_timeout": 1e-3,
    "pd_update_member_interval": 1e-3,
    "tso_max_batch_wait": 0.0,
    "tso_max_batch_size": 1,
    "low_resolution_ts_update_interval": 1e-3,
    "safe_ts_update_interval": 1e-3,
    "grpc_connection_count": 1,
    "grpc_keepalive_time": 1e-3,
    "grpc_keepalive_timeout": 0.05,
    "grpc_initial_window_size": 1,
    "grpc_initial_conn_window_size": 1,
    "dial_timeout": 1e-3,
    "read_timeout_short": 1e-3,
    "read_timeout_medium": 1e-3,
    "commit_timeout": 1e-3,
    "max_batch_size": 1,
    "overload_threshold": 0,
    "max_batch_wait_time": 0.0,
    "batch_wait_size": 0,
    "region_cache_ttl": 1e-3,
    "region_cache_ttl_jitter": 0.0,
    "store_liveness_timeout": 1e-3,
    "stores_refresh_interval": 1e-3,
    "store_limit": 0,
    "committer_concurrency": 1,
    "max_txn_ttl_ms": 1,
    "managed_lock_ttl_ms": 1,
    "txn_commit_batch_size": 1,
    "ttl_refreshed_txn_size": 0,
    "txn_pre_split_detect_threshold": 1,
    "txn_pre_split_size_threshold": 1,
    "txn_entry_size_limit": 1,
    "txn_total_size_limit": 1,
    "txn_scan_batch": 1,
    "batch_get_size": 1,
    "resolve_lock_lite_threshold": 0,
    "async_commit_keys_limit": 0,
    "async_commit_total_key_size_limit": 0,
    "async_commit_safe_window": 0.0,
    "async_commit_allowed_clock_drift": 0.0,
    "txn_local_latches_capacity": 0,
    "raw_batch_put_size": 1,
    "raw_batch_pair_count": 1,
    "raw_scan_max_limit": 1,
}


@dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    """Client-wide configuration with client-go's defaults.

    Attributes:
        pd_timeout: Max wait for one PD RPC, seconds (``config/config.go``
            DefaultPDClient PDServerTimeout = 3).
        pd_update_member_interval: How often PD members are re-discovered, seconds
            (tikv/pd ``client/servicediscovery/service_discovery.go``: 1 min).
        tso_max_batch_wait: Extra time a TSO batch may wait for more callers, seconds
            (tikv/pd ``client/opt/option.go``: 0, allowed 0–0.01).
        tso_max_batch_size: Max timestamps in one TSO request (tikv/pd
            ``client/clients/tso/client.go``: 10000).
        low_resolution_ts_update_interval: Refresh of the cached low-resolution
            timestamp, seconds (``tikv/kv.go`` defaultOracleUpdateInterval = 2 s).
        safe_ts_update_interval: Refresh of stores' safe-ts for stale reads, seconds
            (``tikv/kv.go`` safeTSUpdateInterval = 2 s).
        grpc_connection_count: Connections per TiKV store (``config/client.go``: 4).
        grpc_keepalive_time: Idle time before a keepalive ping, seconds
            (``config/client.go`` GrpcKeepAliveTime = 10).
        grpc_keepalive_timeout: Wait for the ping's answer, seconds
            (``config/client.go`` GrpcKeepAliveTimeout = 3; at least 0.05).
        grpc_compression: ``"none"`` or ``"gzip"`` (``config/client.go``).
        grpc_initial_window_size: Stream flow-control window (128 MiB,
            ``config/client.go`` DefGrpcInitialWindowSize).
        grpc_initial_conn_window_size: Connection window (128 MiB, same file).
        dial_timeout: Connection establishment timeout, seconds
            (``internal/client/client.go`` dialTimeout = 5 s).
        read_timeout_short: Timeout of requests that touch a few keys, seconds
            (``internal/client/client.go`` ReadTimeoutShort = 30 s).
        read_timeout_medium: Timeout of requests that may scan a region, seconds
            (``internal/client/client.go`` ReadTimeoutMedium = 60 s).
        commit_timeout: Max time a commit may take, seconds (``config/client.go``
            CommitTimeout = "41s").
        enable_batch_commands: Multiplex requests over the BatchCommands stream
            (client-go always does for TiKV).
        batch_policy: BatchCommands batching policy. Default ``"basic"``: no extra wait;
            the sender drains whatever is queued (up to ``max_batch_size``) into one
            message, which on asyncio already forms batches as large as the concurrency.
            client-go's default is ``"standard"`` (``config/client.go``, TiDB ≥ 8.3: wait up to
            100 µs when requests arrive under 80 µs apart), which helps Go, whose sends return
            at once and form batches of 1.1–1.2; here a timer per batch would only add cost.
        max_batch_size: Max requests per BatchCommands message (``config/client.go``:
            128).
        overload_threshold: Store load above which the batcher waits to fill batches
            (``config/client.go``: 200).
        max_batch_wait_time: Max extra wait to fill a batch, seconds (``config/client.go``
            MaxBatchWaitTime = 0).
        batch_wait_size: Batch size the batcher waits for when overloaded
            (``config/client.go``: 8).
        region_cache_ttl: Idle time after which a cached region is reloaded, seconds
            (``config/client.go`` RegionCacheTTL = 600).
        region_cache_ttl_jitter: Random extra TTL in [0, jitter), seconds
            (``internal/locate/region_cache.go`` regionCacheTTLJitterSec = 60).
        store_liveness_timeout: Timeout of the store liveness probe, seconds
            (``config/client.go`` DefStoreLivenessTimeout = "1s").
        stores_refresh_interval: Refresh of the store list from PD, seconds
            (``config/config.go`` DefStoresRefreshInterval = 60).
        enable_forwarding: Forward requests through a follower when the leader's store
            is unreachable (``config/config.go``: false).
        zone_label: The client's "zone" label, for locality decisions (``config/config.go``).
        validate_read_ts: Check every transactional read's timestamp against PD's
            before sending (raw reads carry none, so the raw client has nothing to check):
            a future ts raises :class:`tikv_pd.errors.FutureTSReadError`, a stale read at
            the latest ts :class:`tikv_pd.errors.LatestStaleReadError`
            (``oracle/oracles/pd.go`` EnableTSValidation: off).
        store_limit: Max requests in flight per store; one more fails at once with
            :class:`tikv_pd.errors.TokenLimitError` (``config/client.go`` StoreLimit = 0:
            no limit).
        committer_concurrency: Max concurrent 2PC batch requests (``config/config.go``:
            128).
        max_txn_ttl_ms: Lifetime after which the heartbeat stops extending a lock
            (``config/config.go`` MaxTxnTTL = 1 h).
        managed_lock_ttl_ms: TTL of pessimistic locks / max lock TTL, ms
            (``txnkv/transaction/2pc.go`` ManagedLockTTL = 20000).
        txn_commit_batch_size: Target bytes per prewrite/commit batch
            (``kv/store_vars.go`` DefTxnCommitBatchSize = 16 KiB).
        ttl_refreshed_txn_size: Txn size from which the lock TTL is kept alive by
            heartbeats (``config/client.go`` TTLRefreshedTxnSize = 32 MiB).
        txn_pre_split_detect_threshold: A transaction writing (or pessimistically
            locking) this many keys in one region splits that region first
            (``txnkv/transaction/2pc.go`` preSplitDetectThreshold = 100000).
        txn_pre_split_size_threshold: ... at every this many bytes of its keys and
            values (``txnkv/transaction/2pc.go`` preSplitSizeThreshold = 32 MiB).
        txn_entry_size_limit: Max bytes of one key + value in a transaction (TiDB's
            ``txn-entry-size-limit`` 6 MiB; client-go itself is unlimited).
        txn_total_size_limit: Max bytes of a transaction's buffer (TiDB's
            ``txn-total-size-limit`` 100 MiB).
        txn_scan_batch: Keys per transactional scan page (``txnkv/txnsnapshot/
            snapshot.go`` defaultScanBatchSize = 256).
        batch_get_size: Keys per snapshot BatchGet request (``txnkv/txnsnapshot/
            snapshot.go`` batchGetSize = 5120).
        raw_batch_put_size: Bytes per raw BatchPut request (``rawkv/rawkv.go``
            rawBatchPutSize = 16 KiB).
        raw_batch_pair_count: Keys per raw BatchGet / BatchDelete request
            (``rawkv/rawkv.go`` rawBatchPairCount = 512).
        raw_scan_max_limit: Largest ``limit`` of one raw scan (``rawkv/rawkv.go``
            MaxRawKVScanLimit = 10240).
        resolve_lock_lite_threshold: Txn size up to which a lock of a committed or
            rolled-back txn is resolved key by key (``config/client.go``: 512).
        enable_async_commit: Default of TransactionOptions.async_commit
            (``config/config.go``: false).
        enable_1pc: Default of TransactionOptions.try_one_pc (``config/config.go``:
            false).
        async_commit_keys_limit: Max keys of an async-commit txn (``config/client.go``:
            256).
        async_commit_total_key_size_limit: Max total key bytes of an async-commit txn
            (``config/client.go``: 4 KiB).
        async_commit_safe_window: Window added to max_commit_ts, seconds
            (``config/client.go`` SafeWindow = 2 s).
        async_commit_allowed_clock_drift: Extra drift allowance, seconds
            (``config/client.go`` AllowedClockDrift = 500 ms).
        txn_local_latches_enabled: Serialize conflicting local txns with latches
            (``config/config.go`` TxnLocalLatches: disabled).
        txn_local_latches_capacity: Number of latch slots (required when enabled).
        security: TLS settings.

    """

    # PD and TSO
    pd_timeout: float = 3.0
    pd_update_member_interval: float = 60.0
    tso_max_batch_wait: float = 0.0
    tso_max_batch_size: int = 10000
    low_resolution_ts_update_interval: float = 2.0
    safe_ts_update_interval: float = 2.0
    # gRPC transport
    grpc_connection_count: int = 4
    grpc_keepalive_time: float = 10.0
    grpc_keepalive_timeout: float = 3.0
    grpc_compression: Literal["none", "gzip"] = "none"
    grpc_initial_window_size: int = 128 * MiB
    grpc_initial_conn_window_size: int = 128 * MiB
    dial_timeout: float = 5.0
    read_timeout_short: float = 30.0
    read_timeout_medium: float = 60.0
    commit_timeout: float = 41.0
    # BatchCommands
    enable_batch_commands: bool = True
    batch_policy: BatchPolicy = "basic"
    max_batch_size: int = 128
    overload_threshold: int = 200
    max_batch_wait_time: float = 0.0
    batch_wait_size: int = 8
    # Region and store cache
    region_cache_ttl: float = 600.0
    region_cache_ttl_jitter: float = 60.0
    store_liveness_timeout: float = 1.0
    stores_refresh_interval: float = 60.0
    enable_forwarding: bool = False
    zone_label: str = ""
    store_limit: int = 0
    validate_read_ts: bool = False
    # Transactions
    committer_concurrency: int = 128
    max_txn_ttl_ms: int = 60 * 60 * 1000
    managed_lock_ttl_ms: int = 20_000
    txn_commit_batch_size: int = 16 * KiB
    ttl_refreshed_txn_size: int = 32 * MiB
    txn_pre_split_detect_threshold: int = 100_000
    txn_pre_split_size_threshold: int = 32 * MiB
    txn_entry_size_limit: int = 6 * MiB
    txn_total_size_limit: int = 100 * MiB
    txn_scan_batch: int = 256
    batch_get_size: int = 5120
    resolve_lock_lite_threshold: int = 512
    enable_async_commit: bool = False
    enable_1pc: bool = False
    async_commit_keys_limit: int = 256
    async_commit_total_key_size_limit: int = 4 * KiB
    async_commit_safe_window: float = 2.0
    async_commit_allowed_clock_drift: float = 0.5
    txn_local_latches_enabled: bool = False
    txn_local_latches_capacity: int = 0
    # Raw KV
    raw_batch_put_size: int = 16 * KiB
    raw_batch_pair_count: int = 512
    raw_scan_max_limit: int = 10240
    # TLS
    security: SecurityConfig = field(default_factory=SecurityConfig)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _CONFIG_MINIMUMS:
                _check_number(
                    "Config",
                    f.name,
                    value,
                    minimum=_CONFIG_MINIMUMS[f.name],
                    integer=f.type == "int",
                )
            elif f.type == "bool" and not isinstance(value, bool):
                raise TypeError(f"Config.{f.name} must be a bool, got {value!r}")
        _check_choice("Config", "grpc_compression", self.grpc_compression, ("none", "gzip"))
        _check_choice("Config", "batch_policy", self.batch_policy, get_args(BatchPolicy))
        if not isinstance(self.zone_label, str):
            raise TypeError("Config.zone_label must be a str")
        if not isinstance(self.security, SecurityConfig):
            raise TypeError("Config.security must be a SecurityConfig")
        # tikv/pd client/opt/option.go rejects a TSO batch wait above 10 ms.
        if self.tso_max_batch_wait > 0.01:
            raise ValueError(
                f"Config.tso_max_batch_wait must be within [0, 0.01] s, "
                f"got {self.tso_max_batch_wait}"
            )
        if self.txn_entry_size_limit > self.txn_total_size_limit:
            raise ValueError(
                "Config.txn_entry_size_limit must not exceed txn_total_size_limit "
                f"({self.txn_entry_size_limit} > {self.txn_total_size_limit})"
            )
        # config/config.go TxnLocalLatches.Valid.
        if self.txn_local_latches_enabled and self.txn_local_latches_capacity == 0:
            raise ValueError("Config.txn_local_latches_capacity must be > 0 when enabled")


def check_commit_wait_until_tso(value: object, name: str = "commit_wait_until_tso") -> int:
    """Check a commit-wait-until ts: an int in ``[0, 2**64)`` (0: no constraint).

    Raises:
        TypeError: Not an int.
        ValueError: Out of range.

    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int timestamp, got {type(value).__name__}")
    if not 0 <= value < 2**64:
        raise ValueError(f"{name} must be a 64-bit timestamp >= 0, got {value}")
    return value


def check_commit_wait_until_tso_timeout(
    value: object, name: str = "commit_wait_until_tso_timeout"
) -> float:
    """Check a commit-wait timeout: a finite number of seconds >= 0.

    Raises:
        TypeError: Not a number.
        ValueError: Negative, NaN or infinite.

    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value}")
    return float(value)


@dataclass(frozen=True, kw_only=True, slots=True)
class TransactionOptions:
    """Per-transaction options (client-go ``KVTxn.Set*`` and ``txnkv`` TxnOptions).

    Use :meth:`optimistic` or :meth:`pessimistic` for the two usual shapes. The locking
    mode is the field ``mode`` (read it as :attr:`is_pessimistic`): the name
    ``pessimistic`` is taken by the constructor classmethod.

    Attributes:
        mode: ``"optimistic"`` (conflicts detected at prewrite, client-go's default) or
            ``"pessimistic"`` (keys locked while the transaction runs: get_for_update,
            lock_keys).
        try_one_pc: Commit in one phase when every mutation fits in one region batch.
        async_commit: Use async commit (commit is decided once prewrite succeeds)
            within Config's async-commit limits.
        causal_consistency: With async commit / 1PC, skip fetching a fresh ts for
            max_commit_ts calculation; guarantees causal instead of linearizable order.
        pipelined: Flush mutations to TiKV while the transaction runs (pipelined DML)
            instead of buffering them until commit.
        pipelined_flush_concurrency: Concurrent flush requests (``tikv/kv.go``: 128).
        pipelined_resolve_lock_concurrency: Concurrent resolve-lock requests when a
            pipelined txn finishes (``tikv/kv.go``: 8).
        pipelined_write_throttle_ratio: Fraction of time the writer sleeps to let
            flushes keep up, in [0, 1) (``tikv/kv.go``: 0.0).
        isolation: ``"SI"`` (snapshot isolation), ``"RC"`` (read committed) or
            ``"RCCheckTS"``.
        lock_wait_timeout_ms: Pessimistic lock wait: :data:`LOCK_ALWAYS_WAIT`
            (default, client-go ``kv/kv.go``), :data:`LOCK_NO_WAIT`, or a positive
            number of milliseconds. 0 does not wait either: client-go's
            ``calculateEffectiveWaitTime`` sends any wait <= 0 as no-wait (kv.go still
            documents 0 as "TiKV's default"), and the request fails with a lock wait
            timeout instead of the no-wait error.
        assertion_level: Existence-assertion checking (``"Off"``, ``"Fast"``,
            ``"Strict"``).
        priority: Request priority (``"normal"``, ``"low"``, ``"high"``).
        request_source: Request source label sent in kvrpcpb.Context.
        resource_group_name: Resource control group ("" = default group).
        resource_group_tag: Opaque tag sent with every request (for Top SQL).
        disk_full_opt: Whether writes proceed when a store's disk is (almost) full.
        txn_source: Value of kvrpcpb.Context.txn_source (CDC origin marker).
        txn_scope: ``"global"`` (the only scope modern PD supports).
        start_ts: Use this start ts instead of fetching one.
        replica_read: Which replica serves reads of this transaction.
        not_fill_cache: Ask TiKV not to fill its block cache with this txn's reads.
        scan_batch_size: Keys per scan page (``None`` = Config.txn_scan_batch).
        entry_size_limit: Override of Config.txn_entry_size_limit (``None`` = keep).
        total_size_limit: Override of Config.txn_total_size_limit (``None`` = keep).
        commit_wait_until_tso: The commit ts must be greater than this ts (0: no
            constraint); while PD's TSO is not past it, commit keeps fetching timestamps
            for up to ``commit_wait_until_tso_timeout`` (client-go
            ``KVTxn.SetCommitWaitUntilTSO``, for replication that must commit after the
            upstream's commit ts).
        commit_wait_until_tso_timeout: Seconds commit may wait for PD's TSO to pass
            ``commit_wait_until_tso``; 0 fails at once when it lags (client-go
            ``txnkv/transaction/txn.go`` commitWaitUntilTSOTimeout = 1 s).

    """

    mode: TxnMode = "optimistic"
    try_one_pc: bool = False
    async_commit: bool = False
    causal_consistency: bool = False
    pipelined: bool = False
    pipelined_flush_concurrency: int = 128
    pipelined_resolve_lock_concurrency: int = 8
    pipelined_write_throttle_ratio: float = 0.0
    isolation: IsolationLevel = "SI"
    lock_wait_timeout_ms: int = LOCK_ALWAYS_WAIT
    assertion_level: AssertionLevel = "Off"
    priority: CommandPriority = "normal"
    request_source: str = ""
    resource_group_name: str = ""
    resource_group_tag: bytes = b""
    disk_full_opt: DiskFullOpt = "NotAllowedOnFull"
    txn_source: int = 0
    txn_scope: str = "global"
    start_ts: int | None = None
    replica_read: ReplicaReadType = "leader"
    not_fill_cache: bool = False
    scan_batch_size: int | None = None
    entry_size_limit: int | None = None
    total_size_limit: int | None = None
    commit_wait_until_tso: int = 0
    commit_wait_until_tso_timeout: float = 1.0

    def __post_init__(self) -> None:
        own = "TransactionOptions"
        _check_choice(own, "mode", self.mode, get_args(TxnMode))
        for name in (
            "try_one_pc",
            "async_commit",
            "causal_consistency",
            "pipelined",
            "not_fill_cache",
        ):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{own}.{name} must be a bool, got {getattr(self, name)!r}")
        _check_choice(own, "isolation", self.isolation, tuple(ISOLATION_LEVELS))
        _check_choice(own, "assertion_level", self.assertion_level, tuple(ASSERTION_LEVELS))
        _check_choice(own, "priority", self.priority, tuple(COMMAND_PRIORITIES))
        _check_choice(own, "disk_full_opt", self.disk_full_opt, tuple(DISK_FULL_OPTS))
        _check_choice(own, "replica_read", self.replica_read, REPLICA_READ_TYPES)
        _check_number(
            own,
            "lock_wait_timeout_ms",
            self.lock_wait_timeout_ms,
            minimum=LOCK_NO_WAIT,
            integer=True,
        )
        if self.lock_wait_timeout_ms > LOCK_ALWAYS_WAIT:
            raise ValueError(f"{own}.lock_wait_timeout_ms must fit in int64")
        _check_number(
            own,
            "pipelined_flush_concurrency",
            self.pipelined_flush_concurrency,
            minimum=1,
            integer=True,
        )
        _check_number(
            own,
            "pipelined_resolve_lock_concurrency",
            self.pipelined_resolve_lock_concurrency,
            minimum=1,
            integer=True,
        )
        _check_number(
            own,
            "pipelined_write_throttle_ratio",
            self.pipelined_write_throttle_ratio,
            minimum=0.0,
            integer=False,
        )
        if self.pipelined_write_throttle_ratio >= 1.0:
            raise ValueError(
                f"{own}.pipelined_write_throttle_ratio must be in [0, 1), "
                f"got {self.pipelined_write_throttle_ratio}"
            )
        _check_number(own, "txn_source", self.txn_source, minimum=0, integer=True)
        check_commit_wait_until_tso(self.commit_wait_until_tso, f"{own}.commit_wait_until_tso")
        check_commit_wait_until_tso_timeout(
            self.commit_wait_until_tso_timeout, f"{own}.commit_wait_until_tso_timeout"
        )
        for name in ("start_ts", "scan_batch_size", "entry_size_limit", "total_size_limit"):
            value = getattr(self, name)
            if value is not None:
                _check_number(own, name, value, minimum=1, integer=True)
        for name in ("request_source", "resource_group_name", "txn_scope"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{own}.{name} must be a str")
        if not isinstance(self.resource_group_tag, bytes):
            raise TypeError(f"{own}.resource_group_tag must be bytes")
        if not self.txn_scope:
            raise ValueError(f"{own}.txn_scope must not be empty (use 'global')")
        if (
            self.entry_size_limit is not None
            and self.total_size_limit is not None
            and self.entry_size_limit > self.total_size_limit
        ):
            raise ValueError(f"{own}.entry_size_limit must not exceed total_size_limit")
        # Combinations client-go does not support.
        if self.pipelined and (self.try_one_pc or self.async_commit):
            raise ValueError(
                f"{own}: a pipelined transaction commits with 2PC; it cannot use "
                "async_commit or try_one_pc"
            )

    @classmethod
    def optimistic(cls, **overrides: Any) -> TransactionOptions:
        """Options of an optimistic transaction (conflicts detected at prewrite).

        Args:
            **overrides: Any other field of TransactionOptions.

        Raises:
            ValueError: ``mode`` was passed, or a value is invalid.

        """
        return cls._of_mode("optimistic", overrides)

    @classmethod
    def pessimistic(cls, **overrides: Any) -> TransactionOptions:
        """Options of a pessimistic transaction (keys locked as they are read for update).

        Args:
            **overrides: Any other field of TransactionOptions.

        Raises:
            ValueError: ``mode`` was passed, or a value is invalid.

        """
        return cls._of_mode("pessimistic", overrides)

    @classmethod
    def _of_mode(cls, mode: TxnMode, overrides: dict[str, Any]) -> TransactionOptions:
        """The constructors' shared body: ``mode`` is theirs to set, not the caller's."""
        if "mode" in overrides:
            raise ValueError(f"TransactionOptions.{mode}() sets mode itself")
        return cls(mode=mode, **overrides)

    @property
    def is_pessimistic(self) -> bool:
        """Whether the transaction locks keys pessimistically."""
        return self.mode == "pessimistic"

    @property
    def isolation_level_value(self) -> int:
        """The kvrpcpb.IsolationLevel wire value of :attr:`isolation`."""
        return ISOLATION_LEVELS[self.isolation]

    @property
    def priority_value(self) -> int:
        """The kvrpcpb.CommandPri wire value of :attr:`priority`."""
        return COMMAND_PRIORITIES[self.priority]

    @property
    def assertion_level_value(self) -> int:
        """The kvrpcpb.AssertionLevel wire value of :attr:`assertion_level`."""
        return ASSERTION_LEVELS[self.assertion_level]

    @property
    def disk_full_opt_value(self) -> int:
        """The kvrpcpb.DiskFullOpt wire value of :attr:`disk_full_opt`."""
        return DISK_FULL_OPTS[self.disk_full_opt]
