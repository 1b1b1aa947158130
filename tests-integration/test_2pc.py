"""Two-phase commit edge cases: client-go ``integration_tests/2pc_test.go`` tests that the
package suites did not port (``TestDeleteYourWritesTTL``, ``TestDeleteYourWriteCauseGhostPrimary``,
``TestDeleteAllYourWrites``, ``TestDeleteAllYourWritesWithSFU``, ``TestCommitRollback``,
``TestPrewritePrimaryKeyFailed``, ``TestCommitBeforePrewrite``, ``TestIllegalTso``,
``TestPrewriteTxnSize``, ``TestPrewriteCancel``, ``TestContextCancel`` / ``2``,
``TestElapsedTTL``, ``TestAggressiveLockingSwitchPrimary``,
``TestAggressiveLockingResetTTLManager``,
``TestAggressiveLockingKeepAliveAfterMultiLockKeysOperation``,
``TestAggressiveLockingResetPrimaryAndTTLManagerAfterExit``).

The cluster is private to the module (tests split it and inject faults); the server's state
(locks, their primary and TTL) is read from its engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from tikv_mockstore import MockCluster
from tikv_mockstore.mvcc import Op
from tikv_pd.config import DISK_FULL_OPTS, Config, TransactionOptions
from tikv_pd.errors import (
    KeyExistsError,
    LockWaitTimeoutError,
    TiKVError,
    TransactionClosedError,
    TxnLockNotFoundError,
    UndeterminedError,
    WriteConflictError,
)
from tikv_pd.oracle import compose_ts
from tikv_txn import LOCK_NO_WAIT, AsyncTransaction, AsyncTransactionClient
from tikv_txn.membuffer import FlagsOp
from tikv_txn.policy import MANAGED_LOCK_TTL_MS

_ids = itertools.count()
MAX_TS = (1 << 63) - 1
NO_HANG = 60.0
TWO_PC = TransactionOptions(async_commit=False, try_one_pc=False)
PESSIMISTIC = TransactionOptions(mode="pessimistic", async_commit=False, try_one_pc=False)


@pytest.fixture
def p() -> bytes:
    return b"\xd0tp%04d/" % next(_ids)


def lock_on(cluster: MockCluster, key: bytes) -> object | None:
    found = [lk for lk in cluster.engine.scan_lock(MAX_TS) if lk.key == key]
    return found[0] if found else None


def locked(cluster: MockCluster, key: bytes) -> bool:
    return lock_on(cluster, key) is not None


async def poll(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + NO_HANG
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def read(client: AsyncTransactionClient, keys: list[bytes]) -> dict[bytes, bytes]:
    return await client.snapshot(await client.current_timestamp()).batch_get(keys)


def insert_then_delete(txn: AsyncTransaction, key: bytes, value: bytes) -> None:
    """TiDB's insert-then-delete of a row: the key is presumed absent, then deleted
    (client-go ``SetWithFlags(SetPresumeKeyNotExists)`` then ``Delete``)."""
    txn.buffer.set(key, value, FlagsOp.SET_PRESUME_KEY_NOT_EXISTS)
    txn.delete(key)


# -- deleting your own writes ----------------------------------------------------------------


@pytest.fixture
async def ttl_client(cluster: MockCluster) -> AsyncIterator[AsyncTransactionClient]:
    """A client that keeps every transaction's primary alive (TTLRefreshedTxnSize 0)."""
    config = Config(ttl_refreshed_txn_size=0)
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints, config=config) as c:
        yield c


@pytest.mark.parametrize("deleted_first", [False, True], ids=["deleted-second", "deleted-first"])
async def test_delete_your_writes_ttl(
    ttl_client: AsyncTransactionClient, cluster: MockCluster, p: bytes, deleted_first: bool
) -> None:
    """An inserted-then-deleted key is only checked (CHECK_NOT_EXISTS, no lock): it must
    not be the primary, whose lock the heartbeat keeps alive."""
    client = ttl_client
    deleted, written = (p + b"a", p + b"b") if deleted_first else (p + b"b", p + b"a")
    txn = await client.begin(TWO_PC)
    insert_then_delete(txn, deleted, b"\x00")
    txn.put(written, b"\x01")
    committer = txn._new_committer()
    assert await committer.prepare()
    assert committer.primary == written
    await committer.prewrite()
    assert committer.heartbeat_running
    assert locked(cluster, written) and not locked(cluster, deleted)
    await committer.get_commit_ts()
    await committer.commit_primary()
    committer.stop_heartbeat()
    assert await read(client, [deleted, written]) == {written: b"\x01"}


async def test_delete_your_write_does_not_make_a_ghost_primary(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """k1 inserted and deleted (first key), k2 and k3 written, each in its own region;
    while k3's commit is held, a reader of k3 resolves its lock from the real primary
    (committed) and reads the value instead of rolling the transaction back."""
    k1, k2, k3 = p + b"a", p + b"b", p + b"c"
    cluster.split([k2, k3], txn=True)
    region3 = cluster.region_by_key(k3, txn=True)
    assert region3 is not None
    hold = cluster.faults.add("KvCommit", region=region3.id, hang=True)
    try:
        txn = await client.begin(TWO_PC)
        insert_then_delete(txn, k1, b"\x00")
        txn.put(k2, b"\x01")
        txn.put(k3, b"\x02")
        await txn.commit()  # the primary is committed; k3's commit hangs in the background
        assert await asyncio.to_thread(cluster.faults.wait_hanging, 1, NO_HANG)
        lock = lock_on(cluster, k3)
        assert lock is not None and lock.primary_lock == k2  # type: ignore[attr-defined]
        reader = await client.begin(TWO_PC)
        assert await reader.get(k3) == b"\x02"
        await reader.rollback()
    finally:
        hold.release()  # a fault that fired its last time is no longer registered
        cluster.faults.remove(hold)
    assert await client.runtime.wait_background(NO_HANG)
    assert await read(client, [k1, k2, k3]) == {k2: b"\x01", k3: b"\x02"}


async def test_delete_all_your_writes(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    keys = [p + b"a", p + b"b", p + b"c"]
    txn = await client.begin(TWO_PC)
    for i, key in enumerate(keys):
        insert_then_delete(txn, key, bytes([i]))
    await txn.commit()  # only existence checks: nothing to lock, nothing to commit
    assert not any(locked(cluster, k) for k in keys)
    assert await read(client, keys) == {}


async def test_delete_all_your_writes_with_select_for_update(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """k1 inserted and deleted, k2 and k3 locked for update (optimistic LOCK mutations):
    the primary is k2, so a writer meeting k3's lock sees k2 as its primary."""
    k1, k2, k3 = p + b"a", p + b"b", p + b"c"
    cluster.split([k3], txn=True)
    region3 = cluster.region_by_key(k3, txn=True)
    assert region3 is not None
    # Only t1's commit of k3 (the first KvCommit there) is held: the writer's passes.
    hold = cluster.faults.add("KvCommit", region=region3.id, hang=True, times=1)
    try:
        txn = await client.begin(TWO_PC)
        insert_then_delete(txn, k1, b"\x00")
        await txn.lock_keys([k2, k3])
        await txn.commit()
        assert await asyncio.to_thread(cluster.faults.wait_hanging, 1, NO_HANG)
        lock = lock_on(cluster, k3)
        assert lock is not None
        assert lock.primary_lock == k2  # type: ignore[attr-defined]
        assert lock.lock_type is Op.LOCK  # type: ignore[attr-defined]
        writer = await client.begin(TWO_PC)
        writer.put(k3, b"\x21")
        await writer.commit()  # resolves the committed LOCK and writes
    finally:
        hold.release()  # a fault that fired its last time is no longer registered
        cluster.faults.remove(hold)
    assert await client.runtime.wait_background(NO_HANG)
    assert await read(client, [k1, k2, k3]) == {k3: b"\x21"}


# -- conflicts, rollbacks, illegal timestamps ------------------------------------------------


async def test_commit_rollback(client: AsyncTransactionClient, p: bytes) -> None:
    """A write conflict on one key leaves every key as it was (TestCommitRollback)."""
    a, b, c = p + b"a", p + b"b", p + b"c"
    async with client.begin() as seed:
        for k in (a, b, c):
            seed.put(k, k[-1:])
    txn = await client.begin(TWO_PC)
    for k in (a, b, c):
        txn.put(k, k[-1:] + b"1")
    async with client.begin() as other:
        other.put(c, b"c2")
    with pytest.raises(WriteConflictError):
        await txn.commit()
    assert await client.runtime.wait_background(NO_HANG)
    assert await read(client, [a, b, c]) == {a: b"a", b: b"b", c: b"c2"}


async def test_prewrite_primary_key_failed(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """A transaction older than a committed write fails on its primary; its other key
    is rolled back, a second cleanup is harmless, and the key can be written again."""
    a, b = p + b"a", p + b"b"
    t1 = await client.begin(TWO_PC)
    t1.put(a, b"a1")
    await t1.commit()
    t2 = await client.begin(TransactionOptions(start_ts=t1.start_ts - 1, async_commit=False))
    t2.put(a, b"a2")
    t2.put(b, b"b2")
    with pytest.raises(WriteConflictError):
        await t2.commit()
    assert await client.runtime.wait_background(NO_HANG)
    assert await read(client, [a, b]) == {a: b"a1"}
    assert not locked(cluster, b)
    # Clean up a second time (rollback records already there): no error.
    retry = await client.begin(TransactionOptions(start_ts=t2.start_ts, async_commit=False))
    retry.put(a, b"a2")
    retry.put(b, b"b2")
    committer = retry._new_committer()
    assert await committer.prepare()
    await committer.cleanup()
    assert await read(client, [a, b]) == {a: b"a1"}
    async with client.begin() as t3:
        t3.put(a, b"a3")
    assert await read(client, [a]) == {a: b"a3"}


async def test_commit_before_prewrite_is_refused(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """Cleaned up before its prewrite (a resolver got there first): the prewrite meets
    its own rollback record and fails; nothing is written (TestCommitBeforePrewrite)."""
    key = p + b"a"
    txn = await client.begin(TWO_PC)
    txn.put(key, b"a1")
    committer = txn._new_committer()
    assert await committer.prepare()
    await committer.cleanup()
    with pytest.raises(WriteConflictError) as info:
        await committer.prewrite()
    assert info.value.conflict_start_ts == txn.start_ts  # its own rollback
    assert not locked(cluster, key)
    assert await read(client, [key]) == {}


async def test_illegal_start_ts(client: AsyncTransactionClient, p: bytes) -> None:
    """A start ts beyond every TSO cannot commit (TestIllegalTso)."""
    txn = await client.begin(TransactionOptions(start_ts=MAX_TS, async_commit=False))
    txn.put(p + b"name", b"aa")
    txn.put(p + b"age", b"12")
    with pytest.raises(TiKVError):
        await txn.commit()
    assert await client.runtime.wait_background(NO_HANG)
    assert await read(client, [p + b"name", p + b"age"]) == {}


async def test_prewrite_txn_size_is_per_region(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """Each lock records how many keys its transaction has in its region (TestPrewriteTxnSize)."""
    keys = [p + bytes([i]) for i in range(50, 120)]
    cluster.split([p + bytes([100])], txn=True)
    txn = await client.begin(TWO_PC)
    for key in keys:
        txn.put(key, bytes(1024))
    committer = txn._new_committer()
    assert await committer.prepare()
    await committer.prewrite()
    sizes = [lock_on(cluster, k).txn_size for k in keys]  # type: ignore[union-attr]
    assert sizes == [50] * 50 + [20] * 20
    await committer.cleanup()


async def test_prewrite_failure_cleans_up_other_regions(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """a (primary), b and c in three regions; b conflicts. The commit fails and c's lock,
    prewritten (held until b's failure) or not, is rolled back (TestPrewriteCancel)."""
    a, b, c = p + b"a", p + b"b", p + b"c"
    cluster.split([b, c], txn=True)
    region_c = cluster.region_by_key(c, txn=True)
    assert region_c is not None
    t1 = await client.begin(TWO_PC)
    async with client.begin() as t2:
        t2.put(b, b"b2")
    hold = cluster.faults.add("KvPrewrite", region=region_c.id, hang=True, times=1)
    try:
        for k in (a, b, c):
            t1.put(k, k[-1:] + b"1")
        commit = asyncio.ensure_future(t1.commit())
        assert await asyncio.to_thread(cluster.faults.wait_hanging, 1, NO_HANG)
        with pytest.raises(WriteConflictError):
            await asyncio.wait_for(asyncio.shield(commit), NO_HANG)
    finally:
        hold.release()
        cluster.faults.remove(hold)
    # The held prewrite of c lands after the failure; the cleanup (sent after it) or the
    # next reader removes it: no lock of t1 stays.
    assert await client.runtime.wait_background(NO_HANG)
    await poll(lambda: not any(locked(cluster, k) for k in (a, b, c)), "t1's locks to go")
    assert await read(client, [a, b, c]) == {b: b"b2"}


async def test_cancelled_commit_before_prewrite_writes_nothing(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """TestContextCancel: a commit cancelled before prewrite sends nothing."""
    a, b = p + b"a", p + b"b"
    region = cluster.region_by_key(a, txn=True)
    assert region is not None
    hold = cluster.faults.add("KvPrewrite", region=region.id, hang=True, times=1)
    try:
        txn = await client.begin(TWO_PC)
        txn.put(a, b"a1")
        txn.put(b, b"b1")
        commit = asyncio.ensure_future(txn.commit())
        assert await asyncio.to_thread(cluster.faults.wait_hanging, 1, NO_HANG)
        commit.cancel()
        with pytest.raises(asyncio.CancelledError):
            await commit
    finally:
        hold.release()
        cluster.faults.remove(hold)
    assert txn.state == "failed"
    # A 2PC prewrite cancelled in flight is rolled back (its cleanup runs after it).
    assert await client.runtime.wait_background(NO_HANG)
    await poll(lambda: not locked(cluster, a) and not locked(cluster, b), "the rollback")
    assert await read(client, [a, b]) == {}


async def test_secondaries_commit_after_the_caller_went_away(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """TestContextCancel2: once commit returned, the secondaries' commit belongs to the
    client, not to the caller's task: it finishes even if that task is cancelled."""
    a, b = p + b"a", p + b"b"
    cluster.split([b], txn=True)

    async def commit() -> int:
        txn = await client.begin(TWO_PC)
        txn.put(a, b"a")
        txn.put(b, b"b")
        return await txn.commit()

    task = asyncio.ensure_future(commit())
    await task
    task.cancel()  # nothing left to cancel in the caller
    await poll(lambda: not locked(cluster, b), "the secondary's commit")
    assert await read(client, [a, b]) == {a: b"a", b: b"b"}


# -- TestElapsedTTL -------------------------------------------------------------------------------


async def test_pessimistic_lock_ttl_counts_local_time_not_ts_time(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """A start ts whose physical time is ahead of the local clock (10 s) must not inflate
    or break the lock TTL: it is ManagedLockTTL plus the time elapsed locally."""
    key = p + b"key"
    now_ms = cluster.clock.now_ms()
    start_ts = compose_ts(now_ms + 10_000, 1)
    before = time.monotonic()
    txn = await client.begin(TransactionOptions(mode="pessimistic", start_ts=start_ts))
    await txn.lock_keys([key])
    elapsed_max = int((time.monotonic() - before) * 1000) + 1
    lock = lock_on(cluster, key)
    assert lock is not None
    extra = lock.lock_ttl - client.config.managed_lock_ttl_ms  # type: ignore[attr-defined]
    assert 0 <= extra <= elapsed_max
    assert client.config.managed_lock_ttl_ms == MANAGED_LOCK_TTL_MS
    await txn.rollback()
    assert not locked(cluster, key)


# -- aggressive locking ---------------------------------------------------------------------------


def _primary_of(cluster: MockCluster, key: bytes) -> bytes:
    lock = lock_on(cluster, key)
    assert lock is not None, key
    assert lock.lock_type is Op.PESSIMISTIC_LOCK  # type: ignore[attr-defined]
    return lock.primary_lock  # type: ignore[attr-defined, no-any-return]


async def test_aggressive_locking_switch_primary(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    def k(i: int) -> bytes:
        return p + b"k%d" % i

    async def unlocked(*keys: bytes) -> None:
        await poll(lambda: not any(locked(cluster, key) for key in keys), f"{keys} released")

    txn = await client.begin(PESSIMISTIC)
    txn.start_aggressive_locking()
    await txn.lock_keys([k(1)])
    await txn.lock_keys([k(2)])
    assert (_primary_of(cluster, k(1)), _primary_of(cluster, k(2))) == (k(1), k(1))
    # The primary is locked again: unchanged.
    await txn.retry_aggressive_locking()
    await txn.lock_keys([k(1)])
    await txn.lock_keys([k(3)])
    assert (_primary_of(cluster, k(1)), _primary_of(cluster, k(3))) == (k(1), k(1))
    # A new primary, not locked before; the keys the last attempt did not lock again go.
    await txn.retry_aggressive_locking()
    await txn.lock_keys([k(4)])
    await txn.lock_keys([k(5)])
    assert (_primary_of(cluster, k(4)), _primary_of(cluster, k(5))) == (k(4), k(4))
    await unlocked(k(2))
    # A new primary among the keys locked before.
    await txn.retry_aggressive_locking()
    await txn.lock_keys([k(5)])
    await txn.lock_keys([k(6)])
    assert (_primary_of(cluster, k(5)), _primary_of(cluster, k(6))) == (k(5), k(5))
    await unlocked(k(1), k(3))
    # The primary was locked two attempts ago.
    await txn.retry_aggressive_locking()
    await txn.lock_keys([k(7)])
    await txn.retry_aggressive_locking()
    await txn.lock_keys([k(6)])
    await txn.lock_keys([k(5)])
    assert (_primary_of(cluster, k(5)), _primary_of(cluster, k(6))) == (k(6), k(6))
    await txn.cancel_aggressive_locking()
    await unlocked(*(k(i) for i in range(1, 8)))
    await txn.rollback()

    # A primary chosen before aggressive locking stays the primary.
    txn = await client.begin(PESSIMISTIC)
    await txn.lock_keys([k(1), k(2)])
    assert (_primary_of(cluster, k(1)), _primary_of(cluster, k(2))) == (k(1), k(1))
    txn.start_aggressive_locking()
    await txn.lock_keys([k(2)])
    await txn.lock_keys([k(3)])
    assert (_primary_of(cluster, k(2)), _primary_of(cluster, k(3))) == (k(1), k(1))
    await txn.retry_aggressive_locking()
    await txn.lock_keys([k(3)])
    await txn.lock_keys([k(4)])
    assert (_primary_of(cluster, k(3)), _primary_of(cluster, k(4))) == (k(1), k(1))
    await txn.cancel_aggressive_locking()
    await unlocked(k(3), k(4))
    assert locked(cluster, k(1)) and locked(cluster, k(2))
    await txn.rollback()
    await unlocked(k(1), k(2))


def _heartbeat(txn: AsyncTransaction) -> bool:
    committer = txn._committer
    return committer is not None and committer.heartbeat_running


async def test_aggressive_locking_resets_the_ttl_manager(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    k1 = p + b"k1"
    # Not blocked.
    txn = await client.begin(PESSIMISTIC)
    txn.start_aggressive_locking()
    assert txn.in_aggressive_locking and not _heartbeat(txn)
    await txn.lock_keys([k1])
    assert _heartbeat(txn)
    await txn.cancel_aggressive_locking()
    assert not txn.in_aggressive_locking and not _heartbeat(txn)
    await txn.rollback()

    # Blocked by txn2, then locked with conflict when txn2 commits.
    txn = await client.begin(PESSIMISTIC)
    txn.start_aggressive_locking()
    txn2 = await client.begin(PESSIMISTIC)
    await txn2.lock_keys([k1])
    before = txn.locker.stats["lock_requests"]
    waiting = asyncio.ensure_future(txn.lock_keys([k1]))
    await poll(lambda: txn.locker.stats["lock_requests"] > before or waiting.done(), "the wait")
    assert not waiting.done()
    txn2.put(k1, b"v1")
    await txn2.commit()
    await asyncio.wait_for(waiting, NO_HANG)
    # Locked with conflict: the lock's for-update ts is txn2's commit ts, past txn's start.
    lock = lock_on(cluster, k1)
    assert lock is not None
    assert lock.lock_for_update_ts == txn2.commit_ts > txn.start_ts  # type: ignore[attr-defined]
    assert _heartbeat(txn)
    await txn.retry_aggressive_locking()
    assert _heartbeat(txn)  # the primary may be locked again: kept alive meanwhile
    await txn.lock_keys([k1])
    assert _heartbeat(txn)
    await txn.cancel_aggressive_locking()
    assert not _heartbeat(txn)
    assert txn.locker.locked_count == 0
    await txn.rollback()
    await poll(lambda: not locked(cluster, k1), "k1 released")


@pytest.mark.parametrize(
    ("retried", "primary_changed"),
    [(False, False), (True, False), (True, True)],
    ids=["first", "retried", "retried-new-primary"],
)
async def test_aggressive_locking_keeps_locks_alive_after_done(
    client: AsyncTransactionClient,
    cluster: MockCluster,
    p: bytes,
    retried: bool,
    primary_changed: bool,
) -> None:
    k0, k1, k2 = p + b"k0", p + b"k1", p + b"k2"
    txn = await client.begin(PESSIMISTIC)
    txn.start_aggressive_locking()
    if retried:
        last = k0 if primary_changed else k1
        await txn.lock_keys([last])
        assert txn.locker.primary == last
        await txn.retry_aggressive_locking()
    await txn.lock_keys([k1])
    assert txn.in_aggressive_locking and _heartbeat(txn)
    assert txn.locker.primary == k1
    await txn.lock_keys([k2])
    assert txn.locker.primary == k1 and _heartbeat(txn)
    await txn.done_aggressive_locking()
    assert _heartbeat(txn)
    other = await client.begin(dataclasses.replace(PESSIMISTIC, lock_wait_timeout_ms=100))
    for key in (k1, k2):
        with pytest.raises(LockWaitTimeoutError):
            await other.lock_keys([key])
    await other.rollback()
    await txn.rollback()
    await poll(lambda: not any(locked(cluster, k) for k in (k0, k1, k2)), "released")


@pytest.mark.parametrize("done", [False, True], ids=["cancel", "done"])
@pytest.mark.parametrize("exit_phase", ["enter", "first-lock", "retry", "second-lock"])
@pytest.mark.parametrize("retry_other_key", [False, True], ids=["same-key", "other-key"])
async def test_aggressive_locking_resets_primary_and_ttl_manager_after_exit(
    client: AsyncTransactionClient,
    cluster: MockCluster,
    p: bytes,
    done: bool,
    exit_phase: str,
    retry_other_key: bool,
) -> None:
    k1, k2 = p + b"k1", p + b"k2"
    txn = await client.begin(PESSIMISTIC)
    txn.start_aggressive_locking()
    assert txn.in_aggressive_locking and not _heartbeat(txn)

    async def leave() -> None:
        if done:
            await txn.done_aggressive_locking()
        else:
            await txn.cancel_aggressive_locking()
        assert not txn.in_aggressive_locking

    try:
        if exit_phase == "enter":
            await leave()
            assert txn.locker.locked_count == 0 and not _heartbeat(txn)
            return
        await txn.lock_keys([k1])
        assert _heartbeat(txn) and txn.locker.locked_count == 1
        if exit_phase == "first-lock":
            await leave()
            assert _heartbeat(txn) is done
            assert txn.locker.locked_count == (1 if done else 0)
            return
        await txn.retry_aggressive_locking()
        if exit_phase == "retry":
            await leave()
            assert txn.locker.locked_count == 0 and not _heartbeat(txn)
            return
        key = k2 if retry_other_key else k1
        await txn.lock_keys([key])
        assert _heartbeat(txn) and txn.locker.primary == key
        # A key of the last attempt not locked again is released only when the attempt
        # ends (retry / done / cancel).
        assert txn.locker.locked_count == (2 if retry_other_key else 1)
        await leave()
        assert _heartbeat(txn) is done
        assert txn.locker.locked_count == (1 if done else 0)
    finally:
        await txn.rollback()
        await poll(lambda: not locked(cluster, k1) and not locked(cluster, k2), "released")


async def test_pessimistic_locked_keys_are_counted_once(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """TestPessimisticLockedKeysDedup: locking the same keys again holds them once."""
    keys = [p + b"abc", p + b"def"]
    txn = await client.begin(PESSIMISTIC)
    await txn.lock_keys(keys)
    await txn.lock_keys(keys)
    assert txn.locker.locked_count == 2
    assert sorted(lk.key for lk in cluster.engine.scan_lock(MAX_TS) if p in lk.key) == keys
    await txn.rollback()
    await poll(lambda: not any(locked(cluster, k) for k in keys), "released")


async def test_commit_dead_lock(
    ttl_client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """TestCommitDeadLock: two transactions write k1 and k2 (two regions) with crossing
    primaries, their locks kept alive by heartbeats. Neither may wait for the other
    forever: exactly one commits, the other fails with a write conflict."""
    client = ttl_client
    k1, k2 = p + b"a_k1", p + b"y_k2"
    cluster.split([p + b"m"], txn=True)
    t1 = await client.begin(TWO_PC)
    t2 = await client.begin(TWO_PC)
    t1.put(k1, b"t1")  # primary k1 (first key)
    t1.put(k2, b"t1")
    t2.put(k1, b"t2")
    t2.put(k2, b"t2")
    c2 = t2._get_committer()
    assert await c2.prepare()
    c2.primary = k2  # crossing primaries (client-go SetPrimaryKey)
    c2.batches.sort(key=lambda b: k2 not in [m.key for m in b.items])
    outcomes = await asyncio.wait_for(
        asyncio.gather(t1.commit(), c2.execute(), return_exceptions=True), NO_HANG
    )
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failed) == 1, outcomes
    assert isinstance(failed[0], WriteConflictError)
    winner = b"t1" if not isinstance(outcomes[0], BaseException) else b"t2"
    assert await client.runtime.wait_background(NO_HANG)
    assert await read(client, [k1, k2]) == {k1: winner, k2: winner}


async def test_retried_lock_request_gets_a_fresh_ttl(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """TestRetryPushTTL: a lock taken after waiting gets ManagedLockTTL plus the time the
    transaction has lived *at that attempt*, not at its first attempt; otherwise a lock
    taken after a long wait would look expired almost at once."""
    k = p + b"k"
    holder = await client.begin(PESSIMISTIC)
    await holder.lock_keys([k])
    began = time.monotonic()  # before the waiter starts: its TTL counts from its start
    waiter = await client.begin(PESSIMISTIC)
    before = waiter.locker.stats["lock_requests"]
    task = asyncio.ensure_future(waiter.lock_keys([k]))
    await poll(lambda: waiter.locker.stats["lock_requests"] > before or task.done(), "the wait")
    assert not task.done()
    first_attempt_ms = int((time.monotonic() - began) * 1000)  # its TTL was computed before
    # TiKV answers a waiting lock request after at most 1 s and the client asks again:
    # wait for that second attempt, so the wait visibly outlasts the first one.
    await poll(lambda: waiter.locker.stats["lock_requests"] > before + 1, "a second attempt")
    await holder.rollback()
    await asyncio.wait_for(task, NO_HANG)
    total_ms = int((time.monotonic() - began) * 1000) + 1
    lock = lock_on(cluster, k)
    assert lock is not None
    extra = lock.lock_ttl - client.config.managed_lock_ttl_ms  # type: ignore[attr-defined]
    # Taken by a later attempt (sent after TiKV's wait of up to 1 s): its TTL counts that
    # wait; a TTL fixed at the first attempt would count only first_attempt_ms.
    assert first_attempt_ms + 500 <= extra <= total_ms
    await waiter.rollback()
    await poll(lambda: not locked(cluster, k), "released")


# -- TestFailCommitPrimary* / TestFailWithUndeterminedResult ------------------------------------


async def _commit_with_primary_commit_fault(
    client: AsyncTransactionClient, cluster: MockCluster, key: bytes, **fault: object
) -> tuple[AsyncTransaction, BaseException | None]:
    region = cluster.region_by_key(key, txn=True)
    assert region is not None
    injected = cluster.faults.add("KvCommit", region=region.id, **fault)  # type: ignore[arg-type]
    try:
        txn = await client.begin(TWO_PC)
        txn.put(key, b"v1")
        try:
            await asyncio.wait_for(txn.commit(), NO_HANG)
        except TiKVError as exc:
            return txn, exc
        return txn, None
    finally:
        injected.release()
        cluster.faults.remove(injected)


async def test_lost_primary_commit_answers_are_undetermined(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """TestFailCommitPrimaryRpcErrors: every answer lost -> UndeterminedError, and the
    transaction is closed (no rollback to call)."""
    client.runtime.budgets.commit = 300
    txn, exc = await _commit_with_primary_commit_fault(
        client, cluster, p + b"a", status=grpc.StatusCode.UNAVAILABLE
    )
    assert isinstance(exc, UndeterminedError), exc
    assert txn.undetermined_error is exc
    with pytest.raises(TransactionClosedError):
        await txn.rollback()


async def test_region_errors_on_the_primary_commit_are_not_undetermined(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """TestFailCommitPrimaryRegionError: a region error means the request was not applied;
    running out of retries on them is a plain failure, not an unknown outcome."""
    client.runtime.budgets.commit = 300
    txn, exc = await _commit_with_primary_commit_fault(
        client, cluster, p + b"b", region_error="not_leader"
    )
    assert exc is not None and not isinstance(exc, UndeterminedError), exc
    assert txn.undetermined_error is None


async def test_lost_answer_then_region_errors_is_undetermined(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """TestFailCommitPrimaryRPCErrorThenRegionError: once an answer was lost, later
    region errors cannot tell whether the first request was applied."""
    client.runtime.budgets.commit = 300
    key = p + b"c"
    region = cluster.region_by_key(key, txn=True)
    assert region is not None
    lost = cluster.faults.add(
        "KvCommit", region=region.id, status=grpc.StatusCode.UNAVAILABLE, times=1
    )
    try:
        txn, exc = await _commit_with_primary_commit_fault(
            client, cluster, key, region_error="not_leader"
        )
    finally:
        cluster.faults.remove(lost)
    assert isinstance(exc, UndeterminedError), exc
    assert txn.undetermined_error is exc


async def test_key_error_on_the_primary_commit_is_determined(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """TestFailCommitPrimaryKeyError: the primary lock was rolled back (by a resolver)
    before the commit: TxnLockNotFound, a definite failure."""
    key = p + b"d"
    txn = await client.begin(TWO_PC)
    txn.put(key, b"v1")
    committer = txn._new_committer()
    assert await committer.prepare()
    await committer.prewrite()
    cluster.engine.batch_rollback([key], txn.start_ts)
    await committer.get_commit_ts()
    with pytest.raises(TxnLockNotFoundError):
        await committer.commit_primary()
    assert await read(client, [key]) == {}


async def test_lost_answer_then_key_error_is_determined(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """TestFailCommitPrimaryRPCErrorThenKeyError: the first commit's answer is lost, and
    the retry finds the lock rolled back. Had the first commit been applied the retry
    would have found the commit record (commit is idempotent), so the key error settles
    it: the transaction failed, nothing is undetermined."""
    key = p + b"e"
    region = cluster.region_by_key(key, txn=True)
    assert region is not None
    txn = await client.begin(TWO_PC)
    txn.put(key, b"v1")
    hold = cluster.faults.add(
        "KvCommit", region=region.id, hang=True, times=1, status=grpc.StatusCode.UNAVAILABLE
    )
    try:
        commit = asyncio.ensure_future(txn.commit())
        assert await asyncio.to_thread(cluster.faults.wait_hanging, 1, NO_HANG)
        cluster.engine.batch_rollback([key], txn.start_ts)  # a resolver rolled it back
    finally:
        hold.release()
        cluster.faults.remove(hold)
    with pytest.raises(TiKVError) as info:
        await asyncio.wait_for(commit, NO_HANG)
    assert isinstance(info.value, TxnLockNotFoundError), info.value
    assert txn.undetermined_error is None
    assert await read(client, [key]) == {}


async def test_lost_prewrite_answer_of_2pc_is_retried(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """TestFailWithUndeterminedResult, first half: a 2PC prewrite whose answer was lost
    is simply sent again (prewrite is idempotent and decides nothing) and the commit
    succeeds."""
    key = p + b"f"
    region = cluster.region_by_key(key, txn=True)
    assert region is not None
    lost = cluster.faults.add(
        "KvPrewrite", region=region.id, status=grpc.StatusCode.UNAVAILABLE, times=1
    )
    try:
        txn = await client.begin(TWO_PC)
        txn.put(key, b"value")
        await asyncio.wait_for(txn.commit(), NO_HANG)
    finally:
        cluster.faults.remove(lost)
    assert lost.hits == 1
    assert txn.undetermined_error is None
    assert await read(client, [key]) == {key: b"value"}


# -- TestAggressiveLockingInsert / TestAggressiveLockingLockOnlyIfExists -------------------------


async def test_aggressive_locking_insert(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """Inserts while aggressive locking is on: an existing key fails with KeyExistsError
    whether it was locked before (the lock said it exists) or is locked now (TiKV checks
    the NotExist assertion); a key another transaction wrote after the start is checked
    at a newer for-update ts (client-go reports WriteConflict and TiDB retries the
    statement; the locker retries itself, so the final answer is the key's existence)."""

    def k(i: int) -> bytes:
        return p + b"k%d" % i

    async with client.begin(TWO_PC) as t0:
        for i in (1, 3, 6, 8):
            t0.put(k(i), b"v%d" % i)
    txn = await client.begin(PESSIMISTIC)
    assert await txn.batch_get_for_update([k(1), k(2)]) == {k(1): b"v1"}
    txn.put(k(5), b"v5")
    txn.delete(k(6))
    await txn.lock_pending_writes()

    async def insert(key: bytes) -> None:
        txn.insert(key, b"new")
        await txn.lock_pending_writes()

    txn.start_aggressive_locking()
    with pytest.raises(KeyExistsError):
        await insert(k(1))  # locked before, known to exist
    await insert(k(2))  # locked before, known absent
    with pytest.raises(KeyExistsError):
        await insert(k(3))
    await insert(k(4))
    async with client.begin(TWO_PC) as t2:
        t2.put(k(7), b"v7")
        t2.delete(k(8))
    with pytest.raises(KeyExistsError):
        await insert(k(7))
    await insert(k(8))  # deleted after the start: locked (with conflict), absent
    lock = lock_on(cluster, k(8))
    assert lock is not None and lock.lock_for_update_ts >= t2.commit_ts  # type: ignore[attr-defined]
    await txn.cancel_aggressive_locking()
    await txn.rollback()
    await poll(lambda: not any(locked(cluster, k(i)) for i in range(1, 9)), "released")
    assert await read(client, [k(i) for i in range(1, 9)]) == {
        k(1): b"v1",
        k(3): b"v3",
        k(6): b"v6",
        k(7): b"v7",
    }


async def test_aggressive_locking_lock_only_if_exists(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    k1 = p + b"k1"
    # The key was written after the start: locked with conflict, its newest value read.
    txn = await client.begin(PESSIMISTIC)
    async with client.begin(TWO_PC) as t0:
        t0.put(k1, b"v1")
    txn.start_aggressive_locking()
    assert await txn.get_for_update(k1, lock_only_if_exists=True) == b"v1"
    lock = lock_on(cluster, k1)
    assert lock is not None and lock.lock_for_update_ts >= t0.commit_ts  # type: ignore[attr-defined]
    await txn.cancel_aggressive_locking()
    await txn.rollback()
    await poll(lambda: not locked(cluster, k1), "released")
    # The key was deleted after the start: nothing to lock, nothing returned.
    txn = await client.begin(PESSIMISTIC)
    async with client.begin(TWO_PC) as t0:
        t0.delete(k1)
    txn.start_aggressive_locking()
    assert await txn.get_for_update(k1, lock_only_if_exists=True) is None
    assert not locked(cluster, k1)
    await txn.cancel_aggressive_locking()
    await txn.rollback()


async def test_heartbeat_follows_the_primary_after_a_failed_first_lock(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """TestStartHeartBeatAfterLockingPrimary: the first lock call (a, b) locks its primary
    a, then fails on b (held by another transaction, no wait). a is released and the
    transaction has no primary again; the next lock call (c, d) makes c the primary, and
    the heartbeat keeps c alive (a is not kept alive)."""
    a, b, c, d = (p + n for n in (b"a", b"b", b"c", b"d"))
    cluster.split([b], txn=True)  # the primary's region is locked first, then b's
    other = await client.begin(PESSIMISTIC)
    await other.lock_keys([b])
    txn = await client.begin(PESSIMISTIC)
    with pytest.raises(TiKVError):
        await txn.lock_keys([a, b], lock_wait_timeout_ms=LOCK_NO_WAIT)
    assert txn.locker.primary is None
    await poll(lambda: not locked(cluster, a), "a released")
    await txn.lock_keys([c, d])
    assert txn.locker.primary == c
    assert _heartbeat(txn)
    committer = txn._committer
    assert committer is not None and committer.primary == c
    assert _primary_of(cluster, c) == c and _primary_of(cluster, d) == c
    await txn.rollback()
    await other.rollback()
    await poll(lambda: not any(locked(cluster, k) for k in (a, b, c, d)), "released")


@pytest.mark.parametrize("conflict", [False, True], ids=["no-conflict", "written-after-start"])
async def test_aggressive_locking_load_value_option_changes(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes, conflict: bool
) -> None:
    """TestAggressiveLockingLoadValueOptionChanges: a retried attempt that locks the same
    keys again may reuse the last attempt's locks, but not the last attempt's *answers*
    when it asks for more: existence after a plain lock, values after an existence
    check must be fetched, and must be the newest."""
    k0, k1, k2 = p + b"k0", p + b"k1", p + b"k2"
    async with client.begin(TWO_PC) as t0:
        t0.put(k2, b"v2")
    txn = await client.begin(PESSIMISTIC)
    await txn.lock_keys([k0])  # a fixed primary
    txn.start_aggressive_locking()
    if conflict:
        async with client.begin(TWO_PC) as t2:
            t2.delete(k1)
            t2.put(k2, b"v2-new")
    newest = b"v2-new" if conflict else b"v2"
    await txn.lock_keys([k1])
    await txn.lock_keys([k2])
    await txn.retry_aggressive_locking()
    assert await txn.check_exists_for_update([k1]) == {k1: False}
    assert await txn.check_exists_for_update([k2]) == {k2: True}
    await txn.retry_aggressive_locking()
    assert await txn.get_for_update(k1) is None
    assert await txn.get_for_update(k2) == newest
    await txn.cancel_aggressive_locking()
    assert locked(cluster, k0)
    await txn.rollback()
    await poll(lambda: not any(locked(cluster, k) for k in (k0, k1, k2)), "released")


@pytest.mark.parametrize("ask", ["lock", "exists", "value"])
@pytest.mark.parametrize("conflict", [False, True], ids=["no-conflict", "written-after-start"])
async def test_aggressive_lock_answers_are_the_newest(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes, ask: str, conflict: bool
) -> None:
    """TestPessimisticLockAllowLockWithConflict: under aggressive locking a plain lock,
    an existence check and a value read all lock the key and answer with its newest
    state, also when it was written after the transaction started."""
    key = p + b"key"
    async with client.begin(TWO_PC) as t0:
        t0.put(key, key)
    txn = await client.begin(PESSIMISTIC)
    txn.start_aggressive_locking()
    value = key
    if conflict:
        value = b"value-" + ask.encode()
        async with client.begin(TWO_PC) as t1:
            t1.put(key, value)
    if ask == "lock":
        await txn.lock_keys([key])
    elif ask == "exists":
        assert await txn.check_exists_for_update([key]) == {key: True}
    else:
        assert await txn.get_for_update(key) == value
    lock = lock_on(cluster, key)
    assert lock is not None and lock.lock_version == txn.start_ts  # type: ignore[attr-defined]
    if conflict:
        assert lock.lock_for_update_ts >= t1.commit_ts  # type: ignore[attr-defined]
    await txn.done_aggressive_locking()
    await txn.rollback()
    await poll(lambda: not locked(cluster, key), "released")


@pytest.mark.parametrize("ask", ["lock", "exists", "value"])
async def test_aggressive_lock_errors_record_nothing(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes, ask: str
) -> None:
    """TestPessimisticLockAllowLockWithConflictError: a lock wait timeout under
    aggressive locking leaves the key out of the attempt; after the holder is gone, a
    NotLeader answer is retried and the key is locked and recorded."""
    key = p + b"key"
    holder = await client.begin(PESSIMISTIC)
    await holder.lock_keys([key])
    txn = await client.begin(dataclasses.replace(PESSIMISTIC, lock_wait_timeout_ms=10))
    txn.start_aggressive_locking()

    async def call() -> None:
        if ask == "lock":
            await txn.lock_keys([key])
        elif ask == "exists":
            await txn.check_exists_for_update([key])
        else:
            await txn.get_for_update(key)

    def attempt_keys() -> list[bytes]:
        aggr = txn.locker._aggr
        assert aggr is not None
        return list(aggr.current)

    with pytest.raises(LockWaitTimeoutError):
        await call()
    assert attempt_keys() == []
    await holder.rollback()
    region = cluster.region_by_key(key, txn=True)
    assert region is not None
    fault = cluster.faults.add(
        "KvPessimisticLock", region=region.id, region_error="not_leader", times=1
    )
    try:
        await call()
    finally:
        cluster.faults.remove(fault)
    assert fault.hits == 1
    assert attempt_keys() == [key]
    assert locked(cluster, key)
    await txn.cancel_aggressive_locking()
    await txn.rollback()
    await poll(lambda: not locked(cluster, key), "released")


@pytest.mark.parametrize("opt", ["NotAllowedOnFull", "AllowedOnAlmostFull"])
async def test_disk_full_opt_reaches_prewrite_and_commit(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes, opt: str
) -> None:
    """TestCommitOnTiKVDiskFullOpt, client half: the transaction's disk-full option is in
    the Context of its prewrite and commit (TiKV decides with it whether a write may use
    an almost-full store; the mock does not model full disks)."""
    key = p + b"a"
    txn = await client.begin(dataclasses.replace(TWO_PC, disk_full_opt=opt))  # type: ignore[arg-type]
    txn.put(key, b"a1")
    await txn.commit()
    for method in ("KvPrewrite", "KvCommit"):
        ctx = cluster.counters.last_context(method)
        assert ctx is not None
        assert ctx.disk_full_opt == DISK_FULL_OPTS[opt], method
    assert await read(client, [key]) == {key: b"a1"}


async def test_an_almost_full_store_takes_only_writes_that_allow_it(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """TestCommitOnTiKVDiskFullOpt, server half: a leader whose disk is almost full refuses
    writes with a DiskFull region error unless the request allows an almost-full disk;
    the client retries them (tikvDiskFull backoff) until its budget runs out. An
    already-full store refuses every write. Reads are served throughout."""
    allowed = dataclasses.replace(TWO_PC, disk_full_opt="AllowedOnAlmostFull")
    key, other = p + b"full-a", p + b"full-c"
    region = cluster.region_by_key(key, txn=True)
    assert region is not None and region.leader is not None
    budgets = client.runtime.budgets
    saved = (budgets.prewrite, budgets.cleanup)
    cluster.set_disk_usage(region.leader.store_id, "almost_full")
    try:
        txn = await client.begin(allowed)
        txn.put(key, b"a1")
        await asyncio.wait_for(txn.commit(), NO_HANG)
        assert await read(client, [key]) == {key: b"a1"}

        # Short budgets instead of client-go's 3 s context (the failed commit's cleanup is
        # refused by the full store too).
        budgets.prewrite = budgets.cleanup = 600
        txn = await client.begin(TWO_PC)
        txn.put(other, b"c1")
        with pytest.raises(TiKVError) as info:
            await asyncio.wait_for(txn.commit(), NO_HANG)
        assert "disk full" in str(info.value)
        assert await read(client, [other]) == {}
        assert not locked(cluster, other)

        cluster.set_disk_usage(region.leader.store_id, "already_full")
        txn = await client.begin(allowed)
        txn.put(other, b"c2")
        with pytest.raises(TiKVError) as info:
            await asyncio.wait_for(txn.commit(), NO_HANG)
        assert "disk full" in str(info.value)
        assert await read(client, [key, other]) == {key: b"a1"}
    finally:
        budgets.prewrite, budgets.cleanup = saved
        cluster.set_disk_usage(region.leader.store_id, "normal")
    txn = await client.begin(TWO_PC)
    txn.put(other, b"c3")
    await asyncio.wait_for(txn.commit(), NO_HANG)
    assert await read(client, [key, other]) == {key: b"a1", other: b"c3"}
