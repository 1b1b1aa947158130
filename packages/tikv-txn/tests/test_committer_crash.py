"""The committer under failures: crashes at every step, lost answers, region changes, heartbeats.

A "crash" stops a commit half-way through the committer's steps (prepare / prewrite /
commit primary / commit secondaries, as client-go's test probe does) and abandons it; a
second client then reads: it must see all of the transaction or nothing, resolve the
locks it meets, and never hang. Lock TTLs are made to expire by moving the cluster's
clock (PD timestamps follow it), never by sleeping.
"""

from __future__ import annotations

import asyncio

import pytest
from _txn_helpers import FIRST_BYTES, NO_HANG, expire_locks, prepared, seed
from tikv_mockstore import MockCluster
from tikv_pd.config import Config, TransactionOptions
from tikv_txn import (
    AsyncTransactionClient,
    TxnLockNotFoundError,
    UndeterminedError,
    WriteConflictError,
)
from tikv_txn.committer import TwoPhaseCommitter


@pytest.fixture
def keys(p: bytes) -> list[bytes]:
    """One key per region; the first is the primary."""
    return [f + p + b"k" for f in FIRST_BYTES]


def locked(cluster: MockCluster, keys: list[bytes]) -> list[bytes]:
    return sorted(lock.key for lock in cluster.engine.scan_lock(2**63 - 1) if lock.key in keys)


async def crashing_txn(client: AsyncTransactionClient, keys: list[bytes]) -> TwoPhaseCommitter:
    committer = await prepared(client, keys)
    assert len(committer.batches) == len(keys)  # one region each: primary + 3 secondaries
    return committer


async def read_all(reader: AsyncTransactionClient, keys: list[bytes]) -> dict[bytes, bytes]:
    snap = reader.snapshot(await reader.current_timestamp())
    return await asyncio.wait_for(snap.batch_get(keys), NO_HANG)


async def test_crash_after_prewrite_rolls_back_everything(
    client: AsyncTransactionClient,
    reader: AsyncTransactionClient,
    cluster: MockCluster,
    keys: list[bytes],
) -> None:
    await seed(client, keys)
    committer = await crashing_txn(client, keys)
    await committer.prewrite()
    assert locked(cluster, keys) == sorted(keys)
    await expire_locks(cluster, reader)
    assert await read_all(reader, keys) == dict.fromkeys(keys, b"old")
    assert locked(cluster, keys) == []
    # The primary was rolled back: committing it now must fail, not resurrect it.
    await committer.get_commit_ts()
    with pytest.raises(TxnLockNotFoundError) as info:
        await committer.commit_primary()
    assert info.value.key == keys[0]


async def test_crash_after_primary_commit_commits_everything(
    client: AsyncTransactionClient,
    reader: AsyncTransactionClient,
    cluster: MockCluster,
    keys: list[bytes],
) -> None:
    await seed(client, keys)
    committer = await crashing_txn(client, keys)
    await committer.prewrite()
    await committer.get_commit_ts()
    await committer.commit_primary()
    assert locked(cluster, keys) == sorted(keys[1:])
    # No clock move needed: the primary is committed, so readers commit the rest.
    assert await read_all(reader, keys) == dict.fromkeys(keys, b"new")
    assert locked(cluster, keys) == []
    stats = reader.runtime.resolver.stats
    assert stats["check_txn_status"] >= 1
    assert stats["resolve_lock"] >= 1


async def test_secondary_commit_failures_are_logged_and_readers_finish_the_commit(
    client: AsyncTransactionClient,
    reader: AsyncTransactionClient,
    cluster: MockCluster,
    keys: list[bytes],
) -> None:
    await seed(client, keys)
    region = cluster.region_by_key(keys[2], txn=True)
    assert region is not None
    fault = cluster.faults.add("KvCommit", region=region.id, status="UNAVAILABLE")
    client.runtime.budgets.commit_secondary = 200
    try:
        txn = await client.begin()
        for key in keys:
            txn.put(key, b"new")
        commit_ts = await asyncio.wait_for(txn.commit(), NO_HANG)
        assert commit_ts > txn.start_ts
        assert await client.runtime.wait_background(NO_HANG)
        assert client.runtime.background_errors, "the failed secondary commit must be surfaced"
        assert locked(cluster, keys) == [keys[2]]
        assert await read_all(reader, keys) == dict.fromkeys(keys, b"new")
    finally:
        cluster.faults.remove(fault)
    assert locked(cluster, keys) == []


async def test_lost_primary_commit_is_undetermined_and_never_half_visible(
    client: AsyncTransactionClient,
    reader: AsyncTransactionClient,
    cluster: MockCluster,
    keys: list[bytes],
) -> None:
    await seed(client, keys)
    fault = cluster.faults.add("KvCommit", status="UNAVAILABLE")
    client.runtime.budgets.commit = 300
    try:
        txn = await client.begin()
        for key in keys:
            txn.put(key, b"new")
        with pytest.raises(UndeterminedError) as info:
            await asyncio.wait_for(txn.commit(), NO_HANG)
        assert info.value.operation == "Commit"
        assert txn.state == "failed"
        # Not rolled back by the client: the outcome is unknown to it.
        assert await client.runtime.wait_background(NO_HANG)
        assert locked(cluster, keys) == sorted(keys)
    finally:
        cluster.faults.remove(fault)
    await expire_locks(cluster, reader)
    assert await read_all(reader, keys) == dict.fromkeys(keys, b"old")
    assert locked(cluster, keys) == []


async def test_commit_ts_pushed_by_a_reader_is_retried_with_a_newer_ts(
    client: AsyncTransactionClient,
    reader: AsyncTransactionClient,
    cluster: MockCluster,
    keys: list[bytes],
) -> None:
    await seed(client, keys)
    committer = await crashing_txn(client, keys)
    await committer.prewrite()
    first_ts = await committer.get_commit_ts()
    # A reader that started after our commit ts meets the live primary lock: TiKV
    # pushes its min_commit_ts beyond the reader, so the reader reads the old value.
    snap = reader.snapshot(await reader.current_timestamp())
    assert await asyncio.wait_for(snap.get(keys[0]), NO_HANG) == b"old"
    await committer.commit_primary()
    assert committer.commit_ts > snap.ts > first_ts
    await committer.commit_batches(committer.batches[1:])
    assert await read_all(reader, keys) == dict.fromkeys(keys, b"new")


async def test_prewrite_survives_a_split_and_leader_moves(
    client: AsyncTransactionClient,
    reader: AsyncTransactionClient,
    cluster: MockCluster,
    keys: list[bytes],
) -> None:
    txn = await client.begin()
    extra = [keys[1] + b"/%d" % i for i in range(20)]
    for key in [*keys, *extra]:
        txn.put(key, b"v")
    committer = txn._new_committer()
    assert await committer.prepare()
    # The cached regions are now stale: split the second region in the middle of the
    # batch and move its leader; prewrite must re-shard (EpochNotMatch / NotLeader).
    cluster.split([extra[10]], txn=True)
    moved = cluster.region_by_key(extra[15], txn=True)
    assert moved is not None
    assert moved.leader is not None
    leader_store = moved.leader.store_id
    target = next(p.store_id for p in moved.peers if p.store_id != leader_store)
    cluster.transfer_leader(moved.id, target)
    await asyncio.wait_for(committer.prewrite(), NO_HANG)
    await committer.get_commit_ts()
    await committer.commit_primary()
    await committer.commit_batches(committer.batches[1:])
    got = await read_all(reader, [*keys, *extra])
    assert got == dict.fromkeys([*keys, *extra], b"v")


async def test_heartbeat_extends_the_primary_lock_and_stops(
    cluster: MockCluster, reader: AsyncTransactionClient, keys: list[bytes]
) -> None:
    config = Config(ttl_refreshed_txn_size=0)  # every transaction keeps its lock alive
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints, config=config) as c:
        c.runtime.budgets.heartbeat_interval_s = 0.02
        committer = await crashing_txn(c, keys)
        await committer.prewrite()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + NO_HANG
        while True:
            primary = cluster.engine.scan_lock(2**63 - 1, keys[0], keys[0] + b"\x00")[0]
            if committer.heartbeats >= 2 and primary.lock_ttl > committer.lock_ttl:
                break
            assert loop.time() < deadline, "the heartbeat never extended the primary lock"
            await asyncio.sleep(0.01)
        # The primary lock outlives its original TTL: a reader must not roll it back.
        cluster.clock.advance(committer.lock_ttl + 1000)
        await reader.current_timestamp()
        snap = reader.snapshot(await reader.current_timestamp())
        assert await asyncio.wait_for(snap.get(keys[0]), NO_HANG) is None
        assert locked(cluster, keys) == sorted(keys)
        # Rolling the transaction back removes the primary lock: the heartbeat sees the
        # key error and stops by itself.
        await committer.cleanup()
        task = committer._heartbeat
        assert task is not None
        await asyncio.wait_for(asyncio.shield(task), NO_HANG)
        assert locked(cluster, keys) == []


async def test_local_latches_fail_stale_transactions_before_any_rpc(
    cluster: MockCluster, keys: list[bytes]
) -> None:
    config = Config(txn_local_latches_enabled=True, txn_local_latches_capacity=1024)
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints, config=config) as c:
        slow = await c.begin()
        slow.put(keys[0], b"slow")
        async with c.begin() as fast:
            fast.put(keys[0], b"fast")
        prewrites = cluster.counters.count("KvPrewrite")
        with pytest.raises(WriteConflictError) as info:
            await slow.commit()
        assert info.value.key == keys[0]
        assert info.value.conflict_commit_ts == fast.commit_ts
        assert cluster.counters.count("KvPrewrite") == prewrites
        # Concurrent commits of one key are serialized: all succeed or fail cleanly.
        txns = []
        for i in range(5):
            t = await c.begin()
            t.put(keys[1], b"%d" % i)
            txns.append(t)
        results = await asyncio.gather(*(t.commit() for t in txns), return_exceptions=True)
        assert all(isinstance(r, int | WriteConflictError) for r in results), results
        assert sum(isinstance(r, int) for r in results) >= 1


async def test_close_cancels_stuck_background_commits(
    cluster: MockCluster, reader: AsyncTransactionClient, keys: list[bytes]
) -> None:
    c = await AsyncTransactionClient.connect(cluster.pd_endpoints)
    await seed(c, keys)
    region = cluster.region_by_key(keys[3], txn=True)
    assert region is not None
    fault = cluster.faults.add("KvCommit", region=region.id, hang=True)
    try:
        txn = await c.begin()
        for key in keys:
            txn.put(key, b"new")
        await asyncio.wait_for(txn.commit(), NO_HANG)
        assert await asyncio.to_thread(cluster.faults.wait_hanging, 1, NO_HANG)
        assert c.runtime.pending_tasks >= 1
        c.runtime.budgets.close_grace_s = 0.05
        await asyncio.wait_for(c.close(), NO_HANG)
        assert c.runtime.pending_tasks == 0
        assert c.closed
    finally:
        cluster.faults.remove(fault)
    # The secondary left behind is committed by the next reader.
    assert await read_all(reader, keys) == dict.fromkeys(keys, b"new")


async def test_commit_survives_a_stopped_store(
    client: AsyncTransactionClient,
    reader: AsyncTransactionClient,
    cluster: MockCluster,
    keys: list[bytes],
) -> None:
    committer = await crashing_txn(client, keys)
    region = cluster.region_by_key(keys[0], txn=True)
    assert region is not None
    assert region.leader is not None
    store = region.leader.store_id
    # The client's cache still names the stopped store as the primary region's leader:
    # the sends fail, the region is reloaded and the new leader takes the requests.
    cluster.stop_store(store, move_leaders=True)
    try:
        await asyncio.wait_for(committer.prewrite(), NO_HANG)
        await committer.get_commit_ts()
        await asyncio.wait_for(committer.commit_primary(), NO_HANG)
        await asyncio.wait_for(committer.commit_batches(committer.batches[1:]), NO_HANG)
        assert await read_all(reader, keys) == dict.fromkeys(keys, b"new")
    finally:
        cluster.restart_store(store)


async def test_lost_async_commit_prewrite_is_undetermined(
    client: AsyncTransactionClient, cluster: MockCluster, keys: list[bytes]
) -> None:
    await seed(client, keys)
    region = cluster.region_by_key(keys[2], txn=True)
    assert region is not None
    # Every answer from one region is lost: with async commit the transaction may be
    # committed (all other prewrites may succeed), so it is neither retried blindly to
    # a verdict nor rolled back.
    fault = cluster.faults.add("KvPrewrite", region=region.id, status="UNAVAILABLE")
    client.runtime.budgets.prewrite = 300
    try:
        txn = await client.begin(TransactionOptions(async_commit=True))
        for key in keys:
            txn.put(key, b"new")
        with pytest.raises(UndeterminedError):
            await asyncio.wait_for(txn.commit(), NO_HANG)
        assert await client.runtime.wait_background(NO_HANG)
        assert locked(cluster, keys) == sorted(k for k in keys if k != keys[2])
    finally:
        cluster.faults.remove(fault)
