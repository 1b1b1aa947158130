"""Transaction status and lock resolution: the rest of client-go
``integration_tests/lock_test.go`` (``TestGetTxnStatus``, ``TestCheckTxnStatusTTL``,
``TestTxnHeartBeat``, ``TestCheckTxnStatus``, ``TestCheckTxnStatusNoWait``, ``TestLockTTL``,
``TestBatchResolveLocks``, ``TestZeroMinCommitTS``, ``TestCheckLocksFallenBackFromAsyncCommit``,
``TestResolveTxnFallenBackFromAsyncCommit``, ``TestBatchResolveTxnFallenBackFromAsyncCommit``,
``TestPrewriteEncountersLargerTsLock``, ``TestResolveLocksForRead``,
``TestPrewriteCheckForUpdateTS``).

The locks are left by hand-made prewrites written straight into the embedded cluster's
engine (as client-go's committer probe prewrites without committing), or by a committer
stopped after prewrite; the client's :class:`~tikv_txn.LockResolver` then settles them
through the real RPCs. The cluster is private to this module: the tests move its clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time

import pytest
from tikv_mockstore import MockCluster
from tikv_mockstore.kv_errors import lock_info_to_pb
from tikv_mockstore.mvcc import Mutation, Op, PessimisticAction
from tikv_pd.backoff import Backoffer
from tikv_pd.config import TransactionOptions
from tikv_pd.errors import LockInfo, TxnAbortedError, TxnNotFoundError, WriteConflictError
from tikv_proto import kvrpcpb_pb2
from tikv_txn import LOCK_NO_WAIT, AsyncTransactionClient, LockResolver
from tikv_txn._kv import lock_from_pb
from tikv_txn.policy import Action, txn_lock_ttl

_ids = itertools.count()
MAX_U64 = 2**64 - 1
NO_HANG = 60.0


@pytest.fixture
def p() -> bytes:
    return b"\xd0ls%04d/" % next(_ids)


def bo() -> Backoffer:
    return Backoffer(20_000)


def fresh_resolver(client: AsyncTransactionClient) -> LockResolver:
    """A resolver with an empty status cache (client-go ``NewLockResolver``)."""
    return LockResolver(client.runtime)


def lock_of(cluster: MockCluster, key: bytes) -> LockInfo:
    """The lock on ``key`` as a reader would receive it (client-go ``mustGetLock``)."""
    found = [lk for lk in cluster.engine.scan_lock(MAX_U64 >> 1) if lk.key == key]
    assert len(found) == 1, f"no lock on {key!r}"
    # Through TiKV's kvrpcpb.LockInfo and the client's own conversion.
    return lock_from_pb(lock_info_to_pb(found[0]))


def is_locked(cluster: MockCluster, key: bytes) -> bool:
    return any(lk.key == key for lk in cluster.engine.scan_lock(MAX_U64 >> 1))


async def put(client: AsyncTransactionClient, key: bytes, value: bytes) -> tuple[int, int]:
    txn = await client.begin()
    txn.put(key, value)
    return txn.start_ts, await txn.commit()


async def lock_key(
    client: AsyncTransactionClient,
    cluster: MockCluster,
    key: bytes,
    value: bytes,
    primary: bytes,
    primary_value: bytes,
    *,
    ttl: int,
    commit_primary: bool = False,
    async_commit: bool = False,
    min_commit_ts: int | None = None,
) -> tuple[int, int]:
    """client-go ``lockKey``: prewrite ``key`` and ``primary``, optionally commit the primary."""
    start_ts = await client.current_timestamp()
    engine = cluster.engine
    engine.prewrite(
        [Mutation.put(primary, primary_value), Mutation.put(key, value)],
        primary,
        start_ts,
        ttl,
        txn_size=2,
        min_commit_ts=start_ts + 1 if min_commit_ts is None else min_commit_ts,
        use_async_commit=async_commit,
        secondaries=[key] if async_commit else (),
    )
    commit_ts = 0
    if commit_primary:
        commit_ts = await client.current_timestamp()
        engine.commit([primary], start_ts, commit_ts)
    return start_ts, commit_ts


# -- TestGetTxnStatus / TestCheckTxnStatusTTL / TestTxnHeartBeat / TestCheckTxnStatus -----


async def test_get_txn_status(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    a = p + b"a"
    start_ts, commit_ts = await put(client, a, b"a")
    status = await fresh_resolver(client).get_txn_status(
        bo(),
        start_ts,
        a,
        caller_start_ts=start_ts,
        current_ts=start_ts,
        rollback_if_not_exist=False,
    )
    assert status.is_committed and status.commit_ts == commit_ts

    start_ts, commit_ts = await lock_key(
        client, cluster, a, b"a", a, b"a", ttl=3000, commit_primary=True
    )
    status = await fresh_resolver(client).get_txn_status(
        bo(),
        start_ts,
        a,
        caller_start_ts=start_ts,
        current_ts=start_ts,
        rollback_if_not_exist=False,
    )
    assert status.is_committed and status.commit_ts == commit_ts

    start_ts, _ = await lock_key(client, cluster, a, b"a", a, b"a", ttl=3000)
    status = await fresh_resolver(client).get_txn_status(
        bo(),
        start_ts,
        a,
        caller_start_ts=start_ts,
        current_ts=start_ts,
        rollback_if_not_exist=False,
    )
    assert not status.is_committed
    assert status.ttl > 0, status.action
    await fresh_resolver(client).resolve_locks(
        bo(), 0, [dataclasses.replace(lock_of(cluster, a), lock_ttl=0)], for_read=False
    )


async def test_check_txn_status_ttl(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    key = p + b"key"
    start_ts, _ = await lock_key(client, cluster, p + b"second", b"x", key, b"value", ttl=1000)
    caller = await client.current_timestamp()
    status = await fresh_resolver(client).get_txn_status(
        bo(), start_ts, key, caller_start_ts=caller, current_ts=caller, rollback_if_not_exist=False
    )
    assert not status.is_committed and status.ttl > 0 and status.commit_ts == 0
    # Force the rollback (client-go ForceResolveLock: the lock's TTL taken as 0).
    forced = dataclasses.replace(lock_of(cluster, key), lock_ttl=0)
    result = await fresh_resolver(client).resolve_locks(bo(), 0, [forced], for_read=False)
    assert result.ms_before_expired == 0
    status = await fresh_resolver(client).get_txn_status(
        bo(), start_ts, key, caller_start_ts=caller, current_ts=caller, rollback_if_not_exist=False
    )
    assert (status.ttl, status.commit_ts, status.action) == (0, 0, Action.NO_ACTION)
    assert status.is_rolled_back
    a = p + b"a"
    start_ts, commit_ts = await put(client, a, b"a")
    status = await fresh_resolver(client).get_txn_status(
        bo(), start_ts, a, caller_start_ts=caller, current_ts=caller, rollback_if_not_exist=False
    )
    assert (status.ttl, status.commit_ts) == (0, commit_ts)


async def test_txn_heart_beat(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    key = p + b"key"
    start_ts, _ = await lock_key(client, cluster, p + b"second", b"x", key, b"value", ttl=3000)

    async def beat(ttl: int) -> kvrpcpb_pb2.TxnHeartBeatResponse:
        req = kvrpcpb_pb2.TxnHeartBeatRequest(
            primary_lock=key, start_version=start_ts, advise_lock_ttl=ttl
        )
        resp: kvrpcpb_pb2.TxnHeartBeatResponse = await client.runtime.sender.call_key(
            "TxnHeartBeat", key, req, bo=bo(), options=client.runtime.base_options
        )
        return resp

    assert (await beat(6666)).lock_ttl == 6666
    assert (await beat(5555)).lock_ttl == 6666  # a heartbeat never shortens the TTL
    assert lock_of(cluster, key).lock_ttl == 6666
    forced = dataclasses.replace(lock_of(cluster, key), lock_ttl=0)
    await fresh_resolver(client).resolve_locks(bo(), 0, [forced], for_read=False)
    gone = await beat(6666)
    assert gone.HasField("error") and gone.lock_ttl == 0


async def test_check_txn_status(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    key, second = p + b"key", p + b"second"
    start_ts, _ = await lock_key(client, cluster, second, b"xxx", key, b"value", ttl=1000)
    current = await client.current_timestamp()
    assert current > start_ts
    status = await fresh_resolver(client).get_txn_status(
        bo(), start_ts, key, caller_start_ts=current, current_ts=current, rollback_if_not_exist=True
    )
    assert not status.is_committed and status.ttl > 0 and status.commit_ts == 0
    assert status.action is Action.MIN_COMMIT_TS_PUSHED
    assert lock_of(cluster, key).min_commit_ts > current  # pushed past the caller
    # A writer meeting the live secondary must wait for it.
    resolver = fresh_resolver(client)
    result = await resolver.resolve_locks(bo(), current, [lock_of(cluster, second)], for_read=False)
    assert result.ms_before_expired > 0
    assert is_locked(cluster, second)
    # TTL 0: rolled back at once.
    forced = dataclasses.replace(lock_of(cluster, second), lock_ttl=0)
    result = await resolver.resolve_locks(bo(), current, [forced], for_read=False)
    assert result.ms_before_expired == 0
    assert not is_locked(cluster, second) and not is_locked(cluster, key)
    current = await client.current_timestamp()
    status = await fresh_resolver(client).get_txn_status(
        bo(), start_ts, key, caller_start_ts=0, current_ts=current, rollback_if_not_exist=True
    )
    assert (status.ttl, status.commit_ts, status.action) == (0, 0, Action.NO_ACTION)
    a = p + b"a"
    start_ts, commit_ts = await put(client, a, b"a")
    status = await fresh_resolver(client).get_txn_status(
        bo(), start_ts, a, caller_start_ts=current, current_ts=current, rollback_if_not_exist=True
    )
    assert (status.ttl, status.commit_ts) == (0, commit_ts)


async def test_check_txn_status_no_wait(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """Only the secondary is prewritten (the primary's prewrite is still on its way)."""
    key, second = p + b"key", p + b"second"
    start_ts = await client.current_timestamp()
    cluster.engine.prewrite(
        [Mutation.put(second, b"xxx")], key, start_ts, 100_000, min_commit_ts=start_ts + 1
    )
    current = await client.current_timestamp()
    with pytest.raises(TxnNotFoundError):
        await fresh_resolver(client).get_txn_status(
            bo(),
            start_ts,
            key,
            caller_start_ts=current,
            current_ts=current,
            rollback_if_not_exist=False,
        )
    # A reader meeting the secondary backs off while the primary is missing (its lock
    # has not expired: the primary may still come), and finds it once it is there.
    resolver = fresh_resolver(client)
    lock = lock_of(cluster, second)
    cluster.engine.prewrite(
        [Mutation.put(key, b"value")], key, start_ts, 100_000, min_commit_ts=start_ts + 1
    )
    result = await resolver.resolve_locks(bo(), current, [lock], for_read=False)
    assert result.ms_before_expired > 0
    cluster.engine.batch_rollback([key, second], start_ts)

    # A lock whose primary never comes and whose TTL ran out: the primary is rolled
    # back (a rollback record is written), LockNotExistRollback.
    start_ts = await client.current_timestamp()
    missing = p + b"key_not_exist"
    cluster.engine.prewrite(
        [Mutation.put(second, b"xxx")], missing, start_ts, 1, min_commit_ts=start_ts + 1
    )
    cluster.clock.advance(10)
    lock = lock_of(cluster, second)
    resolver = fresh_resolver(client)
    result = await resolver.resolve_locks(
        bo(), await client.current_timestamp(), [lock], for_read=False
    )
    assert result.ms_before_expired == 0
    status = resolver.cached_status(start_ts)
    assert status is not None
    assert (status.ttl, status.commit_ts, status.action) == (0, 0, Action.LOCK_NOT_EXIST_ROLLBACK)
    assert not is_locked(cluster, second)


# -- TestLockTTL ---------------------------------------------------------------------------


@pytest.mark.parametrize("entries", [1, 512], ids=["small", "2MiB"])
async def test_lock_ttl_grows_with_size_and_age(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes, entries: int
) -> None:
    """The TTL the store holds is client-go's ``txnLockTTL``: 3 s for a small transaction,
    ``6000 * sqrt(MiB)`` for a large one, plus the time the transaction had run."""
    txn = await client.begin(TransactionOptions(async_commit=False, try_one_pc=False))
    value = b"v" * (4096 if entries > 1 else 5)
    keys = [p + b"ttl%05d" % i for i in range(entries)]
    for key in keys:
        txn.put(key, value)
    committer = txn._new_committer()
    assert await committer.prepare()
    assert committer.plan is not None
    size = committer.plan.size
    started = committer._started_at
    low = int((time.monotonic() - started) * 1000)
    await committer.prewrite()
    high = int((time.monotonic() - started) * 1000) + 1
    held = lock_of(cluster, committer.plan.primary).lock_ttl
    assert held == committer.lock_ttl
    cfg = client.config
    bounds = [
        txn_lock_ttl(
            size,
            elapsed,
            commit_batch_size=cfg.txn_commit_batch_size,
            managed_lock_ttl_ms=cfg.managed_lock_ttl_ms,
        )
        for elapsed in (low, high)
    ]
    assert bounds[0] <= held <= bounds[1]
    base = txn_lock_ttl(size, 0)
    assert base == (3000 if entries == 1 else int(6000 * (size / 2**20) ** 0.5))
    await committer.cleanup()


# -- TestBatchResolveLocks / TestZeroMinCommitTS ------------------------------------------


async def test_batch_resolve_locks_ignores_ttl(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """GC's batch resolution settles live locks: a 2PC transaction is rolled back, an
    async-commit one with every key locked is committed."""
    k1, k2, k3, k4 = (p + b"k%d" % i for i in range(1, 5))
    await lock_key(client, cluster, k2, b"v2", k1, b"v1", ttl=20_000)
    await lock_key(client, cluster, k4, b"v4", k3, b"v3", ttl=20_000, async_commit=True)
    locks = [lock_of(cluster, k) for k in (k1, k2, k3, k4)]
    assert locks[2].use_async_commit
    await fresh_resolver(client).batch_resolve_locks(bo(), locks)
    assert not any(is_locked(cluster, k) for k in (k1, k2, k3, k4))
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get([k1, k2, k3, k4]) == {k3: b"v3", k4: b"v4"}


async def test_zero_min_commit_ts_lock(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """A lock without min_commit_ts (written by an old client) cannot be pushed: a reader
    at ts 0 waits; a reader at the maximum ts (a point read of the latest) reads past it."""
    key = p + b"key"
    start_ts, _ = await lock_key(
        client, cluster, key, b"value", key, b"value", ttl=1000, min_commit_ts=0
    )
    lock = lock_of(cluster, key)
    assert lock.min_commit_ts == 0
    waited = await fresh_resolver(client).resolve_locks(bo(), 0, [lock], for_read=True)
    assert waited.ms_before_expired > 0 and start_ts not in waited.ignored
    past = await fresh_resolver(client).resolve_locks(bo(), MAX_U64, [lock], for_read=True)
    assert past.ms_before_expired == 0 and past.ignored == {start_ts}
    assert is_locked(cluster, key)
    forced = dataclasses.replace(lock, lock_ttl=0)
    result = await fresh_resolver(client).resolve_locks(bo(), 0, [forced], for_read=False)
    assert result.ms_before_expired == 0 and not is_locked(cluster, key)


# -- Test{Check,Resolve,BatchResolve}TxnFallenBackFromAsyncCommit -------------------------


async def _fallen_back(client: AsyncTransactionClient, cluster: MockCluster, p: bytes) -> int:
    """fb1 (primary) prewritten with async commit, fb2 refused it (max_commit_ts below
    its start ts: TiKV writes a normal lock); both with a 1 ms TTL."""
    fb1, fb2 = p + b"fb1", p + b"fb2"
    start_ts = await client.current_timestamp()
    engine = cluster.engine
    first = engine.prewrite(
        [Mutation.put(fb1, b"1")],
        fb1,
        start_ts,
        1,
        min_commit_ts=start_ts + 1,
        use_async_commit=True,
        secondaries=[fb2],
        max_commit_ts=start_ts + (100 << 18),
    )
    assert first.min_commit_ts > 0
    second = engine.prewrite(
        [Mutation.put(fb2, b"2")],
        fb1,
        start_ts,
        1,
        min_commit_ts=start_ts + 1,
        use_async_commit=True,
        max_commit_ts=start_ts - 1,
    )
    assert second.min_commit_ts == 0  # fell back to 2PC
    assert lock_of(cluster, fb1).use_async_commit
    assert not lock_of(cluster, fb2).use_async_commit
    cluster.clock.advance(10)
    return start_ts


@pytest.mark.parametrize("how", ["check", "resolve", "batch-resolve"])
async def test_txn_fallen_back_from_async_commit(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes, how: str
) -> None:
    """A secondary that fell back to a normal lock makes the async-commit primary be
    resolved as a normal, expired one: rolled back, never committed."""
    start_ts = await _fallen_back(client, cluster, p)
    fb1, fb2 = p + b"fb1", p + b"fb2"
    lock = lock_of(cluster, fb1)
    resolver = fresh_resolver(client)
    if how == "check":
        status = await resolver.get_txn_status(
            bo(),
            start_ts,
            fb1,
            caller_start_ts=0,
            current_ts=await client.current_timestamp(),
            rollback_if_not_exist=False,
        )
        assert status.primary_lock is not None and status.primary_lock.use_async_commit
        assert status.primary_lock.secondaries == (fb2,)
        status = await fresh_resolver(client).get_txn_status(
            bo(),
            start_ts,
            fb1,
            caller_start_ts=0,
            current_ts=await client.current_timestamp(),
            rollback_if_not_exist=False,
            force_sync_commit=True,
        )
        assert status.action is Action.TTL_EXPIRE_ROLLBACK
        assert status.ttl == 0 and status.is_rolled_back
        assert not is_locked(cluster, fb1)
        await fresh_resolver(client).resolve_locks(bo(), 0, [lock_of(cluster, fb2)], for_read=False)
    elif how == "resolve":
        # As client-go: resolve until nothing blocks (the 1 ms TTL may not look expired
        # yet through the low-resolution ts the resolver reads "now" from).
        deadline = time.monotonic() + NO_HANG
        while (await resolver.resolve_locks(bo(), 0, [lock], for_read=False)).ms_before_expired:
            assert time.monotonic() < deadline, "the fallen-back lock never resolved"
    else:
        await resolver.batch_resolve_locks(bo(), [lock])
    assert not is_locked(cluster, fb1)
    # fb2's lock (if the resolution was lite) is the reader's to resolve: its primary is
    # rolled back, so nothing of the transaction is visible.
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get([fb1, fb2]) == {}
    assert not is_locked(cluster, fb2)


# -- TestPrewriteEncountersLargerTsLock ---------------------------------------------------


async def test_prewrite_meeting_a_younger_lock_is_a_write_conflict_at_once(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """t2 started after t1 and prewrote only its secondary (TTL 20 s); t1 cannot win
    whatever t2 does, so its prewrite fails with a write conflict instead of waiting."""
    k1, k2 = p + b"k1", p + b"k2"
    t1 = await client.begin(TransactionOptions(async_commit=False, try_one_pc=False))
    t1.put(k1, b"v1")
    t1.put(k2, b"v2")
    t2_start = await client.current_timestamp()
    cluster.engine.prewrite(
        [Mutation.put(k2, b"v2")], k1, t2_start, 20_000, min_commit_ts=t2_start + 1
    )
    with pytest.raises(WriteConflictError) as info:
        await t1.commit()
    assert info.value.conflict_start_ts == t2_start
    assert info.value.key == k2
    assert is_locked(cluster, k2)  # t2's lock was not touched
    cluster.engine.batch_rollback([k1, k2], t2_start)


# -- TestResolveLocksForRead ----------------------------------------------------------------


async def test_resolve_locks_for_read(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    def k(name: str) -> bytes:
        return p + name.encode()

    committed: set[int] = set()
    ignored: set[int] = set()
    locks: list[LockInfo] = []
    # Committed before the reader: resolved, its value visible.
    ts, _ = await lock_key(
        client, cluster, k("k1"), b"v1", k("k11"), b"v11", ttl=3000, commit_primary=True
    )
    committed.add(ts)
    locks.append(lock_of(cluster, k("k1")))
    # Rolled back.
    ts, _ = await lock_key(client, cluster, k("k2"), b"v2", k("k22"), b"v22", ttl=3000)
    forced = dataclasses.replace(lock_of(cluster, k("k22")), lock_ttl=0)
    await fresh_resolver(client).resolve_locks(bo(), 0, [forced], for_read=False)
    ignored.add(ts)
    locks.append(lock_of(cluster, k("k2")))
    # Alive, pushed past the reader.
    ts, _ = await lock_key(client, cluster, k("k3"), b"v3", k("k33"), b"v33", ttl=20_000)
    ignored.add(ts)
    locks.append(lock_of(cluster, k("k3")))
    # Async commit, alive: cannot be pushed (its commit ts may be decided), must be waited for.
    await lock_key(client, cluster, k("k4"), b"v4", k("k44"), b"v44", ttl=20_000, async_commit=True)
    locks.append(lock_of(cluster, k("k4")))
    # Async commit, expired: every key locked, so it is committed.
    ts, _ = await lock_key(
        client, cluster, k("k5"), b"v5", k("k55"), b"v55", ttl=1, async_commit=True
    )
    committed.add(ts)
    locks.append(lock_of(cluster, k("k5")))
    # Committed after the reader started: ignored.
    ts6 = await client.current_timestamp()
    cluster.engine.prewrite(
        [Mutation.put(k("k6"), b"v6"), Mutation.put(k("k66"), b"v66")],
        k("k66"),
        ts6,
        3000,
        min_commit_ts=ts6 + 1,
    )
    read_ts = await client.current_timestamp()
    commit_ts = await client.current_timestamp()
    assert commit_ts > read_ts
    cluster.engine.commit([k("k66")], ts6, commit_ts)
    ignored.add(ts6)
    locks.append(lock_of(cluster, k("k6")))
    # k5's 1 ms TTL must have run out as the resolver sees time: its "now" is the
    # oracle's low-resolution ts (refreshed every 2 s), so wait until that passed it.
    k5_start = lock_of(cluster, k("k5")).lock_version
    deadline = time.monotonic() + NO_HANG
    while (await client.runtime.oracle.get_low_resolution_timestamp()) >> 18 <= (
        k5_start >> 18
    ) + 1:
        assert time.monotonic() < deadline, "the low-resolution ts never advanced"
        await asyncio.sleep(0.05)

    result = await fresh_resolver(client).resolve_locks(bo(), read_ts, locks, for_read=True)
    assert result.ms_before_expired > 0
    assert result.ignored == ignored
    assert result.committed == committed
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.get(k("k1")) == b"v1"
    assert await snap.get(k("k5")) == b"v5"
    leftovers = [
        dataclasses.replace(lock_of(cluster, k(n)), lock_ttl=0)
        for n in ("k3", "k4")
        if is_locked(cluster, k(n))
    ]
    await fresh_resolver(client).resolve_locks(bo(), 0, leftovers, for_read=False)


# -- TestPrewriteCheckForUpdateTS ------------------------------------------------------------


@pytest.mark.parametrize(
    ("async_commit", "one_pc", "causal"),
    [(False, False, False), (True, False, False), (True, True, False), (True, False, True)],
    ids=["2pc", "async", "1pc", "async-causal"],
)
async def test_prewrite_checks_for_update_ts_of_aggressive_locks(
    client: AsyncTransactionClient,
    cluster: MockCluster,
    p: bytes,
    async_commit: bool,
    one_pc: bool,
    causal: bool,
) -> None:
    """Keys locked by aggressive locking are prewritten with the for-update ts each lock
    got: a lock lost and taken again by a stale replay of the lock request (with a newer
    for-update ts, over another transaction's write) fails prewrite instead of
    overwriting that write; a key locked with a conflict commits normally."""
    k1, k2, k3, k4 = (p + b"k%d" % i for i in range(1, 5))
    options = TransactionOptions(
        mode="pessimistic",
        async_commit=async_commit,
        try_one_pc=one_pc,
        causal_consistency=causal,
        lock_wait_timeout_ms=200,
    )

    # Failing case.
    txn = await client.begin(options)
    txn.start_aggressive_locking()
    for key in (k1, k2, k3):
        await txn.lock_keys([key])
    await txn.done_aggressive_locking()
    txn.put(k1, b"v1")
    # The lock on k1 is lost (rolled back as a resolver would)...
    cluster.engine.pessimistic_rollback([k1], txn.start_ts, MAX_U64 >> 1)
    assert not is_locked(cluster, k1)
    # ...another transaction writes k1...
    _, t2_commit = await put(client, k1, b"v2")
    # ...and a stale copy of the first lock request is replayed, taking the lock again
    # over that write (force-lock mode: locked with conflict, for-update ts = its commit).
    replay = await client.begin(dataclasses.replace(options, start_ts=txn.start_ts))
    replay.start_aggressive_locking()
    await replay.lock_keys([k1])
    await replay.done_aggressive_locking()
    assert lock_of(cluster, k1).lock_for_update_ts >= t2_commit
    with pytest.raises(TxnAbortedError) as info:
        await txn.commit()
    assert "PessimisticLockNotFound" in info.value.reason
    snap = client.snapshot(t2_commit)
    assert await snap.get(k1) == b"v2"
    assert await client.snapshot(t2_commit - 1).get(k1) is None
    await replay.rollback()

    # Passing case.
    txn = await client.begin(options)
    _, conflict_commit = await put(client, k2, b"v2")  # a version newer than txn's start
    txn.start_aggressive_locking()
    await txn.lock_keys([k2])  # locked with conflict
    await txn.lock_keys([k3])
    await txn.lock_keys([k4])
    txn.put(k2, b"v1")
    txn.put(k3, b"v1")
    await txn.done_aggressive_locking()
    commit_ts = await txn.commit()
    assert commit_ts > conflict_commit
    after = client.snapshot(commit_ts)
    assert await after.batch_get([k2, k3]) == {k2: b"v1", k3: b"v1"}
    before = client.snapshot(commit_ts - 1)
    assert await before.batch_get([k2, k3]) == {k2: b"v2"}
    assert await client.runtime.wait_background(NO_HANG)
    assert not any(is_locked(cluster, k) for k in (k1, k2, k3, k4))


# -- TestCheckTxnStatusSentToSecondary ---------------------------------------------------------


async def test_stale_pessimistic_lock_whose_primary_became_a_secondary(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """A failed lock call left stale pessimistic locks on k1 (its primary) and k2; the
    transaction then chose k3 as primary, locked k1 again and committed k1 and k3 (k1's
    commit held). A writer meeting k2's lock asks k1 for the transaction's status; k1 is
    now a secondary (TiKV answers PrimaryMismatch), so k2's lock points to no primary and
    is rolled back (client-go resolves it with a pessimistic rollback)."""
    k1, k2, k3 = p + b"k1", p + b"k2", p + b"k3"
    cluster.split([k3], txn=True)
    options = TransactionOptions(mode="pessimistic", async_commit=False, try_one_pc=False)
    txn = await client.begin(options)
    cluster.engine.pessimistic_lock(
        [Mutation(Op.PESSIMISTIC_LOCK, k) for k in (k1, k2)], k1, txn.start_ts, 1, txn.start_ts
    )
    await txn.lock_keys([k3])  # the primary
    await txn.lock_keys([k1])
    assert txn.locker.primary == k3
    txn.put(k1, b"v1-1")
    txn.put(k3, b"v3-1")
    region1 = cluster.region_by_key(k1, txn=True)
    assert region1 is not None
    hold = cluster.faults.add("KvCommit", region=region1.id, hang=True, times=1)
    try:
        await txn.commit()
        assert await asyncio.to_thread(cluster.faults.wait_hanging, 1, NO_HANG)
        assert lock_of(cluster, k1).primary_lock == k3  # prewritten, not committed
        assert lock_of(cluster, k2).primary_lock == k1  # stale
        cluster.clock.advance(100)  # the stale lock's 1 ms TTL is over
        writer = await client.begin(options)
        await asyncio.wait_for(writer.lock_keys([k2]), NO_HANG)
        await writer.rollback()
    finally:
        hold.release()
    assert await client.runtime.wait_background(NO_HANG)
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get([k1, k2, k3]) == {k1: b"v1-1", k3: b"v3-1"}


# -- TestBatchResolveLocks (WithTiKV suite): GC's resolve-lock phase ----------------------


async def test_gc_resolves_every_kind_of_stale_lock(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """Left behind: a stale pessimistic lock of a transaction that later committed with
    another primary (k1), a secondary prewrite lock whose primary committed (k3), and a
    stale primary pessimistic lock of a transaction that went away (k4). GC's
    resolve-lock phase leaves no lock and the committed data intact. (It moves the GC
    safepoint to now: the tests after it in this module read only at fresh timestamps.)"""
    k1, k2, k3, k4 = (p + b"k%d" % i for i in range(1, 5))
    cluster.split([k3], txn=True)  # k3's commit is not part of the primary's batch
    options = TransactionOptions(mode="pessimistic", async_commit=False, try_one_pc=False)
    txn1 = await client.begin(options)
    engine = cluster.engine
    engine.pessimistic_lock(
        [Mutation(Op.PESSIMISTIC_LOCK, k1)], k1, txn1.start_ts, 20_000, txn1.start_ts
    )
    await txn1.lock_keys([k2, k3])
    txn1.put(k2, b"v2")
    txn1.put(k3, b"v3")
    committer = txn1._get_committer()
    assert await committer.prepare()
    await committer.prewrite()
    await committer.get_commit_ts()
    await committer.commit_primary()  # the secondaries' commit never runs
    committer.stop_heartbeat()
    ts2 = await client.current_timestamp()
    engine.pessimistic_lock([Mutation(Op.PESSIMISTIC_LOCK, k4)], k4, ts2, 20_000, ts2)
    kinds = {lk.key: (lk.lock_type, lk.primary_lock) for lk in engine.scan_lock(MAX_U64 >> 1)}
    assert kinds[k1] == (Op.PESSIMISTIC_LOCK, k1)
    assert kinds[k3][0] is Op.PUT and kinds[k3][1] == k2
    assert kinds[k4] == (Op.PESSIMISTIC_LOCK, k4)

    safe_point = await client.current_timestamp()
    assert await client.gc(safe_point) == safe_point
    assert not any(is_locked(cluster, k) for k in (k1, k2, k3, k4))
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get([k1, k2, k3, k4]) == {k2: b"v2", k3: b"v3"}


# -- TestPessimisticRollbackWithRead (second half) ---------------------------------------------


async def test_region_pessimistic_rollback_spares_prewrite_locks(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """A dead transaction holds 500 pessimistic locks and 500 prewrite locks in one
    region (more than TiKV's 256-key resolve batch). Resolving one of its pessimistic
    locks with region resolution rolls back every pessimistic lock of the transaction in
    the region with one keyless PessimisticRollback, and leaves the prewrite locks (they
    are resolved from the primary's status, not rolled back blindly)."""
    keys = [p + b"k%04d" % i for i in range(1000)]
    locked_keys, prewritten = keys[0::2], keys[1::2]
    start_ts = await client.current_timestamp()
    engine = cluster.engine
    engine.pessimistic_lock(
        [Mutation(Op.PESSIMISTIC_LOCK, k) for k in locked_keys],
        locked_keys[0],
        start_ts,
        1,
        start_ts,
    )
    engine.prewrite(
        [Mutation.put(k, b"val") for k in prewritten],
        locked_keys[0],
        start_ts,
        20_000,
        for_update_ts=start_ts,
        pessimistic_actions=[PessimisticAction.SKIP_PESSIMISTIC_CHECK] * len(prewritten),
        min_commit_ts=start_ts + 1,
    )
    cluster.clock.advance(100)  # the pessimistic locks' 1 ms TTL is over
    met = lock_of(cluster, locked_keys[1])
    resolver = fresh_resolver(client)
    result = await resolver.resolve_locks(
        bo(), start_ts + 1, [met], for_read=False, pessimistic_region_resolve=True
    )
    assert result.ms_before_expired == 0
    assert resolver.stats["pessimistic_rollback"] == 1  # one keyless request for the region
    left = sorted(lk.key for lk in engine.scan_lock(MAX_U64 >> 1) if lk.key.startswith(p))
    assert left == prewritten
    engine.batch_rollback(prewritten, start_ts)


# -- TestResolveMixed (2pc_test.go) --------------------------------------------------------------


async def test_region_resolve_of_a_big_txn_cleans_its_pessimistic_locks_too(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """A big pessimistic transaction left prewrite locks and a pessimistic lock behind
    and lost its primary (rolled back). Resolving one prewrite lock cleans the whole
    region for the transaction (it is too big for lite resolution), the pessimistic lock
    included: another transaction locks that key without waiting."""
    pk = p + b"pk"
    optimistic = [p + b"o%03d" % i for i in range(32)]
    pessimistic_key = p + b"pess"
    start_ts = await client.current_timestamp()
    engine = cluster.engine
    engine.pessimistic_lock([Mutation(Op.PESSIMISTIC_LOCK, pk)], pk, start_ts, 1, start_ts)
    engine.prewrite(
        [Mutation.put(k, b"v") for k in optimistic],
        pk,
        start_ts,
        1,
        for_update_ts=start_ts,
        pessimistic_actions=[PessimisticAction.SKIP_PESSIMISTIC_CHECK] * len(optimistic),
        txn_size=10_000,  # a big transaction: resolved region by region, not key by key
        min_commit_ts=start_ts + 1,
    )
    engine.pessimistic_lock(
        [Mutation(Op.PESSIMISTIC_LOCK, pessimistic_key)], pk, start_ts, 1, start_ts
    )
    engine.pessimistic_rollback([pk], start_ts, start_ts)  # the primary is gone
    cluster.clock.advance(100)
    met = lock_of(cluster, optimistic[0])
    assert met.txn_size > client.config.resolve_lock_lite_threshold
    result = await fresh_resolver(client).resolve_locks(
        bo(), await client.current_timestamp(), [met], for_read=False
    )
    assert result.ms_before_expired == 0
    assert not any(is_locked(cluster, k) for k in [*optimistic, pessimistic_key])
    other = await client.begin(
        TransactionOptions(mode="pessimistic", lock_wait_timeout_ms=LOCK_NO_WAIT)
    )
    await other.lock_keys([pessimistic_key])
    await other.rollback()


# -- TestPkNotFound (2pc_test.go) ----------------------------------------------------------------


async def test_pessimistic_locks_whose_primary_vanished(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """A pessimistic transaction locked k1 (primary), k2 and k3, then died. Its primary's
    lock expires: CheckTxnStatus rolls it back (TTLExpirePessimisticRollback); asked
    again it finds nothing and, for a pessimistic lock, writes nothing
    (LockNotExistDoNothing). Other transactions then take k2 and k3 over; a pessimistic
    rollback with a smaller for-update ts than the lock's leaves the lock alone."""
    k1, k2, k3 = p + b"k1", p + b"k2", p + b"k3"
    # k3 in its own region: resolving k2 rolls back the transaction's pessimistic locks
    # of k2's region at once (region resolution), and k3 must survive that.
    cluster.split([k3], txn=True)
    start_ts = await client.current_timestamp()
    engine = cluster.engine
    engine.pessimistic_lock([Mutation(Op.PESSIMISTIC_LOCK, k1)], k1, start_ts, 100, start_ts)
    engine.pessimistic_lock(
        [Mutation(Op.PESSIMISTIC_LOCK, k) for k in (k2, k3)], k1, start_ts, 100, start_ts
    )
    cluster.clock.advance(200)

    async def status_of_primary() -> Action:
        now = await client.current_timestamp()
        status = await fresh_resolver(client).get_txn_status(
            bo(),
            start_ts,
            k1,
            caller_start_ts=0,
            current_ts=now,
            # As the resolver's retry after TxnNotFound (client-go getTxnStatusFromLock):
            # without it a missing primary is an error, with it a pessimistic lock's
            # missing primary gets no rollback record.
            rollback_if_not_exist=True,
            resolving_pessimistic_lock=True,
        )
        assert status.ttl == 0 and status.commit_ts == 0
        return status.action

    assert await status_of_primary() is Action.TTL_EXPIRE_PESSIMISTIC_ROLLBACK
    assert not is_locked(cluster, k1)
    assert await status_of_primary() is Action.LOCK_NOT_EXIST_DO_NOTHING
    options = TransactionOptions(mode="pessimistic", async_commit=False, try_one_pc=False)
    txn2 = await client.begin(options)
    await asyncio.wait_for(txn2.lock_keys([k2]), NO_HANG)  # k2's lock resolved
    await txn2.rollback()
    # A rollback aimed at an older for-update ts does not remove the lock.
    cluster.engine.pessimistic_rollback([k3], start_ts, start_ts - 1)
    assert is_locked(cluster, k3)
    txn3 = await client.begin(options)
    await asyncio.wait_for(txn3.lock_keys([k3]), NO_HANG)
    assert lock_of(cluster, k3).lock_version == txn3.start_ts
    await txn3.rollback()


# -- TestPessimisticLockMaxExecutionTime: the caller's deadline ------------------------------------


async def test_lock_wait_cut_short_by_the_callers_deadline(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """client-go bounds a lock wait by the statement's max execution time; here the
    caller's own deadline (``asyncio.timeout``) does it. The waiting lock call ends with
    TimeoutError, takes no lock (TiKV's parked request, woken later, gets a write
    conflict and locks nothing), and the transaction goes on: it locks another key,
    commits, and the contended key is free once its holder leaves."""
    k1, k2 = p + b"k1", p + b"k2"
    options = TransactionOptions(mode="pessimistic", async_commit=False, try_one_pc=False)
    holder = await client.begin(options)
    await holder.lock_keys([k1])
    txn = await client.begin(options)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await txn.lock_keys([k1])
    assert lock_of(cluster, k1).lock_version == holder.start_ts
    await holder.rollback()
    txn.put(k2, b"v2")
    await txn.lock_pending_writes()
    commit_ts = await txn.commit()
    assert not is_locked(cluster, k1) and not is_locked(cluster, k2)
    snap = client.snapshot(commit_ts)
    assert await snap.batch_get([k1, k2]) == {k2: b"v2"}
    other = await client.begin(dataclasses.replace(options, lock_wait_timeout_ms=LOCK_NO_WAIT))
    await other.lock_keys([k1])  # free: nothing of txn's cancelled call stayed
    await other.rollback()
