"""Percolator MVCC engine of the mock TiKV stores (sans-IO: no protobuf, no gRPC).

Data model (TiKV's three column families, kept in memory):

- **lock CF** — ``SortedDict[key -> Lock]``: at most one lock per key. A prewrite puts a
  Put / Delete / Lock lock carrying the primary key, start_ts, TTL, value, min_commit_ts
  and, for async commit, the secondaries on the primary; a pessimistic lock request puts
  a Pessimistic lock (no value) that a pessimistic prewrite later turns into a real one.
- **write CF** — ``SortedDict[key -> versions]``, each version ``commit_ts -> Write``:
  Put / Delete / Lock commit records (Put carries the value, as TiKV's short value does),
  and Rollback records stored at ``commit_ts == start_ts`` (protected or not).
- **default CF** — not stored separately: values live inline in locks and writes.
  :meth:`MvccEngine.mvcc_by_key` reports the values TiKV would keep there.

A read at ``ts`` sees the newest Put/Delete with ``commit_ts <= ts`` unless a blocking
lock hides it. ``max_ts`` (TiKV's concurrency manager) is raised by every lock-checking
read and bounds async-commit / 1PC commit timestamps from below.

Public API: :class:`MvccEngine` (one method per transactional command), the value types
in :mod:`.types`, the errors in :mod:`.errors` and :class:`DeadlockDetector`.
"""

from tikv_mockstore.mvcc.deadlock import Deadlock, DeadlockDetector
from tikv_mockstore.mvcc.engine import MvccEngine, key_hash
from tikv_mockstore.mvcc.errors import (
    AlreadyExistError,
    AssertionFailedError,
    CommittedError,
    CommitTsExpiredError,
    CommitTsTooLargeError,
    DeadlockError,
    GenerationOutOfOrderError,
    InvalidTxnTsoError,
    KeyIsLockedError,
    LockIfExistsFailedError,
    LockTypeNotMatchError,
    LockWait,
    MvccError,
    PessimisticLockNotFoundError,
    PessimisticLockRolledBackError,
    PrimaryMismatchError,
    TxnLockNotFoundError,
    TxnNotFoundError,
    WriteConflictError,
)
from tikv_mockstore.mvcc.types import (
    MAX_TS,
    Action,
    Assertion,
    AssertionLevel,
    GcResult,
    IsolationLevel,
    KvPair,
    Lock,
    LockInfo,
    LockType,
    Mutation,
    MvccInfo,
    Op,
    PessimisticAction,
    PessimisticLockKeyResult,
    PessimisticLockResult,
    PrewriteResult,
    SecondaryLocksStatus,
    TxnStatus,
    WaitForEntry,
    Write,
    WriteConflictReason,
    WriteType,
    physical_ms,
)

__all__ = [
    "MAX_TS",
    "Action",
    "AlreadyExistError",
    "Assertion",
    "AssertionFailedError",
    "AssertionLevel",
    "CommitTsExpiredError",
    "CommitTsTooLargeError",
    "CommittedError",
    "Deadlock",
    "DeadlockDetector",
    "DeadlockError",
    "GcResult",
    "GenerationOutOfOrderError",
    "InvalidTxnTsoError",
    "IsolationLevel",
    "KeyIsLockedError",
    "KvPair",
    "Lock",
    "LockIfExistsFailedError",
    "LockInfo",
    "LockType",
    "LockTypeNotMatchError",
    "LockWait",
    "Mutation",
    "MvccEngine",
    "MvccError",
    "MvccInfo",
    "Op",
    "PessimisticAction",
    "PessimisticLockKeyResult",
    "PessimisticLockNotFoundError",
    "PessimisticLockResult",
    "PessimisticLockRolledBackError",
    "PrewriteResult",
    "PrimaryMismatchError",
    "SecondaryLocksStatus",
    "TxnLockNotFoundError",
    "TxnNotFoundError",
    "TxnStatus",
    "WaitForEntry",
    "Write",
    "WriteConflictError",
    "WriteConflictReason",
    "WriteType",
    "key_hash",
    "physical_ms",
]
