"""Pessimistic transactions on the embedded cluster: locks, waits, deadlocks, rollback.

The shared cluster has 3 stores and 4 regions (split at first bytes 0x40 / 0x80 / 0xC0);
every test uses its own key prefix. Tests that move the cluster clock get their own
cluster. Timing bounds are generous and only where a timeout is the feature.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Iterator
from typing import Any

import pytest
from _txn_helpers import MAX_TS, NO_HANG, K, locks_in, poll
from tikv_mockstore import MockCluster
from tikv_mockstore.kv_pessimistic import lock_wait_manager
from tikv_pd.codec import keyspace_prefix
from tikv_pd.errors import LockInfo
from tikv_pd.interceptor import Interceptor, RPCRequest
from tikv_txn import (
    LOCK_ALWAYS_WAIT,
    LOCK_NO_WAIT,
    AsyncTransaction,
    AsyncTransactionClient,
    Config,
    DeadlockError,
    KeyExistsError,
    LockWaitTimeoutError,
    TransactionClient,
    TransactionOptions,
    TxnError,
    WriteConflictError,
)
from tikv_txn.pessimistic import (
    SKIP_RESOLVE_THRESHOLD_MS,
    WaitVerdict,
    after_blocked,
    effective_wait_timeout,
    locks_to_resolve,
)
from tikv_txn.policy import Op, PessimisticAction


async def blocked(txn: AsyncTransaction, call: Awaitable[Any]) -> asyncio.Future[Any]:
    """Start ``call`` (a lock request of ``txn``) and return once it was sent and waits."""
    before = txn.locker.stats["lock_requests"]
    task = asyncio.ensure_future(call)
    await poll(
        lambda: txn.locker.stats["lock_requests"] > before or task.done(), "the lock request"
    )
    assert not task.done(), task.result() if not task.exception() else task.exception()
    return task


@contextlib.contextmanager
def server_lock_wait_timeout(cluster: MockCluster, ms: int) -> Iterator[None]:
    """Set TiKV's ``wait-for-lock-timeout`` of the shared cluster for a block."""
    manager = lock_wait_manager(cluster.engine)
    before = manager.wait_for_lock_timeout_ms
    manager.wait_for_lock_timeout_ms = ms
    try:
        yield
    finally:
        manager.wait_for_lock_timeout_ms = before


def primary_of(txn: AsyncTransaction) -> bytes | None:
    """The transaction's primary key (read through a call: it changes under mypy's feet)."""
    return txn.locker.primary


class Recorder(Interceptor):
    """Keeps every request of the client, by command."""

    name = "recorder"

    def __init__(self) -> None:
        self.requests: list[tuple[str, Any]] = []

    async def before_send(self, rpc: RPCRequest) -> None:
        self.requests.append((rpc.command, rpc.request))

    def of(self, command: str) -> list[Any]:
        return [r for c, r in self.requests if c == command]


# ---------------------------------------------------------------------------------------
# Pure rules
# ---------------------------------------------------------------------------------------


def test_effective_wait_timeout_follows_client_go() -> None:
    assert effective_wait_timeout(LOCK_NO_WAIT, 0) == LOCK_NO_WAIT
    assert effective_wait_timeout(0, 0) == LOCK_NO_WAIT  # <= 0: no wait (client-go)
    assert effective_wait_timeout(LOCK_ALWAYS_WAIT, 10**9) == LOCK_ALWAYS_WAIT
    assert effective_wait_timeout(500, 0) == 500
    assert effective_wait_timeout(500, 120) == 380
    assert effective_wait_timeout(500, 500) == LOCK_NO_WAIT
    assert effective_wait_timeout(500, 900) == LOCK_NO_WAIT


def test_after_blocked_verdicts() -> None:
    assert after_blocked(LOCK_NO_WAIT, 0) is WaitVerdict.NO_WAIT
    assert after_blocked(LOCK_ALWAYS_WAIT, 10**9) is WaitVerdict.KEEP_WAITING
    assert after_blocked(0, 0) is WaitVerdict.TIMED_OUT
    assert after_blocked(500, 499) is WaitVerdict.KEEP_WAITING
    assert after_blocked(500, 500) is WaitVerdict.TIMED_OUT


def test_recently_updated_locks_are_not_resolved() -> None:
    def lock(ms: int) -> LockInfo:
        return LockInfo(
            primary_lock=b"p", lock_version=5, key=b"k%d" % ms, duration_to_last_update_ms=ms
        )

    fresh = lock(SKIP_RESOLVE_THRESHOLD_MS - 1)
    old = lock(SKIP_RESOLVE_THRESHOLD_MS)
    unknown = lock(0)  # the server does not track it: resolve
    assert locks_to_resolve([fresh, old, unknown, lock(1)]) == [old, unknown]


# ---------------------------------------------------------------------------------------
# Locking
# ---------------------------------------------------------------------------------------


async def test_get_for_update_returns_values_and_locks_missing_keys(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    a, b, missing = K(b"\x90", p, "a"), K(b"\x10", p, "b"), K(b"\xd0", p, "missing")
    async with client.begin() as seed:
        seed.put(a, b"A")
        seed.put(b, b"B")
    txn = await client.begin(pessimistic=True)
    assert txn.options.is_pessimistic
    assert await txn.get_for_update(a) == b"A"
    # The first lock request chose the primary; the heartbeat keeps it alive.
    assert txn.locker.primary == a
    assert await txn.batch_get_for_update([b, missing, a]) == {a: b"A", b: b"B"}
    held = {lock.key: lock for lock in locks_in(cluster, p)}
    assert set(held) == {a, b, missing}
    assert all(lock.lock_type == Op.PESSIMISTIC_LOCK for lock in held.values())
    assert all(lock.primary_lock == a for lock in held.values())
    assert all(lock.lock_version == txn.start_ts for lock in held.values())
    assert held[b].lock_for_update_ts == txn.locker.for_update_ts
    assert held[a].lock_for_update_ts < held[b].lock_for_update_ts  # a fresh ts per request
    assert txn.locker.locked_count == 3
    # Reads for update see the transaction's own writes.
    txn.put(b, b"B2")
    assert await txn.get_for_update(b) == b"B2"
    assert await txn.check_exists_for_update([a, missing, b]) == {
        a: True,
        missing: False,
        b: True,
    }
    await txn.commit()
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get([a, b, missing]) == {a: b"A", b: b"B2"}
    await client.runtime.wait_background(NO_HANG)
    assert locks_in(cluster, p) == []


async def test_lock_only_if_exists_skips_missing_keys(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    a, missing = K(b"\x10", p, "a"), K(b"\x10", p, "zz")
    async with client.begin() as seed:
        seed.put(a, b"A")
    txn = await client.begin(pessimistic=True)
    assert await txn.get_for_update(missing, lock_only_if_exists=True) is None
    assert locks_in(cluster, p) == []
    assert txn.locker.primary is None  # client-go unsets a primary it could not lock
    assert await txn.get_for_update(a, lock_only_if_exists=True) == b"A"
    assert [lock.key for lock in locks_in(cluster, p)] == [a]
    await txn.rollback()
    assert locks_in(cluster, p) == []


async def test_commit_prewrites_pessimistic_actions_at_the_largest_for_update_ts(
    cluster: MockCluster, p: bytes
) -> None:
    recorder = Recorder()
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as client:
        client.set_rpc_interceptor(recorder)
        k1, k2, k3 = K(b"\x10", p, "1"), K(b"\x10", p, "2"), K(b"\x10", p, "3")
        txn = await client.begin(TransactionOptions.pessimistic())
        await txn.lock_keys([k2, k1])  # primary: the smallest key of the first request
        txn.put(k1, b"one")
        txn.delete(k3)
        await txn.lock_pending_writes()
        commit_ts = await txn.commit()
        locks = recorder.of("PessimisticLock")
        assert [[m.key for m in r.mutations] for r in locks] == [
            [k1, k2],
            [k3],
        ]
        assert all(r.primary_lock == k1 for r in locks)
        assert all(r.lock_ttl >= 20_000 for r in locks)
        assert all(r.min_commit_ts == r.for_update_ts + 1 for r in locks)
        assert [r.is_first_lock for r in locks] == [False, False]
        assert locks[0].wait_timeout == LOCK_ALWAYS_WAIT
        (prewrite,) = recorder.of("Prewrite")
        assert prewrite.for_update_ts == max(r.for_update_ts for r in locks)
        assert prewrite.for_update_ts == txn.locker.for_update_ts
        assert prewrite.primary_lock == k1
        ops = {
            m.key: (m.op, a)
            for m, a in zip(prewrite.mutations, prewrite.pessimistic_actions, strict=True)
        }
        do_check = PessimisticAction.DO_PESSIMISTIC_CHECK
        assert ops == {k1: (Op.PUT, do_check), k2: (Op.LOCK, do_check), k3: (Op.DEL, do_check)}
        assert prewrite.min_commit_ts > prewrite.for_update_ts
        snap = client.snapshot(await client.current_timestamp())
        assert await snap.get(k1) == b"one"
        assert commit_ts > txn.locker.for_update_ts
        await client.runtime.wait_background(NO_HANG)
    assert locks_in(cluster, p) == []


async def test_pessimistic_insert_checks_existence_when_locking(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    taken, free = K(b"\x50", p, "taken"), K(b"\x50", p, "free")
    async with client.begin() as seed:
        seed.put(taken, b"old")
    txn = await client.begin(pessimistic=True)
    txn.insert(taken, b"new")
    with pytest.raises(KeyExistsError) as info:
        await txn.lock_pending_writes()
    assert info.value.key == taken
    # The write that could not be locked is discarded; nothing is locked.
    assert await txn.get(taken) == b"old"
    assert locks_in(cluster, p) == []
    txn.insert(free, b"new")
    await txn.lock_pending_writes()
    assert [lock.key for lock in locks_in(cluster, p)] == [free]
    await txn.commit()
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get([taken, free]) == {taken: b"old", free: b"new"}


# ---------------------------------------------------------------------------------------
# Waiting
# ---------------------------------------------------------------------------------------


async def test_no_wait_fails_at_once_with_a_typed_error(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    key = K(b"\x90", p, "k")
    holder = await client.begin(pessimistic=True)
    await holder.lock_keys([key])
    waiter = await client.begin(TransactionOptions.pessimistic(lock_wait_timeout_ms=LOCK_NO_WAIT))
    requests = cluster.counters.count("KvPessimisticLock")
    # A request that waited would now wait far beyond NO_HANG (instead of TiKV's 1 s,
    # which a wall-clock bound could not tell from a slow machine).
    with server_lock_wait_timeout(cluster, 600_000), pytest.raises(LockWaitTimeoutError) as info:
        await asyncio.wait_for(waiter.get_for_update(key), NO_HANG)
    assert info.value.no_wait
    assert info.value.key == key
    assert info.value.lock_ts == holder.start_ts
    assert info.value.start_ts == waiter.start_ts
    assert cluster.counters.count("KvPessimisticLock") == requests + 1
    # The holder keeps its lock; the waiter holds none.
    assert [(lock.key, lock.lock_version) for lock in locks_in(cluster, p)] == [
        (key, holder.start_ts)
    ]
    await waiter.rollback()
    await holder.rollback()
    assert locks_in(cluster, p) == []


async def test_wait_timeout_fails_after_about_that_long(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    key = K(b"\xd0", p, "k")
    holder = await client.begin(pessimistic=True)
    await holder.lock_keys([key])
    waiter = await client.begin(pessimistic=True)
    started = time.monotonic()
    with pytest.raises(LockWaitTimeoutError) as info:
        await waiter.lock_keys([key], lock_wait_timeout_ms=500)
    waited = time.monotonic() - started
    assert 0.45 <= waited < 5.0, waited
    assert not info.value.no_wait
    assert info.value.lock_ts == holder.start_ts
    await waiter.rollback()
    await holder.rollback()


async def test_waiting_forever_succeeds_when_the_holder_commits(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    key = K(b"\x50", p, "k")
    async with client.begin() as seed:
        seed.put(key, b"0")
    holder = await client.begin(pessimistic=True)
    assert await holder.get_for_update(key) == b"0"
    waiter = await client.begin(pessimistic=True)
    assert waiter.options.lock_wait_timeout_ms == LOCK_ALWAYS_WAIT
    task = await blocked(waiter, waiter.get_for_update(key))
    holder.put(key, b"1")
    await holder.commit()
    # Woken with a write conflict, the waiter locks again at a newer for_update_ts and
    # reads the value the holder committed.
    assert await asyncio.wait_for(task, NO_HANG) == b"1"
    assert waiter.locker.stats["write_conflict_retries"] >= 1
    assert waiter.locker.for_update_ts > holder.commit_ts
    waiter.put(key, b"2")
    await waiter.commit()
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.get(key) == b"2"


async def test_deadlock_fails_exactly_one_transaction_with_the_wait_chain(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    k1, k2 = K(b"\x10", p, "1"), K(b"\x90", p, "2")
    t1 = await client.begin(pessimistic=True)
    t2 = await client.begin(pessimistic=True)
    await t1.lock_keys([k1])
    await t2.lock_keys([k2])
    first = await blocked(t1, t1.lock_keys([k2]))  # t1 waits for t2
    # Detected, not timed out: a wait would now last far beyond NO_HANG.
    with server_lock_wait_timeout(cluster, 600_000), pytest.raises(DeadlockError) as info:
        await asyncio.wait_for(t2.lock_keys([k1]), NO_HANG)  # t2 would wait for t1: a cycle
    err = info.value
    assert err.lock_ts == t1.start_ts
    assert err.lock_key == k1
    assert {(e.txn, e.wait_for_txn) for e in err.wait_chain} == {
        (t1.start_ts, t2.start_ts),
        (t2.start_ts, t1.start_ts),
    }
    assert not first.done()
    await t2.rollback()  # releases k2: t1 gets it
    await asyncio.wait_for(first, NO_HANG)
    t1.put(k1, b"t1")
    t1.put(k2, b"t1")
    assert await t1.commit() > 0
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get([k1, k2]) == {k1: b"t1", k2: b"t1"}
    await client.runtime.wait_background(NO_HANG)
    assert locks_in(cluster, p) == []


async def test_deadlock_between_concurrent_transactions_lets_the_other_commit(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    k1, k2 = K(b"\x10", p, "1"), K(b"\xd0", p, "2")
    ready = asyncio.Barrier(2)

    async def transfer(first: bytes, second: bytes, value: bytes) -> str:
        txn = await client.begin(pessimistic=True)
        try:
            await txn.get_for_update(first)
            await ready.wait()
            await txn.get_for_update(second)
        except DeadlockError:
            await txn.rollback()
            return "deadlock"
        txn.put(first, value)
        txn.put(second, value)
        await txn.commit()
        return "committed"

    outcomes = await asyncio.wait_for(
        asyncio.gather(transfer(k1, k2, b"a"), transfer(k2, k1, b"b")), NO_HANG
    )
    assert sorted(outcomes) == ["committed", "deadlock"]
    winner = b"a" if outcomes[0] == "committed" else b"b"
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get([k1, k2]) == {k1: winner, k2: winner}


async def test_primary_is_locked_before_the_rest_of_its_region_after_a_split(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    # client-go locks the primary's batch before the other keys, also when a region error
    # re-splits that batch. Sending the re-split parts together would let a transaction hold
    # k2 while it waits for its primary k1, and one holding k1 that then locks k2 closes a
    # cycle: a deadlock between two transactions that lock in the same (sorted) key order.
    k1, k2 = K(b"\x10", p, "1"), K(b"\x10", p, "2")
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as other:
        holder = await other.begin(pessimistic=True)
        await holder.lock_keys([k1])
        # The client caches the region of k1 and k2; the server then splits it.
        await client.snapshot(await client.current_timestamp()).get(k2)
        cluster.split([k2], txn=True)
        waiter = await client.begin(pessimistic=True)
        manager = lock_wait_manager(cluster.engine)
        waiters = manager.waiter_count
        task = asyncio.ensure_future(waiter.batch_get_for_update([k1, k2]))
        await poll(lambda: manager.waiter_count > waiters or task.done(), "the wait for k1")
        assert not task.done()
        assert primary_of(waiter) == k1
        # The waiter holds nothing yet: the holder locks k2 without waiting for it.
        assert [lock.key for lock in locks_in(cluster, p)] == [k1]
        await asyncio.wait_for(holder.lock_keys([k2]), NO_HANG)
        holder.put(k1, b"h")
        holder.put(k2, b"h")
        await holder.commit()
        assert await asyncio.wait_for(task, NO_HANG) == {k1: b"h", k2: b"h"}
        waiter.put(k1, b"w")
        await waiter.commit()
        await other.runtime.wait_background(NO_HANG)
    await client.runtime.wait_background(NO_HANG)
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get([k1, k2]) == {k1: b"w", k2: b"h"}
    assert locks_in(cluster, p) == []


# ---------------------------------------------------------------------------------------
# Rollback and cleanup
# ---------------------------------------------------------------------------------------


async def test_rollback_releases_every_lock(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    keys = [K(f, p, "k") for f in (b"\x10", b"\x50", b"\x90", b"\xd0")]
    txn = await client.begin(pessimistic=True)
    await txn.lock_keys(keys[:2])
    await txn.batch_get_for_update(keys[2:])
    txn.put(keys[0], b"x")
    assert len(locks_in(cluster, p)) == 4
    rollbacks = cluster.counters.count("KVPessimisticRollback")
    await txn.rollback()
    assert txn.state == "rolled back"
    assert locks_in(cluster, p) == []
    assert cluster.counters.count("KVPessimisticRollback") > rollbacks
    assert not txn.locker.locked_keys()
    # The keys are free for others at once.
    other = await client.begin(TransactionOptions.pessimistic(lock_wait_timeout_ms=LOCK_NO_WAIT))
    await other.lock_keys(keys)
    await other.rollback()


async def test_a_failed_lock_batch_releases_what_it_locked(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    free = [K(b"\x10", p, "a"), K(b"\x50", p, "b"), K(b"\xd0", p, "d")]
    taken = K(b"\x90", p, "c")
    holder = await client.begin(pessimistic=True)
    await holder.lock_keys([taken])
    txn = await client.begin(pessimistic=True)
    with pytest.raises(LockWaitTimeoutError):
        await txn.lock_keys([*free, taken], lock_wait_timeout_ms=LOCK_NO_WAIT)
    # The regions that succeeded were rolled back: only the holder's lock is left, and
    # the failed request's primary was given up.
    assert [(lock.key, lock.lock_version) for lock in locks_in(cluster, p)] == [
        (taken, holder.start_ts)
    ]
    assert txn.locker.primary is None
    assert txn.locker.locked_count == 0
    await holder.rollback()
    await txn.lock_keys([*free, taken])
    assert len(locks_in(cluster, p)) == 4
    await txn.rollback()
    assert locks_in(cluster, p) == []


async def test_heartbeat_keeps_the_primary_alive_from_the_first_lock(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    client.runtime.budgets.heartbeat_interval_s = 0.05
    key = K(b"\x50", p, "hb")
    txn = await client.begin(pessimistic=True)
    await txn.lock_keys([key])
    committer = txn.locker._committer()
    assert committer.heartbeat_running
    (lock,) = locks_in(cluster, p)
    first_ttl = lock.lock_ttl
    await poll(lambda: committer.heartbeats >= 2, "two heartbeats")
    (lock,) = locks_in(cluster, p)
    assert lock.lock_ttl > first_ttl
    await txn.rollback()
    assert not committer.heartbeat_running


async def test_a_crashed_holders_lock_is_taken_over_after_its_ttl() -> None:
    with MockCluster(stores=3, regions=4) as cluster:
        key, other = b"\x10crash/k", b"\x90crash/k"
        crashed = await AsyncTransactionClient.connect(cluster.pd_endpoints)
        holder = await crashed.begin(pessimistic=True)
        await holder.lock_keys([key, other])
        # The holder's process dies: its heartbeat stops, nobody rolls it back.
        await crashed.close()
        assert len(cluster.engine.scan_lock(MAX_TS)) == 2
        async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as client:
            waiter = await client.begin(pessimistic=True)
            task = await blocked(waiter, waiter.batch_get_for_update([other, key]))
            # Still alive for TiKV: the waiter keeps waiting (TiKV answers every 1 s).
            await poll(lambda: waiter.locker.stats["lock_requests"] >= 2, "a second wait")
            assert not task.done()
            # The lock TTL (20 s + the time the holder ran) passes.
            cluster.clock.advance(25_000)
            assert await asyncio.wait_for(task, NO_HANG) == {}
            assert {lock.lock_version for lock in cluster.engine.scan_lock(MAX_TS)} == {
                waiter.start_ts
            }
            waiter.put(key, b"mine")
            await waiter.commit()
            snap = client.snapshot(await client.current_timestamp())
            assert await snap.get(key) == b"mine"
            stats = client.runtime.resolver.stats
            assert stats["check_txn_status"] >= 1
            # The primary was rolled back by CheckTxnStatus; the other key needed a
            # PessimisticRollback from the resolver.
            assert stats["pessimistic_rollback"] >= 1


# ---------------------------------------------------------------------------------------
# Sync flavour
# ---------------------------------------------------------------------------------------


def test_sync_pessimistic_writes_lock_at_once_and_deadlocks_are_typed(
    cluster: MockCluster,
) -> None:
    p = b"pes-sync/"
    k1, k2 = K(b"\x10", p, "1"), K(b"\x90", p, "2")
    with TransactionClient.connect(cluster.pd_endpoints) as client:
        t1 = client.begin(pessimistic=True)
        t1.put(k1, b"v1")  # locked before put returns
        assert [lock.key for lock in locks_in(cluster, p)] == [k1]
        t2 = client.begin(pessimistic=True)
        assert t2.get_for_update(k2) is None
        errors: list[BaseException] = []
        t1_done = threading.Event()

        def t1_second() -> None:
            try:
                t1.put(k2, b"v1")  # waits for t2
                t1.commit()
            except BaseException as exc:
                errors.append(exc)
            finally:
                t1_done.set()

        thread = threading.Thread(target=t1_second)
        thread.start()
        deadline = time.monotonic() + NO_HANG
        while t1.async_transaction.locker.stats["lock_requests"] < 2:
            assert time.monotonic() < deadline, "t1 never sent its second lock"
            time.sleep(0.005)
        with pytest.raises(DeadlockError):
            t2.lock_keys([k1])
        t2.rollback()
        assert t1_done.wait(NO_HANG)
        thread.join(NO_HANG)
        assert errors == []
        snap = client.snapshot(client.current_timestamp())
        assert snap.batch_get([k1, k2]) == {k1: b"v1", k2: b"v1"}
        t3 = client.begin(TransactionOptions.pessimistic(lock_wait_timeout_ms=LOCK_NO_WAIT))
        t4 = client.begin(pessimistic=True)
        t4.lock_keys([k1])
        with pytest.raises(LockWaitTimeoutError):
            t3.get_for_update(k1)
        t3.rollback()
        t4.rollback()
    assert locks_in(cluster, p) == []


# ---------------------------------------------------------------------------------------
# Commit protocols, readers, failed commits
# ---------------------------------------------------------------------------------------


async def test_readers_are_not_blocked_by_pessimistic_locks(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    key = K(b"\x90", p, "r")
    async with client.begin() as seed:
        seed.put(key, b"old")
    txn = await client.begin(pessimistic=True)
    assert await txn.get_for_update(key) == b"old"
    txn.put(key, b"new")
    await txn.lock_pending_writes()
    checks = client.runtime.resolver.stats["check_txn_status"]
    snap = client.snapshot(await client.current_timestamp())
    assert await asyncio.wait_for(snap.get(key), 1.0) == b"old"
    assert client.runtime.resolver.stats["check_txn_status"] == checks
    await txn.commit()


@pytest.mark.parametrize("protocol", ["1pc", "async_commit"])
async def test_pessimistic_commit_with_one_pc_and_async_commit(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes, protocol: str
) -> None:
    if protocol == "1pc":
        keys = [K(b"\x10", p, "a"), K(b"\x10", p, "b")]  # one region: one batch
        options = TransactionOptions.pessimistic(try_one_pc=True)
    else:
        keys = [K(b"\x10", p, "a"), K(b"\xd0", p, "b")]
        options = TransactionOptions.pessimistic(async_commit=True)
    commits = cluster.counters.count("KvCommit")
    txn = await client.begin(options)
    await txn.batch_get_for_update(keys)
    for key in keys:
        txn.put(key, b"v")
    commit_ts = await txn.commit()
    assert commit_ts > txn.locker.for_update_ts
    committer = txn.locker._committer()
    if protocol == "1pc":
        assert committer.one_pc_commit_ts == commit_ts
        assert cluster.counters.count("KvCommit") == commits
    else:
        assert committer.async_commit
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get(keys) == dict.fromkeys(keys, b"v")
    await client.runtime.wait_background(NO_HANG)
    assert locks_in(cluster, p) == []


async def test_a_commit_that_fails_before_prewrite_releases_the_locks(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    locked, taken = K(b"\x10", p, "locked"), K(b"\x90", p, "taken")
    async with client.begin() as seed:
        seed.put(taken, b"old")
    txn = await client.begin(pessimistic=True)
    await txn.lock_keys([locked])
    txn.insert(taken, b"new")  # locked at commit: the key exists
    prewrites = cluster.counters.count("KvPrewrite")
    with pytest.raises(KeyExistsError):
        await txn.commit()
    assert txn.state == "failed"
    assert cluster.counters.count("KvPrewrite") == prewrites
    await client.runtime.wait_background(NO_HANG)
    assert locks_in(cluster, p) == []


async def test_a_dead_transactions_locks_are_rolled_back_region_by_region(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    primary = K(b"\x10", p, "primary")
    keys = [K(b"\x90", p, f"k{i}") for i in range(5)]
    # A client whose pessimistic locks live 100 ms, and which dies without cleaning up.
    dead = await AsyncTransactionClient.connect(
        cluster.pd_endpoints, config=Config(managed_lock_ttl_ms=100)
    )
    holder = await dead.begin(pessimistic=True)
    await holder.lock_keys([primary])
    await holder.lock_keys(keys)
    await dead.close()
    assert len(locks_in(cluster, p)) == 6
    stats = client.runtime.resolver.stats
    rollbacks = stats["pessimistic_rollback"]
    txn = await client.begin(pessimistic=True)
    await asyncio.wait_for(txn.lock_keys(keys), NO_HANG)
    # The first blocking lock settled the transaction (its primary expired); one
    # PessimisticRollback without keys then released all five locks of the region.
    assert stats["pessimistic_rollback"] == rollbacks + 1
    assert {lock.key for lock in locks_in(cluster, p) if lock.lock_version == txn.start_ts} == set(
        keys
    )
    await txn.rollback()


# ---------------------------------------------------------------------------------------
# Aggressive (fair) locking
# ---------------------------------------------------------------------------------------


async def test_fair_locking_hands_the_released_lock_to_the_waiter(
    cluster: MockCluster, p: bytes
) -> None:
    recorder = Recorder()
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as client:
        key = K(b"\x50", p, "hot")
        async with client.begin() as seed:
            seed.put(key, b"0")
        holder = await client.begin(pessimistic=True)
        await holder.lock_keys([key])
        client.set_rpc_interceptor(recorder)
        waiter = await client.begin(pessimistic=True)
        waiter.start_aggressive_locking()
        assert waiter.in_aggressive_locking
        task = await blocked(waiter, waiter.get_for_update(key))
        holder.put(key, b"1")
        await holder.commit()
        # Force-lock mode: the waiter is resumed with the lock, over the newer write, and
        # gets the newest value; no write conflict, no second request.
        assert await asyncio.wait_for(task, NO_HANG) == b"1"
        assert waiter.locker.stats["write_conflict_retries"] == 0
        (lock_req,) = recorder.of("PessimisticLock")
        assert lock_req.wake_up_mode == 1  # WakeUpModeForceLock
        (lock,) = locks_in(cluster, p)
        assert lock.lock_version == waiter.start_ts
        assert lock.lock_for_update_ts == holder.commit_ts  # locked with conflict
        with pytest.raises(TxnError, match="aggressive locking is pending"):
            await waiter.commit()
        await waiter.done_aggressive_locking()
        assert waiter.locker.in_aggressive_locking is False
        waiter.put(key, b"2")
        await waiter.commit()
        (prewrite,) = recorder.of("Prewrite")
        assert [
            (c.index, c.expected_for_update_ts) for c in prewrite.for_update_ts_constraints
        ] == [(0, holder.commit_ts)]
        assert waiter.commit_ts > holder.commit_ts
        snap = client.snapshot(await client.current_timestamp())
        assert await snap.get(key) == b"2"


async def test_aggressive_locking_retry_reuses_and_releases_locks(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    a, b = K(b"\x10", p, "a"), K(b"\x90", p, "b")
    txn = await client.begin(pessimistic=True)
    txn.start_aggressive_locking()
    await txn.lock_keys([a])
    await txn.lock_keys([b])
    assert txn.locker.primary == a
    assert {lock.key for lock in locks_in(cluster, p)} == {a, b}
    requests = txn.locker.stats["lock_requests"]
    # The "statement" is retried and this time needs only a.
    await txn.retry_aggressive_locking()
    await txn.lock_keys([a])
    assert txn.locker.stats["lock_requests"] == requests  # reused, no request
    assert txn.locker.primary == a
    await txn.done_aggressive_locking()
    # b was not needed by the last attempt: released.
    assert [lock.key for lock in locks_in(cluster, p)] == [a]
    txn.put(a, b"A")
    await txn.commit()
    await client.runtime.wait_background(NO_HANG)
    assert locks_in(cluster, p) == []
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get([a, b]) == {a: b"A"}


async def test_cancel_aggressive_locking_releases_everything(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    a, b = K(b"\x10", p, "a"), K(b"\xd0", p, "b")
    txn = await client.begin(pessimistic=True)
    await txn.lock_keys([b])  # locked normally before: kept
    txn.start_aggressive_locking()
    assert await txn.get_for_update(a) is None
    assert txn.locker.is_in_aggressive_locking_stage(a)
    await txn.cancel_aggressive_locking()
    assert [lock.key for lock in locks_in(cluster, p)] == [b]
    assert txn.locker.primary == b
    # A multi-key lock ends aggressive locking as "done" (its locks are kept).
    txn.start_aggressive_locking()
    await txn.lock_keys([a])
    await txn.lock_keys([a, K(b"\x50", p, "c")])
    assert not txn.in_aggressive_locking
    assert len(locks_in(cluster, p)) == 3
    await txn.rollback()
    assert locks_in(cluster, p) == []
    optimistic = await client.begin()
    with pytest.raises(ValueError, match="pessimistic"):
        optimistic.start_aggressive_locking()


async def test_optimistic_lock_keys_are_checked_for_conflicts_at_commit(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    key, other = K(b"\x10", p, "k"), K(b"\x90", p, "o")
    txn = await client.begin()
    requests = cluster.counters.count("KvPessimisticLock")
    await txn.lock_keys([key])
    assert await txn.get_for_update(other) is None
    assert cluster.counters.count("KvPessimisticLock") == requests  # only marked
    async with client.begin() as rival:
        rival.put(key, b"rival")
    with pytest.raises(WriteConflictError) as info:
        await txn.commit()
    assert info.value.key == key


# ---------------------------------------------------------------------------------------
# Ports of client-go integration_tests/2pc_test.go pessimistic cases
# ---------------------------------------------------------------------------------------


async def test_primary_is_locked_before_the_other_regions(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """TestPessimisticLockPrimary: a request blocked on its primary locks nothing else."""
    k1, k2 = K(b"\x10", p, "a"), K(b"\x90", p, "b")
    t1 = await client.begin(pessimistic=True)
    await t1.lock_keys([k1])
    t2 = await client.begin(pessimistic=True)
    blocked_t2 = await blocked(t2, t2.lock_keys([k1, k2], lock_wait_timeout_ms=1500))
    # t2 waits on k1, its primary: k2 (another region) is still free.
    t3 = await client.begin(TransactionOptions.pessimistic(lock_wait_timeout_ms=LOCK_NO_WAIT))
    await t3.lock_keys([k2])
    with pytest.raises(LockWaitTimeoutError):
        await asyncio.wait_for(blocked_t2, NO_HANG)
    assert {(lock.key, lock.lock_version) for lock in locks_in(cluster, p)} == {
        (k1, t1.start_ts),
        (k2, t3.start_ts),
    }
    for txn in (t1, t2, t3):
        await txn.rollback()
    assert locks_in(cluster, p) == []


async def test_an_expired_secondary_of_a_live_transaction_is_not_taken() -> None:
    """TestAcquireFalseTimeoutLock: the primary's heartbeat keeps the whole txn alive."""
    with MockCluster(stores=1) as cluster:
        k1, k2 = b"false-timeout/k1", b"false-timeout/k2"
        config = Config(managed_lock_ttl_ms=1000)
        async with await AsyncTransactionClient.connect(
            cluster.pd_endpoints, config=config
        ) as client:
            client.runtime.budgets.heartbeat_interval_s = 0.05
            t1 = await client.begin(pessimistic=True)
            await t1.lock_keys([k1])
            await t1.lock_keys([k2])
            # Time passes beyond the locks' own TTL; only the primary is kept alive.
            cluster.clock.advance(3000)

            def primary_ttl() -> int:
                ttl: int = next(
                    lk.lock_ttl for lk in cluster.engine.scan_lock(MAX_TS) if lk.key == k1
                )
                return ttl

            await poll(lambda: primary_ttl() > 3000, "a heartbeat after the clock moved")
            secondary = next(lk for lk in cluster.engine.scan_lock(MAX_TS) if lk.key == k2)
            assert secondary.lock_ttl < 3000  # expired by its own TTL
            t2 = await client.begin(pessimistic=True)
            with pytest.raises(LockWaitTimeoutError) as info:
                await t2.lock_keys([k2], lock_wait_timeout_ms=LOCK_NO_WAIT)
            assert info.value.no_wait
            with pytest.raises(LockWaitTimeoutError) as info:
                await t2.lock_keys([k2], lock_wait_timeout_ms=200)
            assert not info.value.no_wait
            assert {lk.lock_version for lk in cluster.engine.scan_lock(MAX_TS)} == {t1.start_ts}
            await t2.rollback()
            await t1.rollback()


async def test_aggressive_locking_switches_the_primary_on_retry(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """TestAggressiveLockingSwitchPrimary: the heartbeat follows the new primary."""
    client.runtime.budgets.heartbeat_interval_s = 0.05
    a, b = K(b"\x10", p, "a"), K(b"\x90", p, "b")
    txn = await client.begin(pessimistic=True)
    committer = txn.locker._committer()
    txn.start_aggressive_locking()
    await txn.lock_keys([a])
    assert primary_of(txn) == a
    assert committer.heartbeat_running
    await txn.retry_aggressive_locking()
    # Between attempts no primary is chosen, but a's lock is kept alive.
    assert primary_of(txn) is None
    assert committer.heartbeat_running
    await txn.lock_keys([b])  # the retried attempt needs b only: b is the new primary
    assert primary_of(txn) == b
    await txn.done_aggressive_locking()
    assert [lock.key for lock in locks_in(cluster, p)] == [b]  # a was released
    beats = committer.heartbeats
    await poll(lambda: committer.heartbeats > beats, "a heartbeat of the new primary")
    (lock,) = locks_in(cluster, p)
    assert lock.primary_lock == b
    txn.put(b, b"B")
    await txn.commit()
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get([a, b]) == {b: b"B"}


async def test_bad_lock_arguments_are_refused_before_sending(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    txn = await client.begin(pessimistic=True)
    requests = cluster.counters.count("KvPessimisticLock")
    with pytest.raises(ValueError, match="lock_wait_timeout_ms"):
        await txn.lock_keys([K(b"\x10", p, "k")], lock_wait_timeout_ms=-2)
    with pytest.raises(TypeError, match="lock_wait_timeout_ms"):
        await txn.get_for_update(K(b"\x10", p, "k"), lock_wait_timeout_ms=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await txn.lock_keys(b"not a list")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="primary"):
        await txn.batch_get_for_update(
            [K(b"\x10", p, "a"), K(b"\x10", p, "b")], lock_only_if_exists=True
        )
    assert cluster.counters.count("KvPessimisticLock") == requests
    await txn.rollback()


async def test_pessimistic_transactions_under_api_v2_keyspaces() -> None:
    with MockCluster(stores=3, api_version=2) as cluster:
        alpha_id = cluster.create_keyspace("alpha").id
        prefix = keyspace_prefix("txn", alpha_id)
        async with await AsyncTransactionClient.connect(
            cluster.pd_endpoints, keyspace="alpha"
        ) as client:
            async with client.begin() as seed:
                seed.put(b"k1", b"v1")
            holder = await client.begin(pessimistic=True)
            assert await holder.batch_get_for_update([b"k1", b"k2"]) == {b"k1": b"v1"}
            held = cluster.engine.scan_lock(MAX_TS)
            assert {lock.key for lock in held} == {prefix + b"k1", prefix + b"k2"}
            assert {lock.primary_lock for lock in held} == {prefix + b"k1"}
            waiter = await client.begin(pessimistic=True)
            task = await blocked(waiter, waiter.get_for_update(b"k1"))
            holder.put(b"k1", b"v2")
            await holder.commit()
            assert await asyncio.wait_for(task, NO_HANG) == b"v2"
            await waiter.rollback()
            await client.runtime.wait_background(NO_HANG)
            assert cluster.engine.scan_lock(MAX_TS) == []
            snap = client.snapshot(await client.current_timestamp())
            assert await snap.batch_get([b"k1", b"k2"]) == {b"k1": b"v2"}


async def test_locks_survive_a_stopped_leader_store() -> None:
    with MockCluster(stores=3, regions=4) as cluster:
        a, b = b"\x10stop/a", b"\x90stop/b"
        async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as client:
            txn = await client.begin(pessimistic=True)
            await txn.lock_keys([a])
            assert await txn.get(b) is None  # the client now knows b's region leader
            region = cluster.region_by_key(b, txn=True)
            assert region is not None and region.leader is not None
            # The store leading b's region goes away; its leaders move elsewhere.
            cluster.stop_store(region.leader.store_id)
            assert await asyncio.wait_for(txn.get_for_update(b), NO_HANG) is None
            txn.put(a, b"A")
            txn.put(b, b"B")
            await asyncio.wait_for(txn.commit(), NO_HANG)
            snap = client.snapshot(await client.current_timestamp())
            assert await snap.batch_get([a, b]) == {a: b"A", b: b"B"}
