"""Value types of the MVCC engine: enums, lock and write records, mutations and results.

Every enum whose name matches a kvrpcpb enum (``Op``, ``Assertion``, ``AssertionLevel``,
``PessimisticAction``, ``IsolationLevel``, ``Action``, ``WriteConflictReason``) carries the
same integer values as the protobuf enum, so the gRPC layer converts with ``int(x)`` /
:func:`enum_of` (``Enum(value)`` through the enum's own value table).

The records are frozen dataclasses with ``__slots__``: the engine replaces a lock or a
write instead of mutating it, so a value handed to a caller can never change under it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TypeVar, cast

__all__ = [
    "MAX_TS",
    "SHORT_VALUE_MAX_LEN",
    "TSO_PHYSICAL_SHIFT",
    "Action",
    "Assertion",
    "AssertionLevel",
    "GcResult",
    "IsolationLevel",
    "KvPair",
    "Lock",
    "LockInfo",
    "LockType",
    "Mutation",
    "MvccInfo",
    "Op",
    "PessimisticAction",
    "PessimisticLockKeyResult",
    "PessimisticLockResult",
    "PrewriteResult",
    "SecondaryLocksStatus",
    "TxnStatus",
    "WaitForEntry",
    "Write",
    "WriteConflictReason",
    "WriteType",
    "enum_of",
    "physical_ms",
]

#: The largest timestamp (u64::MAX). A point get at this ts reads "the latest committed
#: value"; TiKV gives it special lock rules (see ``components/txn_types/src/lock.rs``).
MAX_TS = (1 << 64) - 1

#: A TSO timestamp is ``physical_ms << 18 | logical`` (PD ``tsoutil``; TiKV ``TimeStamp``).
TSO_PHYSICAL_SHIFT = 18

#: TiKV stores values up to this length inside the lock / write record ("short value",
#: ``txn_types::SHORT_VALUE_MAX_LEN``); longer values go to the default column family.
#: The engine keeps every value inline, but reports the split in :class:`MvccInfo`.
SHORT_VALUE_MAX_LEN = 255


_E = TypeVar("_E", bound=enum.Enum)


def enum_of(cls: type[_E], value: object) -> _E:
    """``cls(value)``: the member for a value (or a member), ``ValueError`` for an unknown one.

    A dictionary lookup in the enum's value table; calling an enum class costs ~0.3 µs, which
    adds up on the request path (several conversions per request).
    """
    member = cls._value2member_map_.get(value)
    return cast(_E, member) if member is not None else cls(value)


def physical_ms(ts: int) -> int:
    """Return the physical (millisecond) part of a TSO timestamp.

    Lock TTLs are milliseconds and TiKV compares ``physical(lock.start_ts) + ttl``
    against ``physical(current_ts)`` (``actions/check_txn_status.rs``).
    """
    return ts >> TSO_PHYSICAL_SHIFT


class Op(enum.IntEnum):
    """kvrpcpb.Op: the operation of a mutation or the type of a lock as seen by clients."""

    PUT = 0
    DEL = 1
    LOCK = 2
    ROLLBACK = 3
    INSERT = 4
    PESSIMISTIC_LOCK = 5
    CHECK_NOT_EXISTS = 6


class Assertion(enum.IntEnum):
    """kvrpcpb.Assertion: what the client asserts about a key's existence at prewrite."""

    NONE = 0
    EXIST = 1
    NOT_EXIST = 2


class AssertionLevel(enum.IntEnum):
    """kvrpcpb.AssertionLevel: how hard TiKV works to check assertions."""

    OFF = 0
    #: Check only when the newest version was already read for another reason.
    FAST = 1
    #: Always read the newest data version to check.
    STRICT = 2


class PessimisticAction(enum.IntEnum):
    """kvrpcpb.PrewriteRequest.PessimisticAction, one per mutation of a pessimistic prewrite."""

    #: The key was not pessimistically locked: no lock is expected.
    SKIP_PESSIMISTIC_CHECK = 0
    #: The key must hold this transaction's pessimistic lock.
    DO_PESSIMISTIC_CHECK = 1
    #: Not locked, but check for newer versions (lazy uniqueness check).
    DO_CONSTRAINT_CHECK = 2


class IsolationLevel(enum.IntEnum):
    """kvrpcpb.IsolationLevel of a read."""

    SI = 0
    RC = 1
    RC_CHECK_TS = 2


class Action(enum.IntEnum):
    """kvrpcpb.Action: what CheckTxnStatus did to the primary lock."""

    NO_ACTION = 0
    TTL_EXPIRE_ROLLBACK = 1
    LOCK_NOT_EXIST_ROLLBACK = 2
    MIN_COMMIT_TS_PUSHED = 3
    TTL_EXPIRE_PESSIMISTIC_ROLLBACK = 4
    LOCK_NOT_EXIST_DO_NOTHING = 5


class WriteConflictReason(enum.IntEnum):
    """kvrpcpb.WriteConflict.Reason."""

    UNKNOWN = 0
    OPTIMISTIC = 1
    PESSIMISTIC_RETRY = 2
    SELF_ROLLED_BACK = 3
    RC_CHECK_TS = 4
    LAZY_UNIQUENESS_CHECK = 5
    NOT_LOCKED_KEY_CONFLICT = 6


class LockType(enum.Enum):
    """The type of a lock in the lock column family (``txn_types::LockType``)."""

    PUT = "put"
    DELETE = "delete"
    LOCK = "lock"
    PESSIMISTIC = "pessimistic"

    def to_op(self) -> Op:
        """Return the kvrpcpb.Op that TiKV reports in ``LockInfo.lock_type``."""
        return _LOCK_TYPE_TO_OP[self]


_LOCK_TYPE_TO_OP = {
    LockType.PUT: Op.PUT,
    LockType.DELETE: Op.DEL,
    LockType.LOCK: Op.LOCK,
    LockType.PESSIMISTIC: Op.PESSIMISTIC_LOCK,
}


class WriteType(enum.Enum):
    """The type of a record in the write column family (``txn_types::WriteType``)."""

    PUT = "put"
    DELETE = "delete"
    LOCK = "lock"
    ROLLBACK = "rollback"

    @staticmethod
    def from_lock_type(lock_type: LockType) -> WriteType:
        """Return the write type that committing a lock of ``lock_type`` produces."""
        if lock_type is LockType.PUT:
            return WriteType.PUT
        if lock_type is LockType.DELETE:
            return WriteType.DELETE
        if lock_type is LockType.LOCK:
            return WriteType.LOCK
        raise ValueError("a pessimistic lock cannot be committed")


@dataclass(frozen=True, slots=True)
class LockInfo:
    """The facts of a lock as kvrpcpb.LockInfo carries them (field names match)."""

    primary_lock: bytes
    lock_version: int
    key: bytes
    lock_ttl: int
    txn_size: int
    lock_type: Op
    lock_for_update_ts: int
    use_async_commit: bool
    min_commit_ts: int
    secondaries: tuple[bytes, ...] = ()
    #: 0: the engine does not track lock-wait durations (``duration_to_last_update_ms``).
    duration_to_last_update_ms: int = 0


@dataclass(frozen=True, slots=True)
class Lock:
    """One lock in the lock column family; at most one per key.

    Attributes:
        lock_type: Put / Delete / Lock from a prewrite, or Pessimistic.
        primary: the transaction's primary key.
        start_ts: the owning transaction's start timestamp.
        ttl: time to live in milliseconds, counted from ``physical_ms(start_ts)``.
        value: the value of a Put lock (TiKV's short value or default-CF value).
        for_update_ts: non-zero for a pessimistic transaction's locks.
        txn_size: number of keys of the transaction in the region (a resolver hint).
        min_commit_ts: the commit ts must be at least this (0 when unset).
        use_async_commit: the lock belongs to an async-commit transaction.
        secondaries: for an async-commit primary, every other key of the transaction.
        rollback_ts: start_ts of other transactions rolled back on this key while it was
            locked; a commit at one of those ts marks the write ``has_overlapped_rollback``.
        generation: the pipelined-DML flush generation that wrote it (0 = normal prewrite).
        is_locked_with_conflict: a pessimistic lock acquired in force-lock mode over a newer
            write.

    """

    lock_type: LockType
    primary: bytes
    start_ts: int
    ttl: int
    value: bytes | None = None
    for_update_ts: int = 0
    txn_size: int = 0
    min_commit_ts: int = 0
    use_async_commit: bool = False
    secondaries: tuple[bytes, ...] = ()
    rollback_ts: tuple[int, ...] = ()
    generation: int = 0
    is_locked_with_conflict: bool = False

    @property
    def is_pessimistic_lock(self) -> bool:
        """Whether this is a pessimistic lock (not yet prewritten)."""
        return self.lock_type is LockType.PESSIMISTIC

    @property
    def is_pessimistic_txn(self) -> bool:
        """Whether the owning transaction is pessimistic (TiKV: ``for_update_ts != 0``)."""
        return self.for_update_ts != 0

    def to_lock_info(self, key: bytes) -> LockInfo:
        """Describe this lock on ``key`` the way TiKV reports it (``Lock::into_lock_info``)."""
        return LockInfo(
            primary_lock=self.primary,
            lock_version=self.start_ts,
            key=key,
            lock_ttl=self.ttl,
            txn_size=self.txn_size,
            lock_type=self.lock_type.to_op(),
            lock_for_update_ts=self.for_update_ts,
            use_async_commit=self.use_async_commit,
            min_commit_ts=self.min_commit_ts,
            secondaries=self.secondaries,
        )


@dataclass(frozen=True, slots=True)
class Write:
    """One record of the write column family, stored under ``(key, commit_ts)``.

    A Rollback record is stored at ``commit_ts == start_ts``. ``is_protected`` marks a
    rollback that must never be collapsed (primary keys, TiKV's protected rollback).
    ``has_overlapped_rollback`` marks a commit record whose commit_ts equals the start_ts
    of another transaction that was rolled back on the same key.
    """

    write_type: WriteType
    start_ts: int
    value: bytes | None = None
    has_overlapped_rollback: bool = False
    is_protected: bool = False


@dataclass(frozen=True, slots=True)
class Mutation:
    """A kvrpcpb.Mutation: ``op`` on ``key`` with ``value`` (Put / Insert) and an assertion."""

    op: Op
    key: bytes
    value: bytes = b""
    assertion: Assertion = Assertion.NONE

    @staticmethod
    def put(key: bytes, value: bytes, assertion: Assertion = Assertion.NONE) -> Mutation:
        """Return a Put mutation."""
        return Mutation(Op.PUT, key, value, assertion)

    @staticmethod
    def delete(key: bytes, assertion: Assertion = Assertion.NONE) -> Mutation:
        """Return a Del mutation."""
        return Mutation(Op.DEL, key, b"", assertion)

    @staticmethod
    def insert(key: bytes, value: bytes, assertion: Assertion = Assertion.NONE) -> Mutation:
        """Return an Insert mutation (a Put that fails with AlreadyExist if the key exists)."""
        return Mutation(Op.INSERT, key, value, assertion)

    @staticmethod
    def lock(key: bytes, assertion: Assertion = Assertion.NONE) -> Mutation:
        """Return a Lock mutation (locks the key, commits a Lock record, writes no data)."""
        return Mutation(Op.LOCK, key, b"", assertion)

    @staticmethod
    def check_not_exists(key: bytes) -> Mutation:
        """Return a CheckNotExists mutation (fails if the key exists, writes nothing)."""
        return Mutation(Op.CHECK_NOT_EXISTS, key)


@dataclass(frozen=True, slots=True)
class KvPair:
    """One entry of a batch get or scan: a value, or the lock error that hides it.

    ``error`` is a :class:`~tikv_mockstore.mvcc.errors.KeyIsLockedError` (kvrpcpb.KvPair
    carries it in its ``error`` field); then ``value`` is empty. ``commit_ts`` is the commit
    ts of the version a batch get read (kvrpcpb.KvPair ``commit_ts``, sent when the request
    sets ``need_commit_ts``); 0 for scans, errors and values read through a committed
    transaction's lock.
    """

    key: bytes
    value: bytes
    error: Exception | None = None
    commit_ts: int = 0


@dataclass(frozen=True, slots=True)
class PrewriteResult:
    """The outcome of a prewrite (kvrpcpb.PrewriteResponse).

    Attributes:
        locks: one KeyIsLockedError per key blocked by another transaction's lock. When
            non-empty, nothing was written.
        min_commit_ts: for async commit, the transaction's minimum commit ts (the max over
            its keys); 0 when async commit is not used or fell back to 2PC.
        one_pc_commit_ts: the commit ts when the transaction was committed by 1PC; 0 when
            1PC was not requested or not possible.

    """

    locks: tuple[Exception, ...] = ()
    min_commit_ts: int = 0
    one_pc_commit_ts: int = 0


@dataclass(frozen=True, slots=True)
class PessimisticLockKeyResult:
    """Per-key result of a pessimistic lock request (kvrpcpb.PessimisticLockKeyResult).

    ``value`` is set when values were requested, or the lock was taken with a conflict, and
    the key exists. ``existence`` tells whether the key exists; it is only computed when
    existence was checked, values were requested or the lock was taken with a conflict
    (otherwise False). ``locked_with_conflict_ts`` is non-zero when the lock was
    taken in force-lock mode over a write newer than ``for_update_ts``.
    """

    key: bytes
    value: bytes | None = None
    existence: bool = False
    locked_with_conflict_ts: int = 0


@dataclass(frozen=True, slots=True)
class PessimisticLockResult:
    """The outcome of a pessimistic lock request (kvrpcpb.PessimisticLockResponse).

    ``values`` and ``not_founds`` are parallel to the request's mutations (empty unless
    ``return_values`` or ``check_existence`` was set); ``results`` holds the per-key
    details in the same order.
    """

    values: tuple[bytes, ...] = ()
    not_founds: tuple[bool, ...] = ()
    results: tuple[PessimisticLockKeyResult, ...] = ()


@dataclass(frozen=True, slots=True)
class TxnStatus:
    """The outcome of CheckTxnStatus / TxnHeartBeat (kvrpcpb.CheckTxnStatusResponse).

    ``commit_version`` is non-zero iff the transaction is committed. ``lock_ttl`` is
    non-zero iff the primary lock is still there (the transaction is alive); then
    ``lock_info`` describes it (TiKV returns it for every uncommitted status; clients use
    it for async-commit primaries).
    """

    action: Action = Action.NO_ACTION
    lock_ttl: int = 0
    commit_version: int = 0
    lock_info: LockInfo | None = None

    @property
    def is_committed(self) -> bool:
        """Whether the transaction is committed."""
        return self.commit_version != 0

    @property
    def is_rolled_back(self) -> bool:
        """Whether the transaction is (now) rolled back: no lock and no commit."""
        return self.commit_version == 0 and self.lock_ttl == 0


@dataclass(frozen=True, slots=True)
class SecondaryLocksStatus:
    """The outcome of CheckSecondaryLocks (kvrpcpb.CheckSecondaryLocksResponse).

    If every key is still locked by the transaction, ``locks`` lists them. If one key is
    committed, ``commit_ts`` is set (and ``locks`` is empty). If one key is rolled back
    (or was rolled back now because it had neither lock nor write), both are empty.
    """

    locks: tuple[LockInfo, ...] = ()
    commit_ts: int = 0


@dataclass(frozen=True, slots=True)
class WaitForEntry:
    """One edge of a wait-for chain (deadlock.WaitForEntry; field names match)."""

    txn: int
    wait_for_txn: int
    key_hash: int
    key: bytes = b""
    resource_group_tag: bytes = b""
    wait_time: int = 0


@dataclass(frozen=True, slots=True)
class GcResult:
    """What a GC pass removed."""

    keys_scanned: int = 0
    versions_deleted: int = 0


@dataclass(frozen=True, slots=True)
class MvccInfo:
    """Every MVCC record of one key (for kvrpcpb MvccGetByKey / MvccGetByStartTs).

    ``writes`` are ``(commit_ts, Write)`` newest first. ``values`` are the default-CF
    entries ``(start_ts, value)`` TiKV would hold: values longer than
    :data:`SHORT_VALUE_MAX_LEN` of Put writes and Put locks.
    """

    key: bytes
    lock: Lock | None = None
    writes: tuple[tuple[int, Write], ...] = ()
    values: tuple[tuple[int, bytes], ...] = field(default_factory=tuple)
