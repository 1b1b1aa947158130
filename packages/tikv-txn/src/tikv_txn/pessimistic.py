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
from dataclasses import dataclass
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

from tikv_txn._kv import key_error_to_exception, lock_from_pb
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
_OP_PESSIMISTIC_LOCK: Final = int(Op.PESSIMISTIC_LOCK)
_ASSERT_NOT_EXIST: Final = 2  # kvrpcpb.Assertion.NotExist


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


#: What a lock call learned per key: (value, exists); the value is ``None`` unless values
#: were asked for and the key exists.
KeyResults = dict[bytes, tuple[bytes | None, bool]]


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

    def check_insert(self, key: bytes) -> bool:
        """Before an insert of a key this transaction locked: whether it is known absent.

        Raises:
            KeyExistsError: The key is locked and its lock reported it exists
                (client-go ``lockKeys``' check of ``NeedCheckExists`` keys).

        """
        flags = self._buffer.get_flags(key)
        if not self.pessimistic or flags is None or not flags.has_locked:
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
            return await self._lock(keys, request, set(force))

    async def _lock(
        self, keys_in: Iterable[bytes], request: LockRequest, force: set[bytes]
    ) -> KeyResults:
        self._rt.check_open()
        keys: list[bytes] = []
        for key in sorted(set(keys_in)):
            flags = self._buffer.get_flags(key)
            if flags is not None and flags.has_locked and key not in force:
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
        was_locked = {k for k in keys if (f := self._buffer.get_flags(k)) and f.has_locked}
        committer = self._committer()
        assigned = False
        if self.primary is None:
            # client-go selectPrimaryForPessimisticLock: the first of the sorted keys.
            assigned = True
            self._set_primary(committer, keys[0])
        is_first_lock = self.locked_count == 0 and len(keys) == 1
        wait_start = time.monotonic()
        for_update_ts = 0
        retries = 0
        try:
            while True:
                for_update_ts = await self._rt.oracle.get_timestamp()
                try:
                    results = await self._lock_once(
                        committer, keys, for_update_ts, request, wait_start, is_first_lock
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
        self.for_update_ts = max(self.for_update_ts, for_update_ts)
        committer.for_update_ts = self.for_update_ts
        for key in keys:
            value, exists = results.get(key, (None, True))
            if request.lock_only_if_exists and not exists:
                continue
            flags = self._buffer.get_flags(key)
            presumed = flags is not None and flags.has_presume_key_not_exists
            self._buffer.update_flags(
                key,
                FlagsOp.SET_KEY_LOCKED,
                FlagsOp.DEL_NEED_CHECK_EXISTS,
                FlagsOp.SET_KEY_LOCKED_VALUE_EXISTS
                if exists
                else FlagsOp.SET_KEY_LOCKED_VALUE_NOT_EXISTS,
            )
            if request.return_values or request.check_existence:
                self._existence[key] = exists
            elif presumed:
                self._existence[key] = False  # the NotExist assertion held
            if request.return_values:
                self._values[key] = value if exists else None
            if key not in was_locked:
                self.locked_count += 1
        if assigned and request.lock_only_if_exists and self.primary is not None:
            _, exists = results.get(self.primary, (None, True))
            if not exists:
                # client-go unsetPrimaryKeyIfNeeded: the key was not locked.
                self._reset_primary(committer)
        return results

    def _set_primary(self, committer: TwoPhaseCommitter, key: bytes) -> None:
        self.primary = key
        committer.lock_primary = key
        committer.primary = self._rt.codec.encode_key(key)

    def _reset_primary(self, committer: TwoPhaseCommitter) -> None:
        self.primary = None
        committer.lock_primary = None
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
        new_keys = [k for k in keys if k not in was_locked]
        if new_keys and for_update_ts and (len(keys) > 1 or may_be_locked):
            task = self._rt.spawn(
                self._rollback_quietly(new_keys, max(for_update_ts, self.for_update_ts)),
                name=f"tikv-txn-pessimistic-rollback-{self.start_ts}",
            )
            if not isinstance(exc, asyncio.CancelledError):
                # Wait for it: the caller may retry at once (client-go waits before a
                # deadlock retry for the same reason).
                await asyncio.shield(task)
        if assigned:
            self._reset_primary(committer)

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
        is_first_lock: bool,
    ) -> KeyResults:
        """One attempt at ``for_update_ts``: the primary's region first, then the rest."""
        codec = self._rt.codec
        by_encoded = {codec.encode_key(k): k for k in keys}
        encoded = sorted(by_encoded)
        assert self.primary is not None
        primary = codec.encode_key(self.primary)
        first: list[bytes] = []
        rest = encoded
        if primary in by_encoded:
            region = await self._rt.sender.locator.locate_key(primary)
            first = [k for k in encoded if region.contains(k)]
            rest = [k for k in encoded if not region.contains(k)]
        results: KeyResults = {}
        args = (committer, by_encoded, for_update_ts, request, wait_start, is_first_lock)
        if first:
            results.update(await self._lock_group(first, *args))
            # The primary is locked: keep it alive from now on (client-go ttlManager.run).
            committer.start_heartbeat()
        if rest:
            results.update(await self._lock_group(rest, *args))
        return results

    async def _lock_group(
        self,
        payload: list[bytes],
        committer: TwoPhaseCommitter,
        by_encoded: dict[bytes, bytes],
        for_update_ts: int,
        request: LockRequest,
        wait_start: float,
        is_first_lock: bool,
    ) -> KeyResults:
        """Lock ``payload`` (encoded keys) region by region until every key is locked."""
        primary = committer.primary
        cfg = self._rt.config
        buffer = self._buffer

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
            waited = int((now - wait_start) * 1000)
            elapsed = int((now - self._started_at) * 1000)
            self.stats["lock_requests"] += 1
            return kvrpcpb_pb2.PessimisticLockRequest(
                mutations=mutations,
                primary_lock=primary,
                start_version=self.start_ts,
                for_update_ts=for_update_ts,
                # A new TTL per attempt: a lock taken after a long wait must not be born
                # nearly expired (client-go computes it inside the retry loop).
                lock_ttl=pessimistic_lock_ttl(
                    max(0, elapsed), managed_lock_ttl_ms=cfg.managed_lock_ttl_ms
                ),
                is_first_lock=is_first_lock,
                wait_timeout=effective_wait_timeout(request.wait_ms, waited),
                return_values=request.return_values,
                check_existence=request.check_existence,
                min_commit_ts=for_update_ts + 1,
                lock_only_if_exists=request.lock_only_if_exists,
            )

        def handle(region: Region, part: Sequence[bytes], resp: Any) -> tuple[Sequence[bytes], Any]:
            return part, resp

        options = self._request_options(committer)
        bo = self._rt.backoffer(PESSIMISTIC_LOCK_MAX_BACKOFF, "pessimistic lock")
        results: KeyResults = {}
        while payload:
            parts = await self._rt.sender.execute(
                "PessimisticLock", _BY_KEYS, payload, build, handle, bo=bo, options=options
            )
            retry: list[bytes] = []
            blocking: list[LockInfo] = []
            for part, resp in parts:
                if len(resp.results):
                    raise TxnError("pessimistic lock response corrupted: results in normal mode")
                errors = list(resp.errors)
                if not errors:
                    self._read_results(part, resp, request, by_encoded, results)
                    continue
                for err in errors:
                    if err.HasField("locked"):
                        blocking.append(lock_from_pb(err.locked))
                    else:
                        # AlreadyExist, Deadlock (with the wait chain), WriteConflict, ...
                        raise key_error_to_exception(err, start_ts=self.start_ts)
                retry.extend(part)
            if blocking:
                await self._resolve_blocking(bo, blocking, request, wait_start)
            payload = retry
        return results

    def _read_results(
        self,
        part: Sequence[bytes],
        resp: Any,
        request: LockRequest,
        by_encoded: dict[bytes, bytes],
        out: KeyResults,
    ) -> None:
        values = list(resp.values)
        not_founds = list(resp.not_founds)
        for i, key in enumerate(part):
            user_key = by_encoded[key]
            if request.return_values:
                value = values[i] if i < len(values) else b""
                # An old TiKV without not_founds: an empty value means "not found".
                exists = not not_founds[i] if not_founds else value != b""
                out[user_key] = (value if exists else None, exists)
            elif request.check_existence and not_founds:
                out[user_key] = (None, not not_founds[i])
            else:
                out[user_key] = (None, True)

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
            bo, 0, to_resolve, for_read=False, pessimistic_region_resolve=True
        )
        if res.ms_before_expired <= 0:
            return
        waited = int((time.monotonic() - wait_start) * 1000)
        verdict = after_blocked(request.wait_ms, waited)
        if verdict is WaitVerdict.KEEP_WAITING:
            return
        lock = to_resolve[0]
        raise LockWaitTimeoutError(
            lock.key,
            self.start_ts,
            lock_ts=lock.lock_version,
            no_wait=verdict is WaitVerdict.NO_WAIT,
        )

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
                raise key_error_to_exception(errors[0], start_ts=start_ts)

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
        if not self.pessimistic or self.locked_count == 0:
            return
        self._committer().stop_heartbeat()
        await self._rollback_quietly(self.locked_keys(), self.for_update_ts)

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
        self._rt.spawn(
            self._rollback_quietly(self.locked_keys(), self.for_update_ts),
            name=f"tikv-txn-pessimistic-rollback-{self.start_ts}",
        )
