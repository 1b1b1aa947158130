"""KvPessimisticLock waiting: wake-up on release, timeouts, no-wait, deadlocks.

Handlers run against a real MvccEngine behind in-test StoreScopes (two stores sharing the
engine, as the stores of one cluster do). Waiting requests come back as Futures; tests wait
for them with ``Future.result(timeout=...)``, a deadline, never a fixed sleep.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import pytest
import tikv_mockstore.kv_service  # noqa: F401  (registers the handlers)
from tikv_mockstore.handlers import HANDLERS
from tikv_mockstore.kv_lock_wait import LockWaitManager, Released, Waiter
from tikv_mockstore.kv_pessimistic import lock_wait_manager
from tikv_mockstore.mvcc import DeadlockDetector, MvccEngine, key_hash
from tikv_mockstore.mvcc.types import LockInfo, Op
from tikv_proto import errorpb_pb2, kvrpcpb_pb2, metapb_pb2

PB_OP = kvrpcpb_pb2.Op
FORCE = kvrpcpb_pb2.WakeUpModeForceLock
RESULT_TIMEOUT = 10.0  # seconds: a deadline for futures that must complete


def ts(ms: int) -> int:
    return ms << 18


class Scope:
    """One store of a single-region cluster (implements handlers.StoreScope)."""

    def __init__(self, engine: MvccEngine, store_id: int = 1) -> None:
        self._engine = engine
        self._store_id = store_id

    @property
    def store_id(self) -> int:
        return self._store_id

    @property
    def engine(self) -> Any:
        return self._engine

    @property
    def raw(self) -> Any:
        return None

    @property
    def cluster(self) -> Any:
        return None

    @property
    def api_version(self) -> int:
        return kvrpcpb_pb2.V1

    def now_ms(self) -> int:
        return 0

    def check_api_version(
        self,
        ctx: kvrpcpb_pb2.Context,
        *,
        cmd: str,
        txn: bool,
        keys: Sequence[bytes] = (),
        ranges: Sequence[tuple[bytes, bytes]] = (),
    ) -> str | None:
        return None

    def check(
        self,
        ctx: kvrpcpb_pb2.Context,
        *,
        keys: Sequence[bytes] = (),
        ranges: Sequence[tuple[bytes, bytes]] = (),
        txn: bool,
        reverse: bool = False,
    ) -> errorpb_pb2.Error | None:
        return self.check_region(ctx)

    def check_region(self, ctx: kvrpcpb_pb2.Context) -> errorpb_pb2.Error | None:
        if ctx.peer.store_id != self._store_id:
            return errorpb_pb2.Error(message="store not match")
        return None

    def region_bounds(self, ctx: kvrpcpb_pb2.Context, *, txn: bool) -> tuple[bytes, bytes]:
        return b"", b""

    def ctx(self) -> kvrpcpb_pb2.Context:
        return kvrpcpb_pb2.Context(
            region_id=1,
            region_epoch=metapb_pb2.RegionEpoch(conf_ver=1, version=1),
            peer=metapb_pb2.Peer(id=self._store_id, store_id=self._store_id),
        )


@pytest.fixture
def engine() -> Iterator[MvccEngine]:
    e = MvccEngine()
    # Generous ceiling so that a slow shared machine never turns a wake-up into a timeout;
    # the tests about timeouts lower it themselves.
    lock_wait_manager(e).wait_for_lock_timeout_ms = 30_000
    # No safety-net polling: every wake-up must come from the handlers' own pokes.
    lock_wait_manager(e).safety_poll_ms = 0
    yield e
    assert lock_wait_manager(e).waiter_count == 0, "a test left a request waiting"


@pytest.fixture
def scope(engine: MvccEngine) -> Scope:
    return Scope(engine)


def lock(
    scope: Scope,
    keys: list[bytes],
    start: int,
    *,
    primary: bytes | None = None,
    tag: bytes = b"",
    **kw: Any,
) -> Any:
    kw.setdefault("for_update_ts", start)
    kw.setdefault("lock_ttl", 20_000)
    ctx = scope.ctx()
    ctx.resource_group_tag = tag
    req = kvrpcpb_pb2.PessimisticLockRequest(
        context=ctx,
        mutations=[kvrpcpb_pb2.Mutation(op=PB_OP.PessimisticLock, key=k) for k in keys],
        primary_lock=primary if primary is not None else keys[0],
        start_version=start,
        **kw,
    )
    return HANDLERS["PessimisticLock"](scope, req)


def call(scope: Scope, name: str, req: Any) -> Any:
    resp = HANDLERS[name](scope, req)
    assert not isinstance(resp, Future)
    return resp


def done(resp: Any) -> kvrpcpb_pb2.PessimisticLockResponse:
    """The response of a request that did not wait."""
    assert not isinstance(resp, Future), "the request should not have waited"
    assert isinstance(resp, kvrpcpb_pb2.PessimisticLockResponse)
    return resp


def waiting(resp: Any) -> Future[kvrpcpb_pb2.PessimisticLockResponse]:
    """The Future of a request that waits, still pending."""
    assert isinstance(resp, Future), f"the request should wait, got {resp}"
    assert not resp.done()
    return resp


def prewrite_commit(scope: Scope, key: bytes, value: bytes, start: int, commit_ts: int) -> None:
    """Commit a pessimistic transaction that holds the lock on ``key`` (or an optimistic one)."""
    pessimistic = scope.engine.mvcc_by_key(key).lock is not None
    req = kvrpcpb_pb2.PrewriteRequest(
        context=scope.ctx(),
        mutations=[kvrpcpb_pb2.Mutation(op=PB_OP.Put, key=key, value=value)],
        primary_lock=key,
        start_version=start,
        lock_ttl=3000,
    )
    if pessimistic:
        req.for_update_ts = start
        req.pessimistic_actions.append(kvrpcpb_pb2.PrewriteRequest.DO_PESSIMISTIC_CHECK)
    assert not call(scope, "Prewrite", req).errors
    resp = call(
        scope,
        "Commit",
        kvrpcpb_pb2.CommitRequest(
            context=scope.ctx(), keys=[key], start_version=start, commit_version=commit_ts
        ),
    )
    assert resp.commit_version == commit_ts, resp


# ----------------------------------------------------------------------------- no wait


def test_no_wait_fails_at_once_with_full_lock_info(scope: Scope) -> None:
    assert not done(lock(scope, [b"k"], ts(10), lock_ttl=7000)).errors
    resp = done(lock(scope, [b"k"], ts(20), wait_timeout=-1))
    (err,) = resp.errors
    locked = err.locked
    assert locked.key == b"k"
    assert locked.primary_lock == b"k"
    assert locked.lock_version == ts(10)
    assert locked.lock_ttl == 7000
    assert locked.lock_type == PB_OP.PessimisticLock
    assert locked.lock_for_update_ts == ts(10)
    # Force-lock mode reports the failure as the key's result too.
    resp = done(lock(scope, [b"k"], ts(30), wait_timeout=-1, wake_up_mode=FORCE))
    assert [r.type for r in resp.results] == [kvrpcpb_pb2.LockResultFailed]
    assert resp.errors[0].locked.lock_version == ts(10)


# ----------------------------------------------------------------------------- wake-up


def test_waiter_gets_write_conflict_when_holder_commits_then_retry_succeeds(
    scope: Scope, engine: MvccEngine
) -> None:
    assert not done(lock(scope, [b"k"], ts(10))).errors
    pending = waiting(lock(scope, [b"a", b"k"], ts(20), primary=b"a", wait_timeout=5000))
    # While waiting, the request holds none of its keys (TiKV clears the write batch).
    assert engine.mvcc_by_key(b"a").lock is None
    # Other requests are served meanwhile.
    other = call(scope, "Get", kvrpcpb_pb2.GetRequest(context=scope.ctx(), key=b"x", version=1))
    assert other.not_found
    prewrite_commit(scope, b"k", b"v1", ts(10), ts(30))
    resp = pending.result(timeout=RESULT_TIMEOUT)
    (err,) = resp.errors
    conflict = err.conflict
    assert conflict.start_ts == ts(20)
    assert conflict.conflict_ts == ts(10)
    assert conflict.conflict_commit_ts == ts(30)
    assert conflict.key == b"k"
    assert conflict.primary == b"a"
    assert conflict.reason == kvrpcpb_pb2.WriteConflict.PessimisticRetry
    # The client retries with a newer for_update_ts and gets the lock and the new value.
    retry = done(lock(scope, [b"a", b"k"], ts(20), for_update_ts=ts(31), return_values=True))
    assert not retry.errors
    assert list(retry.values) == [b"", b"v1"]
    assert list(retry.not_founds) == [True, False]


def test_force_lock_waiter_resumes_and_locks_with_conflict(
    scope: Scope, engine: MvccEngine
) -> None:
    assert not done(lock(scope, [b"k"], ts(10))).errors
    pending = waiting(
        lock(scope, [b"k"], ts(20), wait_timeout=5000, wake_up_mode=FORCE, return_values=True)
    )
    prewrite_commit(scope, b"k", b"v1", ts(10), ts(30))
    resp = pending.result(timeout=RESULT_TIMEOUT)
    assert not resp.errors
    (result,) = resp.results
    assert result.type == kvrpcpb_pb2.LockResultLockedWithConflict
    assert result.locked_with_conflict_ts == ts(30)
    assert (result.value, result.existence) == (b"v1", True)
    held = engine.mvcc_by_key(b"k").lock
    assert held is not None
    assert (held.start_ts, held.for_update_ts) == (ts(20), ts(30))


def release_by(scope: Scope, how: str, key: bytes, start: int) -> None:
    ctx = scope.ctx()
    if how == "PessimisticRollback":
        req: Any = kvrpcpb_pb2.PessimisticRollbackRequest(
            context=ctx, start_version=start, for_update_ts=start, keys=[key]
        )
        assert not call(scope, how, req).errors
        return
    if how == "BatchRollback":
        req = kvrpcpb_pb2.BatchRollbackRequest(context=ctx, start_version=start, keys=[key])
    elif how == "ResolveLock":
        req = kvrpcpb_pb2.ResolveLockRequest(context=ctx, start_version=start)
    elif how == "Cleanup":
        req = kvrpcpb_pb2.CleanupRequest(context=ctx, key=key, start_version=start)
    else:
        assert how == "CheckTxnStatus"
        req = kvrpcpb_pb2.CheckTxnStatusRequest(
            context=ctx, primary_key=key, lock_ts=start, current_ts=ts(10**6)
        )
        resp = call(scope, how, req)
        assert resp.action == kvrpcpb_pb2.TTLExpireRollback
        return
    assert not call(scope, how, req).HasField("error")


@pytest.mark.parametrize(
    "how", ["PessimisticRollback", "BatchRollback", "ResolveLock", "Cleanup", "CheckTxnStatus"]
)
def test_waiters_wake_when_the_holder_rolls_back(scope: Scope, how: str) -> None:
    assert not done(lock(scope, [b"k"], ts(10))).errors
    legacy = waiting(lock(scope, [b"k"], ts(20), wait_timeout=5000))
    release_by(scope, how, b"k", ts(10))
    conflict = legacy.result(timeout=RESULT_TIMEOUT).errors[0].conflict
    assert (conflict.conflict_ts, conflict.conflict_commit_ts) == (ts(10), 0)
    # A resumable waiter takes the lock instead.
    assert not done(lock(scope, [b"j"], ts(30))).errors
    resumable = waiting(lock(scope, [b"j"], ts(40), wait_timeout=5000, wake_up_mode=FORCE))
    release_by(scope, how, b"j", ts(30))
    resp = resumable.result(timeout=RESULT_TIMEOUT)
    assert not resp.errors
    assert [r.type for r in resp.results] == [kvrpcpb_pb2.LockResultNormal]
    held = scope.engine.mvcc_by_key(b"j").lock
    assert held is not None
    assert held.start_ts == ts(40)


def test_queued_legacy_waiters_are_all_told_to_retry(scope: Scope) -> None:
    assert not done(lock(scope, [b"k"], ts(10))).errors
    second = waiting(lock(scope, [b"k"], ts(30), wait_timeout=5000))
    first = waiting(lock(scope, [b"k"], ts(20), wait_timeout=5000))
    prewrite_commit(scope, b"k", b"v", ts(10), ts(40))
    # The smallest start_ts is woken first; the other after wake-up-delay-duration.
    for pending, start in [(first, ts(20)), (second, ts(30))]:
        conflict = pending.result(timeout=RESULT_TIMEOUT).errors[0].conflict
        assert (conflict.start_ts, conflict.conflict_ts, conflict.conflict_commit_ts) == (
            start,
            ts(10),
            ts(40),
        )


def test_force_lock_waiters_take_turns(scope: Scope, engine: MvccEngine) -> None:
    assert not done(lock(scope, [b"k"], ts(10))).errors
    later = waiting(lock(scope, [b"k"], ts(30), wait_timeout=5000, wake_up_mode=FORCE))
    earlier = waiting(lock(scope, [b"k"], ts(20), wait_timeout=5000, wake_up_mode=FORCE))
    release_by(scope, "PessimisticRollback", b"k", ts(10))
    assert not earlier.result(timeout=RESULT_TIMEOUT).errors
    assert not later.done()  # ts(30) now waits for ts(20), which holds the lock
    held = engine.mvcc_by_key(b"k").lock
    assert held is not None
    assert held.start_ts == ts(20)
    prewrite_commit(scope, b"k", b"v", ts(20), ts(50))
    (result,) = later.result(timeout=RESULT_TIMEOUT).results
    assert (result.type, result.locked_with_conflict_ts) == (
        kvrpcpb_pb2.LockResultLockedWithConflict,
        ts(50),
    )


def test_lock_removed_outside_the_handlers_wakes_the_waiter(
    scope: Scope, engine: MvccEngine
) -> None:
    # No safety poll: the engine itself tells the lock-wait manager.
    lock_wait_manager(engine).safety_poll_ms = 0
    assert not done(lock(scope, [b"k"], ts(10))).errors
    pending = waiting(lock(scope, [b"k"], ts(20), wait_timeout=5000))
    engine.unsafe_destroy_range(b"a", b"z")  # no handler
    conflict = pending.result(timeout=RESULT_TIMEOUT).errors[0].conflict
    assert (conflict.conflict_ts, conflict.conflict_commit_ts) == (ts(10), 0)


# ----------------------------------------------------------------------------- timeouts


def test_wait_timeout_300ms_fails_with_key_is_locked(scope: Scope) -> None:
    assert not done(lock(scope, [b"k"], ts(10))).errors
    began = time.monotonic()
    pending = waiting(lock(scope, [b"k"], ts(20), wait_timeout=300))
    resp = pending.result(timeout=RESULT_TIMEOUT)
    elapsed = time.monotonic() - began
    locked = resp.errors[0].locked
    assert (locked.key, locked.lock_version) == (b"k", ts(10))
    assert elapsed >= 0.29  # the timeout is the feature: it must not fire early
    # The holder is untouched and the waiter is gone.
    assert done(lock(scope, [b"k"], ts(10))).errors == []


def test_default_and_capped_wait_use_wait_for_lock_timeout(
    scope: Scope, engine: MvccEngine
) -> None:
    manager = lock_wait_manager(engine)
    manager.wait_for_lock_timeout_ms = 200
    assert manager.wait_duration_ms(0) == 200
    assert manager.wait_duration_ms(60_000) == 200
    assert manager.wait_duration_ms(50) == 50
    assert manager.wait_duration_ms(-1) is None
    assert not done(lock(scope, [b"k"], ts(10))).errors
    for wait_timeout in (0, 60_000):
        began = time.monotonic()
        pending = waiting(lock(scope, [b"k"], ts(20), wait_timeout=wait_timeout))
        resp = pending.result(timeout=RESULT_TIMEOUT)  # 60 s would fail this deadline
        assert resp.errors[0].locked.lock_version == ts(10)
        assert time.monotonic() - began >= 0.19


# ----------------------------------------------------------------------------- deadlock


def test_two_txn_deadlock_fails_exactly_one(engine: MvccEngine) -> None:
    store1, store2 = Scope(engine, 1), Scope(engine, 2)  # detection spans the stores
    t1, t2 = ts(10), ts(20)
    assert not done(lock(store1, [b"k1"], t1, is_first_lock=True)).errors
    assert not done(lock(store2, [b"k2"], t2, is_first_lock=True)).errors
    t1_waits = waiting(lock(store1, [b"k2"], t1, primary=b"k1", wait_timeout=5000, tag=b"t1-tag"))
    resp = done(lock(store2, [b"k1"], t2, primary=b"k2", wait_timeout=5000, tag=b"t2-tag"))
    (err,) = resp.errors
    deadlock = err.deadlock
    assert deadlock.lock_ts == t1
    assert deadlock.lock_key == b"k1"
    assert deadlock.deadlock_key_hash == key_hash(b"k2")
    chain = [(e.txn, e.wait_for_txn, e.key_hash, e.key) for e in deadlock.wait_chain]
    assert chain == [
        (t1, t2, key_hash(b"k2"), b"k2"),
        (t2, t1, key_hash(b"k1"), b"k1"),
    ]
    assert [e.resource_group_tag for e in deadlock.wait_chain] == [b"t1-tag", b"t2-tag"]
    assert not t1_waits.done()  # only the request that closed the cycle fails
    # GetLockWaitInfo: each store reports the requests waiting on it.
    info = call(store1, "GetLockWaitInfo", kvrpcpb_pb2.GetLockWaitInfoRequest(context=store1.ctx()))
    assert [(e.txn, e.wait_for_txn, e.key, e.resource_group_tag) for e in info.entries] == [
        (t1, t2, b"k2", b"t1-tag")
    ]
    assert info.entries[0].key_hash == key_hash(b"k2")
    other = call(
        store2, "GetLockWaitInfo", kvrpcpb_pb2.GetLockWaitInfoRequest(context=store2.ctx())
    )
    assert list(other.entries) == []
    # t2 gives up; t1's wait ends (and it retries as TiKV's legacy waiters do).
    release_by(store2, "PessimisticRollback", b"k2", t2)
    conflict = t1_waits.result(timeout=RESULT_TIMEOUT).errors[0].conflict
    assert conflict.conflict_ts == t2


def test_first_lock_is_not_checked_for_deadlock(scope: Scope, engine: MvccEngine) -> None:
    lock_wait_manager(engine).wait_for_lock_timeout_ms = 100
    t1, t2 = ts(10), ts(20)
    assert not done(lock(scope, [b"k1"], t1)).errors
    assert not done(lock(scope, [b"k2"], t2)).errors
    w1 = waiting(lock(scope, [b"k2"], t1, primary=b"k1", wait_timeout=100))
    # is_first_lock=True: TiKV skips detection, so this waits (and times out) instead.
    w2 = waiting(lock(scope, [b"k1"], t2, primary=b"k2", wait_timeout=100, is_first_lock=True))
    for pending, holder in [(w1, t2), (w2, t1)]:
        assert pending.result(timeout=RESULT_TIMEOUT).errors[0].locked.lock_version == holder


def test_deadlock_in_force_lock_mode_is_the_key_result(engine: MvccEngine) -> None:
    scope = Scope(engine)
    t1, t2 = ts(10), ts(20)
    assert not done(lock(scope, [b"k1"], t1)).errors
    assert not done(lock(scope, [b"k2"], t2)).errors
    w1 = waiting(lock(scope, [b"k2"], t1, primary=b"k1", wait_timeout=5000, wake_up_mode=FORCE))
    resp = done(lock(scope, [b"k1"], t2, primary=b"k2", wait_timeout=5000, wake_up_mode=FORCE))
    assert [r.type for r in resp.results] == [kvrpcpb_pb2.LockResultFailed]
    assert resp.errors[0].deadlock.lock_ts == t1
    release_by(scope, "PessimisticRollback", b"k2", t2)
    assert not w1.result(timeout=RESULT_TIMEOUT).errors


# ----------------------------------------------------------------------------- the manager


def test_manager_answers_at_once_when_the_lock_is_already_gone() -> None:
    held: dict[bytes, int] = {}
    manager = LockWaitManager(
        lock_ts_of=held.get,
        commit_ts_of=lambda key, start: 77 if start == 5 else 0,
        detector=DeadlockDetector(),
    )
    info = LockInfo(
        primary_lock=b"k",
        lock_version=5,
        key=b"k",
        lock_ttl=1,
        txn_size=1,
        lock_type=Op.PESSIMISTIC_LOCK,
        lock_for_update_ts=5,
        use_async_commit=False,
        min_commit_ts=0,
    )
    outcomes: list[object] = []
    waiter = Waiter(
        start_ts=9,
        key=b"k",
        key_hash=key_hash(b"k"),
        lock_info=info,
        is_first_lock=False,
        resumable=False,
        deadline=time.monotonic() + 60,
        on_done=outcomes.append,
    )
    # The lock was released between the engine's answer and the wait: no queueing.
    assert manager.wait(waiter) == Released(5, 77)
    assert manager.waiter_count == 0
    assert outcomes == []


def test_concurrent_pessimistic_increments_never_lose_a_wake_up(engine: MvccEngine) -> None:
    """Threads increment one counter in pessimistic transactions that wait for each other.

    The wait ceiling is 30 s and every wait must end within RESULT_TIMEOUT, so a lost
    wake-up fails the test instead of being hidden by a timeout-and-retry.
    """
    scope = Scope(engine)
    clock = itertools.count(1)
    clock_lock = threading.Lock()

    def next_ts() -> int:
        with clock_lock:
            return ts(next(clock))

    workers, increments = 4, 8
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(increments):
                start = for_update = next_ts()
                while True:
                    answer = lock(
                        scope, [b"n"], start, for_update_ts=for_update, return_values=True
                    )
                    resp = answer.result(RESULT_TIMEOUT) if isinstance(answer, Future) else answer
                    if not resp.errors:
                        break
                    # Woken after another increment committed: retry with a newer for_update_ts.
                    assert (
                        resp.errors[0].conflict.reason == kvrpcpb_pb2.WriteConflict.PessimisticRetry
                    )
                    for_update = next_ts()
                value = int(resp.values[0] or b"0")
                req = kvrpcpb_pb2.PrewriteRequest(
                    context=scope.ctx(),
                    mutations=[
                        kvrpcpb_pb2.Mutation(op=PB_OP.Put, key=b"n", value=b"%d" % (value + 1))
                    ],
                    primary_lock=b"n",
                    start_version=start,
                    for_update_ts=for_update,
                    pessimistic_actions=[kvrpcpb_pb2.PrewriteRequest.DO_PESSIMISTIC_CHECK],
                    lock_ttl=3000,
                )
                assert not call(scope, "Prewrite", req).errors
                commit_req = kvrpcpb_pb2.CommitRequest(
                    context=scope.ctx(), keys=[b"n"], start_version=start, commit_version=next_ts()
                )
                assert call(scope, "Commit", commit_req).commit_version
        except BaseException as e:  # reported by the main thread
            failures.append(e)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    got = call(
        scope, "Get", kvrpcpb_pb2.GetRequest(context=scope.ctx(), key=b"n", version=next_ts())
    )
    assert got.value == b"%d" % (workers * increments)
