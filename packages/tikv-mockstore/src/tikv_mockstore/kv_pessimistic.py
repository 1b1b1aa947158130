"""KvPessimisticLock: acquiring pessimistic locks, with TiKV's lock waiting and response shapes.

Response shapes (``src/server/service/kv.rs`` ``future_acquire_pessimistic_lock`` and
``PessimisticLockResults`` in ``src/storage/types.rs``):

* Wake-up mode ``Normal`` (the legacy shape every client understands): on success,
  ``return_values`` gives ``values`` and ``not_founds`` with one entry per mutation (an
  absent key has an empty value and ``not_found``); without ``return_values`` but with
  ``check_existence`` only ``not_founds`` is filled; otherwise both stay empty. Any failure
  is a single key error in ``errors``.
* Wake-up mode ``ForceLock`` (one key per request): ``results`` holds one
  ``PessimisticLockKeyResult`` (``LockResultNormal``, ``LockResultLockedWithConflict`` with
  ``locked_with_conflict_ts`` when a newer write was locked over, or ``LockResultFailed``).
  A failed key also puts its error in ``errors``. Failures before any key was tried (bad
  arguments, a write conflict) leave ``results`` empty.

When a key is locked by another transaction, ``wait_timeout`` decides (TiKV
``WaitTimeout::from_encoded``): negative answers ``KeyIsLocked`` at once; otherwise the
request waits in the cluster's :class:`~tikv_mockstore.kv_lock_wait.LockWaitManager` and the
handler returns a :class:`concurrent.futures.Future` of the response. A request that locked
some keys before meeting the lock keeps none of them while it waits (TiKV clears the write
batch and waits for the blocking key only).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from concurrent.futures import Future, InvalidStateError

from tikv_proto import kvrpcpb_pb2

from tikv_mockstore.kv_errors import KEY_ERROR_TYPES, key_error, mutation_from_pb
from tikv_mockstore.kv_lock_wait import (
    Deadlocked,
    LockWaitManager,
    Released,
    TimedOut,
    Waiter,
    WaitOutcome,
)
from tikv_mockstore.mvcc import (
    DeadlockDetector,
    KeyIsLockedError,
    MvccEngine,
    PessimisticLockResult,
    WriteConflictError,
    WriteConflictReason,
    WriteType,
    key_hash,
)

__all__ = ["PessimisticLockRequest", "lock_wait_manager"]

_log = logging.getLogger(__name__)

_MANAGERS: weakref.WeakKeyDictionary[MvccEngine, LockWaitManager] = weakref.WeakKeyDictionary()
_MANAGERS_LOCK = threading.Lock()


def _lock_ts_of(engine_ref: weakref.ref[MvccEngine], key: bytes) -> int | None:
    engine = engine_ref()
    if engine is None:
        return None
    lock = engine.lock_of(key)
    return lock.start_ts if lock is not None else None


def _commit_ts_of(engine_ref: weakref.ref[MvccEngine], key: bytes, start_ts: int) -> int:
    engine = engine_ref()
    if engine is None:
        return 0
    for commit_ts, write in engine.mvcc_by_key(key).writes:
        if write.start_ts == start_ts and write.write_type is not WriteType.ROLLBACK:
            return commit_ts
    return 0


def lock_wait_manager(engine: MvccEngine) -> LockWaitManager:
    """The lock-wait manager of the cluster that owns ``engine`` (created on first use).

    All stores of a cluster share one engine, so they share the wait queues and the
    deadlock detector: a deadlock between requests sent to different stores is found.
    Set ``wait_for_lock_timeout_ms`` / ``wake_up_delay_ms`` on it to change TiKV's
    defaults. The manager listens to the engine (``add_lock_listener``): whatever releases
    a lock — a handler, ``UnsafeDestroyRange``, a test calling the engine — wakes its waiters.
    """
    manager = _MANAGERS.get(engine)
    if manager is not None:
        return manager
    with _MANAGERS_LOCK:
        manager = _MANAGERS.get(engine)
        if manager is None:
            # Weak references: the manager must not keep its engine (and cluster) alive.
            ref = weakref.ref(engine)
            manager = LockWaitManager(
                lock_ts_of=lambda key: _lock_ts_of(ref, key),
                commit_ts_of=lambda key, start_ts: _commit_ts_of(ref, key, start_ts),
                detector=DeadlockDetector(),
            )
            engine.add_lock_listener(manager.locks_released)
            _MANAGERS[engine] = manager
        return manager


_FORCE_LOCK = kvrpcpb_pb2.PessimisticLockWakeUpMode.WakeUpModeForceLock
_RESULT_NORMAL = kvrpcpb_pb2.PessimisticLockKeyResultType.LockResultNormal
_RESULT_CONFLICT = kvrpcpb_pb2.PessimisticLockKeyResultType.LockResultLockedWithConflict
_RESULT_FAILED = kvrpcpb_pb2.PessimisticLockKeyResultType.LockResultFailed


class PessimisticLockRequest:
    """One KvPessimisticLock request, from its first attempt to its final response.

    Args:
        engine: the cluster's MVCC engine.
        req: the request (its region already checked).
        manager: the lock-wait manager (default: the engine's cluster-wide one).
        store_id: the store serving the request (named in GetLockWaitInfo answers).

    """

    def __init__(
        self,
        engine: MvccEngine,
        req: kvrpcpb_pb2.PessimisticLockRequest,
        manager: LockWaitManager | None = None,
        store_id: int = 0,
    ) -> None:
        self._engine = engine
        self._store_id = store_id
        self._req = req
        self._manager = manager if manager is not None else lock_wait_manager(engine)
        self._force = req.wake_up_mode == _FORCE_LOCK
        self._future: Future[kvrpcpb_pb2.PessimisticLockResponse] = Future()
        #: The key the request last waited on (named by a legacy WriteConflict).
        self._waited_key = b""

    def start(
        self,
    ) -> kvrpcpb_pb2.PessimisticLockResponse | Future[kvrpcpb_pb2.PessimisticLockResponse]:
        """Run the request: the response, or a Future of it if the request waits."""
        resp = self._advance(None)
        if resp is not None:
            return resp
        return self._future

    # -- the state machine --

    def _advance(self, outcome: WaitOutcome | None) -> kvrpcpb_pb2.PessimisticLockResponse | None:
        """Continue after ``outcome`` (None: first attempt); None means "waiting now"."""
        req = self._req
        while True:
            if outcome is None:
                attempt = self._attempt(waited=False)
            elif isinstance(outcome, Released):
                if not self._force:
                    # Legacy waiters never retry in TiKV: the woken request fails with a
                    # WriteConflict naming the released lock, and the client retries with a
                    # newer for_update_ts (scheduler.rs wake_up_legacy_pessimistic_locks).
                    return self._failed(
                        WriteConflictError(
                            start_ts=req.start_version,
                            conflict_start_ts=outcome.conflict_start_ts,
                            conflict_commit_ts=outcome.conflict_commit_ts,
                            key=self._waited_key,
                            primary=req.primary_lock,
                            reason=WriteConflictReason.PESSIMISTIC_RETRY,
                        ),
                        per_key=False,
                    )
                # A resumable (force-lock) waiter runs its request again.
                attempt = self._attempt(waited=True)
            elif isinstance(outcome, TimedOut):
                # waiter_manager.rs cancel_for_timeout: the KeyIsLocked of the lock waited for.
                return self._failed(KeyIsLockedError(outcome.lock_info), per_key=True)
            else:
                assert isinstance(outcome, Deadlocked)
                return self._failed(outcome.error, per_key=True)
            if isinstance(attempt, kvrpcpb_pb2.PessimisticLockResponse):
                return attempt
            outcome = self._wait(attempt)
            if outcome is None:
                return None

    def _attempt(self, *, waited: bool) -> kvrpcpb_pb2.PessimisticLockResponse | KeyIsLockedError:
        """Try to lock every key; a KeyIsLockedError return means "wait for this lock"."""
        req = self._req
        if self._force and len(req.mutations) > 1:
            return self._failed(
                ValueError(
                    "multiple keys in a single request with allowed_lock_with_conflict set "
                    "is not allowed"
                ),
                per_key=False,
            )
        try:
            result = self._engine.pessimistic_lock(
                [mutation_from_pb(m) for m in req.mutations],
                req.primary_lock,
                req.start_version,
                req.lock_ttl,
                req.for_update_ts,
                is_first_lock=req.is_first_lock,
                wait_timeout=req.wait_timeout,
                return_values=req.return_values,
                min_commit_ts=req.min_commit_ts,
                check_existence=req.check_existence,
                lock_only_if_exists=req.lock_only_if_exists,
                allow_lock_with_conflict=self._force,
            )
        except KeyIsLockedError as e:
            if self._manager.wait_duration_ms(req.wait_timeout) is None:
                # No wait: the lock error at once (in force-lock mode as the key's result).
                return self._failed(e, per_key=True)
            return e
        except KEY_ERROR_TYPES as e:
            return self._failed(e, per_key=waited)
        return self._succeeded(result)

    def _wait(self, locked: KeyIsLockedError) -> WaitOutcome | None:
        req = self._req
        wait = locked.wait
        key = wait.key if wait is not None else locked.lock_info.key
        self._waited_key = key
        duration_ms = self._manager.wait_duration_ms(req.wait_timeout)
        assert duration_ms is not None
        waiter = Waiter(
            start_ts=req.start_version,
            key=key,
            key_hash=wait.key_hash if wait is not None else key_hash(key),
            lock_info=locked.lock_info,
            is_first_lock=req.is_first_lock,
            resumable=self._force,
            deadline=time.monotonic() + duration_ms / 1000,
            on_done=self._on_done,
            resource_group_tag=req.context.resource_group_tag,
            store_id=self._store_id,
        )
        return self._manager.wait(waiter)

    def _on_done(self, outcome: WaitOutcome) -> None:
        # Runs on the lock-wait timer thread. A failure here must still answer the request:
        # a failed Future would end a whole BatchCommands stream with INTERNAL, so an
        # unexpected error becomes an abort key error of this request only.
        try:
            resp = self._advance(outcome)
        except Exception as e:
            _log.exception("a woken pessimistic lock request failed")
            resp = self._failed(e, per_key=True)
        if resp is None:
            return
        # InvalidStateError: the framework gave up on the request (cancelled its Future).
        with contextlib.suppress(InvalidStateError):
            self._future.set_result(resp)

    # -- response shapes --

    def _failed(self, err: BaseException, *, per_key: bool) -> kvrpcpb_pb2.PessimisticLockResponse:
        resp = kvrpcpb_pb2.PessimisticLockResponse()
        if self._force and per_key:
            resp.results.add(type=_RESULT_FAILED)
        resp.errors.append(key_error(err))
        return resp

    def _succeeded(self, result: PessimisticLockResult) -> kvrpcpb_pb2.PessimisticLockResponse:
        req = self._req
        resp = kvrpcpb_pb2.PessimisticLockResponse()
        if self._force:
            for r in result.results:
                if r.locked_with_conflict_ts:
                    # The engine returns the latest value with a locked-with-conflict result
                    # even without return_values, as TiKV (the client caches it for the retry).
                    resp.results.add(
                        type=_RESULT_CONFLICT,
                        value=r.value or b"",
                        existence=r.existence,
                        locked_with_conflict_ts=r.locked_with_conflict_ts,
                    )
                elif req.return_values:
                    resp.results.add(
                        type=_RESULT_NORMAL, value=r.value or b"", existence=r.value is not None
                    )
                elif req.check_existence:
                    resp.results.add(type=_RESULT_NORMAL, existence=r.existence)
                else:
                    resp.results.add(type=_RESULT_NORMAL)
        elif req.return_values:
            resp.values.extend(r.value or b"" for r in result.results)
            resp.not_founds.extend(r.value is None for r in result.results)
        elif req.check_existence:
            resp.not_founds.extend(not r.existence for r in result.results)
        return resp
