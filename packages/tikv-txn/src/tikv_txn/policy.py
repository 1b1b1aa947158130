"""Pure transaction decisions: lock TTLs, commit protocol choice, batching, lock resolution.

Everything here is a function of its arguments (no clock, no network, no protobuf), so
the committer, the heartbeat task and the lock resolver stay thin and these rules are
unit-tested on their own. Each rule names the client-go source it follows:

* lock TTLs and the heartbeat (``txnkv/transaction/2pc.go`` ``txnLockTTL``,
  ``keepAlive``; ``pessimistic.go``; ``prewrite.go``);
* which mutation each buffered key becomes (``2pc.go`` ``initKeysAndMutations``);
* async commit and 1PC eligibility (``2pc.go`` ``checkAsyncCommit``, ``checkOnePC``,
  ``checkOnePCFallBack``) and their timestamps (``calculateMaxCommitTS``,
  ``prewrite.go`` ``buildPrewriteRequest``);
* grouping by region and batching (``groupSortedMutationsByRegion``,
  ``appendBatchMutationsBySize``, ``setPrimary``, ``preSplitRegion``);
* lock resolution (``txnkv/txnlock/lock_resolver.go`` ``resolveLocks``,
  ``getTxnStatusFromLock``, ``resolveLock``, ``asyncResolveData.addKeys``).

Timestamps are TSO values: ``physical_ms << 18 | logical`` (client-go ``oracle``).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, NamedTuple, TypeVar

from tikv_pd.errors import LockInfo, TxnError
from tikv_pd.oracle import LOGICAL_BITS, extract_physical

from tikv_txn.membuffer import TOMBSTONE, KeyFlags, MemEntry

__all__ = [
    "ASYNC_COMMIT_ALLOWED_CLOCK_DRIFT_MS",
    "ASYNC_COMMIT_KEYS_LIMIT",
    "ASYNC_COMMIT_SAFE_WINDOW_MS",
    "ASYNC_COMMIT_TOTAL_KEY_SIZE_LIMIT",
    "DEFAULT_LOCK_TTL_MS",
    "HEARTBEAT_INTERVAL_MS",
    "HEARTBEAT_MAX_CONSECUTIVE_FAILURES",
    "MANAGED_LOCK_TTL_MS",
    "MAX_PIPELINED_TXN_TTL_MS",
    "MAX_TXN_TTL_MS",
    "PIPELINED_FORCE_FLUSH_SIZE",
    "PIPELINED_MIN_FLUSH_KEYS",
    "PIPELINED_MIN_FLUSH_SIZE",
    "PRE_SPLIT_DETECT_THRESHOLD",
    "PRE_SPLIT_SIZE_THRESHOLD",
    "RESOLVE_LOCK_LITE_THRESHOLD",
    "TTL_FACTOR",
    "TTL_REFRESHED_TXN_SIZE",
    "TXN_COMMIT_BATCH_SIZE",
    "Action",
    "AsyncResolveData",
    "Batch",
    "CommitProtocol",
    "LockCleanup",
    "LockDecision",
    "LockVisibility",
    "Mutation",
    "MutationPlan",
    "Op",
    "PessimisticAction",
    "PrewriteOutcome",
    "RegionGroup",
    "TxnNotFoundAction",
    "TxnStatus",
    "async_commit_max_commit_ts",
    "async_commit_secondaries",
    "batch_mutations",
    "build_mutations",
    "check_async_commit",
    "check_one_pc",
    "check_txn_status_current_ts",
    "choose_commit_protocol",
    "decide_lock_resolution",
    "decide_on_txn_not_found",
    "group_sorted_by_region",
    "heartbeat_should_stop",
    "heartbeat_ttl",
    "interpret_prewrite_response",
    "is_lock_expired",
    "lock_ms_until_expired",
    "mutation_for_entry",
    "needs_min_commit_ts_from_tso",
    "needs_ttl_manager",
    "one_pc_still_possible",
    "pessimistic_lock_ttl",
    "pipelined_need_flush",
    "pre_split_keys",
    "prewrite_lock_ttl",
    "prewrite_min_commit_ts",
    "txn_lock_ttl",
    "use_lite_resolve",
]

# ---------------------------------------------------------------------------------------
# Defaults (client-go)
# ---------------------------------------------------------------------------------------

#: Lock TTL of a small transaction, ms: locks older than this may be cleaned up by
#: others (``defaultLockTTL`` in ``txnkv/transaction/2pc.go``).
DEFAULT_LOCK_TTL_MS: Final = 3000
#: Large transactions get ``TTL_FACTOR * sqrt(size in MiB)`` ms (``ttlFactor``, 2pc.go).
TTL_FACTOR: Final = 6000
#: Largest TTL computed from the size, the pessimistic lock TTL, and twice the heartbeat
#: interval, ms (``ManagedLockTTL`` in 2pc.go).
MANAGED_LOCK_TTL_MS: Final = 20_000
#: The heartbeat stops after the transaction has lived this long, ms, so that a stuck
#: client cannot lock keys forever (``MaxTxnTTL`` in ``config/config.go``: 1 hour).
MAX_TXN_TTL_MS: Final = 60 * 60 * 1000
#: The same limit for pipelined DML (``MaxPipelinedTxnTTL`` in 2pc.go: 24 hours).
MAX_PIPELINED_TXN_TTL_MS: Final = 24 * 60 * 60 * 1000
#: Heartbeat period: half the managed lock TTL (the ticker in 2pc.go ``keepAlive``).
HEARTBEAT_INTERVAL_MS: Final = MANAGED_LOCK_TTL_MS // 2
#: The heartbeat gives up after more consecutive failures than this
#: (``maxConsecutiveFailure`` in 2pc.go).
HEARTBEAT_MAX_CONSECUTIVE_FAILURES: Final = 10
#: Transactions larger than this (bytes) start the heartbeat once the primary is
#: prewritten (``TTLRefreshedTxnSize`` in ``config/client.go``; used in ``prewrite.go``).
TTL_REFRESHED_TXN_SIZE: Final = 32 * 1024 * 1024
#: Target size of one prewrite / commit batch, bytes (``DefTxnCommitBatchSize`` in
#: ``kv/store_vars.go``: TiKV prefers RPCs well under 1 MiB).
TXN_COMMIT_BATCH_SIZE: Final = 16 * 1024
#: Async commit is used for at most this many keys (``AsyncCommit.KeysLimit``,
#: ``config/client.go``) ...
ASYNC_COMMIT_KEYS_LIMIT: Final = 256
#: ... and at most this many bytes of keys (``AsyncCommit.TotalKeySizeLimit``).
ASYNC_COMMIT_TOTAL_KEY_SIZE_LIMIT: Final = 4096
#: max_commit_ts = start_ts + elapsed + this window, ms (``AsyncCommit.SafeWindow``).
ASYNC_COMMIT_SAFE_WINDOW_MS: Final = 2000
#: Clock drift tolerated between TiDB/client nodes, ms (``AsyncCommit.AllowedClockDrift``).
ASYNC_COMMIT_ALLOWED_CLOCK_DRIFT_MS: Final = 500
#: Locks of transactions with fewer keys than this are resolved key by key ("lite")
#: instead of scanning their region (``ResolveLockLiteThreshold`` in
#: ``config/client.go``; raised from 16 to 512 by client-go #1981).
RESOLVE_LOCK_LITE_THRESHOLD: Final = 512
#: A region receiving this many mutations of one transaction is pre-split
#: (``preSplitDetectThreshold`` in 2pc.go) ...
PRE_SPLIT_DETECT_THRESHOLD: Final = 100_000
#: ... at every this many bytes of keys and values (``preSplitSizeThreshold``).
PRE_SPLIT_SIZE_THRESHOLD: Final = 32 * 1024 * 1024

#: Pipelined DML flushes its buffer only when it holds at least this many keys ...
#: (``MinFlushKeys`` in ``internal/unionstore/pipelined_memdb.go``: small flushes waste
#: resources under random writes) ...
PIPELINED_MIN_FLUSH_KEYS: Final = 10_000
#: ... and at least this many bytes (``MinFlushMemSize``) ...
PIPELINED_MIN_FLUSH_SIZE: Final = 16 * 1024 * 1024
#: ... or, regardless of the key count and of a flush in progress, this many bytes
#: (``ForceFlushMemSizeThreshold``: bounds the memory of a pipelined transaction).
PIPELINED_FORCE_FLUSH_SIZE: Final = 128 * 1024 * 1024

_MAX_U64: Final = (1 << 64) - 1
_MIB: Final = 1024 * 1024


def _physical(ts: int) -> int:
    return extract_physical(ts)


def _check_ts(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}")


# ---------------------------------------------------------------------------------------
# Lock TTL and heartbeat
# ---------------------------------------------------------------------------------------


def txn_lock_ttl(
    txn_size: int,
    elapsed_ms: int,
    *,
    commit_batch_size: int = TXN_COMMIT_BATCH_SIZE,
    default_ttl_ms: int = DEFAULT_LOCK_TTL_MS,
    managed_lock_ttl_ms: int = MANAGED_LOCK_TTL_MS,
) -> int:
    """Return the TTL of the locks a transaction prewrites, in ms (client-go ``txnLockTTL``).

    Small transactions (less than one commit batch) get ``default_ttl_ms``; larger ones
    ``6000 * sqrt(size in MiB)`` clamped to ``[default_ttl_ms, managed_lock_ttl_ms]``
    (1 MiB -> 6 s, 4 MiB -> 12 s, >= 11.2 MiB -> 20 s). The time the transaction has
    already run is added, because resolvers compare ``start_ts + ttl`` with now: a
    transaction that read for a long time would otherwise look expired at once.

    Args:
        txn_size: Total bytes of keys and values of the mutations.
        elapsed_ms: Milliseconds since the transaction started.
        commit_batch_size: The size from which the TTL grows with the size.
        default_ttl_ms: The minimum TTL.
        managed_lock_ttl_ms: The maximum size-derived TTL.

    Raises:
        ValueError: An argument is negative.
        TypeError: An argument is not an int.

    """
    _check_ts("txn_size", txn_size)
    _check_ts("elapsed_ms", elapsed_ms)
    ttl = default_ttl_ms
    if txn_size >= commit_batch_size:
        ttl = int(TTL_FACTOR * math.sqrt(txn_size / _MIB))
        ttl = min(max(ttl, default_ttl_ms), managed_lock_ttl_ms)
    return ttl + elapsed_ms


def pessimistic_lock_ttl(elapsed_ms: int, *, managed_lock_ttl_ms: int = MANAGED_LOCK_TTL_MS) -> int:
    """Return the TTL of a pessimistic lock request, in ms.

    ``elapsed + ManagedLockTTL`` (client-go ``pessimistic.go``), computed afresh for every
    attempt so that a lock taken after a long wait is not born nearly expired
    (client-go #420).

    Raises:
        ValueError: ``elapsed_ms`` is negative.

    """
    _check_ts("elapsed_ms", elapsed_ms)
    return elapsed_ms + managed_lock_ttl_ms


def prewrite_lock_ttl(
    lock_ttl: int,
    *,
    async_commit: bool,
    pessimistic: bool,
    start_ts: int,
    max_commit_ts: int,
) -> int:
    """Return the TTL to send in a prewrite request, in ms.

    For a pessimistic async-commit transaction the TTL is raised so that
    ``start_ts + ttl`` lies beyond ``max_commit_ts``: a resolver that finds the lock
    expired then has ``current_ts > max_commit_ts`` and forces the transaction back to
    2PC instead of committing it at an unsafe ts (client-go ``buildPrewriteRequest``,
    tidb#33641).

    Raises:
        ValueError: A value is negative.

    """
    _check_ts("lock_ttl", lock_ttl)
    _check_ts("start_ts", start_ts)
    _check_ts("max_commit_ts", max_commit_ts)
    if async_commit and pessimistic:
        safe = _physical(max_commit_ts) - _physical(start_ts) + 1
        return max(lock_ttl, safe)
    return lock_ttl


def heartbeat_ttl(
    start_ts: int,
    now_ts: int,
    *,
    pipelined: bool = False,
    max_txn_ttl_ms: int = MAX_TXN_TTL_MS,
    managed_lock_ttl_ms: int = MANAGED_LOCK_TTL_MS,
) -> int | None:
    """Return the TTL to advise in the next TxnHeartBeat, or ``None`` to stop beating.

    The new TTL is the transaction's uptime (TSO physical time since ``start_ts``) plus
    ``ManagedLockTTL``. Once the uptime exceeds ``MaxTxnTTL`` (1 h; 24 h for pipelined
    DML) the heartbeat stops so that an abandoned transaction's locks eventually expire
    (client-go ``keepAlive``).

    Args:
        start_ts: The transaction's start ts.
        now_ts: A fresh TSO timestamp.
        pipelined: The transaction is pipelined DML (the longer limit applies).
        max_txn_ttl_ms: The configured lifetime limit.
        managed_lock_ttl_ms: The TTL extension per beat.

    Raises:
        ValueError: A timestamp is negative.

    """
    _check_ts("start_ts", start_ts)
    _check_ts("now_ts", now_ts)
    uptime = max(0, _physical(now_ts) - _physical(start_ts))
    limit = max(max_txn_ttl_ms, MAX_PIPELINED_TXN_TTL_MS) if pipelined else max_txn_ttl_ms
    if uptime > limit:
        return None
    return uptime + managed_lock_ttl_ms


def heartbeat_should_stop(consecutive_failures: int, *, key_error: bool) -> bool:
    """Whether the heartbeat must stop after a failed beat (client-go ``keepAlive``).

    A key error from TiKV (the primary lock is gone: committed, rolled back or
    resolved) stops it at once; other failures are tolerated up to
    :data:`HEARTBEAT_MAX_CONSECUTIVE_FAILURES` in a row.

    Args:
        consecutive_failures: Failed beats in a row, this one included.
        key_error: The failure was a key error in the response.

    """
    return key_error or consecutive_failures > HEARTBEAT_MAX_CONSECUTIVE_FAILURES


def needs_ttl_manager(txn_size: int, *, one_pc_committed: bool, threshold: int) -> bool:
    """Whether to start the heartbeat once the primary batch is prewritten.

    Only transactions over ``threshold`` bytes need it (``Config.ttl_refreshed_txn_size``,
    default :data:`TTL_REFRESHED_TXN_SIZE`: smaller ones commit well within their TTL),
    and never one that 1PC already committed (client-go ``prewrite.go``, which compares
    the size with ``config.GetGlobalConfig().TiKVClient.TTLRefreshedTxnSize``).
    Pessimistic transactions start it earlier, with their first lock.
    """
    return txn_size > threshold and not one_pc_committed


# ---------------------------------------------------------------------------------------
# Commit timestamps
# ---------------------------------------------------------------------------------------


def async_commit_max_commit_ts(
    start_ts: int, elapsed_ms: int, *, safe_window_ms: int = ASYNC_COMMIT_SAFE_WINDOW_MS
) -> int:
    """Return the max_commit_ts of an async-commit / 1PC prewrite.

    ``start_ts`` advanced by the elapsed time and then by the safe window (client-go
    ``calculateMaxCommitTS``): TiKV refuses to commit at a larger ts, which bounds how
    far the commit ts may run ahead of the schema version the transaction checked.

    Raises:
        ValueError: An argument is negative.

    """
    _check_ts("start_ts", start_ts)
    _check_ts("elapsed_ms", elapsed_ms)
    _check_ts("safe_window_ms", safe_window_ms)
    current = start_ts + (elapsed_ms << LOGICAL_BITS)
    return current + (safe_window_ms << LOGICAL_BITS)


def prewrite_min_commit_ts(start_ts: int, for_update_ts: int, min_commit_ts: int) -> int:
    """Return the min_commit_ts to send in a prewrite request.

    ``min_commit_ts`` is what the committer knows so far (for async commit / 1PC with
    linearizability: a fresh TSO + 1). It must exceed the for-update ts of a pessimistic
    transaction, and otherwise the start ts (client-go ``buildPrewriteRequest``).

    Raises:
        ValueError: An argument is negative.

    """
    _check_ts("start_ts", start_ts)
    _check_ts("for_update_ts", for_update_ts)
    _check_ts("min_commit_ts", min_commit_ts)
    if for_update_ts > 0 and for_update_ts >= min_commit_ts:
        return for_update_ts + 1
    if start_ts >= min_commit_ts:
        return start_ts + 1
    return min_commit_ts


# ---------------------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------------------


class Op(enum.IntEnum):
    """Mutation / lock kinds with their ``kvrpcpb.Op`` wire numbers."""

    PUT = 0
    DEL = 1
    LOCK = 2
    ROLLBACK = 3
    INSERT = 4
    PESSIMISTIC_LOCK = 5
    CHECK_NOT_EXISTS = 6
    SHARED_LOCK = 7
    SHARED_PESSIMISTIC_LOCK = 8


class PessimisticAction(enum.IntEnum):
    """``kvrpcpb.PrewriteRequest.PessimisticAction`` wire numbers."""

    SKIP_PESSIMISTIC_CHECK = 0
    DO_PESSIMISTIC_CHECK = 1
    DO_CONSTRAINT_CHECK = 2


class Mutation(NamedTuple):
    """One key of a prewrite, decided from the buffer (protocol-neutral).

    Attributes:
        op: What to write.
        key: The key.
        value: The value for PUT / INSERT, else ``b""``.
        is_pessimistic_lock: The key holds a pessimistic lock of this transaction
            (prewrite must find it: DO_PESSIMISTIC_CHECK).
        assert_exist: Prewrite asserts the key exists.
        assert_not_exist: Prewrite asserts the key does not exist.
        need_constraint_check: The conflict / constraint check was postponed to
            prewrite (DO_CONSTRAINT_CHECK).

    """

    op: Op
    key: bytes
    value: bytes = b""
    is_pessimistic_lock: bool = False
    assert_exist: bool = False
    assert_not_exist: bool = False
    need_constraint_check: bool = False

    @property
    def pessimistic_action(self) -> PessimisticAction:
        """The prewrite's pessimistic action for this key."""
        if self.is_pessimistic_lock:
            return PessimisticAction.DO_PESSIMISTIC_CHECK
        if self.need_constraint_check:
            return PessimisticAction.DO_CONSTRAINT_CHECK
        return PessimisticAction.SKIP_PESSIMISTIC_CHECK


def mutation_for_entry(
    entry: MemEntry, *, pessimistic: bool, assertions: bool = True
) -> Mutation | None:
    """Decide what a buffered entry becomes in prewrite, or ``None`` to skip it.

    The rules of client-go ``initKeysAndMutations`` (without TiDB's key filter):

    * a flags-only entry is prewritten as a LOCK (SHARED_LOCK if locked in share mode)
      when it holds a pessimistic lock, and skipped otherwise;
    * a value becomes INSERT when the key is presumed not to exist, else PUT;
    * a deletion in an optimistic transaction of a key presumed not to exist becomes
      CHECK_NOT_EXISTS (prewrite-only: nothing to commit); a deletion of a key this
      transaction inserted is skipped, or LOCKed if it holds a pessimistic lock; any
      other deletion is DEL.

    Args:
        entry: The buffer entry.
        pessimistic: The transaction is pessimistic.
        assertions: The assertion level is not Off (assert flags are honoured).

    """
    flags = entry.flags
    value = entry.value
    locked = bool(flags & KeyFlags.KEY_LOCKED)
    lock_op = Op.SHARED_LOCK if flags & KeyFlags.KEY_LOCKED_IN_SHARE_MODE else Op.LOCK
    if value is None:
        if not locked:
            return None
        op = lock_op
        data = b""
    elif value is not TOMBSTONE:
        op = Op.INSERT if flags.has_presume_key_not_exists else Op.PUT
        data = value
    else:
        data = b""
        if not pessimistic and flags.has_presume_key_not_exists:
            op = Op.CHECK_NOT_EXISTS
        elif flags & KeyFlags.NEWLY_INSERTED:
            if not locked:
                return None
            op = lock_op
        else:
            op = Op.DEL
    return Mutation(
        op=op,
        key=entry.key,
        value=data,
        is_pessimistic_lock=pessimistic and locked,
        assert_exist=assertions and flags.has_assert_exist,
        assert_not_exist=assertions and flags.has_assert_not_exist,
        need_constraint_check=flags.has_need_constraint_check_in_prewrite,
    )


@dataclass(frozen=True, slots=True)
class MutationPlan:
    """The mutations of a commit, as :func:`build_mutations` decides them.

    Attributes:
        mutations: In key order.
        primary: The primary key (``b""`` when there is nothing to commit).
        size: Total bytes of keys and values (drives the lock TTL).
        prewrite_only_keys: Keys sent as CHECK_NOT_EXISTS: set PREWRITE_ONLY on them so
            that the commit phase skips them.
        has_shared_locks: Some key is a SHARED_LOCK (disables async commit and 1PC).

    """

    mutations: tuple[Mutation, ...]
    primary: bytes
    size: int
    prewrite_only_keys: tuple[bytes, ...]
    has_shared_locks: bool


def build_mutations(
    entries: Iterable[MemEntry],
    *,
    pessimistic: bool,
    assertions: bool = True,
    primary: bytes | None = None,
) -> MutationPlan:
    """Turn buffer entries (in key order) into the mutations of a commit.

    The primary is ``primary`` if given (a pessimistic transaction fixes it with its
    first lock), else the first key whose mutation is neither CHECK_NOT_EXISTS nor a
    shared lock; if every key is CHECK_NOT_EXISTS the first key serves (client-go
    ``primary()`` fallback).

    Raises:
        ValueError: The primary would be a shared-locked key, which TiKV cannot use as a
            transaction's status record (client-go refuses it too).

    """
    mutations: list[Mutation] = []
    prewrite_only: list[bytes] = []
    size = 0
    shared = 0
    chosen = primary or b""
    primary_is_shared = False
    for entry in entries:
        m = mutation_for_entry(entry, pessimistic=pessimistic, assertions=assertions)
        if m is None:
            continue
        mutations.append(m)
        size += len(m.key) + len(m.value)
        if m.op is Op.CHECK_NOT_EXISTS:
            prewrite_only.append(m.key)
        elif m.op is Op.SHARED_LOCK:
            shared += 1
            if m.key == chosen:
                primary_is_shared = True
        elif not chosen:
            chosen = m.key
    if mutations and (primary_is_shared or (not chosen and shared)):
        raise ValueError("a shared-locked key cannot be the transaction's primary key")
    if mutations and not chosen:
        chosen = mutations[0].key
    return MutationPlan(tuple(mutations), chosen, size, tuple(prewrite_only), shared > 0)


# ---------------------------------------------------------------------------------------
# Commit protocol choice
# ---------------------------------------------------------------------------------------


def check_async_commit(
    keys: Iterable[bytes],
    *,
    enabled: bool,
    has_shared_locks: bool = False,
    global_scope: bool = True,
    commit_ts_upper_bound_check: bool = False,
    assertion_failed: bool = False,
    pipelined: bool = False,
    keys_limit: int = ASYNC_COMMIT_KEYS_LIMIT,
    total_key_size_limit: int = ASYNC_COMMIT_TOTAL_KEY_SIZE_LIMIT,
) -> bool:
    """Whether the commit may use async commit (client-go ``checkAsyncCommit``).

    Async commit stores every secondary key in the primary lock, so it is limited to
    ``keys_limit`` mutations and ``total_key_size_limit`` bytes of keys. It is also off
    with shared locks, outside the global transaction scope, and when the caller must
    check the commit ts against an upper bound (it cannot: the ts is decided by TiKV).

    Args:
        keys: The keys of all mutations.
        enabled: The transaction asked for async commit.
        has_shared_locks: Some mutation is a shared lock.
        global_scope: The transaction uses the global TSO scope.
        commit_ts_upper_bound_check: A commit-ts upper bound check is installed.
        assertion_failed: A local assertion check against the pessimistic lock results
            failed; the error is stashed until prewrite finishes, and the commit must
            not be decided by prewrite alone (client-go ``initKeysAndMutations``).
        pipelined: Pipelined DML (its locks are flushed earlier; committed normally).
        keys_limit: Maximum number of keys.
        total_key_size_limit: Maximum bytes of keys.

    """
    if (
        not enabled
        or has_shared_locks
        or not global_scope
        or commit_ts_upper_bound_check
        or assertion_failed
        or pipelined
    ):
        return False
    total = 0
    for count, key in enumerate(keys, 1):
        total += len(key)
        if count > keys_limit or total > total_key_size_limit:
            return False
    return True


def check_one_pc(
    *,
    enabled: bool,
    has_shared_locks: bool = False,
    global_scope: bool = True,
    commit_ts_upper_bound_check: bool = False,
    pipelined: bool = False,
    assertion_failed: bool = False,
) -> bool:
    """Whether the commit may try 1PC (client-go ``checkOnePC`` and ``execute``).

    Off unless asked for, and with shared locks, local scopes, a commit-ts upper bound
    check, pipelined DML, or a stashed local assertion failure (as for
    :func:`check_async_commit`). Whether it really happens depends on the batches: see
    :func:`one_pc_still_possible`; TiKV may still answer with a normal prewrite.
    """
    return (
        enabled
        and not has_shared_locks
        and global_scope
        and not commit_ts_upper_bound_check
        and not pipelined
        and not assertion_failed
    )


def one_pc_still_possible(batch_count: int) -> bool:
    """Whether 1PC survives batching: only when everything is in one prewrite batch.

    1PC commits inside a single prewrite RPC, so more than one region or more than one
    16 KiB batch falls back to 2PC (client-go ``checkOnePCFallBack``).
    """
    return batch_count <= 1


def needs_min_commit_ts_from_tso(
    *,
    async_commit: bool,
    one_pc: bool,
    causal_consistency: bool = False,
    commit_wait_until_tso: int = 0,
) -> bool:
    """Whether to fetch a fresh TSO before prewrite and use it + 1 as min_commit_ts.

    With async commit or 1PC the commit ts is computed by TiKV from ``max_ts``; to stay
    linearizable (later-starting readers must see the commit) it must exceed every
    snapshot ts handed out so far, which a fresh TSO guarantees. Causal consistency
    skips that round trip (client-go ``execute``, ``needLinearizability``).
    """
    if not (async_commit or one_pc):
        return False
    return not causal_consistency or commit_wait_until_tso > 0


@dataclass(frozen=True, slots=True)
class CommitProtocol:
    """How a transaction commits, as :func:`choose_commit_protocol` decides.

    Attributes:
        async_commit: Prewrite with use_async_commit (the primary lists the secondaries).
        one_pc: Prewrite with try_one_pc (commit inside the single prewrite).
        min_commit_ts_from_tso: Fetch a TSO before prewrite; min_commit_ts = it + 1.

    """

    async_commit: bool
    one_pc: bool
    min_commit_ts_from_tso: bool

    @property
    def commit_ts_from_prewrite(self) -> bool:
        """TiKV decides the commit ts during prewrite (async commit or 1PC)."""
        return self.async_commit or self.one_pc


def choose_commit_protocol(
    plan: MutationPlan,
    *,
    prewrite_batch_count: int,
    enable_async_commit: bool,
    enable_one_pc: bool,
    pipelined: bool = False,
    causal_consistency: bool = False,
    global_scope: bool = True,
    commit_ts_upper_bound_check: bool = False,
    assertion_failed: bool = False,
    keys_limit: int = ASYNC_COMMIT_KEYS_LIMIT,
    total_key_size_limit: int = ASYNC_COMMIT_TOTAL_KEY_SIZE_LIMIT,
) -> CommitProtocol:
    """Choose async commit / 1PC for a commit, before prewrite (client-go ``execute``).

    Combines :func:`check_async_commit`, :func:`check_one_pc`,
    :func:`one_pc_still_possible` (1PC needs a single prewrite batch; async commit does
    not) and :func:`needs_min_commit_ts_from_tso`. TiKV may still refuse either at
    prewrite: see :func:`interpret_prewrite_response`.

    Args:
        plan: The commit's mutations.
        prewrite_batch_count: Number of prewrite batches (regions x 16 KiB).
        enable_async_commit: The transaction asked for async commit.
        enable_one_pc: The transaction asked for 1PC.
        pipelined: Pipelined DML.
        causal_consistency: Skip the linearizability TSO round trip.
        global_scope: The transaction uses the global TSO scope.
        commit_ts_upper_bound_check: A commit-ts upper bound check is installed.
        assertion_failed: A stashed local assertion failure.
        keys_limit: Async commit key count limit.
        total_key_size_limit: Async commit key bytes limit.

    """
    common = {
        "has_shared_locks": plan.has_shared_locks,
        "global_scope": global_scope,
        "commit_ts_upper_bound_check": commit_ts_upper_bound_check,
        "assertion_failed": assertion_failed,
        "pipelined": pipelined,
    }
    async_commit = check_async_commit(
        (m.key for m in plan.mutations),
        enabled=enable_async_commit,
        keys_limit=keys_limit,
        total_key_size_limit=total_key_size_limit,
        **common,
    )
    one_pc = check_one_pc(enabled=enable_one_pc, **common) and one_pc_still_possible(
        prewrite_batch_count
    )
    return CommitProtocol(
        async_commit=async_commit,
        one_pc=one_pc,
        min_commit_ts_from_tso=needs_min_commit_ts_from_tso(
            async_commit=async_commit, one_pc=one_pc, causal_consistency=causal_consistency
        ),
    )


class PrewriteOutcome(NamedTuple):
    """What one prewrite response means for the commit protocol.

    Attributes:
        one_pc_commit_ts: Non-zero when TiKV committed the batch with 1PC.
        fall_back_to_2pc: 1PC or async commit could not proceed; finish with a normal
            commit phase.
        min_commit_ts: For async commit, this batch's min commit ts: the transaction
            commits at the largest over all batches (and its own minimum).

    """

    one_pc_commit_ts: int
    fall_back_to_2pc: bool
    min_commit_ts: int


def interpret_prewrite_response(
    *, one_pc: bool, async_commit: bool, one_pc_commit_ts: int, min_commit_ts: int
) -> PrewriteOutcome:
    """Interpret the commit-protocol fields of a successful prewrite response.

    Rules of client-go ``prewrite.go``: a 1PC attempt answered with
    ``one_pc_commit_ts == 0`` fell back to 2PC (and then ``min_commit_ts`` must be 0);
    an async-commit prewrite answered with ``min_commit_ts == 0`` cannot proceed
    asynchronously (e.g. TiKV's max_ts was not ready) and falls back too.

    Raises:
        TxnError: TiKV broke the protocol: a 1PC fallback with a min commit ts, or a
            1PC commit the client did not ask for.

    """
    if one_pc:
        if one_pc_commit_ts == 0:
            if min_commit_ts != 0:
                raise TxnError("prewrite: min_commit_ts must be 0 when 1PC falls back to 2PC")
            return PrewriteOutcome(0, True, 0)
        return PrewriteOutcome(one_pc_commit_ts, False, 0)
    if one_pc_commit_ts != 0:
        raise TxnError("prewrite: TiKV committed a transaction with 1PC that did not ask for it")
    if async_commit:
        if min_commit_ts == 0:
            return PrewriteOutcome(0, True, 0)
        return PrewriteOutcome(0, False, min_commit_ts)
    return PrewriteOutcome(0, False, 0)


def async_commit_secondaries(mutations: Iterable[Mutation], primary: bytes) -> list[bytes]:
    """The keys recorded in the primary lock of an async-commit transaction.

    Every mutation's key except the primary's and CHECK_NOT_EXISTS keys, which leave no
    lock to check during recovery (client-go ``asyncSecondaries``).
    """
    return [m.key for m in mutations if m.key != primary and m.op is not Op.CHECK_NOT_EXISTS]


# ---------------------------------------------------------------------------------------
# Grouping and batching
# ---------------------------------------------------------------------------------------

R = TypeVar("R")
M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class RegionGroup(Generic[R, M]):
    """The mutations of one region.

    Attributes:
        region: The caller's region handle (id + epoch, a region object, ...).
        items: The mutations of the region, in key order.

    """

    region: R
    items: tuple[M, ...]


@dataclass(frozen=True, slots=True)
class Batch(Generic[R, M]):
    """One prewrite / commit / cleanup RPC: mutations of one region.

    Attributes:
        region: The region the batch is sent to.
        items: The mutations, in key order.
        is_primary: The batch holds the primary key (it goes first).

    """

    region: R
    items: tuple[M, ...]
    is_primary: bool = False


def group_sorted_by_region(
    items: Sequence[M],
    key_of: Callable[[M], bytes],
    locate: Callable[[bytes], tuple[R, bytes]],
) -> list[RegionGroup[R, M]]:
    """Split key-ordered items into runs that fall in one region each.

    ``locate(key)`` returns the region containing ``key`` and that region's end key
    (``b""`` for the last region); it is called once per region, not per key, as
    client-go ``groupSortedMutationsByRegion``.

    Raises:
        ValueError: The items are not in ascending key order.

    """
    groups: list[RegionGroup[R, M]] = []
    region: R | None = None
    end = b""
    start_index = 0
    last: bytes | None = None
    for i, item in enumerate(items):
        key = key_of(item)
        if last is not None and key <= last:
            raise ValueError(
                f"items must be in strictly ascending key order: {key!r} after {last!r}"
            )
        last = key
        if i == 0 or (end and key >= end):
            if i > 0:
                assert region is not None
                groups.append(RegionGroup(region, tuple(items[start_index:i])))
                start_index = i
            region, end = locate(key)
    if items:
        assert region is not None
        groups.append(RegionGroup(region, tuple(items[start_index:])))
    return groups


def batch_mutations(
    groups: Iterable[RegionGroup[R, M]],
    primary_key: bytes,
    key_of: Callable[[M], bytes],
    size_of: Callable[[M], int],
    *,
    limit: int = TXN_COMMIT_BATCH_SIZE,
) -> list[Batch[R, M]]:
    """Cut each region's mutations into batches of about ``limit`` bytes, primary first.

    A batch grows until its size reaches ``limit`` (so it may exceed it by the last
    item), as client-go ``appendBatchMutationsBySize``. Prewrite sizes keys and values;
    commit, cleanup and pessimistic lock size keys only — pass ``size_of`` accordingly.
    The batch holding the primary key is swapped to the front (``setPrimary``): the
    primary must be committed / cleaned up / locked before the others.

    Raises:
        ValueError: ``limit`` is not positive.

    """
    if limit <= 0:
        raise ValueError(f"batch limit must be positive, got {limit}")
    batches: list[Batch[R, M]] = []
    primary_index = -1
    for group in groups:
        items = group.items
        n = len(items)
        start = 0
        while start < n:
            size = 0
            end = start
            has_primary = False
            while end < n and size < limit:
                item = items[end]
                size += size_of(item)
                if primary_index < 0 and key_of(item) == primary_key:
                    has_primary = True
                end += 1
            if has_primary:
                primary_index = len(batches)
            batches.append(Batch(group.region, items[start:end], has_primary))
            start = end
    if primary_index > 0:
        batches[0], batches[primary_index] = batches[primary_index], batches[0]
    return batches


def pre_split_keys(
    items: Sequence[M],
    key_of: Callable[[M], bytes],
    size_of: Callable[[M], int],
    *,
    detect_threshold: int = PRE_SPLIT_DETECT_THRESHOLD,
    size_threshold: int = PRE_SPLIT_SIZE_THRESHOLD,
) -> list[bytes]:
    """Return split keys for one region's mutations, or ``[]`` when no split is needed.

    A region receiving ``detect_threshold`` or more mutations of one transaction is split
    every ``size_threshold`` bytes of keys and values before prewrite, so that a large
    transaction does not make one TiKV busy (client-go ``groupMutations`` /
    ``preSplitRegion``).
    """
    if len(items) < detect_threshold:
        return []
    splits: list[bytes] = []
    size = 0
    for item in items:
        size += size_of(item)
        if size >= size_threshold:
            size = 0
            splits.append(key_of(item))
    return splits


def pipelined_need_flush(
    size: int,
    key_count: int,
    *,
    flushing: bool,
    min_keys: int = PIPELINED_MIN_FLUSH_KEYS,
    min_size: int = PIPELINED_MIN_FLUSH_SIZE,
    force_size: int = PIPELINED_FORCE_FLUSH_SIZE,
) -> bool:
    """Whether a pipelined transaction should flush its buffer now (not forced).

    Flush when the buffer holds ``min_size`` bytes and ``min_keys`` keys, or
    ``force_size`` bytes whatever the key count; while an earlier flush is still running
    only the force threshold triggers one (client-go ``PipelinedMemDB.needFlush``).

    Args:
        size: The buffer's size in bytes.
        key_count: The number of keys in the buffer.
        flushing: A previous flush has not finished yet.
        min_keys: Minimum keys for a normal flush.
        min_size: Minimum bytes for any flush.
        force_size: Bytes that force a flush.

    """
    if size < min_size or (key_count < min_keys and size < force_size):
        return False
    return not (flushing and size < force_size)


# ---------------------------------------------------------------------------------------
# Lock resolution
# ---------------------------------------------------------------------------------------


class Action(enum.IntEnum):
    """What CheckTxnStatus did, with the ``kvrpcpb.Action`` wire numbers."""

    NO_ACTION = 0
    TTL_EXPIRE_ROLLBACK = 1
    LOCK_NOT_EXIST_ROLLBACK = 2
    MIN_COMMIT_TS_PUSHED = 3
    TTL_EXPIRE_PESSIMISTIC_ROLLBACK = 4
    LOCK_NOT_EXIST_DO_NOTHING = 5


_ROLLED_BACK_ACTIONS: Final = frozenset(
    {Action.NO_ACTION, Action.LOCK_NOT_EXIST_ROLLBACK, Action.TTL_EXPIRE_ROLLBACK}
)


@dataclass(frozen=True, slots=True)
class TxnStatus:
    """A transaction's status from CheckTxnStatus (client-go ``txnlock.TxnStatus``).

    Attributes:
        ttl: The primary lock's TTL when the transaction is still locked, else 0.
        commit_ts: The commit ts when committed, else 0.
        action: What TiKV did while checking.
        primary_lock: The primary lock, when TiKV returned it (needed for async commit).

    """

    ttl: int = 0
    commit_ts: int = 0
    action: Action = Action.NO_ACTION
    primary_lock: LockInfo | None = None

    @property
    def is_committed(self) -> bool:
        """The transaction committed (at :attr:`commit_ts`)."""
        return self.commit_ts > 0

    @property
    def is_rolled_back(self) -> bool:
        """The transaction is rolled back (no lock, no commit, a rollback action)."""
        return self.ttl == 0 and self.commit_ts == 0 and self.action in _ROLLED_BACK_ACTIONS

    @property
    def is_determined(self) -> bool:
        """The outcome is final (committed or rolled back) and may be cached."""
        return self.is_committed or self.is_rolled_back


def is_lock_expired(lock_ts: int, ttl_ms: int, current_ts: int) -> bool:
    """Whether a lock's TTL has run out at ``current_ts`` (client-go ``IsExpired``)."""
    return _physical(current_ts) >= _physical(lock_ts) + ttl_ms


def lock_ms_until_expired(lock_ts: int, ttl_ms: int, current_ts: int) -> int:
    """Milliseconds until the lock expires at ``current_ts`` (<= 0 if already expired)."""
    return _physical(lock_ts) + ttl_ms - _physical(current_ts)


def check_txn_status_current_ts(lock: LockInfo, oracle_ts: int) -> int:
    """The ``current_ts`` to send in CheckTxnStatus for ``lock``.

    A lock reported with TTL 0 is TiKV's request to resolve it unconditionally
    (pessimistic prewrite meeting a lock), so the current ts is the maximum, making the
    lock expired (client-go ``getTxnStatusFromLock``). Otherwise the oracle's
    (low-resolution) ts.
    """
    return _MAX_U64 if lock.lock_ttl == 0 else oracle_ts


def use_lite_resolve(
    lock: LockInfo, *, lite: bool = False, threshold: int = RESOLVE_LOCK_LITE_THRESHOLD
) -> bool:
    """Whether to resolve only this lock's key instead of scanning its whole region.

    Small transactions (``txn_size`` below the threshold) have few locks, so resolving
    key by key is cheaper than a region scan (client-go ``resolveLock``).
    """
    return lite or lock.txn_size < threshold


def _is_pessimistic(lock: LockInfo) -> bool:
    return lock.lock_type in (Op.PESSIMISTIC_LOCK, Op.SHARED_PESSIMISTIC_LOCK)


class TxnNotFoundAction(enum.Enum):
    """What to do when CheckTxnStatus answers TxnNotFound (no primary lock, no record)."""

    #: The lock expired: check again with rollback_if_not_exist, which writes a
    #: rollback record and settles the transaction as rolled back.
    RETRY_WITH_ROLLBACK = "retry_with_rollback"
    #: A live pessimistic lock whose primary is gone (its transaction rolled back by the
    #: user): treat it as alive with its own TTL and let the caller retry.
    TREAT_AS_ALIVE = "treat_as_alive"
    #: A live prewrite lock: the primary may not be written yet (secondaries raced
    #: ahead); back off with the txnNotFound kind and check again.
    BACKOFF_AND_RETRY = "backoff_and_retry"


def decide_on_txn_not_found(lock: LockInfo, current_ts: int) -> TxnNotFoundAction:
    """Decide how to continue after TxnNotFound (client-go ``getTxnStatusFromLock``)."""
    if lock_ms_until_expired(lock.lock_version, lock.lock_ttl, current_ts) <= 0:
        return TxnNotFoundAction.RETRY_WITH_ROLLBACK
    if _is_pessimistic(lock):
        return TxnNotFoundAction.TREAT_AS_ALIVE
    return TxnNotFoundAction.BACKOFF_AND_RETRY


class LockCleanup(enum.Enum):
    """What the resolver must send for a lock."""

    #: Nothing: the transaction is alive (or the work is done elsewhere).
    NONE = "none"
    #: ResolveLock with the commit ts.
    COMMIT = "commit"
    #: ResolveLock without commit ts (roll the lock back).
    ROLLBACK = "rollback"
    #: PessimisticRollback of the key (a pessimistic lock is never committed as such).
    PESSIMISTIC_ROLLBACK = "pessimistic_rollback"
    #: Expired async-commit lock with undetermined status: CheckSecondaryLocks on all
    #: secondaries to learn the outcome (see :class:`AsyncResolveData`).
    CHECK_SECONDARIES = "check_secondaries"
    #: Async-commit transaction with a determined status: resolve its primary and all
    #: secondaries with that status.
    RESOLVE_ASYNC_COMMIT = "resolve_async_commit"


class LockVisibility(enum.Enum):
    """What a reader may do with the lock after this round."""

    #: The reader must wait (back off) and retry.
    BLOCKED = "blocked"
    #: The reader may read past the lock: it cannot affect the reader's snapshot.
    IGNORE = "ignore"
    #: The lock's transaction committed at or before the reader's ts: read its value.
    ACCESS = "access"


@dataclass(frozen=True, slots=True)
class LockDecision:
    """The resolver's decision for one lock (client-go ``resolveLocks``' inner rules).

    Attributes:
        cleanup: What to send.
        visibility: What the caller may do next (readers: ignore / access / wait).
        commit_ts: The commit ts for COMMIT (and async-commit resolution), else 0.
        lite: Resolve only this key, not the whole region.
        skip_rpc: CheckTxnStatus already resolved this lock (it is the primary), so
            nothing needs to be sent.
        ms_before_expired: How long the caller should wait when blocked (0 when the
            lock is gone or expired).
        pushed: TiKV pushed the lock's min_commit_ts past the caller's ts.

    """

    cleanup: LockCleanup
    visibility: LockVisibility
    commit_ts: int = 0
    lite: bool = False
    skip_rpc: bool = False
    ms_before_expired: int = 0
    pushed: bool = False


def decide_lock_resolution(
    lock: LockInfo,
    status: TxnStatus,
    *,
    caller_start_ts: int,
    current_ts: int,
    for_read: bool = False,
    force_sync_commit: bool = False,
    lite: bool = False,
    lite_threshold: int = RESOLVE_LOCK_LITE_THRESHOLD,
) -> LockDecision:
    """Decide what to do with a lock once its transaction's status is known.

    The rules of client-go ``resolveLocks``:

    * The transaction is alive (``status.ttl != 0``) — unless it is an async-commit
      transaction whose primary lock has expired — so nothing is sent: writers wait,
      readers may read past it when TiKV pushed its min_commit_ts beyond them.
    * An expired async-commit lock is settled by checking all secondaries when the
      status is undetermined, or by resolving primary and secondaries when determined.
    * A pessimistic lock of a finished transaction is rolled back pessimistically.
    * Any other lock is resolved with the transaction's outcome: committed (with its
      commit ts) or rolled back; "lite" (this key only) for small transactions, and no
      RPC at all for the primary in lite mode, since CheckTxnStatus resolved it.
    * Readers may ignore locks of rolled-back transactions and of transactions that
      committed after them, and may read the value of one that committed before them.

    Args:
        lock: The lock that was met.
        status: The result of CheckTxnStatus on the lock's primary.
        caller_start_ts: The start ts of the reader / writer that met the lock.
        current_ts: The oracle's current ts, used for the TTL checks.
        for_read: The caller is a reader.
        force_sync_commit: The status was checked with force_sync_commit (after an
            async-commit resolution found a non-async-commit lock).
        lite: Force key-only resolution.
        lite_threshold: Transactions smaller than this are resolved lite.

    """
    ttl_expired = is_lock_expired(lock.lock_version, status.ttl, current_ts)
    primary = status.primary_lock
    expired_async = (
        primary is not None and primary.use_async_commit and not force_sync_commit and ttl_expired
    )
    pushed = status.action is Action.MIN_COMMIT_TS_PUSHED
    if status.ttl != 0 and not expired_async:
        wait = max(0, lock_ms_until_expired(lock.lock_version, status.ttl, current_ts))
        if for_read and pushed:
            return LockDecision(LockCleanup.NONE, LockVisibility.IGNORE, pushed=True)
        return LockDecision(
            LockCleanup.NONE, LockVisibility.BLOCKED, ms_before_expired=wait, pushed=pushed
        )

    visibility = _visibility(status, caller_start_ts)
    if expired_async:
        cleanup = (
            LockCleanup.RESOLVE_ASYNC_COMMIT
            if status.is_determined
            else LockCleanup.CHECK_SECONDARIES
        )
        return LockDecision(cleanup, visibility, commit_ts=status.commit_ts, pushed=pushed)
    if _is_pessimistic(lock):
        return LockDecision(
            LockCleanup.PESSIMISTIC_ROLLBACK,
            visibility,
            skip_rpc=lock.key == lock.primary_lock,
            pushed=pushed,
        )
    use_lite = use_lite_resolve(lock, lite=lite, threshold=lite_threshold)
    if status.is_committed:
        return LockDecision(
            LockCleanup.COMMIT,
            visibility,
            commit_ts=status.commit_ts,
            lite=use_lite,
            skip_rpc=use_lite and lock.key == lock.primary_lock,
            pushed=pushed,
        )
    return LockDecision(
        LockCleanup.ROLLBACK,
        visibility,
        lite=use_lite,
        skip_rpc=use_lite and lock.key == lock.primary_lock,
        pushed=pushed,
    )


def _visibility(status: TxnStatus, caller_start_ts: int) -> LockVisibility:
    if (
        status.action is Action.MIN_COMMIT_TS_PUSHED
        or status.is_rolled_back
        or (status.is_committed and status.commit_ts > caller_start_ts)
    ):
        return LockVisibility.IGNORE
    if status.is_committed:
        return LockVisibility.ACCESS
    return LockVisibility.BLOCKED


@dataclass(slots=True)
class AsyncResolveData:
    """Outcome of an async-commit transaction, gathered from CheckSecondaryLocks.

    Start with the primary lock's min_commit_ts. Feed every region's response to
    :meth:`add`. If any lock is missing, the transaction is already settled and every
    response must agree on its commit ts (0 = rolled back); otherwise all locks are
    present and the transaction commits at the largest min_commit_ts (client-go
    ``asyncResolveData.addKeys``).

    Attributes:
        start_ts: The transaction being resolved.
        commit_ts: The commit ts decided so far (0 = rolled back when a lock is missing).
        keys: Keys whose locks must be resolved with the outcome.
        missing_lock: Some secondary had no lock.

    """

    start_ts: int
    commit_ts: int
    keys: list[bytes] = field(default_factory=list)
    missing_lock: bool = False

    def add(self, locks: Sequence[LockInfo], expected: int, commit_ts: int) -> bool:
        """Add one CheckSecondaryLocks response.

        Args:
            locks: The locks TiKV found (one per key still locked by the transaction).
            expected: How many keys the request asked about.
            commit_ts: The response's commit ts (non-zero if TiKV found the
                transaction committed).

        Returns:
            ``False`` if a lock is not an async-commit lock: the transaction fell back
            to 2PC and must be resolved with ``force_sync_commit`` instead.

        Raises:
            TxnError: The responses contradict each other (different commit ts, a
                commit ts below the min commit ts, a lock of another transaction).

        """
        if len(locks) < expected:
            # A lock is gone: the transaction was committed or rolled back already and
            # TiKV resolved the remaining ones as appropriate.
            if not self.missing_lock:
                if commit_ts != 0 and commit_ts < self.commit_ts:
                    raise TxnError(
                        f"async commit recovery of txn {self.start_ts}: commit ts {commit_ts} "
                        f"is below the min commit ts {self.commit_ts}"
                    )
                self.commit_ts = commit_ts
            self.missing_lock = True
            if self.commit_ts != commit_ts:
                raise TxnError(
                    f"async commit recovery of txn {self.start_ts}: commit ts mismatch "
                    f"{self.commit_ts} != {commit_ts}"
                )
            return True
        for lock in locks:
            if lock.lock_version != self.start_ts:
                raise TxnError(
                    f"async commit recovery of txn {self.start_ts}: found a lock of txn "
                    f"{lock.lock_version}"
                )
            if not lock.use_async_commit:
                return False
            if not self.missing_lock and lock.min_commit_ts > self.commit_ts:
                self.commit_ts = lock.min_commit_ts
            self.keys.append(lock.key)
        return True

    def status(self) -> TxnStatus:
        """The transaction's status once every region was added."""
        return TxnStatus(ttl=0, commit_ts=self.commit_ts)
