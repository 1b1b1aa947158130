"""The Percolator MVCC engine: TiKV's transactional commands over an in-memory store.

See the package docstring (:mod:`tikv_mockstore.mvcc`) for the data model. Every public
method is one TiKV transactional command; its parameters mirror the kvrpcpb request
fields. A write command is atomic: it either applies all its changes or, when it raises,
none (TiKV builds a write batch and applies it whole; the engine keeps an undo log).

Rules follow TiKV ``src/storage/txn/actions/*.rs`` and ``src/storage/txn/commands/*.rs``;
each method names the file it follows.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Final, TypeVar

if TYPE_CHECKING:
    _K = TypeVar("_K")
    _V = TypeVar("_V")

    class SortedDict(dict[_K, _V]):
        """The typed subset of ``sortedcontainers.SortedDict`` used here (it ships no stubs)."""

        def irange(
            self,
            minimum: _K | None = None,
            maximum: _K | None = None,
            inclusive: tuple[bool, bool] = (True, True),
            reverse: bool = False,
        ) -> Iterator[_K]:
            """Keys between ``minimum`` and ``maximum`` in order."""
            ...

else:
    from sortedcontainers import SortedDict

from tikv_mockstore.mvcc.errors import (
    AlreadyExistError,
    AssertionFailedError,
    CommittedError,
    CommitTsExpiredError,
    CommitTsTooLargeError,
    GenerationOutOfOrderError,
    InvalidTxnTsoError,
    KeyIsLockedError,
    LockIfExistsFailedError,
    LockTypeNotMatchError,
    LockWait,
    PessimisticLockNotFoundError,
    PessimisticLockRolledBackError,
    PrimaryMismatchError,
    TxnLockNotFoundError,
    TxnNotFoundError,
    WriteConflictError,
)
from tikv_mockstore.mvcc.types import (
    MAX_TS,
    SHORT_VALUE_MAX_LEN,
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
    Write,
    WriteConflictReason,
    WriteType,
    enum_of,
    physical_ms,
)

__all__ = ["MvccEngine", "key_hash"]

_T = TypeVar("_T")

_log = logging.getLogger(__name__)

_EMPTY: Final[frozenset[int]] = frozenset()
_DATA_TYPES: Final = (WriteType.PUT, WriteType.DELETE)

# Commit kinds of a prewrite (TiKV ``CommitKind``).
_TWO_PC: Final = 0
_ASYNC: Final = 1
_ONE_PC: Final = 2

# Internal transaction statuses (TiKV ``TxnStatus``).
_ROLLED_BACK: Final = 0
_TTL_EXPIRE: Final = 1
_LOCK_NOT_EXIST: Final = 2
_COMMITTED: Final = 3
_UNCOMMITTED: Final = 4
_PESSIMISTIC_ROLLED_BACK: Final = 5
_LOCK_NOT_EXIST_DO_NOTHING: Final = 6

# What to do when CheckTxnStatus / Cleanup finds no lock (TiKV ``MissingLockAction``).
_MISSING_ROLLBACK: Final = 0  # write a non-protected rollback, collapse older ones
_MISSING_PROTECTED_ROLLBACK: Final = 1  # write a protected rollback
_MISSING_RETURN_ERROR: Final = 2  # TxnNotFound

_PESSIMISTIC_OK_OPS: Final = frozenset({Op.PUT, Op.DEL, Op.LOCK, Op.INSERT, Op.CHECK_NOT_EXISTS})


def key_hash(key: bytes) -> int:
    """Return the 64-bit hash of ``key`` used in wait-for entries and deadlock reports.

    TiKV uses farmhash's fingerprint64; clients only compare hashes that the same server
    produced, so any stable 64-bit hash is wire-compatible. This one is BLAKE2b-64.
    """
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


class _KeyWrites:
    """The write-CF records of one key, ordered by commit_ts ascending (newest last)."""

    __slots__ = ("recs", "ts")

    def __init__(self) -> None:
        self.ts: list[int] = []
        self.recs: list[Write] = []

    def put(self, commit_ts: int, write: Write) -> Write | None:
        ts = self.ts
        if not ts or ts[-1] < commit_ts:
            ts.append(commit_ts)
            self.recs.append(write)
            return None
        i = bisect_left(ts, commit_ts)
        if i < len(ts) and ts[i] == commit_ts:
            old = self.recs[i]
            self.recs[i] = write
            return old
        ts.insert(i, commit_ts)
        self.recs.insert(i, write)
        return None

    def delete(self, commit_ts: int) -> Write | None:
        i = bisect_left(self.ts, commit_ts)
        if i < len(self.ts) and self.ts[i] == commit_ts:
            del self.ts[i]
            return self.recs.pop(i)
        return None

    def newest_at_or_below(self, ts: int) -> int:
        """Index of the newest record with commit_ts <= ts, or -1."""
        return bisect_right(self.ts, ts) - 1


class _Commit:
    """A transaction's commit record on a key (TiKV ``TxnCommitRecord``)."""

    __slots__ = ("commit_ts", "kind", "write")

    SINGLE: Final = 0  # a write of this txn: committed (Put/Delete/Lock) or Rollback
    OVERLAPPED_ROLLBACK: Final = 1  # another txn's commit at our start_ts carries our rollback
    NONE: Final = 2  # nothing; ``write`` may be another txn's commit at our start_ts

    def __init__(self, kind: int, commit_ts: int = 0, write: Write | None = None) -> None:
        self.kind = kind
        self.commit_ts = commit_ts
        self.write = write

    @property
    def is_committed(self) -> bool:
        return (
            self.kind == _Commit.SINGLE
            and self.write is not None
            and self.write.write_type is not WriteType.ROLLBACK
        )

    @property
    def is_rolled_back(self) -> bool:
        if self.kind == _Commit.OVERLAPPED_ROLLBACK:
            return True
        return (
            self.kind == _Commit.SINGLE
            and self.write is not None
            and self.write.write_type is WriteType.ROLLBACK
        )


class _Props:
    """The transaction-wide properties of a prewrite (TiKV ``TransactionProperties``)."""

    __slots__ = (
        "assertion_level",
        "commit_kind",
        "for_update_ts",
        "is_retry_request",
        "lock_ttl",
        "max_commit_ts",
        "min_commit_ts",
        "pessimistic",
        "primary",
        "skip_constraint_check",
        "start_ts",
        "txn_size",
    )

    def __init__(
        self,
        *,
        start_ts: int,
        pessimistic: bool,
        for_update_ts: int,
        skip_constraint_check: bool,
        commit_kind: int,
        max_commit_ts: int,
        primary: bytes,
        txn_size: int,
        lock_ttl: int,
        min_commit_ts: int,
        is_retry_request: bool,
        assertion_level: AssertionLevel,
    ) -> None:
        self.start_ts = start_ts
        self.pessimistic = pessimistic
        self.for_update_ts = for_update_ts
        self.skip_constraint_check = skip_constraint_check
        self.commit_kind = commit_kind
        self.max_commit_ts = max_commit_ts
        self.primary = primary
        self.txn_size = txn_size
        self.lock_ttl = lock_ttl
        self.min_commit_ts = min_commit_ts
        self.is_retry_request = is_retry_request
        self.assertion_level = assertion_level


# ----------------------------------------------------------------------------- validation


def _check_bytes(value: object, name: str) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    return value


def _check_ts(value: object, name: str, *, allow_zero: bool = True) -> int:
    if type(value) is int and 0 < value <= MAX_TS:  # the common case, at once
        return value
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int timestamp, not {type(value).__name__}")
    if value < 0 or value > MAX_TS:
        raise ValueError(f"{name} must be in [0, 2**64-1], got {value}")
    if not allow_zero and value == 0:
        raise ValueError(f"{name} must be a non-zero timestamp")
    return value


def _check_keys(keys: object, name: str) -> list[bytes]:
    # Checked on every command: the messages are only built for a bad argument.
    if isinstance(keys, bytes | str) or not isinstance(keys, Iterable):
        raise TypeError(f"{name} must be a sequence of bytes keys")
    out = list(keys)
    for k in out:
        if type(k) is not bytes:
            _check_bytes(k, f"every key in {name}")
    return out


def _check_mutations(mutations: object) -> list[Mutation]:
    if not isinstance(mutations, Iterable):
        raise TypeError("mutations must be a sequence of Mutation")
    out = list(mutations)
    for m in out:
        if type(m) is Mutation and type(m.key) is bytes and type(m.value) is bytes:
            continue
        if not isinstance(m, Mutation):
            raise TypeError(f"every mutation must be a Mutation, not {type(m).__name__}")
        _check_bytes(m.key, "Mutation.key")
        _check_bytes(m.value, "Mutation.value")
    return out


def _retry_conflict(
    start_ts: int, conflict_start_ts: int, conflict_commit_ts: int, key: bytes, primary: bytes
) -> WriteConflictError:
    """The WriteConflict of a pessimistic lock request: retry with a newer for_update_ts."""
    return WriteConflictError(
        start_ts=start_ts,
        conflict_start_ts=conflict_start_ts,
        conflict_commit_ts=conflict_commit_ts,
        key=key,
        primary=primary,
        reason=WriteConflictReason.PESSIMISTIC_RETRY,
    )


def _pessimistic_lock(
    primary: bytes,
    start_ts: int,
    ttl: int,
    for_update_ts: int,
    min_commit_ts: int,
    is_locked_with_conflict: bool,
) -> Lock:
    """A pessimistic lock record (``acquire_pessimistic_lock.rs``)."""
    return Lock(
        lock_type=LockType.PESSIMISTIC,
        primary=primary,
        start_ts=start_ts,
        ttl=ttl,
        for_update_ts=for_update_ts,
        min_commit_ts=min_commit_ts,
        is_locked_with_conflict=is_locked_with_conflict,
    )


class MvccEngine:
    """An in-memory Percolator MVCC store with TiKV's transactional semantics.

    Thread-safe: one re-entrant lock guards the store; each command holds it for its
    whole (short) run. ``max_ts`` models TiKV's concurrency manager: reads and status
    checks raise it, and async-commit / 1PC commit timestamps are computed above it.

    Timestamps are TSO integers (``physical_ms << 18 | logical``); TTLs are
    milliseconds compared against ``physical_ms(current_ts)`` passed by the caller.
    """

    def __init__(self) -> None:
        self._mu = threading.RLock()
        self._cond = threading.Condition(self._mu)
        self._locks: SortedDict[bytes, Lock] = SortedDict()
        self._writes: SortedDict[bytes, _KeyWrites] = SortedDict()
        self._max_ts = 0
        # Undo log of the running write command: (0, key, old_lock) or
        # (1, key, commit_ts, old_write).
        self._undo: list[tuple[int, bytes, object, object]] = []
        self._lock_changed = False
        # Threads blocked in wait_for_lock_change (the condition is notified only then).
        self._lock_waiters = 0
        self._lock_listeners: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ max_ts

    @property
    def max_ts(self) -> int:
        """The largest timestamp any read or status check has used (concurrency manager)."""
        return self._max_ts

    def update_max_ts(self, ts: int) -> None:
        """Raise ``max_ts`` to ``ts`` (ignored for ``MAX_TS``, which is not a real time)."""
        _check_ts(ts, "ts")
        with self._mu:
            self._bump_max_ts(ts)

    def _bump_max_ts(self, ts: int) -> None:
        if ts != MAX_TS and ts > self._max_ts:
            self._max_ts = ts

    # ------------------------------------------------------------------ listeners

    def add_lock_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change of the transaction holding a key's lock.

        Every command that takes a lock, removes one (commit, rollback, resolve, cleanup, a
        1PC prewrite of a pessimistic transaction, ``delete_range`` / ``unsafe_destroy_range``)
        or replaces it with another transaction's calls it, whoever called the engine: the
        lock-wait manager follows lock holders and wakes its waiters from here (a change
        within one transaction, such as a prewrite over its own pessimistic lock, does not
        call it). It runs with the engine's lock held,
        so it must return quickly and must not wait for a thread that uses the engine (hand
        the work to another thread).
        """
        with self._mu:
            self._lock_listeners.append(listener)

    def _locks_released(self) -> None:
        # Called with self._mu held.
        if self._lock_waiters:
            self._cond.notify_all()
        for listener in self._lock_listeners:
            try:
                listener()
            except Exception:  # a listener must not undo a finished command
                _log.exception("lock listener failed")

    # ------------------------------------------------------------------ store primitives

    def _run(self, fn: Callable[[], _T]) -> _T:
        """Run a write command atomically: undo every change if it raises."""
        with self._mu:
            self._undo = []
            self._lock_changed = False
            try:
                result = fn()
            except BaseException:
                self._apply_undo()
                raise
            finally:
                changed = self._lock_changed
                self._undo = []
                self._lock_changed = False
            if changed:
                self._locks_released()
            return result

    def _apply_undo(self) -> None:
        undo = self._undo
        while undo:
            entry = undo.pop()
            if entry[0] == 0:
                key, old_lock = entry[1], entry[2]
                if old_lock is None:
                    self._locks.pop(key, None)
                else:
                    assert isinstance(old_lock, Lock)
                    self._locks[key] = old_lock
            else:
                key, commit_ts, old_write = entry[1], entry[2], entry[3]
                assert isinstance(commit_ts, int)
                kw = self._writes.get(key)
                if old_write is None:
                    if kw is not None:
                        kw.delete(commit_ts)
                        if not kw.ts:
                            del self._writes[key]
                else:
                    assert isinstance(old_write, Write)
                    if kw is None:
                        kw = self._writes[key] = _KeyWrites()
                    kw.put(commit_ts, old_write)
        self._lock_changed = False

    def _set_lock(self, key: bytes, lock: Lock | None) -> None:
        old = self._locks.get(key)
        self._undo.append((0, key, old, None))
        if lock is None:
            if old is not None:
                del self._locks[key]
                self._lock_changed = True
        else:
            self._locks[key] = lock
            if old is None or old.start_ts != lock.start_ts:
                self._lock_changed = True

    def _put_write(self, key: bytes, commit_ts: int, write: Write) -> None:
        kw = self._writes.get(key)
        if kw is None:
            kw = self._writes[key] = _KeyWrites()
        old = kw.put(commit_ts, write)
        self._undo.append((1, key, commit_ts, old))

    def _delete_write(self, key: bytes, commit_ts: int) -> None:
        kw = self._writes.get(key)
        if kw is None:
            return
        old = kw.delete(commit_ts)
        if old is not None:
            self._undo.append((1, key, commit_ts, old))
            if not kw.ts:
                del self._writes[key]

    def _seek_write(self, key: bytes, ts: int) -> tuple[int, Write] | None:
        """The newest write of ``key`` with commit_ts <= ts (TiKV ``seek_write``)."""
        kw = self._writes.get(key)
        if kw is None:
            return None
        i = kw.newest_at_or_below(ts)
        if i < 0:
            return None
        return kw.ts[i], kw.recs[i]

    def _iter_writes(self, key: bytes, ts: int = MAX_TS) -> Iterator[tuple[int, Write]]:
        """Writes of ``key`` with commit_ts <= ts, newest first (a snapshot of the list)."""
        kw = self._writes.get(key)
        if kw is None:
            return
        i = kw.newest_at_or_below(ts)
        tss, recs = kw.ts, kw.recs
        while i >= 0:
            yield tss[i], recs[i]
            i -= 1

    def _get_write_with_commit_ts(self, key: bytes, ts: int) -> tuple[Write, int] | None:
        """The newest data version at or below ``ts``: a Put, or None if deleted / absent.

        Lock and Rollback records are skipped (TiKV ``get_write_with_commit_ts``).
        """
        kw = self._writes.get(key)
        if kw is None:
            return None
        recs, tss = kw.recs, kw.ts
        i = kw.newest_at_or_below(ts)
        while i >= 0:
            w = recs[i]
            wt = w.write_type
            if wt is WriteType.PUT:
                return w, tss[i]
            if wt is WriteType.DELETE:
                return None
            i -= 1
        return None

    def _read_value(self, key: bytes, ts: int) -> tuple[bytes, int] | None:
        """The value visible at ``ts`` and its commit ts, or None (deleted / absent)."""
        kw = self._writes.get(key)
        if kw is None:
            return None
        recs = kw.recs
        i = kw.newest_at_or_below(ts)
        while i >= 0:
            w = recs[i]
            wt = w.write_type
            if wt is WriteType.PUT:
                return (w.value if w.value is not None else b""), kw.ts[i]
            if wt is WriteType.DELETE:
                return None
            i -= 1
        return None

    def _commit_record(self, key: bytes, start_ts: int) -> _Commit:
        """Find ``start_ts``'s commit or rollback record on ``key`` (TiKV ``reader.rs``)."""
        for commit_ts, w in self._iter_writes(key):
            if w.start_ts == start_ts:
                return _Commit(_Commit.SINGLE, commit_ts, w)
            if commit_ts == start_ts:
                if w.has_overlapped_rollback:
                    return _Commit(_Commit.OVERLAPPED_ROLLBACK, commit_ts)
                return _Commit(_Commit.NONE, commit_ts, w)
            if commit_ts < start_ts:
                break
        return _Commit(_Commit.NONE)

    # ------------------------------------------------------------------ reads

    def lock_of(self, key: bytes) -> Lock | None:
        """The lock on ``key`` now (any transaction's, any type), or ``None``.

        A point read of the lock column family: one dict lookup, without the engine's lock
        (locks are immutable and replaced whole).
        """
        _check_bytes(key, "key")
        return self._locks.get(key)

    def _check_lock_for_read(
        self,
        key: bytes,
        lock: Lock,
        ts: int,
        isolation_level: IsolationLevel,
        bypass_locks: Collection[int],
    ) -> None:
        """Raise if ``lock`` hides ``key`` from a read at ``ts`` (TiKV ``check_ts_conflict``)."""
        lt = lock.lock_type
        if isolation_level is IsolationLevel.SI:
            if lock.start_ts > ts or lt is LockType.LOCK or lt is LockType.PESSIMISTIC:
                return
            # A lock whose min_commit_ts was pushed above the read ts will commit after
            # it, so it cannot affect this read.
            if lock.min_commit_ts > ts:
                return
            if lock.start_ts in bypass_locks:
                return
            # Reading "the latest" (ts = MAX) through a 2PC primary lock is allowed: the
            # primary is committed last, so its old value is still the latest committed.
            if ts == MAX_TS and key == lock.primary and not lock.use_async_commit:
                return
            raise KeyIsLockedError(lock.to_lock_info(key))
        if isolation_level is IsolationLevel.RC_CHECK_TS:
            if lt is LockType.LOCK or lt is LockType.PESSIMISTIC:
                return
            if lock.start_ts in bypass_locks:
                return
            raise WriteConflictError(
                start_ts=ts,
                conflict_start_ts=lock.start_ts,
                conflict_commit_ts=0,
                key=key,
                primary=lock.primary,
                reason=WriteConflictReason.RC_CHECK_TS,
            )

    def _point_read(
        self,
        key: bytes,
        ts: int,
        isolation_level: IsolationLevel,
        bypass_locks: Collection[int],
        access_locks: Collection[int],
    ) -> tuple[bytes, int] | None:
        """The visible value and its commit ts (0 when read through a committed lock)."""
        if isolation_level is not IsolationLevel.RC:
            lock = self._locks.get(key)
            if lock is not None:
                if lock.start_ts in access_locks:
                    # The client knows this transaction committed: read through the lock.
                    # The lock has no commit record yet: TiKV reports no commit ts for it.
                    if lock.lock_type is LockType.PUT:
                        return (lock.value if lock.value is not None else b""), 0
                    if lock.lock_type is LockType.DELETE:
                        return None
                else:
                    self._check_lock_for_read(key, lock, ts, isolation_level, bypass_locks)
        return self._read_value(key, ts)

    def _prepare_read(self, version: int, stale_read: bool) -> None:
        # TiKV raises max_ts for every read that is not a stale read, so that an
        # async-commit or 1PC transaction prewritten later commits above this read
        # (``storage/mod.rs`` ``prepare_snap_ctx``; MAX_TS is ignored by the manager).
        if not stale_read:
            self._bump_max_ts(version)

    def get(
        self,
        key: bytes,
        version: int,
        *,
        isolation_level: IsolationLevel = IsolationLevel.SI,
        bypass_locks: Collection[int] = _EMPTY,
        access_locks: Collection[int] = _EMPTY,
        stale_read: bool = False,
    ) -> bytes | None:
        """KvGet: the value of ``key`` visible at ``version``, or None.

        Args:
            key: the key.
            version: the read timestamp; ``MAX_TS`` reads the latest committed value.
            isolation_level: SI checks locks; RC ignores them; RC_CHECK_TS turns a
                blocking lock into a WriteConflict (reason RcCheckTs).
            bypass_locks: start_ts of transactions whose locks are known not to affect
                the read (kvrpcpb.Context.resolved_locks).
            access_locks: start_ts of transactions known committed: their Put/Delete
                locks are read through (kvrpcpb.Context.committed_locks).
            stale_read: a stale read (kvrpcpb.Context.stale_read) does not raise max_ts.

        Raises:
            KeyIsLockedError: a Put/Delete lock with start_ts <= version and
                min_commit_ts <= version hides the key.

        """
        found = self.get_with_commit_ts(
            key,
            version,
            isolation_level=isolation_level,
            bypass_locks=bypass_locks,
            access_locks=access_locks,
            stale_read=stale_read,
        )
        return found[0] if found is not None else None

    def get_with_commit_ts(
        self,
        key: bytes,
        version: int,
        *,
        isolation_level: IsolationLevel = IsolationLevel.SI,
        bypass_locks: Collection[int] = _EMPTY,
        access_locks: Collection[int] = _EMPTY,
        stale_read: bool = False,
    ) -> tuple[bytes, int] | None:
        """:meth:`get` with the commit ts of the version read (KvGet ``need_commit_ts``).

        Returns ``(value, commit_ts)`` or None; ``commit_ts`` is 0 for a value read through
        a committed transaction's lock (``access_locks``), which has no commit record yet.
        """
        _check_bytes(key, "key")
        _check_ts(version, "version")
        with self._mu:
            self._prepare_read(version, stale_read)
            return self._point_read(key, version, isolation_level, bypass_locks, access_locks)

    def batch_get(
        self,
        keys: Sequence[bytes],
        version: int,
        *,
        isolation_level: IsolationLevel = IsolationLevel.SI,
        bypass_locks: Collection[int] = _EMPTY,
        access_locks: Collection[int] = _EMPTY,
        stale_read: bool = False,
    ) -> list[KvPair]:
        """KvBatchGet: the found keys in request order, unreadable keys with ``error``.

        A key hidden by a lock is a pair whose ``error`` is a KeyIsLockedError (or a
        WriteConflictError under RC_CHECK_TS). Keys that do not exist are left out, as in
        TiKV. Each pair carries the ``commit_ts`` of the version read (KvBatchGet
        ``need_commit_ts``; 0 through a committed transaction's lock).
        """
        key_list = _check_keys(keys, "keys")
        _check_ts(version, "version")
        out: list[KvPair] = []
        with self._mu:
            self._prepare_read(version, stale_read)
            for k in key_list:
                try:
                    v = self._point_read(k, version, isolation_level, bypass_locks, access_locks)
                except (KeyIsLockedError, WriteConflictError) as e:
                    out.append(KvPair(k, b"", e))
                    continue
                if v is not None:
                    out.append(KvPair(k, v[0], commit_ts=v[1]))
        return out

    def scan(
        self,
        start_key: bytes,
        end_key: bytes,
        limit: int,
        version: int,
        *,
        key_only: bool = False,
        reverse: bool = False,
        isolation_level: IsolationLevel = IsolationLevel.SI,
        bypass_locks: Collection[int] = _EMPTY,
        access_locks: Collection[int] = _EMPTY,
        stale_read: bool = False,
    ) -> list[KvPair]:
        """KvScan: up to ``limit`` visible pairs in key order (descending if ``reverse``).

        Forward: keys in ``[start_key, end_key)``; an empty ``end_key`` is unbounded.
        Reverse (as kvrpcpb.ScanRequest): ``start_key`` is the exclusive upper bound and
        ``end_key`` the inclusive lower bound (empty = unbounded). A key hidden by a lock
        yields a pair with ``error`` set; it counts towards ``limit``, as in TiKV
        (``txn/store.rs``). ``key_only`` returns empty values.

        Raises:
            WriteConflictError: RC_CHECK_TS met a lock (fails the whole scan).

        """
        _check_bytes(start_key, "start_key")
        _check_bytes(end_key, "end_key")
        _check_ts(version, "version")
        if not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be a non-negative int, got {limit!r}")
        out: list[KvPair] = []
        if limit == 0:
            return out
        with self._mu:
            self._prepare_read(version, stale_read)
            for k in self._range_keys(start_key, end_key, reverse):
                try:
                    v = self._point_read(k, version, isolation_level, bypass_locks, access_locks)
                except KeyIsLockedError as e:
                    # Only lock errors become per-pair entries; any other error (an
                    # RC_CHECK_TS conflict) fails the whole scan (``txn/store.rs``).
                    out.append(KvPair(k, b"", e))
                else:
                    if v is None:
                        continue
                    out.append(KvPair(k, b"" if key_only else v[0]))
                if len(out) >= limit:
                    break
        return out

    def _range_keys(self, start_key: bytes, end_key: bytes, reverse: bool) -> Iterator[bytes]:
        """Keys having a lock or a write in the range, in order, each once."""
        if reverse:
            lower: bytes | None = end_key or None
            upper: bytes | None = start_key
            a = self._writes.irange(lower, upper, inclusive=(True, False), reverse=True)
            b = self._locks.irange(lower, upper, inclusive=(True, False), reverse=True)
            merged: Iterable[bytes] = heapq.merge(a, b, reverse=True)
        else:
            upper = end_key or None
            a = self._writes.irange(start_key, upper, inclusive=(True, False))
            b = self._locks.irange(start_key, upper, inclusive=(True, False))
            merged = heapq.merge(a, b)
        prev: bytes | None = None
        for k in merged:
            if k != prev:
                prev = k
                yield k

    # ------------------------------------------------------------------ prewrite

    def prewrite(
        self,
        mutations: Sequence[Mutation],
        primary_lock: bytes,
        start_version: int,
        lock_ttl: int = 0,
        *,
        skip_constraint_check: bool = False,
        for_update_ts: int = 0,
        pessimistic_actions: Sequence[PessimisticAction] | None = None,
        txn_size: int = 0,
        min_commit_ts: int = 0,
        use_async_commit: bool = False,
        secondaries: Sequence[bytes] = (),
        try_one_pc: bool = False,
        max_commit_ts: int = 0,
        assertion_level: AssertionLevel = AssertionLevel.OFF,
        for_update_ts_constraints: Mapping[int, int] | None = None,
        is_retry_request: bool = False,
    ) -> PrewriteResult:
        """KvPrewrite (optimistic, or pessimistic when ``for_update_ts`` != 0).

        Follows TiKV ``commands/prewrite.rs`` and ``actions/prewrite.rs``.

        Args:
            mutations: Put / Del / Lock / Insert / CheckNotExists mutations.
            primary_lock: the transaction's primary key.
            start_version: the transaction's start ts.
            lock_ttl: lock TTL in ms.
            skip_constraint_check: optimistic only: skip the newer-version check.
            for_update_ts: non-zero makes this a pessimistic prewrite.
            pessimistic_actions: for a pessimistic prewrite, one action per mutation
                (default: all DO_PESSIMISTIC_CHECK).
            txn_size: number of keys of the transaction in the region.
            min_commit_ts: lower bound of the commit ts recorded in the locks.
            use_async_commit: record async-commit locks; ``secondaries`` on the primary.
            secondaries: every other key of an async-commit transaction.
            try_one_pc: commit directly if every key can be locked.
            max_commit_ts: async commit / 1PC: if the computed commit ts exceeds it, fall
                back to 2PC (result ``min_commit_ts`` / ``one_pc_commit_ts`` are 0).
            assertion_level: how to check ``Mutation.assertion``.
            for_update_ts_constraints: ``{mutation index: expected for_update_ts}`` of
                the pessimistic locks (kvrpcpb.ForUpdateTSConstraint).
            is_retry_request: the client is retrying (kvrpcpb.Context.is_retry_request).

        Returns:
            A :class:`PrewriteResult`. If ``locks`` is non-empty nothing was written.

        Raises:
            WriteConflictError: a newer write exists, or this txn was rolled back on a key.
            AlreadyExistError: an Insert / CheckNotExists key exists.
            AssertionFailedError: an assertion failed.
            PessimisticLockNotFoundError: a DO_PESSIMISTIC_CHECK key lost its lock.
            LockTypeNotMatchError: an optimistic prewrite met its own pessimistic lock.

        """
        muts = _check_mutations(mutations)
        _check_bytes(primary_lock, "primary_lock")
        start_ts = _check_ts(start_version, "start_version", allow_zero=False)
        _check_ts(lock_ttl, "lock_ttl")
        _check_ts(for_update_ts, "for_update_ts")
        _check_ts(txn_size, "txn_size")
        _check_ts(min_commit_ts, "min_commit_ts")
        _check_ts(max_commit_ts, "max_commit_ts")
        secs = _check_keys(secondaries, "secondaries")
        if secs and not use_async_commit:
            raise ValueError("secondaries are only meaningful with use_async_commit=True")
        pessimistic = for_update_ts != 0
        for m in muts:
            if m.op not in _PESSIMISTIC_OK_OPS:
                raise ValueError(f"prewrite cannot carry a {m.op.name} mutation (key {m.key!r})")
        if pessimistic:
            if pessimistic_actions is None:
                actions = [PessimisticAction.DO_PESSIMISTIC_CHECK] * len(muts)
            else:
                actions = [enum_of(PessimisticAction, a) for a in pessimistic_actions]
                if len(actions) != len(muts):
                    raise ValueError(
                        f"pessimistic_actions has {len(actions)} entries for {len(muts)} mutations"
                    )
            for m in muts:
                if m.op is Op.CHECK_NOT_EXISTS:
                    raise ValueError("CheckNotExists cannot be used in a pessimistic prewrite")
        else:
            actions = [PessimisticAction.SKIP_PESSIMISTIC_CHECK] * len(muts)
            if pessimistic_actions and any(
                enum_of(PessimisticAction, a) is not PessimisticAction.SKIP_PESSIMISTIC_CHECK
                for a in pessimistic_actions
            ):
                raise ValueError(
                    "pessimistic_actions require a pessimistic prewrite (for_update_ts)"
                )
            if for_update_ts_constraints:
                raise ValueError("for_update_ts_constraints require a pessimistic prewrite")
        expected: dict[int, int] = dict(for_update_ts_constraints or {})
        for idx in expected:
            if not 0 <= idx < len(muts):
                raise ValueError(f"for_update_ts_constraints index {idx} is out of range")

        if try_one_pc:
            kind = _ONE_PC
        elif use_async_commit:
            kind = _ASYNC
        else:
            kind = _TWO_PC
        props = _Props(
            start_ts=start_ts,
            pessimistic=pessimistic,
            for_update_ts=for_update_ts,
            skip_constraint_check=bool(skip_constraint_check) and not pessimistic,
            commit_kind=kind,
            max_commit_ts=max_commit_ts,
            primary=primary_lock,
            txn_size=txn_size,
            lock_ttl=lock_ttl,
            min_commit_ts=min_commit_ts,
            is_retry_request=is_retry_request,
            assertion_level=enum_of(AssertionLevel, assertion_level),
        )
        secondary_keys: tuple[bytes, ...] | None = tuple(secs) if use_async_commit else None
        return self._run(
            lambda: self._prewrite(props, muts, actions, expected, secondary_keys, try_one_pc)
        )

    def _prewrite(
        self,
        props: _Props,
        muts: list[Mutation],
        actions: list[PessimisticAction],
        expected: dict[int, int],
        secondary_keys: tuple[bytes, ...] | None,
        try_one_pc: bool,
    ) -> PrewriteResult:
        one_pc_locks: list[tuple[bytes, Lock, bool]] = []
        # The primary gets the secondaries list; other keys of an async-commit
        # transaction get an empty one (still use_async_commit).
        async_pk = props.primary if secondary_keys else None
        final_min_commit_ts = 0
        locks: list[Exception] = []
        assertion_failure: AssertionFailedError | None = None
        for idx, m in enumerate(muts):
            key = m.key
            if secondary_keys is None:
                secs: tuple[bytes, ...] | None = None
            elif async_pk is not None and key == async_pk:
                secs = secondary_keys
            else:
                secs = ()
            need_min_commit_ts = secs is not None or try_one_pc
            try:
                ts = self._prewrite_key(
                    props, m, secs, actions[idx], expected.get(idx), 0, one_pc_locks
                )
            except (WriteConflictError, PessimisticLockNotFoundError) as e:
                if isinstance(e, WriteConflictError) and e.conflict_commit_ts <= e.start_ts:
                    raise
                committed = self._committed_on_err(key, props.start_ts)
                if committed is None:
                    raise
                return self._prewrite_already_committed(committed, secondary_keys, try_one_pc)
            except CommitTsTooLargeError:
                committed = self._committed_on_err(key, props.start_ts)
                if committed is not None:
                    return self._prewrite_already_committed(committed, secondary_keys, try_one_pc)
                # Fall back to 2PC for the rest of the request (TiKV keeps the locks
                # already written; the client sees min_commit_ts = 0 and commits by 2PC).
                props.commit_kind = _TWO_PC
                async_pk = None
                secondary_keys = None
                try_one_pc = False
                self._fallback_one_pc_locks(one_pc_locks)
                final_min_commit_ts = 0
                continue
            except KeyIsLockedError as e:
                committed = self._committed_on_err(key, props.start_ts)
                if committed is not None:
                    return self._prewrite_already_committed(committed, secondary_keys, try_one_pc)
                locks.append(e)
                continue
            except AssertionFailedError as e:
                if assertion_failure is None:
                    assertion_failure = e
                continue
            if need_min_commit_ts and ts == 0:
                # The key already held this transaction's 2PC lock (a retried request of
                # a transaction that fell back): the whole request falls back to 2PC.
                props.commit_kind = _TWO_PC
                async_pk = None
                secondary_keys = None
                try_one_pc = False
                self._fallback_one_pc_locks(one_pc_locks)
                final_min_commit_ts = 0
            elif need_min_commit_ts and ts > final_min_commit_ts:
                final_min_commit_ts = ts
        if assertion_failure is not None:
            raise assertion_failure
        async_commit_ts = final_min_commit_ts if secondary_keys is not None else 0
        if locks:
            self._apply_undo()
            return PrewriteResult(tuple(locks), async_commit_ts, 0)
        one_pc_commit_ts = 0
        if try_one_pc:
            one_pc_commit_ts = final_min_commit_ts
            for key, lock, remove_pessimistic in one_pc_locks:
                self._put_write(
                    key,
                    final_min_commit_ts,
                    Write(WriteType.from_lock_type(lock.lock_type), props.start_ts, lock.value),
                )
                if remove_pessimistic:
                    self._set_lock(key, None)
        return PrewriteResult((), async_commit_ts, one_pc_commit_ts)

    def _prewrite_already_committed(
        self, commit_ts: int, secondary_keys: tuple[bytes, ...] | None, try_one_pc: bool
    ) -> PrewriteResult:
        # A retried prewrite of a transaction that is already committed succeeds without
        # writing anything (TiKV ``check_committed_record_on_err``).
        self._apply_undo()
        return PrewriteResult(
            (),
            commit_ts if secondary_keys is not None else 0,
            commit_ts if try_one_pc else 0,
        )

    def _committed_on_err(self, key: bytes, start_ts: int) -> int | None:
        rec = self._commit_record(key, start_ts)
        if rec.is_committed:
            return rec.commit_ts
        return None

    def _fallback_one_pc_locks(self, one_pc_locks: list[tuple[bytes, Lock, bool]]) -> None:
        for key, lock, _remove in one_pc_locks:
            self._set_lock(key, lock)
        one_pc_locks.clear()

    def _prewrite_key(
        self,
        props: _Props,
        m: Mutation,
        secondaries: tuple[bytes, ...] | None,
        action: PessimisticAction,
        expected_for_update_ts: int | None,
        generation: int,
        one_pc_locks: list[tuple[bytes, Lock, bool]],
    ) -> int:
        """Prewrite one mutation; return its min_commit_ts (TiKV ``prewrite_with_generation``)."""
        key = m.key
        start_ts = props.start_ts
        op = m.op
        should_not_exist = op is Op.INSERT or op is Op.CHECK_NOT_EXISTS
        should_not_write = op is Op.CHECK_NOT_EXISTS
        if should_not_exist:
            self._bump_max_ts(start_ts)
        m_lock_ttl = props.lock_ttl
        m_min_commit_ts = props.min_commit_ts
        lock_amended = False
        # lock_status: 0 none, 1 own prewrite lock, 2 own pessimistic lock
        lock_status = 0
        status_ts = 0
        lock = self._locks.get(key)
        if lock is not None:
            if lock.start_ts != start_ts:
                if action is PessimisticAction.DO_PESSIMISTIC_CHECK:
                    raise PessimisticLockNotFoundError(start_ts, key, "LockTsMismatch")
                info = lock.to_lock_info(key)
                if props.pessimistic:
                    # TiKV hides the TTL from pessimistic prewrites so the client
                    # does not resolve the lock right away (``PrewriteMutation::lock_info``).
                    info = replace(info, lock_ttl=0)
                raise KeyIsLockedError(info)
            if lock.is_pessimistic_lock:
                if not props.pessimistic:
                    raise LockTypeNotMatchError(start_ts, key, pessimistic=True)
                if (
                    expected_for_update_ts is not None
                    and lock.for_update_ts != expected_for_update_ts
                ):
                    raise PessimisticLockNotFoundError(start_ts, key, "LockForUpdateTsMismatch")
                m_lock_ttl = max(m_lock_ttl, lock.ttl)
                m_min_commit_ts = max(m_min_commit_ts, lock.min_commit_ts)
                lock_status, status_ts = 2, lock.for_update_ts
            else:
                if generation > 0 and lock.generation >= generation:
                    raise GenerationOutOfOrderError(generation, key, lock.generation)
                if lock.generation > 0 and should_not_exist and lock.lock_type is LockType.PUT:
                    raise AlreadyExistError(key, lock.start_ts)
                lock_status = 1
                status_ts = lock.min_commit_ts if lock.use_async_commit else 0
        elif action is PessimisticAction.DO_PESSIMISTIC_CHECK:
            # The pessimistic lock is missing (e.g. a pipelined lock that never landed):
            # amend it if nothing was committed since the transaction started.
            newest = self._seek_write(key, MAX_TS)
            if newest is not None and newest[0] >= start_ts:
                raise PessimisticLockNotFoundError(start_ts, key, "LockMissingAmendFail")
            self._check_assertion(props, m, newest, loaded=True, skip_check=True, action=action)
            lock_amended = True

        if generation == 0 and lock_status == 1:
            return status_ts

        prev_write: tuple[int, Write] | None = None
        loaded = False
        skip_check = self._skip_constraint_check(props, action)
        if not skip_check:
            prev_write = self._check_for_newer_version(props, m, action, should_not_exist)
            loaded = True
        is_subsequent_flush = generation > 0 and lock_status == 1
        if not lock_amended and not is_subsequent_flush:
            self._check_assertion(props, m, prev_write, loaded, skip_check, action)

        if should_not_write:
            self._bump_max_ts(start_ts)
            if props.commit_kind != _TWO_PC:
                return max(props.min_commit_ts, start_ts + 1)
            return 0

        # Write the lock.
        try_one_pc = props.commit_kind == _ONE_PC
        fut = props.for_update_ts
        if lock_status == 2:
            fut = max(fut, status_ts)
        if op is Op.PUT or op is Op.INSERT:
            lock_type = LockType.PUT
            value: bytes | None = m.value
        elif op is Op.DEL:
            lock_type, value = LockType.DELETE, None
        else:
            lock_type, value = LockType.LOCK, None
        new_lock = Lock(
            lock_type=lock_type,
            primary=props.primary,
            start_ts=start_ts,
            ttl=m_lock_ttl,
            value=value,
            for_update_ts=fut,
            txn_size=props.txn_size,
            min_commit_ts=m_min_commit_ts,
            use_async_commit=secondaries is not None,
            secondaries=secondaries or (),
            generation=generation,
        )
        final_min_commit_ts = 0
        too_large: CommitTsTooLargeError | None = None
        if secondaries is not None or try_one_pc:
            # async_commit_timestamps: the commit ts must exceed every ts that may have
            # read this key (max_ts), the start ts and the for_update_ts.
            computed = max(self._max_ts, start_ts, props.for_update_ts) + 1
            computed = max(new_lock.min_commit_ts, computed)
            if props.max_commit_ts != 0 and computed > props.max_commit_ts:
                too_large = CommitTsTooLargeError(start_ts, computed, props.max_commit_ts)
                try_one_pc = False
                new_lock = replace(new_lock, use_async_commit=False, secondaries=())
            else:
                new_lock = replace(new_lock, min_commit_ts=computed)
                final_min_commit_ts = computed
        if try_one_pc:
            one_pc_locks.append((key, new_lock, lock_status == 2))
        else:
            self._set_lock(key, new_lock)
        if too_large is not None:
            raise too_large
        return final_min_commit_ts

    @staticmethod
    def _skip_constraint_check(props: _Props, action: PessimisticAction) -> bool:
        if not props.pessimistic:
            return props.skip_constraint_check
        if action is PessimisticAction.DO_PESSIMISTIC_CHECK:
            return True
        if action is PessimisticAction.SKIP_PESSIMISTIC_CHECK:
            return not props.is_retry_request
        return False

    def _check_for_newer_version(
        self,
        props: _Props,
        m: Mutation,
        action: PessimisticAction,
        should_not_exist: bool,
    ) -> tuple[int, Write] | None:
        """Write-conflict and constraint check against committed versions."""
        key = m.key
        start_ts = props.start_ts
        for commit_ts, w in self._iter_writes(key):
            if commit_ts == start_ts and (
                w.write_type is WriteType.ROLLBACK or w.has_overlapped_rollback
            ):
                raise self._conflict(props, key, w, commit_ts, WriteConflictReason.SELF_ROLLED_BACK)
            if not props.pessimistic:
                if commit_ts > start_ts:
                    raise self._conflict(props, key, w, commit_ts, WriteConflictReason.OPTIMISTIC)
            else:
                if action is PessimisticAction.DO_CONSTRAINT_CHECK and commit_ts > start_ts:
                    raise self._conflict(
                        props, key, w, commit_ts, WriteConflictReason.LAZY_UNIQUENESS_CHECK
                    )
                if commit_ts > props.for_update_ts:
                    if w.write_type is WriteType.ROLLBACK:
                        continue
                    raise PessimisticLockNotFoundError(start_ts, key, "NonLockKeyConflict")
            self._check_data_constraint(should_not_exist, w, commit_ts, key)
            return commit_ts, w
        return None

    @staticmethod
    def _conflict(
        props: _Props, key: bytes, w: Write, commit_ts: int, reason: WriteConflictReason
    ) -> WriteConflictError:
        return WriteConflictError(
            start_ts=props.start_ts,
            conflict_start_ts=w.start_ts,
            conflict_commit_ts=commit_ts,
            key=key,
            primary=props.primary,
            reason=reason,
        )

    def _check_data_constraint(
        self, should_not_exist: bool, w: Write, commit_ts: int, key: bytes
    ) -> None:
        """AlreadyExist if the key must not exist and a committed Put is visible."""
        if not should_not_exist or w.write_type is WriteType.DELETE:
            return
        if w.write_type is WriteType.PUT:
            raise AlreadyExistError(key, w.start_ts)
        prev = self._get_write_with_commit_ts(key, commit_ts - 1)
        if prev is not None:
            raise AlreadyExistError(key, prev[0].start_ts)

    def _check_assertion(
        self,
        props: _Props,
        m: Mutation,
        write: tuple[int, Write] | None,
        loaded: bool,
        skip_check: bool,
        action: PessimisticAction,
    ) -> None:
        """Check ``m.assertion`` (TiKV ``PrewriteMutation::check_assertion``)."""
        assertion = m.assertion
        if assertion is Assertion.NONE or props.assertion_level is AssertionLevel.OFF:
            return
        if props.assertion_level is not AssertionLevel.STRICT and not loaded:
            return
        data: tuple[Write, int] | None
        if loaded and write is not None and write[1].write_type in _DATA_TYPES:
            data = (write[1], write[0])
        elif loaded and write is None:
            data = None
        else:
            reload_ts = write[0] if write is not None else MAX_TS
            data = self._get_write_with_commit_ts(m.key, reload_ts)
        failed: tuple[int, int] | None = None
        if assertion is Assertion.EXIST:
            if data is None:
                failed = (0, 0)
            elif data[0].write_type is WriteType.DELETE:
                failed = (data[0].start_ts, data[1])
        elif (
            assertion is Assertion.NOT_EXIST
            and data is not None
            and data[0].write_type is WriteType.PUT
        ):
            failed = (data[0].start_ts, data[1])
        if failed is None:
            return
        if skip_check:
            # A write conflict explains an assertion failure better; report it first.
            self._check_for_newer_version(
                props, m, action, m.op is Op.INSERT or m.op is Op.CHECK_NOT_EXISTS
            )
        raise AssertionFailedError(props.start_ts, m.key, assertion, failed[0], failed[1])

    # ------------------------------------------------------------------ commit / rollback

    def commit(self, keys: Sequence[bytes], start_version: int, commit_version: int) -> int:
        """KvCommit: turn the transaction's locks on ``keys`` into writes at ``commit_version``.

        Idempotent: a key already committed by this transaction is skipped. A key that
        still holds only a pessimistic lock has that lock removed without a write (TiKV
        ``actions/commit.rs``: pessimistic locks are never committed).

        Returns:
            ``commit_version``.

        Raises:
            CommitTsExpiredError: ``commit_version`` < the lock's min_commit_ts.
            TxnLockNotFoundError: no lock and no commit record (rolled back or never locked).
            InvalidTxnTsoError: ``commit_version`` <= ``start_version``.

        """
        key_list = _check_keys(keys, "keys")
        start_ts = _check_ts(start_version, "start_version", allow_zero=False)
        commit_ts = _check_ts(commit_version, "commit_version", allow_zero=False)
        if commit_ts <= start_ts:
            raise InvalidTxnTsoError(start_ts, commit_ts)

        def run() -> int:
            for k in key_list:
                self._commit_key(k, start_ts, commit_ts)
            return commit_ts

        return self._run(run)

    def _commit_key(self, key: bytes, start_ts: int, commit_ts: int) -> None:
        lock = self._locks.get(key)
        if lock is None or lock.start_ts != start_ts:
            rec = self._commit_record(key, start_ts)
            if rec.is_committed:
                return
            raise TxnLockNotFoundError(start_ts, commit_ts, key)
        if commit_ts < lock.min_commit_ts:
            raise CommitTsExpiredError(start_ts, commit_ts, key, lock.min_commit_ts)
        if lock.is_pessimistic_lock:
            self._set_lock(key, None)
            return
        overlapped = commit_ts in lock.rollback_ts
        self._put_write(
            key,
            commit_ts,
            Write(
                WriteType.from_lock_type(lock.lock_type),
                start_ts,
                lock.value,
                has_overlapped_rollback=overlapped,
            ),
        )
        self._set_lock(key, None)

    def cleanup(self, key: bytes, start_version: int, current_ts: int = 0) -> None:
        """KvCleanup: roll back the transaction on ``key`` if its lock expired.

        With ``current_ts`` != 0 a live lock (``physical(start) + ttl >= physical(now)``)
        is not touched. Follows TiKV ``actions/cleanup.rs``.

        Raises:
            KeyIsLockedError: the lock has not expired yet.
            CommittedError: the transaction is committed on the key (the server answers
                with ``commit_version = e.commit_ts``).

        """
        _check_bytes(key, "key")
        start_ts = _check_ts(start_version, "start_version", allow_zero=False)
        _check_ts(current_ts, "current_ts")
        self._run(lambda: self._cleanup_key(key, start_ts, current_ts, protect_rollback=True))

    def batch_rollback(self, keys: Sequence[bytes], start_version: int) -> None:
        """KvBatchRollback: roll back the transaction on every key (TiKV ``commands/rollback.rs``).

        Writes a rollback record on each key (protected on the primary, so it is never
        collapsed) and removes the transaction's locks. Keys that never saw the
        transaction get a rollback record too, which stops a late prewrite.

        Raises:
            CommittedError: the transaction is already committed on a key.

        """
        key_list = _check_keys(keys, "keys")
        start_ts = _check_ts(start_version, "start_version", allow_zero=False)

        def run() -> None:
            for k in key_list:
                self._cleanup_key(k, start_ts, 0, protect_rollback=False)

        self._run(run)

    def _cleanup_key(
        self, key: bytes, start_ts: int, current_ts: int, *, protect_rollback: bool
    ) -> None:
        lock = self._locks.get(key)
        if lock is not None and lock.start_ts == start_ts:
            if current_ts != 0 and physical_ms(lock.start_ts) + lock.ttl >= physical_ms(current_ts):
                raise KeyIsLockedError(lock.to_lock_info(key))
            self._rollback_lock(key, lock, start_ts, collapse=not protect_rollback)
            return
        action = _MISSING_PROTECTED_ROLLBACK if protect_rollback else _MISSING_ROLLBACK
        st, commit_ts = self._missing_lock(key, start_ts, lock, action, False)
        if st == _COMMITTED:
            raise CommittedError(start_ts, commit_ts, key)

    def _rollback_lock(self, key: bytes, lock: Lock, start_ts: int, *, collapse: bool) -> None:
        """Remove this transaction's lock and leave a rollback record (``rollback_lock``)."""
        rec = self._commit_record(key, start_ts)
        if rec.kind == _Commit.SINGLE and rec.is_committed:
            raise AssertionError(f"txn {start_ts} has a lock and a commit record on {key!r}")
        if rec.kind != _Commit.NONE:
            self._set_lock(key, None)
            return
        protected = key == lock.primary or lock.generation > 0
        if collapse:
            self._collapse_prev_rollback(key, start_ts)
        self._make_rollback(key, start_ts, protected, rec)
        self._set_lock(key, None)

    def _make_rollback(self, key: bytes, start_ts: int, protected: bool, rec: _Commit) -> None:
        if rec.write is not None:
            # Another transaction committed at exactly our start_ts: a rollback record
            # would overwrite its commit, so mark the commit instead (protected only).
            if protected:
                marked = replace(rec.write, has_overlapped_rollback=True)
                self._put_write(key, rec.commit_ts, marked)
            return
        self._put_write(key, start_ts, Write(WriteType.ROLLBACK, start_ts, is_protected=protected))

    def _collapse_prev_rollback(self, key: bytes, start_ts: int) -> None:
        # Delete the newest older rollback if it is not protected: a chain of
        # non-protected rollbacks keeps only the newest (``collapse_prev_rollback``).
        found = self._seek_write(key, start_ts)
        if found is not None:
            commit_ts, w = found
            if w.write_type is WriteType.ROLLBACK and not w.is_protected:
                self._delete_write(key, commit_ts)

    def _missing_lock(
        self,
        key: bytes,
        start_ts: int,
        mismatch_lock: Lock | None,
        action: int,
        resolving_pessimistic_lock: bool,
    ) -> tuple[int, int]:
        """Decide a transaction whose lock is not on ``key`` (``check_txn_status_missing_lock``)."""
        rec = self._commit_record(key, start_ts)
        if rec.is_committed:
            return _COMMITTED, rec.commit_ts
        if rec.is_rolled_back:
            return _ROLLED_BACK, 0
        if action == _MISSING_RETURN_ERROR:
            raise TxnNotFoundError(start_ts, key)
        if resolving_pessimistic_lock:
            return _LOCK_NOT_EXIST_DO_NOTHING, 0
        protected = action == _MISSING_PROTECTED_ROLLBACK
        if not protected:
            self._collapse_prev_rollback(key, start_ts)
        if mismatch_lock is not None and rec.write is None:
            self._mark_rollback_on_mismatching_lock(key, mismatch_lock, start_ts, protected)
        self._make_rollback(key, start_ts, protected, rec)
        return _LOCK_NOT_EXIST, 0

    def _mark_rollback_on_mismatching_lock(
        self, key: bytes, lock: Lock, start_ts: int, protected: bool
    ) -> None:
        # An async-commit lock of another transaction may later commit at exactly our
        # start_ts; remember the rollback in the lock so that commit keeps it.
        if not protected or start_ts < lock.min_commit_ts or not lock.use_async_commit:
            return
        self._set_lock(key, replace(lock, rollback_ts=(*lock.rollback_ts, start_ts)))

    # ------------------------------------------------------------------ lock resolution

    def check_txn_status(
        self,
        primary_key: bytes,
        lock_ts: int,
        caller_start_ts: int,
        current_ts: int,
        *,
        rollback_if_not_exist: bool = False,
        force_sync_commit: bool = False,
        resolving_pessimistic_lock: bool = False,
        verify_is_primary: bool = False,
    ) -> TxnStatus:
        """CheckTxnStatus: decide the fate of transaction ``lock_ts`` from its primary lock.

        Follows TiKV ``commands/check_txn_status.rs`` and ``actions/check_txn_status.rs``:

        - lock expired (``physical(lock_ts) + ttl < physical(current_ts)``): roll it
          back (action TTL_EXPIRE_ROLLBACK; a pessimistic lock with
          ``resolving_pessimistic_lock`` is only removed: TTL_EXPIRE_PESSIMISTIC_ROLLBACK);
        - lock alive: if ``caller_start_ts >= min_commit_ts`` push min_commit_ts to
          ``max(caller_start_ts + 1, current_ts)`` (MIN_COMMIT_TS_PUSHED); async-commit
          locks are never pushed or rolled back here unless ``force_sync_commit``;
        - no lock: committed (``commit_version``), rolled back (NO_ACTION), or unknown:
          with ``rollback_if_not_exist`` write a protected rollback
          (LOCK_NOT_EXIST_ROLLBACK), else raise TxnNotFoundError.

        Raises:
            TxnNotFoundError: no lock, no record, and not ``rollback_if_not_exist``.
            PrimaryMismatchError: ``verify_is_primary`` and the lock's primary differs.

        """
        _check_bytes(primary_key, "primary_key")
        lock_ts = _check_ts(lock_ts, "lock_ts", allow_zero=False)
        _check_ts(caller_start_ts, "caller_start_ts")
        _check_ts(current_ts, "current_ts")

        def run() -> TxnStatus:
            self._bump_max_ts(lock_ts)
            self._bump_max_ts(current_ts)
            self._bump_max_ts(caller_start_ts)
            lock = self._locks.get(primary_key)
            if lock is not None and lock.start_ts == lock_ts:
                return self._check_txn_status_lock_exists(
                    primary_key,
                    lock,
                    current_ts,
                    caller_start_ts,
                    force_sync_commit,
                    resolving_pessimistic_lock,
                    verify_is_primary,
                    rollback_if_not_exist,
                )
            action = _MISSING_PROTECTED_ROLLBACK if rollback_if_not_exist else _MISSING_RETURN_ERROR
            st, commit_ts = self._missing_lock(
                primary_key, lock_ts, lock, action, resolving_pessimistic_lock
            )
            return self._status_result(st, commit_ts)

        return self._run(run)

    @staticmethod
    def _status_result(st: int, commit_ts: int) -> TxnStatus:
        if st == _COMMITTED:
            return TxnStatus(commit_version=commit_ts)
        if st == _TTL_EXPIRE:
            return TxnStatus(action=Action.TTL_EXPIRE_ROLLBACK)
        if st == _LOCK_NOT_EXIST:
            return TxnStatus(action=Action.LOCK_NOT_EXIST_ROLLBACK)
        if st == _PESSIMISTIC_ROLLED_BACK:
            return TxnStatus(action=Action.TTL_EXPIRE_PESSIMISTIC_ROLLBACK)
        if st == _LOCK_NOT_EXIST_DO_NOTHING:
            return TxnStatus(action=Action.LOCK_NOT_EXIST_DO_NOTHING)
        return TxnStatus(action=Action.NO_ACTION)

    def _check_txn_status_lock_exists(
        self,
        key: bytes,
        lock: Lock,
        current_ts: int,
        caller_start_ts: int,
        force_sync_commit: bool,
        resolving_pessimistic_lock: bool,
        verify_is_primary: bool,
        rollback_if_not_exist: bool,
    ) -> TxnStatus:
        if verify_is_primary and key != lock.primary:
            if lock.is_pessimistic_lock and not resolving_pessimistic_lock:
                # A pessimistic lock whose primary is elsewhere is stale: drop it.
                action = (
                    _MISSING_PROTECTED_ROLLBACK if rollback_if_not_exist else _MISSING_RETURN_ERROR
                )
                st, commit_ts = self._missing_lock(key, lock.start_ts, None, action, False)
                self._set_lock(key, None)
                return self._status_result(st, commit_ts)
            raise PrimaryMismatchError(lock.to_lock_info(key))
        if lock.use_async_commit and not force_sync_commit:
            return self._uncommitted(key, lock, pushed=False)
        expired = physical_ms(lock.start_ts) + lock.ttl < physical_ms(current_ts)
        if lock.is_pessimistic_lock:
            if lock.is_locked_with_conflict:
                rec = self._commit_record(key, lock.start_ts)
                if rec.is_committed or rec.is_rolled_back:
                    self._set_lock(key, None)
                    if rec.is_committed:
                        return TxnStatus(commit_version=rec.commit_ts)
                    return TxnStatus(action=Action.NO_ACTION)
            if expired:
                if resolving_pessimistic_lock:
                    self._set_lock(key, None)
                    return TxnStatus(action=Action.TTL_EXPIRE_PESSIMISTIC_ROLLBACK)
                self._rollback_lock(key, lock, lock.start_ts, collapse=True)
                return TxnStatus(action=Action.TTL_EXPIRE_ROLLBACK)
        elif expired:
            self._rollback_lock(key, lock, lock.start_ts, collapse=True)
            return TxnStatus(action=Action.TTL_EXPIRE_ROLLBACK)
        if (
            lock.min_commit_ts != 0
            and caller_start_ts != MAX_TS
            and caller_start_ts >= lock.min_commit_ts
        ):
            # Push the lock's min_commit_ts above the reader, so the reader need not wait.
            new_min = max(caller_start_ts + 1, current_ts)
            lock = replace(lock, min_commit_ts=new_min)
            self._set_lock(key, lock)
        pushed = (caller_start_ts != 0 and lock.min_commit_ts > caller_start_ts) or (
            caller_start_ts == MAX_TS
        )
        return self._uncommitted(key, lock, pushed)

    @staticmethod
    def _uncommitted(key: bytes, lock: Lock, pushed: bool) -> TxnStatus:
        return TxnStatus(
            action=Action.MIN_COMMIT_TS_PUSHED if pushed else Action.NO_ACTION,
            lock_ttl=lock.ttl,
            lock_info=lock.to_lock_info(lock.primary),
        )

    def check_secondary_locks(
        self, keys: Sequence[bytes], start_version: int
    ) -> SecondaryLocksStatus:
        """CheckSecondaryLocks: the status of an async-commit transaction's secondaries.

        Follows TiKV ``commands/check_secondary_locks.rs``: for each key, the
        transaction's lock is reported; a pessimistic lock is rolled back (the
        transaction cannot have committed); a key with neither lock nor record gets a
        protected rollback so the prewrite can never land — the transaction is then
        rolled back. Stops at the first committed or rolled-back key.
        """
        key_list = _check_keys(keys, "keys")
        start_ts = _check_ts(start_version, "start_version", allow_zero=False)

        def run() -> SecondaryLocksStatus:
            self._bump_max_ts(start_ts)
            found: list[LockInfo] = []
            for k in key_list:
                lock = self._locks.get(k)
                if lock is not None and lock.start_ts == start_ts:
                    if not lock.is_pessimistic_lock:
                        found.append(lock.to_lock_info(k))
                        continue
                    # A pessimistic lock: the transaction has not prewritten this key.
                    rec = self._commit_record(k, start_ts)
                    self._set_lock(k, None)
                    if rec.is_committed:
                        return SecondaryLocksStatus(commit_ts=rec.commit_ts)
                    if not rec.is_rolled_back:
                        self._collapse_prev_rollback(k, start_ts)
                        self._make_rollback(k, start_ts, True, rec)
                    return SecondaryLocksStatus()
                rec = self._commit_record(k, start_ts)
                if rec.is_committed:
                    return SecondaryLocksStatus(commit_ts=rec.commit_ts)
                if rec.is_rolled_back:
                    return SecondaryLocksStatus()
                if lock is not None and rec.write is None:
                    self._mark_rollback_on_mismatching_lock(k, lock, start_ts, True)
                self._collapse_prev_rollback(k, start_ts)
                self._make_rollback(k, start_ts, True, rec)
                return SecondaryLocksStatus()
            return SecondaryLocksStatus(locks=tuple(found))

        return self._run(run)

    def resolve_lock(
        self,
        start_version: int = 0,
        commit_version: int = 0,
        keys: Sequence[bytes] = (),
        *,
        txn_infos: Mapping[int, int] | None = None,
        start_key: bytes = b"",
        end_key: bytes = b"",
    ) -> None:
        """ResolveLock: commit (``commit_version`` > 0) or roll back (0) a transaction's locks.

        With ``keys`` (resolve-lock-lite) only those keys are resolved, each like
        Commit / BatchRollback. Without keys every lock in ``[start_key, end_key)``
        (empty end = unbounded) whose start_ts is in the status map is resolved; the
        map is ``{start_version: commit_version}`` when ``start_version`` is non-zero,
        else ``txn_infos`` (``{start_ts: commit_ts}``). Follows TiKV
        ``commands/resolve_lock{,_lite}.rs``.

        Raises:
            InvalidTxnTsoError: a commit ts not greater than its start ts.
            TxnLockNotFoundError: lite mode, commit of a key with no lock and no record.
            CommittedError: rollback of a key already committed.

        """
        key_list = _check_keys(keys, "keys")
        _check_bytes(start_key, "start_key")
        _check_bytes(end_key, "end_key")
        status: dict[int, int] = {}
        _check_ts(start_version, "start_version")
        _check_ts(commit_version, "commit_version")
        if start_version != 0:
            # As TiKV (server/service/kv.rs): a non-zero start_version wins over txn_infos.
            status[start_version] = commit_version
        elif txn_infos:
            for s, c in txn_infos.items():
                status[_check_ts(s, "txn_infos start_ts", allow_zero=False)] = _check_ts(
                    c, "txn_infos commit_ts"
                )
        else:
            raise ValueError("resolve_lock needs a start_version or txn_infos")
        for s, c in status.items():
            if c != 0 and c <= s:
                raise InvalidTxnTsoError(s, c)
        if key_list and len(status) != 1:
            raise ValueError("resolve-lock-lite (keys) resolves exactly one transaction")

        def run_lite() -> None:
            ((s, c),) = status.items()
            for k in key_list:
                if c == 0:
                    self._cleanup_key(k, s, 0, protect_rollback=False)
                else:
                    self._commit_key(k, s, c)

        def run_scan() -> None:
            todo = self._locks_in_range(start_key, end_key or None, status)
            for k, lk in todo:
                c = status[lk.start_ts]
                if c == 0:
                    self._cleanup_key(k, lk.start_ts, 0, protect_rollback=False)
                else:
                    try:
                        self._commit_key(k, lk.start_ts, c)
                    except TxnLockNotFoundError:
                        if not lk.is_pessimistic_lock:
                            raise

        self._run(run_lite if key_list else run_scan)

    def _locks_in_range(
        self, start_key: bytes, upper: bytes | None, status: Mapping[int, int]
    ) -> list[tuple[bytes, Lock]]:
        locks = self._locks
        return [
            (k, locks[k])
            for k in locks.irange(start_key, upper, inclusive=(True, False))
            if locks[k].start_ts in status
        ]

    def scan_lock(
        self,
        max_version: int,
        start_key: bytes = b"",
        end_key: bytes = b"",
        limit: int = 0,
    ) -> list[LockInfo]:
        """ScanLock: locks with start_ts <= ``max_version`` in ``[start_key, end_key)``.

        An empty ``end_key`` is unbounded; ``limit`` 0 means no limit.
        """
        _check_ts(max_version, "max_version")
        _check_bytes(start_key, "start_key")
        _check_bytes(end_key, "end_key")
        if not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be a non-negative int, got {limit!r}")
        out: list[LockInfo] = []
        with self._mu:
            locks = self._locks
            for k in locks.irange(start_key, end_key or None, inclusive=(True, False)):
                lk = locks[k]
                if lk.start_ts <= max_version:
                    out.append(lk.to_lock_info(k))
                    if limit and len(out) >= limit:
                        break
        return out

    def txn_heart_beat(
        self,
        primary_lock: bytes,
        start_version: int,
        advise_lock_ttl: int,
        min_commit_ts: int = 0,
    ) -> int:
        """TxnHeartBeat: extend the primary lock's TTL (never shortens it); return the TTL.

        ``min_commit_ts`` raises a pipelined (flushed, non-async) lock's min_commit_ts,
        as TiKV ``commands/txn_heart_beat.rs`` does.

        Raises:
            TxnNotFoundError: the transaction holds no lock on ``primary_lock``.

        """
        _check_bytes(primary_lock, "primary_lock")
        start_ts = _check_ts(start_version, "start_version", allow_zero=False)
        _check_ts(advise_lock_ttl, "advise_lock_ttl")
        _check_ts(min_commit_ts, "min_commit_ts")

        def run() -> int:
            lock = self._locks.get(primary_lock)
            if lock is None or lock.start_ts != start_ts:
                raise TxnNotFoundError(start_ts, primary_lock)
            updated = lock
            if lock.ttl < advise_lock_ttl:
                updated = replace(updated, ttl=advise_lock_ttl)
            if (
                not lock.use_async_commit
                and lock.generation > 0
                and min_commit_ts > 0
                and lock.min_commit_ts < min_commit_ts
            ):
                updated = replace(updated, min_commit_ts=min_commit_ts)
            if updated is not lock:
                self._set_lock(primary_lock, updated)
            return updated.ttl

        return self._run(run)

    # ------------------------------------------------------------------ pessimistic

    def pessimistic_lock(
        self,
        mutations: Sequence[Mutation],
        primary_lock: bytes,
        start_version: int,
        lock_ttl: int,
        for_update_ts: int,
        *,
        is_first_lock: bool = False,
        wait_timeout: int = 0,
        return_values: bool = False,
        min_commit_ts: int = 0,
        check_existence: bool = False,
        lock_only_if_exists: bool = False,
        allow_lock_with_conflict: bool = False,
    ) -> PessimisticLockResult:
        """KvPessimisticLock: take pessimistic locks (TiKV ``actions/acquire_pessimistic_lock.rs``).

        Each mutation must have op PESSIMISTIC_LOCK; ``Assertion.NOT_EXIST`` means the
        key must not exist (AlreadyExist otherwise). All keys are locked or none.

        Args:
            mutations: PESSIMISTIC_LOCK mutations.
            primary_lock: the transaction's primary key.
            start_version: the transaction's start ts.
            lock_ttl: TTL in ms.
            for_update_ts: the statement's for_update_ts; a write committed after it is
                a conflict.
            is_first_lock: the transaction holds no other lock, so it cannot be part of
                a deadlock (carried in ``LockWait`` for the waiter).
            wait_timeout: the lock wait timeout in ms (carried in ``LockWait``).
            return_values: return the current values.
            min_commit_ts: recorded in the locks.
            check_existence: return whether each key exists.
            lock_only_if_exists: lock only keys that exist (requires return_values).
            allow_lock_with_conflict: force-lock mode: lock even over a newer write and
                report ``locked_with_conflict_ts`` instead of a WriteConflict.

        Returns:
            Per-key results; ``values`` / ``not_founds`` parallel to the mutations.

        Raises:
            KeyIsLockedError: another transaction's lock; ``e.wait`` carries the
                wait-for edge for the server's lock-wait and deadlock machinery.
            WriteConflictError: a write newer than ``for_update_ts`` (reason
                PessimisticRetry).
            AlreadyExistError: a NOT_EXIST key exists.
            PessimisticLockRolledBackError: the transaction was already rolled back.
            LockTypeNotMatchError: the key already holds this transaction's prewrite lock.

        """
        muts = _check_mutations(mutations)
        _check_bytes(primary_lock, "primary_lock")
        start_ts = _check_ts(start_version, "start_version", allow_zero=False)
        _check_ts(lock_ttl, "lock_ttl")
        fut = _check_ts(for_update_ts, "for_update_ts", allow_zero=False)
        _check_ts(min_commit_ts, "min_commit_ts")
        if not isinstance(wait_timeout, int):
            raise TypeError("wait_timeout must be an int (ms)")
        for m in muts:
            if m.op is not Op.PESSIMISTIC_LOCK:
                raise ValueError(
                    f"pessimistic_lock needs PESSIMISTIC_LOCK mutations, got {m.op.name}"
                )
        if lock_only_if_exists and not return_values:
            key = muts[0].key if muts else b""
            raise LockIfExistsFailedError(start_ts, key)

        def run() -> PessimisticLockResult:
            results: list[PessimisticLockKeyResult] = []
            for m in muts:
                try:
                    results.append(
                        self._acquire_pessimistic_lock(
                            m.key,
                            primary_lock,
                            start_ts,
                            m.assertion is Assertion.NOT_EXIST,
                            lock_ttl,
                            fut,
                            return_values,
                            check_existence,
                            min_commit_ts,
                            lock_only_if_exists,
                            allow_lock_with_conflict,
                        )
                    )
                except KeyIsLockedError as e:
                    e.wait = LockWait(
                        start_ts=start_ts,
                        for_update_ts=fut,
                        key=m.key,
                        key_hash=key_hash(m.key),
                        lock_info=e.lock_info,
                        wait_timeout=wait_timeout,
                        is_first_lock=is_first_lock,
                    )
                    raise
            values = tuple(r.value or b"" for r in results)
            if return_values:
                not_founds = tuple(r.value is None for r in results)
            elif check_existence:
                not_founds = tuple(not r.existence for r in results)
            else:
                not_founds = tuple(False for _ in results)
            return PessimisticLockResult(values, not_founds, tuple(results))

        return self._run(run)

    def _acquire_pessimistic_lock(
        self,
        key: bytes,
        primary: bytes,
        start_ts: int,
        should_not_exist: bool,
        lock_ttl: int,
        for_update_ts: int,
        need_value: bool,
        need_check_existence: bool,
        min_commit_ts: int,
        lock_only_if_exists: bool,
        allow_lock_with_conflict: bool,
    ) -> PessimisticLockKeyResult:
        if should_not_exist or need_value or need_check_existence:
            self._bump_max_ts(for_update_ts)
        lock = self._locks.get(key)
        if lock is not None:
            return self._existing_exclusive_lock(
                key,
                primary,
                start_ts,
                should_not_exist,
                lock_ttl,
                for_update_ts,
                need_value,
                need_check_existence,
                min_commit_ts,
                allow_lock_with_conflict,
                lock,
            )
        conflict: tuple[int, int] | None = None  # (conflict_start_ts, conflict_commit_ts)
        val: bytes | None = None
        need_load_value = need_value
        found = self._seek_write(key, MAX_TS)
        if found is not None:
            commit_ts, w = found
            if commit_ts > for_update_ts:
                if allow_lock_with_conflict:
                    conflict = (w.start_ts, commit_ts)
                    for_update_ts = commit_ts
                    need_load_value = True
                else:
                    raise _retry_conflict(start_ts, w.start_ts, commit_ts, key, primary)
            if commit_ts == start_ts and (
                w.write_type is WriteType.ROLLBACK or w.has_overlapped_rollback
            ):
                raise PessimisticLockRolledBackError(start_ts, key)
            if commit_ts > start_ts:
                older = self._seek_write(key, start_ts)
                if (
                    older is not None
                    and older[0] == start_ts
                    and (
                        older[1].write_type is WriteType.ROLLBACK
                        or older[1].has_overlapped_rollback
                    )
                ):
                    raise PessimisticLockRolledBackError(start_ts, key)
            try:
                self._check_data_constraint(should_not_exist, w, commit_ts, key)
            except AlreadyExistError:
                if conflict is not None:
                    raise _retry_conflict(
                        start_ts, conflict[0], conflict[1], key, primary
                    ) from None
                raise
            if need_value or need_check_existence or conflict is not None:
                wt = w.write_type
                if wt is WriteType.PUT:
                    val = (w.value or b"") if need_load_value else b""
                elif wt is WriteType.DELETE:
                    val = None
                else:
                    data = self._get_write_with_commit_ts(key, commit_ts - 1)
                    val = None
                    if data is not None:
                        val = (data[0].value or b"") if need_load_value else b""
        if not lock_only_if_exists or val is not None:
            self._set_lock(
                key,
                _pessimistic_lock(
                    primary, start_ts, lock_ttl, for_update_ts, min_commit_ts, conflict is not None
                ),
            )
        elif conflict is not None:
            raise _retry_conflict(start_ts, conflict[0], conflict[1], key, primary)
        return PessimisticLockKeyResult(
            key=key,
            # A locked-with-conflict result always carries the latest value (TiKV
            # ``acquire_pessimistic_lock.rs`` loads it: the client caches it for the retry).
            value=val if need_value or conflict is not None else None,
            existence=val is not None,
            locked_with_conflict_ts=conflict[1] if conflict is not None else 0,
        )

    def _existing_exclusive_lock(
        self,
        key: bytes,
        primary: bytes,
        start_ts: int,
        should_not_exist: bool,
        lock_ttl: int,
        for_update_ts: int,
        need_value: bool,
        need_check_existence: bool,
        min_commit_ts: int,
        allow_lock_with_conflict: bool,
        lock: Lock,
    ) -> PessimisticLockKeyResult:
        if lock.start_ts != start_ts:
            raise KeyIsLockedError(lock.to_lock_info(key))
        if not lock.is_pessimistic_lock:
            raise LockTypeNotMatchError(start_ts, key, pessimistic=False)
        requested = for_update_ts
        locked_with_conflict_ts = 0
        need_load_value = need_value
        if allow_lock_with_conflict and for_update_ts < lock.for_update_ts:
            need_load_value = True
            for_update_ts = lock.for_update_ts
            locked_with_conflict_ts = lock.for_update_ts
        val: bytes | None = None
        if need_load_value or need_check_existence or should_not_exist:
            data = self._get_write_with_commit_ts(key, for_update_ts)
            if data is not None:
                w, commit_ts = data
                try:
                    self._check_data_constraint(should_not_exist, w, commit_ts, key)
                except AlreadyExistError:
                    if commit_ts > requested:
                        raise _retry_conflict(
                            start_ts, w.start_ts, commit_ts, key, primary
                        ) from None
                    raise
                val = (w.value or b"") if need_load_value else b""
        if for_update_ts > lock.for_update_ts:
            self._set_lock(
                key,
                _pessimistic_lock(
                    primary,
                    start_ts,
                    lock_ttl,
                    for_update_ts,
                    min_commit_ts,
                    lock.is_locked_with_conflict,
                ),
            )
        return PessimisticLockKeyResult(
            key=key,
            value=val if need_value or locked_with_conflict_ts else None,
            existence=val is not None,
            locked_with_conflict_ts=locked_with_conflict_ts,
        )

    def pessimistic_rollback(
        self, keys: Sequence[bytes], start_version: int, for_update_ts: int
    ) -> None:
        """PessimisticRollback: remove this transaction's pessimistic locks on ``keys``.

        Only pessimistic locks with ``for_update_ts <=`` the given one are removed; no
        rollback record is written (TiKV ``commands/pessimistic_rollback.rs``).
        """
        key_list = _check_keys(keys, "keys")
        start_ts = _check_ts(start_version, "start_version", allow_zero=False)
        fut = _check_ts(for_update_ts, "for_update_ts")

        def run() -> None:
            for k in key_list:
                lock = self._locks.get(k)
                if (
                    lock is not None
                    and lock.is_pessimistic_lock
                    and lock.start_ts == start_ts
                    and lock.for_update_ts <= fut
                ):
                    self._set_lock(k, None)

        self._run(run)

    def wait_for_lock_change(self, key: bytes, lock_ts: int, timeout: float) -> bool:
        """Block until the lock of transaction ``lock_ts`` on ``key`` is gone, or timeout.

        For the server's lock-wait queue: returns True when the key is no longer
        locked by ``lock_ts`` (committed, rolled back, or resolved), False on timeout.
        """
        _check_bytes(key, "key")
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while True:
                lock = self._locks.get(key)
                if lock is None or lock.start_ts != lock_ts:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock_waiters += 1
                try:
                    self._cond.wait(remaining)
                finally:
                    self._lock_waiters -= 1

    # ------------------------------------------------------------------ pipelined DML

    def flush(
        self,
        mutations: Sequence[Mutation],
        primary_key: bytes,
        start_ts: int,
        generation: int,
        lock_ttl: int = 0,
        *,
        assertion_level: AssertionLevel = AssertionLevel.OFF,
    ) -> list[KeyIsLockedError]:
        """Flush (pipelined DML): write locks of ``generation`` during the transaction.

        A newer generation overwrites the transaction's own older-generation lock; a
        mutation of an older or equal generation than the lock's is ignored (TiKV
        ``commands/flush.rs``). Locks written carry ``min_commit_ts = start_ts + 1``.

        Returns:
            KeyIsLocked errors for keys locked by other transactions. Unlike prewrite,
            the other keys are still written.

        Raises:
            WriteConflictError, AlreadyExistError, AssertionFailedError: as prewrite.

        """
        muts = _check_mutations(mutations)
        _check_bytes(primary_key, "primary_key")
        sts = _check_ts(start_ts, "start_ts", allow_zero=False)
        _check_ts(lock_ttl, "lock_ttl")
        gen = _check_ts(generation, "generation")
        if gen == 0:
            raise ValueError("generation must be greater than 0 for Flush requests")
        # TiKV commands/flush.rs takes every mutation prewrite takes; a CheckNotExists is
        # checked and leaves no lock (prewrite_with_generation).
        for m in muts:
            if m.op not in _PESSIMISTIC_OK_OPS:
                raise ValueError(f"flush cannot carry a {m.op.name} mutation")
        props = _Props(
            start_ts=sts,
            pessimistic=False,
            for_update_ts=0,
            skip_constraint_check=False,
            commit_kind=_TWO_PC,
            max_commit_ts=0,
            primary=primary_key,
            txn_size=MAX_TS,
            lock_ttl=lock_ttl,
            min_commit_ts=sts + 1,
            is_retry_request=False,
            assertion_level=enum_of(AssertionLevel, assertion_level),
        )

        def run() -> list[KeyIsLockedError]:
            locks: list[KeyIsLockedError] = []
            assertion_failure: AssertionFailedError | None = None
            unused: list[tuple[bytes, Lock, bool]] = []
            for m in muts:
                try:
                    self._prewrite_key(
                        props, m, None, PessimisticAction.SKIP_PESSIMISTIC_CHECK, None, gen, unused
                    )
                except WriteConflictError as e:
                    if (
                        e.conflict_commit_ts > e.start_ts
                        and self._committed_on_err(m.key, sts) is not None
                    ):
                        self._apply_undo()
                        return []
                    raise
                except KeyIsLockedError as e:
                    if self._committed_on_err(m.key, sts) is not None:
                        self._apply_undo()
                        return []
                    locks.append(e)
                except AssertionFailedError as e:
                    if assertion_failure is None:
                        assertion_failure = e
                except GenerationOutOfOrderError:
                    continue
            if assertion_failure is not None:
                raise assertion_failure
            return locks

        return self._run(run)

    def buffer_batch_get(self, keys: Sequence[bytes], version: int) -> list[KvPair]:
        """BufferBatchGet: read the transaction's own flushed (pipelined) locks.

        ``version`` is the transaction's start ts. A Put lock yields its value; a Delete
        lock yields an empty value (as TiDB's memdb does); keys without this
        transaction's lock are left out (TiKV ``storage/mod.rs`` ``buffer_batch_get``).
        """
        key_list = _check_keys(keys, "keys")
        ts = _check_ts(version, "version", allow_zero=False)
        out: list[KvPair] = []
        with self._mu:
            for k in key_list:
                lock = self._locks.get(k)
                if lock is None or lock.start_ts != ts:
                    continue
                if lock.lock_type is LockType.DELETE:
                    out.append(KvPair(k, b""))
                elif lock.lock_type is LockType.PUT:
                    out.append(KvPair(k, lock.value or b""))
        return out

    # ------------------------------------------------------------------ GC and ranges

    def gc(self, safe_point: int, start_key: bytes = b"", end_key: bytes = b"") -> GcResult:
        """GC: drop versions no reader at or after ``safe_point`` can see (``actions/gc.rs``).

        Per key, the newest write at or below the safe point is kept if it is a Put;
        if it is a Delete it is removed together with everything older. Rollback and
        Lock records at or below the safe point are removed. Locks are not touched.
        """
        sp = _check_ts(safe_point, "safe_point")
        _check_bytes(start_key, "start_key")
        _check_bytes(end_key, "end_key")

        def run() -> GcResult:
            scanned = 0
            deleted = 0
            keys = list(self._writes.irange(start_key, end_key or None, inclusive=(True, False)))
            for k in keys:
                scanned += 1
                doomed: list[int] = []
                remove_all = False
                for commit_ts, w in self._iter_writes(k, sp):
                    if remove_all:
                        doomed.append(commit_ts)
                        continue
                    wt = w.write_type
                    if wt is WriteType.PUT:
                        remove_all = True
                    elif wt is WriteType.DELETE:
                        remove_all = True
                        doomed.append(commit_ts)
                    else:
                        doomed.append(commit_ts)
                for commit_ts in doomed:
                    self._delete_write(k, commit_ts)
                deleted += len(doomed)
            return GcResult(keys_scanned=scanned, versions_deleted=deleted)

        return self._run(run)

    def delete_range(self, start_key: bytes, end_key: bytes) -> int:
        """DeleteRange: remove every lock and write of keys in ``[start_key, end_key)``.

        An empty ``end_key`` is unbounded. Returns the number of keys removed.
        """
        _check_bytes(start_key, "start_key")
        _check_bytes(end_key, "end_key")
        if end_key and end_key < start_key:
            raise ValueError("end_key must not be smaller than start_key")
        with self._mu:
            upper = end_key or None
            lk = list(self._locks.irange(start_key, upper, inclusive=(True, False)))
            wk = list(self._writes.irange(start_key, upper, inclusive=(True, False)))
            for k in lk:
                del self._locks[k]
            for k in wk:
                del self._writes[k]
            if lk:
                self._locks_released()
            return len(set(lk).union(wk))

    def unsafe_destroy_range(self, start_key: bytes, end_key: bytes) -> int:
        """UnsafeDestroyRange: like :meth:`delete_range` (TiKV drops the SST files)."""
        return self.delete_range(start_key, end_key)

    # ------------------------------------------------------------------ debugging

    def mvcc_by_key(self, key: bytes) -> MvccInfo:
        """MvccGetByKey: the lock, writes (newest first) and default-CF values of ``key``."""
        _check_bytes(key, "key")
        with self._mu:
            lock = self._locks.get(key)
            writes = tuple(self._iter_writes(key))
            values: list[tuple[int, bytes]] = []
            if lock is not None and len(lock.value or b"") > SHORT_VALUE_MAX_LEN:
                assert lock.value is not None
                values.append((lock.start_ts, lock.value))
            for _, w in writes:
                if (
                    w.write_type is WriteType.PUT
                    and w.value is not None
                    and len(w.value) > SHORT_VALUE_MAX_LEN
                ):
                    values.append((w.start_ts, w.value))
            return MvccInfo(key=key, lock=lock, writes=writes, values=tuple(values))

    def mvcc_by_start_ts(self, start_ts: int) -> MvccInfo | None:
        """MvccGetByStartTs: the MVCC info of the first key touched by ``start_ts``."""
        _check_ts(start_ts, "start_ts", allow_zero=False)
        with self._mu:
            candidates = [k for k, lk in self._locks.items() if lk.start_ts == start_ts]
            for k, kw in self._writes.items():
                if any(w.start_ts == start_ts for w in kw.recs):
                    candidates.append(k)
                    break
            if not candidates:
                return None
            return self.mvcc_by_key(min(candidates))

    def lock_count(self) -> int:
        """The number of locks currently held (for tests and metrics)."""
        with self._mu:
            return len(self._locks)
