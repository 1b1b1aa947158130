"""Transactions across store failures: a pessimistic lock waiter whose store goes down.

Invariants: the waiter neither hangs nor misses the holder's commit — once the holder
commits (through the new leader, or the restarted store), the waiter gets the lock and
reads the committed value; the holder's commit succeeds.
"""

from __future__ import annotations

import asyncio

import pytest
from _support import apoll, within
from tikv_mockstore import MockCluster
from tikv_txn import AsyncTransactionClient


@pytest.mark.parametrize("move_leaders", [True, False])
async def test_lock_waiter_survives_its_store_going_down(
    cluster: MockCluster, move_leaders: bool
) -> None:
    key = b"\x30pessimistic"
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as client:
        async with client.begin() as setup:
            setup.put(key, b"0")
        holder = await client.begin(pessimistic=True)
        assert await holder.get_for_update(key) == b"0"
        waiter_txn = await client.begin(pessimistic=True)
        waits = cluster.counters.count("KvPessimisticLock")
        waiter = asyncio.ensure_future(waiter_txn.get_for_update(key))
        # The waiter's lock request reached the store and is parked there.
        await apoll(lambda: cluster.counters.count("KvPessimisticLock") > waits)
        assert not waiter.done()
        region = cluster.region_by_key(key, txn=True)
        assert region is not None and region.leader is not None
        victim = region.leader.store_id
        await asyncio.to_thread(cluster.stop_store, victim, move_leaders=move_leaders)
        holder.put(key, b"1")
        commit = asyncio.ensure_future(holder.commit())
        if not move_leaders:  # the region is unavailable until its store returns
            await asyncio.to_thread(cluster.restart_store, victim)
        assert await within(commit) > 0
        assert await within(waiter) == b"1"
        waiter_txn.put(key, b"2")
        await within(waiter_txn.commit())
        if move_leaders:
            await asyncio.to_thread(cluster.restart_store, victim)
        check = client.snapshot(await client.current_timestamp())
        assert await check.get(key) == b"2"


@pytest.mark.parametrize("change", ["merge", "split", "transfer_leader"])
async def test_lock_waiter_survives_region_changes(cluster: MockCluster, change: str) -> None:
    """The waiter's region is merged, split or moves its leader while it waits."""
    key = b"\x30pessimistic"
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as client:
        async with client.begin() as setup:
            setup.put(key, b"0")
        holder = await client.begin(pessimistic=True)
        assert await holder.get_for_update(key) == b"0"
        waiter_txn = await client.begin(pessimistic=True)
        waits = cluster.counters.count("KvPessimisticLock")
        waiter = asyncio.ensure_future(waiter_txn.get_for_update(key))
        await apoll(lambda: cluster.counters.count("KvPessimisticLock") > waits)
        region = cluster.region_by_key(key, txn=True)
        assert region is not None and region.leader is not None
        if change == "merge":
            left = next(r for r in cluster.regions() if r.end_key == region.start_key)
            cluster.merge(region.id, left.id)
        elif change == "split":
            cluster.split([key, key + b"\0"], txn=True)
        else:
            other = next(p.store_id for p in region.peers if p.store_id != region.leader.store_id)
            cluster.transfer_leader(region.id, other)
        holder.put(key, b"1")
        assert await within(holder.commit()) > 0
        assert await within(waiter) == b"1"
        await waiter_txn.rollback()
