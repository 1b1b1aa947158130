"""Pessimistic locking: keys locked while the transaction runs, waits, deadlocks, rollback.

A pessimistic transaction (``begin(pessimistic=True)``) locks every key it writes or reads
for update *before* commit, so that its prewrite cannot meet a write conflict: client-go
``txnkv/transaction/txn.go`` (``lockKeys``, ``LockKeysWithWaitTime``,
``selectPrimaryForPessimisticLock``, ``asyncPessimisticRollback``) and
``txnkv/transaction/pessimistic.go`` (``actionPessimisticLock``,
``actionPessimisticRollback``). :class:`PessimisticLocker` does it for one transaction:

1. **for_update_ts** — every lock request gets a fresh timestamp from PD; a write
   committed after it is a conflict (TiKV answers ``WriteConflict``). The transaction's
   for-update ts is the largest one used; prewrite sends it with
   ``DO_PESSIMISTIC_CHECK`` for every locked key.
2. **Primary** — the smallest key of the first lock request (client-go sorts the keys and
   takes the first). Its region's batch is locked first; once it is locked, the
   committer's heartbeat keeps its TTL (20 s + the time the transaction has run) alive
   until the transaction ends (client-go starts ``ttlManager`` there).
3. **Waiting** — ``wait_timeout`` asks TiKV to wait for a lock held by another
   transaction (at most its ``wait-for-lock-timeout``, 1 s by default). When TiKV gives
   up (the lock is still there) the lock resolver checks the holder: a dead holder's lock
   is rolled back, a live one is waited for again — forever (:data:`LOCK_ALWAYS_WAIT`), not
   at all (:data:`LOCK_NO_WAIT`: :class:`LockWaitTimeoutError` with ``no_wait``), or until
   the timeout in ms has passed (:class:`LockWaitTimeoutError`). Locks updated less than
   300 ms ago are not resolved, just waited for again (client-go
   ``skipResolveThresholdMs`` in ``pessimistic.go``: the holder is very likely alive).
4. **Conflicts** — a woken waiter gets ``WriteConflict`` (the lock holder committed or
   went away); the request is sent again with a newer for_update_ts, as TiDB retries a
   statement (up to 256 times, TiDB's ``pessimistic-txn.max-retry-count``). A deadlock
   found by TiKV's detector fails the request with :class:`DeadlockError` and the wait
   chain.
5. **Rollback** — a failed lock request releases the keys it may have locked
   (``PessimisticRollback`` at its for_update_ts; a single key that failed with a write
   conflict or an existing key holds no lock, as client-go), and so does ``rollback()``
   for every key the transaction locked.

Optimistic transactions use the same entry points: ``lock_keys`` only marks the keys, and
prewrite checks them (a ``Lock`` mutation), as client-go does without a for-update ts.

Shared locks (``lock in share mode``) and aggressive (fair) locking are not implemented.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from tikv_pd.backoff import PESSIMISTIC_LOCK_MAX_BACKOFF, PESSIMISTIC_ROLLBACK_MAX_BACKOFF
from tikv_pd.config import LOCK_ALWAYS_WAIT, LOCK_NO_WAIT
from tikv_pd.errors import (
    KeyExistsError,
    LockInfo,
    LockWaitTimeoutError,
    TxnError,
    WriteConflictError,
)
from tikv_pd.region_cache import Region
from tikv_pd.request import KeysSharder, RequestOptions
from tikv_proto import kvrpcpb_pb2

from tikv_txn._kv import lock_from_pb
from tikv_txn.committer import pre_split_regions
from tikv_txn.membuffer import TOMBSTONE, FlagsOp, MemBuffer
from tikv_txn.policy import Op, pessimistic_lock_ttl

if TYPE_CHECKING:
    from tikv_txn._runtime import TxnRuntime
    from tikv_txn.committer import TwoPhaseCommitter
    from tikv_txn.snapshot import AsyncSnapshot

__all__ = [
    "MAX_WRITE_CONFLICT_RETRIES",
    "SKIP_RESOLVE_THRESHOLD_MS",
    "LockRequest",
    "PessimisticLocker",
    "WaitVerdict",
    "after_blocked",
    "effective_wait_timeout",
    "locks_to_resolve",
]

_log = logging.getLogger("tikv.txn.pessimistic")

#: A lock updated less than this many ms ago is not resolved after a lock-wait timeout:
#: its holder is very likely alive (client-go ``skipResolveThresholdMs``, pessimistic.go).
SKIP_RESOLVE_THRESHOLD_MS: Final = 300
#: How many times a lock request is sent again with a newer for_update_ts after a write
#: conflict before the conflict is raised (TiDB ``pessimistic-txn.max-retry-count``).
MAX_WRITE_CONFLICT_RETRIES: Final = 256

_BY_KEYS: KeysSharder[bytes] = KeysSharder()


class _PrimaryRegionSharder:
    """Only the keys in the primary's region: the part that must be locked first.

    Also when a region error re-shards that part (a split the client did not know of),
    only the primary's new region is sent; the keys left out are locked afterwards. Sent
    together, they could be locked while the primary waits for another transaction, which
    may hold the primary and wait for them: a deadlock between transactions that lock in the
    same order (client-go ``doActionOnGroupMutations`` sends the primary batch first).
    """

    __slots__ = ("primary",)

    def __init__(self, primary: bytes) -> None:
        self.primary = primary

    async def shard(
        self, locator: Any, payload: Sequence[bytes]
    ) -> list[tuple[Region, list[bytes]]]:
        region: Region = await locator.locate_key(self.primary)
        part = [k for k in payload if region.contains(k)]
        return [(region, part)] if part else []


_OP_PESSIMISTIC_LOCK: Final = int(Op.PESSIMISTIC_LOCK)
_ASSERT_NOT_EXIST: Final = 2  # kvrpcpb.Assertion.NotExist
_WAKE_UP_FORCE_LOCK: Final = int(kvrpcpb_pb2.PessimisticLockWakeUpMode.WakeUpModeForceLock)
_RESULT_LOCKED_WITH_CONFLICT: Final = int(
    kvrpcpb_pb2.PessimisticLockKeyResultType.LockResultLockedWithConflict
)
_RESULT_FAILED: Final = int(kvrpcpb_pb2.PessimisticLockKeyResultType.LockResultFailed)


# ---------------------------------------------------------------------------------------
# Pure rules
# ---------------------------------------------------------------------------------------


def effective_wait_timeout(lock_wait_ms: int, waited_ms: int) -> int:
    """The ``wait_timeout`` to send in the next lock request.

    client-go ``calculateEffectiveWaitTime``: a non-positive wait (no-wait, 0) is sent as
    :data:`LOCK_NO_WAIT`; :data:`LOCK_ALWAYS_WAIT` is sent as is (TiKV caps it at its
    ``wait-for-lock-timeout``); a timeout in ms is reduced by the time already waited, and
    once it is used up the request no longer waits.

    Args:
        lock_wait_ms: The lock context's wait time (ms, or one of the two constants).
        waited_ms: How long this lock request has been waiting so far, ms.

    """
    if lock_wait_ms <= 0:
        return LOCK_NO_WAIT
    if lock_wait_ms == LOCK_ALWAYS_WAIT:
        return LOCK_ALWAYS_WAIT
    left = lock_wait_ms - waited_ms
    return LOCK_NO_WAIT if left <= 0 else left


def locks_to_resolve(locks: Iterable[LockInfo]) -> list[LockInfo]:
    """The blocking locks worth resolving after a lock-wait timeout.

    A lock whose ``duration_to_last_update_ms`` is known (non-zero) and below
    :data:`SKIP_RESOLVE_THRESHOLD_MS` was just updated: its transaction is alive, so it
    is waited for again without asking its primary (client-go
    ``handleKeyErrorForResolve`` in ``pessimistic.go``; the rule lives there, not in the
    lock resolver).
    """
    return [
        lock
        for lock in locks
        if not (0 < lock.duration_to_last_update_ms < SKIP_RESOLVE_THRESHOLD_MS)
    ]


class WaitVerdict(enum.Enum):
    """What a lock request does when a live lock still blocks it."""

    #: Send the request again (TiKV waits again).
    KEEP_WAITING = "keep_waiting"
    #: The request asked not to wait.
    NO_WAIT = "no_wait"
    #: The lock wait timeout has passed.
    TIMED_OUT = "timed_out"


def after_blocked(lock_wait_ms: int, waited_ms: int) -> WaitVerdict:
    """Decide after the lock resolver found a blocking lock alive.

    client-go ``handlePessimisticLockResponseNormalMode``: :data:`LOCK_NO_WAIT` fails at
    once, :data:`LOCK_ALWAYS_WAIT` keeps waiting, any other wait time fails once the
    request has waited that long (so 0 fails after TiKV answered without waiting).
    """
    if lock_wait_ms == LOCK_NO_WAIT:
        return WaitVerdict.NO_WAIT
    if lock_wait_ms == LOCK_ALWAYS_WAIT:
        return WaitVerdict.KEEP_WAITING
    if waited_ms >= lock_wait_ms:
        return WaitVerdict.TIMED_OUT
    return WaitVerdict.KEEP_WAITING


@dataclass(frozen=True, slots=True, kw_only=True)
class LockRequest:
    """What one lock call asks for (client-go ``kv.LockCtx``).

    Attributes:
        wait_ms: Lock wait time: :data:`LOCK_ALWAYS_WAIT`, :data:`LOCK_NO_WAIT` or ms.
        return_values: Return each key's value (``get_for_update``).
        check_existence: Return whether each key exists, without values.
        lock_only_if_exists: Lock only the keys that exist (needs ``return_values``).

    """

    wait_ms: int = LOCK_ALWAYS_WAIT
    return_values: bool = False
    check_existence: bool = False
    lock_only_if_exists: bool = False

    def __post_init__(self) -> None:
        wait = self.wait_ms
        if not isinstance(wait, int) or isinstance(wait, bool):
            raise TypeError(f"lock_wait_timeout_ms must be an int, got {type(wait).__name__}")
        if not LOCK_NO_WAIT <= wait <= LOCK_ALWAYS_WAIT:
            raise ValueError(
                "lock_wait_timeout_ms must be LOCK_NO_WAIT (-1), LOCK_ALWAYS_WAIT or a "
                f"number of ms >= 0, got {wait}"
            )


#: What a lock call learned per key: (value, exists); the value is ``None`` unless values
#: were asked for and the key exists.
KeyResults = dict[bytes, tuple[bytes | None, bool]]
#: Internally also the locked-with-conflict ts (0: locked normally).
_Results = dict[bytes, tuple[bytes | None, bool, int]]


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One lock attempt's fixed parameters."""

    committer: TwoPhaseCommitter
    by_encoded: dict[bytes, bytes]
    for_update_ts: int
    request: LockRequest
    wait_start: float
    is_first_lock: bool
    force_lock: bool


@dataclass(slots=True, kw_only=True)
class _AggressiveEntry:
    """A key locked during aggressive locking (client-go ``tempLockBufferEntry``)."""

    has_return_value: bool
    has_check_existence: bool
    value: bytes | None
    exists: bool
    locked_with_conflict_ts: int
    actual_for_update_ts: int

    def try_skip_on_retry(self, return_values: bool, check_existence: bool) -> bool:
        """Whether a retried attempt may reuse this lock without a request.

        client-go ``trySkipLockingOnRetry``; adapts the entry to the new request.
        """
        if self.locked_with_conflict_ts:
            self.locked_with_conflict_ts = 0  # as if locked normally from now on
        elif (return_values and not self.has_return_value) or (
            not return_values and check_existence and not self.has_check_existence
        ):
            return False  # the request needs more than the last attempt learned
        if not return_values:
            self.has_return_value = False
            self.value = None
        if not check_existence:
            self.has_check_existence = False
            if not return_values:
                self.exists = True
        return True


@dataclass(slots=True)
class _AggressiveContext:
    """State of aggressive locking (client-go ``aggressiveLockingContext``)."""

    start: float
    current: dict[bytes, _AggressiveEntry] = field(default_factory=dict)
    last: dict[bytes, _AggressiveEntry] = field(default_factory=dict)
    primary: bytes | None = None
    last_primary: bytes | None = None
    assigned_primary: bool = False
    last_assigned_primary: bool = False
    last_attempt_start: float = 0.0
    max_conflict_ts: int = 0


# ---------------------------------------------------------------------------------------
# The locker
# ---------------------------------------------------------------------------------------


class PessimisticLocker:
    """The locks of one transaction (see the module docstring).

    Args:
        runtime: The client's shared state.
        start_ts: The transaction's start ts.
        pessimistic: The transaction is pessimistic (else locks are only marked).
        default_wait_ms: The transaction's ``lock_wait_timeout_ms``.
        buffer: Returns the transaction's current write buffer (lock flags are recorded
            there; a pipelined transaction replaces its buffer as it flushes).
        snapshot: The transaction's snapshot (optimistic ``get_for_update`` reads it).
        started_at: ``time.monotonic()`` when the transaction began (lock TTLs grow with
            the time it has run).
        committer: Returns the transaction's committer, creating it on first use: it
            owns the primary, the for-update ts and the heartbeat.

    """

    def __init__(
        self,
        runtime: TxnRuntime,
        start_ts: int,
        *,
        pessimistic: bool,
        default_wait_ms: int,
        buffer: Callable[[], MemBuffer],
        snapshot: AsyncSnapshot,
        started_at: float,
        committer: Callable[[], TwoPhaseCommitter],
    ) -> None:
        self._rt = runtime
        self.start_ts = start_ts
        self.pessimistic = pessimistic
        self.default_wait_ms = default_wait_ms
        self._buffer_of = buffer
        self._snapshot = snapshot
        self._started_at = started_at
        self._committer = committer
        #: The primary key (a user key), once the first lock request chose it.
        self.primary: bytes | None = None
        #: The largest for_update_ts of the lock requests that succeeded.
        self.for_update_ts = 0
        #: How many keys this transaction holds locks on.
        self.locked_count = 0
        #: Keys whose existence a lock response reported (or an insert asserted).
        self._existence: dict[bytes, bool] = {}
        #: Values returned with locks, valid while the lock is held and not overwritten.
        self._values: dict[bytes, bytes | None] = {}
        #: Written keys waiting for their lock, and the staging buffer of those writes.
        self._pending: dict[bytes, None] = {}
        self._stage: int | None = None
        #: Aggressive (fair) locking state while it is on.
        self._aggr: _AggressiveContext | None = None
        #: The largest locked-with-conflict ts of finished aggressive locking (pessimistic
        #: rollbacks must reach it: client-go ``maxLockedWithConflictTS``).
        self.max_locked_with_conflict_ts = 0
        self._mu = asyncio.Lock()
        #: Counters for tests and metrics.
        self.stats: dict[str, int] = {
            "lock_requests": 0,
            "write_conflict_retries": 0,
            "pessimistic_rollbacks": 0,
        }

    @property
    def _buffer(self) -> MemBuffer:
        return self._buffer_of()

    # -- writes ------------------------------------------------------------------------

    def before_write(self) -> None:
        """Called before a buffered write: writes awaiting their lock share one stage."""
        if self.pessimistic and self._stage is None:
            self._stage = self._buffer.staging()

    def after_write(self, key: bytes) -> None:
        """Called after a buffered write of ``key``: its lock waits for :meth:`flush_pending`."""
        if not self.pessimistic:
            return
        self._values.pop(key, None)
        flags = self._buffer.get_flags(key)
        if flags is not None and flags.has_locked and not self._needs_existence_check(key):
            if not self._pending:
                self._close_stage(commit=True)
            return
        self._pending[key] = None

    def _needs_existence_check(self, key: bytes) -> bool:
        # An insert into a key locked without learning whether it exists: lock it again
        # with the NotExist assertion (TiKV checks it under our own lock).
        flags = self._buffer.get_flags(key)
        return (
            flags is not None
            and flags.has_presume_key_not_exists
            and self._existence.get(key) is None
        )

    def known_existence(self, key: bytes) -> bool | None:
        """Whether ``key`` existed when this transaction locked it, if a lock said so.

        ``None`` when no lock request of this transaction learned it (a plain lock does
        not ask: client-go then assumes the value exists, which would make a
        ``not_exist`` assertion fail locally for no reason).
        """
        return self._existence.get(key)

    def check_insert(self, key: bytes) -> bool:
        """Before an insert of a key this transaction locked: whether it is known absent.

        Raises:
            KeyExistsError: The key is locked and its lock reported it exists
                (client-go ``lockKeys``' check of ``NeedCheckExists`` keys).

        """
        if not self.pessimistic or not self._is_locked(key):
            return False
        exists = self._existence.get(key)
        if exists:
            raise KeyExistsError(key)
        return exists is False

    def _close_stage(self, *, commit: bool) -> None:
        stage, self._stage = self._stage, None
        if stage is None:
            return
        if commit:
            self._buffer.release(stage)
        else:
            self._buffer.cleanup(stage)

    async def flush_pending(self, wait_ms: int | None = None) -> None:
        """Lock the keys of writes made since the last lock call.

        On failure those writes are discarded (their staging buffer is cleaned up).
        """
        if not self._pending:
            self._close_stage(commit=True)
            return
        keys = list(self._pending)
        self._pending.clear()
        try:
            await self.lock(
                keys,
                LockRequest(wait_ms=self.default_wait_ms if wait_ms is None else wait_ms),
                force=[k for k in keys if self._needs_existence_check(k)],
            )
        except BaseException:
            self._close_stage(commit=False)
            raise
        self._close_stage(commit=True)

    # -- reads for update --------------------------------------------------------------

    async def get_for_update(
        self, keys: Sequence[bytes], wait_ms: int | None, *, lock_only_if_exists: bool = False
    ) -> dict[bytes, bytes]:
        """Lock ``keys`` and return the existing ones with their values (own writes first).

        Keys the transaction wrote are locked and answered from the buffer; the others are
        locked with ``return_values`` (already locked ones too, unless a lock already
        returned their value), so the value is the latest committed one, which the lock
        now protects. Missing keys are locked as well, unless ``lock_only_if_exists``.
        """
        await self.flush_pending(wait_ms)
        out: dict[bytes, bytes] = {}
        if not self.pessimistic:
            await self.lock(keys, LockRequest())
            remote = []
            for key in keys:
                buffered = self._buffer.get(key)
                if buffered is None:
                    remote.append(key)
                elif buffered is not TOMBSTONE:
                    out[key] = buffered
            if remote:
                out.update(await self._snapshot.batch_get(remote))
            return out
        wanted: list[bytes] = []
        plain: list[bytes] = []
        for key in keys:
            buffered = self._buffer.get(key)
            if buffered is not None:
                if buffered is not TOMBSTONE:
                    out[key] = buffered
                plain.append(key)
            elif key in self._values:
                value = self._values[key]
                if value is not None:
                    out[key] = value
            else:
                wanted.append(key)
        wait = self.default_wait_ms if wait_ms is None else wait_ms
        if plain:
            await self.lock(plain, LockRequest(wait_ms=wait))
        if wanted:
            results = await self.lock(
                wanted,
                LockRequest(
                    wait_ms=wait, return_values=True, lock_only_if_exists=lock_only_if_exists
                ),
                force=wanted,
            )
            for key, (value, exists) in results.items():
                if exists and value is not None:
                    out[key] = value
        return out

    async def exists_for_update(
        self, keys: Sequence[bytes], wait_ms: int | None
    ) -> dict[bytes, bool]:
        """Lock ``keys`` and say which exist (``check_existence``: no values travel)."""
        await self.flush_pending(wait_ms)
        out: dict[bytes, bool] = {}
        wanted: list[bytes] = []
        for key in keys:
            buffered = self._buffer.get(key)
            if buffered is not None:
                out[key] = buffered is not TOMBSTONE
            elif key in self._existence:
                out[key] = self._existence[key]
            else:
                wanted.append(key)
        wait = self.default_wait_ms if wait_ms is None else wait_ms
        known = [k for k in keys if k in out]
        if known:
            await self.lock(known, LockRequest(wait_ms=wait))
        if wanted:
            if not self.pessimistic:
                await self.lock(wanted, LockRequest())
                found = await self._snapshot.batch_get(wanted)
                out.update({k: k in found for k in wanted})
                return out
            results = await self.lock(
                wanted, LockRequest(wait_ms=wait, check_existence=True), force=wanted
            )
            out.update({k: exists for k, (_, exists) in results.items()})
        return out

    # -- locking -----------------------------------------------------------------------

    async def lock(
        self, keys: Iterable[bytes], request: LockRequest, *, force: Iterable[bytes] = ()
    ) -> KeyResults:
        """Lock ``keys`` (those already locked are skipped unless in ``force``).

        Returns:
            What the lock responses reported per key (values / existence, as asked).

        Raises:
            DeadlockError: TiKV's deadlock detector aborted the request.
            LockWaitTimeoutError: The keys stayed locked by a live transaction past the
                wait time (``no_wait`` set for :data:`LOCK_NO_WAIT`).
            KeyExistsError: A key being inserted exists.
            WriteConflictError: Conflicts persisted over
                :data:`MAX_WRITE_CONFLICT_RETRIES` newer for_update_ts values.
            tikv_pd.errors.TiKVError: Other failures.

        """
        async with self._mu:
            results = await self._lock(keys, request, set(force))
        return {k: (value, exists) for k, (value, exists, _) in results.items()}

    def _is_locked(self, key: bytes) -> bool:
        flags = self._buffer.get_flags(key)
        if flags is not None and flags.has_locked:
            return True
        aggr = self._aggr
        return aggr is not None and (key in aggr.current or key in aggr.last)

    async def _lock(
        self, keys_in: Iterable[bytes], request: LockRequest, force: set[bytes]
    ) -> _Results:
        self._rt.check_open()
        wanted = sorted(set(keys_in))
        if self._aggr is not None and len(wanted) > 1:
            # Aggressive locking serves single-key requests only: leave it as if its
            # locks were taken normally (client-go exitAggressiveLockingIfInapplicable).
            await self._done_aggressive()
        aggr = self._aggr
        keys: list[bytes] = []
        for key in wanted:
            flags = self._buffer.get_flags(key)
            locked = flags is not None and flags.has_locked
            in_last = False
            if aggr is not None:
                if key in aggr.current:
                    locked = True
                elif key in aggr.last:
                    locked = in_last = True
            if locked and not in_last and key not in force:
                continue
            keys.append(key)
        if not keys:
            return {}
        if not self.pessimistic:
            # client-go lockKeys without a for-update ts: the keys are only marked, and
            # prewrite checks them for conflicts (Lock mutations).
            for key in keys:
                self._buffer.update_flags(key, FlagsOp.SET_KEY_LOCKED)
            return {}
        if request.lock_only_if_exists:
            if not request.return_values:
                raise ValueError("lock_only_if_exists needs return_values")
            if self.primary is None and len(keys) > 1:
                raise ValueError(
                    "lock_only_if_exists on several keys needs a primary key: lock one key "
                    "of the transaction first"
                )
        was_locked = {k for k in keys if self._is_locked(k)}
        committer = self._committer()
        assigned = False
        if self.primary is None:
            # client-go selectPrimaryForPessimisticLock: the first of the sorted keys, or,
            # retrying aggressive locking, the previous attempt's primary if locked again.
            assigned = True
            chosen = keys[0]
            if aggr is not None and aggr.last_primary in keys:
                chosen = aggr.last_primary
            self._set_primary(committer, chosen)
            if aggr is not None:
                aggr.assigned_primary = True
                aggr.primary = chosen
        results: _Results = {}
        if aggr is not None:
            keys = self._reuse_last_attempt(aggr, committer, keys, request, results, assigned)
            if not keys:
                return results
        force_lock = aggr is not None and len(keys) == 1
        is_first_lock = self.locked_count == 0 and len(keys) == 1
        wait_start = time.monotonic()
        for_update_ts = 0
        retries = 0
        try:
            while True:
                for_update_ts = await self._rt.oracle.get_timestamp()
                try:
                    acquired = await self._lock_once(
                        committer,
                        keys,
                        for_update_ts,
                        request,
                        wait_start,
                        is_first_lock=is_first_lock,
                        force_lock=force_lock,
                    )
                    break
                except WriteConflictError:
                    # Someone committed a key after our for_update_ts (or the lock we
                    # waited for was released): lock again at a newer ts, as TiDB retries
                    # the statement.
                    retries += 1
                    if retries > MAX_WRITE_CONFLICT_RETRIES:
                        raise
                    self.stats["write_conflict_retries"] += 1
        except BaseException as exc:
            await self._after_failure(
                committer, keys, was_locked, exc, for_update_ts, assigned=assigned
            )
            raise
        results.update(acquired)
        self.for_update_ts = max(self.for_update_ts, for_update_ts)
        committer.for_update_ts = max(committer.for_update_ts, self.for_update_ts)
        encode = self._rt.codec.encode_key
        for key in keys:
            value, exists, conflict_ts = acquired.get(key, (None, True, 0))
            if request.lock_only_if_exists and not exists:
                continue
            if key not in was_locked:
                self.locked_count += 1
            if request.return_values or request.check_existence:
                self._existence[key] = exists
            elif conflict_ts == 0:
                flags = self._buffer.get_flags(key)
                if flags is not None and flags.has_presume_key_not_exists:
                    self._existence[key] = False  # the NotExist assertion held
            if request.return_values or conflict_ts:
                self._values[key] = value if exists else None
            actual_ts = max(for_update_ts, conflict_ts)
            if aggr is not None:
                aggr.current[key] = _AggressiveEntry(
                    has_return_value=request.return_values,
                    has_check_existence=request.check_existence,
                    value=value,
                    exists=exists,
                    locked_with_conflict_ts=conflict_ts,
                    actual_for_update_ts=actual_ts,
                )
                aggr.max_conflict_ts = max(aggr.max_conflict_ts, conflict_ts)
                continue
            encoded = encode(key)
            if encoded in committer.for_update_ts_constraints:
                # Locked again (for its value): prewrite must expect the new for-update ts.
                committer.for_update_ts_constraints[encoded] = actual_ts
            self._buffer.update_flags(
                key,
                FlagsOp.SET_KEY_LOCKED,
                FlagsOp.DEL_NEED_CHECK_EXISTS,
                FlagsOp.SET_KEY_LOCKED_VALUE_EXISTS
                if exists
                else FlagsOp.SET_KEY_LOCKED_VALUE_NOT_EXISTS,
            )
        if assigned and request.lock_only_if_exists and self.primary is not None:
            _, exists, _ = acquired.get(self.primary, (None, True, 0))
            if not exists:
                # client-go unsetPrimaryKeyIfNeeded: the key was not locked.
                self._reset_primary(committer)
        return results

    def _set_primary(self, committer: TwoPhaseCommitter, key: bytes) -> None:
        encoded = self._rt.codec.encode_key(key)
        if committer.primary and committer.lock_primary is None and committer.primary != encoded:
            # A primary kept alive across an aggressive-locking retry: a different key
            # now needs its own heartbeat (client-go resetTTLManagerForAggressiveLockingMode).
            committer.stop_heartbeat()
        self.primary = key
        committer.lock_primary = key
        committer.primary = encoded

    def _reset_primary(self, committer: TwoPhaseCommitter, *, keep_heartbeat: bool = False) -> None:
        self.primary = None
        committer.lock_primary = None
        if not keep_heartbeat:
            committer.primary = b""
            committer.stop_heartbeat()

    async def _after_failure(
        self,
        committer: TwoPhaseCommitter,
        keys: list[bytes],
        was_locked: set[bytes],
        exc: BaseException,
        for_update_ts: int,
        *,
        assigned: bool,
    ) -> None:
        """Release what a failed lock call may have locked (client-go ``lockKeys``)."""
        # A single key that failed with a write conflict or an existing key holds no lock.
        may_be_locked = not isinstance(exc, WriteConflictError | KeyExistsError)
        aggr = self._aggr
        flagged = {k for k in keys if (f := self._buffer.get_flags(k)) and f.has_locked}
        release = [k for k in keys if k not in flagged]
        if release and for_update_ts and (len(keys) > 1 or may_be_locked):
            if aggr is not None:
                for key in release:
                    aggr.current.pop(key, None)
                    self._forget(key)
            self.locked_count -= len([k for k in release if k in was_locked])
            ts = max(for_update_ts, self.for_update_ts, self._max_conflict_ts())
            task = self._rt.spawn(
                self._rollback_quietly(release, ts),
                name=f"tikv-txn-pessimistic-rollback-{self.start_ts}",
            )
            if not isinstance(exc, asyncio.CancelledError):
                # Wait for it: the caller may retry at once (client-go waits before a
                # deadlock retry for the same reason).
                await asyncio.shield(task)
        if assigned:
            self._reset_primary(committer)
            if aggr is not None:
                aggr.assigned_primary = False
                aggr.primary = None

    def _forget(self, key: bytes) -> None:
        self._values.pop(key, None)
        self._existence.pop(key, None)

    def _max_conflict_ts(self) -> int:
        aggr = self._aggr
        ts = self.max_locked_with_conflict_ts
        return ts if aggr is None else max(ts, aggr.max_conflict_ts)

    async def _rollback_quietly(self, keys: list[bytes], for_update_ts: int) -> None:
        try:
            await self.pessimistic_rollback(keys, for_update_ts)
        except Exception as exc:  # the locks expire with their TTL
            _log.warning("txn %d: pessimistic rollback failed: %s", self.start_ts, exc)

    def _request_options(self, committer: TwoPhaseCommitter) -> RequestOptions:
        return committer.write_options

    async def _lock_once(
        self,
        committer: TwoPhaseCommitter,
        keys: list[bytes],
        for_update_ts: int,
        request: LockRequest,
        wait_start: float,
        *,
        is_first_lock: bool,
        force_lock: bool,
    ) -> _Results:
        """One attempt at ``for_update_ts``: the primary's region first, then the rest."""
        codec = self._rt.codec
        by_encoded = {codec.encode_key(k): k for k in keys}
        encoded = sorted(by_encoded)
        if len(encoded) >= self._rt.config.txn_pre_split_detect_threshold:
            # Locking many keys of one region splits it first, as prewrite does
            # (client-go runs pessimistic locks through the same groupMutations).
            await pre_split_regions(
                self._rt, [(k, len(k)) for k in encoded], start_ts=self.start_ts
            )
        assert self.primary is not None
        primary = codec.encode_key(self.primary)
        first: list[bytes] = []
        rest = encoded
        if primary in by_encoded:
            region = await self._rt.sender.locator.locate_key(primary)
            first = [k for k in encoded if region.contains(k)]
            rest = [k for k in encoded if not region.contains(k)]
        results: _Results = {}
        attempt = _Attempt(
            committer, by_encoded, for_update_ts, request, wait_start, is_first_lock, force_lock
        )
        if first:
            results.update(await self._lock_group(first, attempt, first_key=primary))
            # The primary is locked: keep it alive from now on (client-go ttlManager.run).
            committer.start_heartbeat()
        if rest:
            results.update(await self._lock_group(rest, attempt))
        return results

    async def _lock_group(
        self, payload: list[bytes], attempt: _Attempt, *, first_key: bytes | None = None
    ) -> _Results:
        """Lock ``payload`` (encoded keys) region by region until every key is locked.

        With ``first_key`` (the encoded primary, in ``payload``), the keys of its region
        are locked first, and only then the others.
        """
        committer = attempt.committer
        by_encoded = attempt.by_encoded
        request = attempt.request
        primary = committer.primary
        cfg = self._rt.config
        buffer = self._buffer
        wake_up_mode = _WAKE_UP_FORCE_LOCK if attempt.force_lock else 0

        def build(region: Region, part: Sequence[bytes]) -> kvrpcpb_pb2.PessimisticLockRequest:
            mutations = []
            for key in part:
                flags = buffer.get_flags(by_encoded[key])
                presumed = flags is not None and flags.has_presume_key_not_exists
                mutations.append(
                    kvrpcpb_pb2.Mutation(
                        op=_OP_PESSIMISTIC_LOCK,  # type: ignore[arg-type]
                        key=key,
                        assertion=_ASSERT_NOT_EXIST if presumed else 0,  # type: ignore[arg-type]
                    )
                )
            now = time.monotonic()
            waited = int((now - attempt.wait_start) * 1000)
            elapsed = int((now - self._started_at) * 1000)
            self.stats["lock_requests"] += 1
            return kvrpcpb_pb2.PessimisticLockRequest(
                mutations=mutations,
                primary_lock=primary,
                start_version=self.start_ts,
                for_update_ts=attempt.for_update_ts,
                # A new TTL per attempt: a lock taken after a long wait must not be born
                # nearly expired (client-go computes it inside the retry loop).
                lock_ttl=pessimistic_lock_ttl(
                    max(0, elapsed), managed_lock_ttl_ms=cfg.managed_lock_ttl_ms
                ),
                is_first_lock=attempt.is_first_lock,
                wait_timeout=effective_wait_timeout(request.wait_ms, waited),
                return_values=request.return_values,
                check_existence=request.check_existence,
                min_commit_ts=attempt.for_update_ts + 1,
                lock_only_if_exists=request.lock_only_if_exists,
                wake_up_mode=wake_up_mode,  # type: ignore[arg-type]
            )

        def handle(region: Region, part: Sequence[bytes], resp: Any) -> tuple[Sequence[bytes], Any]:
            return part, resp

        options = self._request_options(committer)
        bo = self._rt.backoffer(PESSIMISTIC_LOCK_MAX_BACKOFF, "pessimistic lock")
        results: _Results = {}
        while payload:
            sharder: Any = _BY_KEYS if first_key is None else _PrimaryRegionSharder(first_key)
            parts = await self._rt.sender.execute(
                "PessimisticLock", sharder, payload, build, handle, bo=bo, options=options
            )
            retry: list[bytes] = []
            blocking: list[LockInfo] = []
            if first_key is not None:
                # Keys a re-split left out of the primary's region wait for the primary.
                sent = {k for part, _ in parts for k in part}
                retry.extend(k for k in payload if k not in sent)
            for part, resp in parts:
                done = (
                    self._read_force_lock(part, resp, request, by_encoded, results)
                    if attempt.force_lock
                    else self._read_normal(part, resp, request, by_encoded, results)
                )
                if done:
                    continue
                for err in resp.errors:
                    if err.HasField("locked"):
                        blocking.append(lock_from_pb(err.locked))
                    else:
                        # AlreadyExist, Deadlock (with the wait chain), WriteConflict, ...
                        raise self._rt.key_error(err, start_ts=self.start_ts)
                retry.extend(part)
            if first_key is not None and first_key not in retry:
                first_key = None  # locked: the rest may go to all their regions at once
            if blocking:
                await self._resolve_blocking(bo, blocking, request, attempt.wait_start)
            payload = retry
        return results

    def _read_normal(
        self,
        part: Sequence[bytes],
        resp: Any,
        request: LockRequest,
        by_encoded: dict[bytes, bytes],
        out: _Results,
    ) -> bool:
        """Record a normal-mode response; False when it failed (see its errors)."""
        if len(resp.results):
            raise TxnError("pessimistic lock response corrupted: results in normal mode")
        if len(resp.errors):
            return False
        values = list(resp.values)
        not_founds = list(resp.not_founds)
        for i, key in enumerate(part):
            user_key = by_encoded[key]
            if request.return_values:
                value = values[i] if i < len(values) else b""
                # An old TiKV without not_founds: an empty value means "not found".
                exists = not not_founds[i] if not_founds else value != b""
                out[user_key] = (value if exists else None, exists, 0)
            elif request.check_existence and not_founds:
                out[user_key] = (None, not not_founds[i], 0)
            else:
                out[user_key] = (None, True, 0)
        return True

    def _read_force_lock(
        self,
        part: Sequence[bytes],
        resp: Any,
        request: LockRequest,
        by_encoded: dict[bytes, bytes],
        out: _Results,
    ) -> bool:
        """Record a force-lock (fair locking) response of one key; False when it failed.

        client-go ``handlePessimisticLockResponseForceLockMode``.
        """
        results = list(resp.results)
        if len(part) != 1 or len(results) > 1:
            raise TxnError("pessimistic lock response corrupted: force-lock mode is single-key")
        if not results:
            if len(resp.errors):
                return False  # an error before any key was tried
            raise TxnError("pessimistic lock response corrupted: no result in force-lock mode")
        res = results[0]
        user_key = by_encoded[part[0]]
        if res.type == _RESULT_FAILED:
            return False
        if res.type == _RESULT_LOCKED_WITH_CONFLICT:
            # Locked over a newer write: the lock's for-update ts is that write's commit
            # ts, and the value is the newest one (returned even without return_values).
            out[user_key] = (
                res.value if res.existence else None,
                res.existence,
                res.locked_with_conflict_ts,
            )
        elif request.return_values:
            out[user_key] = (res.value if res.existence else None, res.existence, 0)
        elif request.check_existence:
            out[user_key] = (None, res.existence, 0)
        else:
            out[user_key] = (None, True, 0)
        if len(resp.errors):
            raise TxnError("pessimistic lock response corrupted: a locked key with an error")
        return True

    async def _resolve_blocking(
        self, bo: Any, blocking: list[LockInfo], request: LockRequest, wait_start: float
    ) -> None:
        """After TiKV gave up waiting: resolve dead holders, or fail per the wait mode."""
        to_resolve = locks_to_resolve(blocking)
        if not to_resolve:
            return  # recently updated: the holder is alive, wait again at once
        # TiKV already waited, so no backoff here (client-go pessimistic.go); the caller
        # start ts is 0: a lock request never pushes the holder's min_commit_ts; a dead
        # holder's pessimistic locks go region by region (PessimisticRegionResolve).
        res = await self._rt.resolver.resolve_locks(
            bo,
            0,
            to_resolve,
            for_read=False,
            pessimistic_region_resolve=True,
            options=self._committer().resolve_options,
        )
        if res.ms_before_expired <= 0:
            return
        waited = int((time.monotonic() - wait_start) * 1000)
        verdict = after_blocked(request.wait_ms, waited)
        if verdict is WaitVerdict.KEEP_WAITING:
            return
        lock = to_resolve[0]
        raise self._rt.user_error(
            LockWaitTimeoutError(
                lock.key,
                self.start_ts,
                lock_ts=lock.lock_version,
                no_wait=verdict is WaitVerdict.NO_WAIT,
            )
        )

    # -- aggressive (fair) locking -----------------------------------------------------

    @property
    def in_aggressive_locking(self) -> bool:
        """Whether aggressive locking is on (client-go ``IsInAggressiveLockingMode``)."""
        return self._aggr is not None

    def is_in_aggressive_locking_stage(self, key: bytes) -> bool:
        """Whether ``key`` was locked in the current aggressive-locking attempt."""
        return self._aggr is not None and key in self._aggr.current

    def start_aggressive_locking(self) -> None:
        """Enter aggressive locking (client-go ``StartAggressiveLocking``).

        Raises:
            ValueError: Not a pessimistic transaction, or already on.

        """
        if not self.pessimistic:
            raise ValueError("aggressive locking needs a pessimistic transaction")
        if self._aggr is not None:
            raise ValueError("aggressive locking is already on")
        self._aggr = _AggressiveContext(start=time.monotonic())

    def _require_aggressive(self) -> _AggressiveContext:
        if self._aggr is None:
            raise ValueError("aggressive locking is not on")
        return self._aggr

    async def retry_aggressive_locking(self) -> None:
        """End the current attempt and start the next (client-go ``RetryAggressiveLocking``).

        Locks of the attempt before the one just ended that were not taken again are
        released; the ones of the attempt just ended are kept for the next attempt, which
        reuses them without a request when it locks the same keys.
        """
        async with self._mu:
            aggr = self._require_aggressive()
            await self._cleanup_redundant(aggr)
            if aggr.assigned_primary:
                # The next attempt may choose another primary; the heartbeat keeps the
                # current one alive meanwhile (tidb#58279).
                aggr.assigned_primary = False
                aggr.last_assigned_primary = True
                self._reset_primary(self._committer(), keep_heartbeat=True)
            aggr.last_primary, aggr.primary = aggr.primary, None
            aggr.last_attempt_start, aggr.start = aggr.start, time.monotonic()
            aggr.last, aggr.current = aggr.current, {}

    async def cancel_aggressive_locking(self) -> None:
        """Leave aggressive locking releasing its locks (client-go ``CancelAggressiveLocking``)."""
        async with self._mu:
            aggr = self._require_aggressive()
            self._aggr = None
            await self._cleanup_redundant(aggr)
            committer = self._committer()
            if aggr.assigned_primary or aggr.last_assigned_primary:
                self._reset_primary(committer)
            keys = list(aggr.current)
            if keys:
                ts = max(committer.for_update_ts, aggr.max_conflict_ts)
                self.locked_count -= len(keys)
                for key in keys:
                    self._forget(key)
                await self._rollback_quietly(keys, ts)

    async def done_aggressive_locking(self) -> None:
        """Leave aggressive locking keeping its locks (client-go ``DoneAggressiveLocking``).

        The keys locked by the last attempt become normally locked keys; prewrite expects
        their locks at the for-update ts they were taken at (``for_update_ts_constraints``).
        """
        async with self._mu:
            self._require_aggressive()
            await self._done_aggressive()

    def check_commit(self) -> None:
        """Refuse to commit while aggressive locking holds locks of an unfinished attempt.

        Raises:
            TxnError: Call :meth:`done_aggressive_locking` or
                :meth:`cancel_aggressive_locking` first (client-go ``KVTxn.Commit``).

        """
        if self._aggr is not None and self._aggr.current:
            raise TxnError(
                "aggressive locking is pending: call done_aggressive_locking() or "
                "cancel_aggressive_locking() before commit"
            )

    async def before_commit(self) -> None:
        """Leave an empty aggressive-locking state and lock the pending writes."""
        self.check_commit()
        if self._aggr is not None:
            await self.cancel_aggressive_locking()
        await self.flush_pending()

    async def _done_aggressive(self) -> None:
        aggr = self._aggr
        assert aggr is not None
        self._aggr = None
        committer = self._committer()
        if aggr.last_assigned_primary and not aggr.assigned_primary:
            # No key of the last attempt became the primary: nothing to keep alive.
            committer.primary = b""
            committer.stop_heartbeat()
        await self._cleanup_redundant(aggr)
        encode = self._rt.codec.encode_key
        constraints = committer.for_update_ts_constraints
        for key, entry in aggr.current.items():
            not_exists = (entry.has_check_existence or entry.has_return_value) and not entry.exists
            self._buffer.update_flags(
                key,
                FlagsOp.SET_KEY_LOCKED,
                FlagsOp.DEL_NEED_CHECK_EXISTS,
                FlagsOp.SET_KEY_LOCKED_VALUE_NOT_EXISTS
                if not_exists
                else FlagsOp.SET_KEY_LOCKED_VALUE_EXISTS,
            )
            constraints.setdefault(encode(key), entry.actual_for_update_ts)
        if aggr.max_conflict_ts > self.max_locked_with_conflict_ts:
            self.max_locked_with_conflict_ts = aggr.max_conflict_ts
        # The commit ts must exceed every lock's for-update ts, a locked-with-conflict one
        # included (TiDB retries the statement at a newer for_update_ts instead).
        committer.for_update_ts = max(committer.for_update_ts, self.max_locked_with_conflict_ts)

    async def _cleanup_redundant(self, aggr: _AggressiveContext) -> None:
        """Release the last attempt's locks that this attempt did not take again."""
        keys = list(aggr.last)
        aggr.last = {}
        if not keys:
            return
        self.locked_count -= len(keys)
        for key in keys:
            self._forget(key)
        ts = max(self._committer().for_update_ts, aggr.max_conflict_ts)
        await self._rollback_quietly(keys, ts)

    def _reuse_last_attempt(
        self,
        aggr: _AggressiveContext,
        committer: TwoPhaseCommitter,
        keys: list[bytes],
        request: LockRequest,
        results: _Results,
        assigned: bool,
    ) -> list[bytes]:
        """Keys of the last attempt reused without a request; return the keys to lock.

        client-go ``filterAggressiveLockedKeys``: only while the primary is unchanged and
        the last attempt's locks cannot have expired yet.
        """
        can_try_skip = not aggr.assigned_primary or aggr.last_primary == aggr.primary
        ttl_ms = self._rt.config.managed_lock_ttl_ms
        may_expire = (time.monotonic() - aggr.last_attempt_start) * 1000 >= ttl_ms
        remaining: list[bytes] = []
        for key in keys:
            entry = aggr.last.pop(key, None)
            if entry is not None:
                conflict_ts = entry.locked_with_conflict_ts
                if (
                    can_try_skip
                    and not may_expire
                    and entry.try_skip_on_retry(request.return_values, request.check_existence)
                ):
                    aggr.current[key] = entry
                    results[key] = (entry.value, entry.exists, conflict_ts)
                    continue
            remaining.append(key)
        if remaining and assigned and aggr.primary != aggr.last_primary:
            # A new primary: its heartbeat starts once it is locked.
            committer.stop_heartbeat()
        return remaining

    # -- rollback ----------------------------------------------------------------------

    async def pessimistic_rollback(self, keys: Sequence[bytes], for_update_ts: int) -> None:
        """``PessimisticRollback`` of this transaction's locks on ``keys`` (user keys).

        Only locks with a for-update ts at most ``for_update_ts`` are removed (TiKV), so a
        late rollback never removes a lock taken again since (client-go
        ``actionPessimisticRollback``).
        """
        if not keys:
            return
        codec = self._rt.codec
        encoded = sorted({codec.encode_key(k) for k in keys})
        start_ts = self.start_ts

        def build(region: Region, part: Sequence[bytes]) -> kvrpcpb_pb2.PessimisticRollbackRequest:
            return kvrpcpb_pb2.PessimisticRollbackRequest(
                start_version=start_ts, for_update_ts=for_update_ts, keys=list(part)
            )

        def handle(region: Region, part: Sequence[bytes], resp: Any) -> None:
            errors = list(resp.errors)
            if errors:
                raise self._rt.key_error(errors[0], start_ts=start_ts)

        self.stats["pessimistic_rollbacks"] += 1
        bo = self._rt.backoffer(PESSIMISTIC_ROLLBACK_MAX_BACKOFF, "pessimistic rollback")
        await self._rt.sender.execute(
            "PessimisticRollback",
            _BY_KEYS,
            encoded,
            build,
            handle,
            bo=bo,
            options=self._request_options(self._committer()),
        )

    def locked_keys(self) -> list[bytes]:
        """The keys this transaction holds locks on (client-go ``collectLockedKeys``)."""
        return [e.key for e in self._buffer.iterate_with_flags() if e.flags.has_locked]

    async def rollback(self) -> None:
        """Stop the heartbeat and release every lock (client-go ``rollbackPessimisticLocks``).

        A failure is logged, not raised: the locks then expire with their TTL.
        """
        self._pending.clear()
        self._close_stage(commit=False)
        if self._aggr is not None:
            await self.cancel_aggressive_locking()
        if not self.pessimistic or self.locked_count == 0:
            return
        self._committer().stop_heartbeat()
        ts = max(self.for_update_ts, self.max_locked_with_conflict_ts)
        await self._rollback_quietly(self.locked_keys(), ts)

    def release_after_failed_commit(self, committer: TwoPhaseCommitter) -> None:
        """A commit failed before prewrite wrote anything: release the locks in background.

        Once prewrite started, the committer's own cleanup (``BatchRollback``) removes
        them with the prewrite locks.
        """
        if not self.pessimistic or self.locked_count == 0 or committer.prewrite_started:
            return
        if self._rt.closed:
            return
        committer.stop_heartbeat()
        ts = max(self.for_update_ts, self.max_locked_with_conflict_ts)
        self._rt.spawn(
            self._rollback_quietly(self.locked_keys(), ts),
            name=f"tikv-txn-pessimistic-rollback-{self.start_ts}",
        )
