"""Errors of the MVCC engine, one class per TiKV MVCC error, each carrying its facts.

Hierarchy::

    MvccError                         (base; ``key_error_field`` names the kvrpcpb.KeyError field)
    ├── KeyIsLockedError              locked            (lock_info)
    ├── WriteConflictError            conflict          (+ retryable text)
    ├── AlreadyExistError             already_exist
    ├── DeadlockError                 deadlock
    ├── CommitTsExpiredError          commit_ts_expired
    ├── TxnNotFoundError              txn_not_found
    ├── CommitTsTooLargeError         commit_ts_too_large
    ├── AssertionFailedError          assertion_failed
    ├── PrimaryMismatchError          primary_mismatch
    ├── TxnLockNotFoundError          txn_lock_not_found (+ retryable text)
    └── abort errors                  abort             (str(error) is the message)
        ├── CommittedError            (Cleanup turns it into ``commit_version``)
        ├── PessimisticLockNotFoundError
        ├── PessimisticLockRolledBackError
        ├── LockTypeNotMatchError
        ├── LockIfExistsFailedError
        ├── InvalidTxnTsoError
        └── GenerationOutOfOrderError

How TiKV maps each to ``kvrpcpb.KeyError`` is in ``src/storage/errors.rs``
(``extract_key_error``): the server layer sets the field named by ``key_error_field``
from the attributes of the same names, and for ``abort`` / ``retryable`` uses ``str(e)``.

The classes are plain (not frozen) dataclasses: the exception machinery must be able to
set ``__traceback__`` and ``__context__`` on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tikv_mockstore.mvcc.types import Assertion, LockInfo, WaitForEntry, WriteConflictReason

__all__ = [
    "AlreadyExistError",
    "AssertionFailedError",
    "CommitTsExpiredError",
    "CommitTsTooLargeError",
    "CommittedError",
    "DeadlockError",
    "GenerationOutOfOrderError",
    "InvalidTxnTsoError",
    "KeyIsLockedError",
    "LockIfExistsFailedError",
    "LockTypeNotMatchError",
    "LockWait",
    "MvccError",
    "PessimisticLockNotFoundError",
    "PessimisticLockRolledBackError",
    "PrimaryMismatchError",
    "TxnLockNotFoundError",
    "TxnNotFoundError",
    "WriteConflictError",
]


class MvccError(Exception):
    """Base class of every MVCC engine error."""

    #: The kvrpcpb.KeyError field this error fills.
    key_error_field: str = "abort"

    def __str__(self) -> str:
        return repr(self)


@dataclass(frozen=True, slots=True)
class LockWait:
    """Who waits for whom when a pessimistic lock request meets another transaction's lock.

    The server layer, which implements lock waiting, registers ``(start_ts ->
    lock_info.lock_version)`` with the :class:`~tikv_mockstore.mvcc.deadlock.DeadlockDetector`
    using ``key_hash``, then waits for the lock to go (``MvccEngine.wait_for_lock_change``).
    """

    start_ts: int
    for_update_ts: int
    key: bytes
    key_hash: int
    lock_info: LockInfo
    #: The request's wait timeout in ms (kvrpcpb semantics: <0 no wait, 0 server default).
    wait_timeout: int = 0
    #: The transaction held no lock before this request, so waiting cannot deadlock.
    is_first_lock: bool = False


@dataclass(eq=False)
class KeyIsLockedError(MvccError):
    """The key is locked by another transaction (or, for reads, by a blocking lock)."""

    lock_info: LockInfo
    #: Set by pessimistic lock requests: the wait-for edge for the lock waiter.
    wait: LockWait | None = None
    key_error_field = "locked"


@dataclass(eq=False)
class WriteConflictError(MvccError):
    """A newer write (or this transaction's own rollback) conflicts with the request."""

    start_ts: int
    conflict_start_ts: int
    conflict_commit_ts: int
    key: bytes
    primary: bytes
    reason: WriteConflictReason
    key_error_field = "conflict"


@dataclass(eq=False)
class AlreadyExistError(MvccError):
    """Insert / CheckNotExists / should-not-exist lock met a committed value."""

    key: bytes
    existing_start_ts: int = 0
    key_error_field = "already_exist"


@dataclass(eq=False)
class DeadlockError(MvccError):
    """Waiting for the lock would close a cycle in the wait-for graph (kvrpcpb.Deadlock)."""

    lock_ts: int
    lock_key: bytes
    deadlock_key_hash: int
    wait_chain: tuple[WaitForEntry, ...] = ()
    deadlock_key: bytes = b""
    key_error_field = "deadlock"


@dataclass(eq=False)
class CommitTsExpiredError(MvccError):
    """The commit ts is below the lock's min_commit_ts (the lock was pushed)."""

    start_ts: int
    attempted_commit_ts: int
    key: bytes
    min_commit_ts: int
    key_error_field = "commit_ts_expired"


@dataclass(eq=False)
class TxnNotFoundError(MvccError):
    """CheckTxnStatus / TxnHeartBeat found neither lock nor commit record of the txn."""

    start_ts: int
    primary_key: bytes
    key_error_field = "txn_not_found"


@dataclass(eq=False)
class CommitTsTooLargeError(MvccError):
    """The computed async-commit / 1PC commit ts exceeds ``max_commit_ts``.

    A prewrite never raises it (TiKV falls back to 2PC instead); it is raised internally.
    ``commit_ts`` is the computed min commit ts (kvrpcpb.CommitTsTooLarge.commit_ts).
    """

    start_ts: int
    commit_ts: int
    max_commit_ts: int
    key_error_field = "commit_ts_too_large"


@dataclass(eq=False)
class AssertionFailedError(MvccError):
    """A mutation's existence assertion does not hold."""

    start_ts: int
    key: bytes
    assertion: Assertion
    existing_start_ts: int
    existing_commit_ts: int
    key_error_field = "assertion_failed"


@dataclass(eq=False)
class PrimaryMismatchError(MvccError):
    """CheckTxnStatus(verify_is_primary) reached a lock whose primary is another key."""

    lock_info: LockInfo
    key_error_field = "primary_mismatch"


@dataclass(eq=False)
class TxnLockNotFoundError(MvccError):
    """Commit found neither this transaction's lock nor its commit record."""

    start_ts: int
    commit_ts: int
    key: bytes
    key_error_field = "txn_lock_not_found"


@dataclass(eq=False)
class CommittedError(MvccError):
    """Cleanup / rollback of a transaction that is already committed on the key."""

    start_ts: int
    commit_ts: int
    key: bytes


@dataclass(eq=False)
class PessimisticLockNotFoundError(MvccError):
    """A pessimistic prewrite expected the transaction's pessimistic lock, which is gone.

    ``reason`` is TiKV's ``PessimisticLockNotFoundReason`` name (e.g. ``LockTsMismatch``,
    ``LockForUpdateTsMismatch``, ``LockMissingAmendFail``, ``NonLockKeyConflict``).
    """

    start_ts: int
    key: bytes
    reason: str = field(default="")


@dataclass(eq=False)
class PessimisticLockRolledBackError(MvccError):
    """A pessimistic lock request for a transaction already rolled back on the key."""

    start_ts: int
    key: bytes


@dataclass(eq=False)
class LockTypeNotMatchError(MvccError):
    """The transaction's own lock has the wrong kind (``pessimistic`` = found lock kind)."""

    start_ts: int
    key: bytes
    pessimistic: bool


@dataclass(eq=False)
class LockIfExistsFailedError(MvccError):
    """``lock_only_if_exists`` was requested without ``return_values``."""

    start_ts: int
    key: bytes


@dataclass(eq=False)
class InvalidTxnTsoError(MvccError):
    """A resolve request's commit ts is not greater than its start ts."""

    start_ts: int
    commit_ts: int


@dataclass(eq=False)
class GenerationOutOfOrderError(MvccError):
    """A flush of an older generation than the lock's (ignored by Flush, as in TiKV)."""

    generation: int
    key: bytes
    lock_generation: int
