"""Snapshot reads: batching by region and size, scan pages, the read cache, locks met by scans.

Each test gets its own 4-region cluster so that request counts are exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from tikv_mockstore import MockCluster
from tikv_pd.config import Config, TransactionOptions
from tikv_txn import AsyncTransactionClient

FIRST_BYTES = (b"\x10", b"\x50", b"\x90", b"\xd0")
NO_HANG = 60.0


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=3, regions=4) as mock:
        yield mock


@pytest.fixture
async def client(cluster: MockCluster) -> AsyncIterator[AsyncTransactionClient]:
    config = Config(batch_get_size=4, txn_scan_batch=3)
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints, config=config) as c:
        yield c


async def write(client: AsyncTransactionClient, pairs: dict[bytes, bytes]) -> int:
    async with client.begin() as txn:
        for k, v in pairs.items():
            txn.put(k, v)
    assert await client.runtime.wait_background(NO_HANG)
    return txn.commit_ts


def data(per_region: int) -> dict[bytes, bytes]:
    return {f + b"key%02d" % i: f + b"val%02d" % i for f in FIRST_BYTES for i in range(per_region)}


async def test_batch_get_is_split_by_region_and_batch_size(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    pairs = data(10)
    await write(client, pairs)
    snap = client.snapshot(await client.current_timestamp())
    before = cluster.counters.count("KvBatchGet")
    wanted = [*pairs, b"\x10missing", b"\xd0missing"]
    assert await snap.batch_get(wanted) == pairs
    # 11 keys per region (10 + a missing one in two regions) at 4 keys per request:
    # regions with 11 keys need 3 requests, those with 10 need 3 as well.
    assert cluster.counters.count("KvBatchGet") - before == 4 * 3


async def test_read_cache_serves_repeated_reads_under_si_only(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    await write(client, {b"\x10a": b"1"})
    ts = await client.current_timestamp()
    snap = client.snapshot(ts)
    assert await snap.get(b"\x10a") == b"1"
    assert await snap.get(b"\x10nope") is None
    gets = cluster.counters.count("KvGet")
    batch_gets = cluster.counters.count("KvBatchGet")
    assert await snap.get(b"\x10a") == b"1"
    assert await snap.get(b"\x10nope") is None
    assert await snap.batch_get([b"\x10a", b"\x10nope"]) == {b"\x10a": b"1"}
    assert cluster.counters.count("KvGet") == gets
    assert cluster.counters.count("KvBatchGet") == batch_gets
    rc = client.snapshot(ts, TransactionOptions(isolation="RC"))
    assert rc.isolation == "RC"
    assert await rc.get(b"\x10a") == b"1"
    assert await rc.get(b"\x10a") == b"1"
    assert cluster.counters.count("KvGet") == gets + 2
    ctx = cluster.counters.last_context("KvGet")
    assert ctx is not None
    assert ctx.isolation_level == 1  # RC on the wire


async def test_scan_pages_per_region_forward_and_reverse(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    pairs = data(7)
    await write(client, pairs)
    ordered = sorted(pairs.items())
    snap = client.snapshot(await client.current_timestamp())
    before = cluster.counters.count("KvScan")
    assert await snap.scan(b"", None, limit=1000) == ordered
    # 7 keys per region, pages of 3: 3 + 3 + 1 -> 3 requests per region.
    assert cluster.counters.count("KvScan") - before == 4 * 3
    assert await snap.scan(b"", None, limit=1000, reverse=True) == ordered[::-1]
    assert await snap.scan(b"\x50key03", b"\xd0key02", limit=1000) == [
        kv for kv in ordered if b"\x50key03" <= kv[0] < b"\xd0key02"
    ]
    assert (
        await snap.scan(b"\x50key03", b"\xd0key02", limit=5, reverse=True)
        == [kv for kv in ordered[::-1] if b"\x50key03" <= kv[0] < b"\xd0key02"][:5]
    )
    assert await snap.scan(b"\x10", b"\x90", limit=4, key_only=True) == [
        (k, b"") for k, _ in ordered[:4]
    ]
    assert await snap.scan(b"\x20", b"\x30", limit=10) == []


async def test_scan_iter_fetches_lazily(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    await write(client, data(7))
    snap = client.snapshot(await client.current_timestamp())
    before = cluster.counters.count("KvScan")
    it = snap.scan_iter(b"")
    first = [await anext(it) for _ in range(2)]
    await it.aclose()  # type: ignore[attr-defined]
    assert first == [(b"\x10key00", b"\x10val00"), (b"\x10key01", b"\x10val01")]
    assert cluster.counters.count("KvScan") - before == 1


async def test_scan_resolves_locks_it_meets(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    await write(client, data(4))
    # A transaction committed its primary (region 1) and died before its secondaries.
    txn = await client.begin()
    txn.put(b"\x10key00", b"NEW0")
    txn.put(b"\x90key02", b"NEW2")
    txn.delete(b"\x90key03")
    committer = txn._new_committer()
    assert await committer.prepare()
    await committer.prewrite()
    await committer.get_commit_ts()
    await committer.commit_primary()
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as reader:
        snap = reader.snapshot(await reader.current_timestamp())
        got = await asyncio.wait_for(snap.scan(b"\x90", b"\xa0", limit=100), NO_HANG)
        assert got == [
            (b"\x90key00", b"\x90val00"),
            (b"\x90key01", b"\x90val01"),
            (b"\x90key02", b"NEW2"),
        ]
        # The locks met are resolved in the background; a lock the scan then read
        # through (the transaction is known committed) may stay, as in client-go, until
        # a reader that does not know meets it.
        assert await reader.runtime.wait_background(NO_HANG)
        left = [lock.key for lock in cluster.engine.scan_lock(2**63 - 1)]
        assert b"\x90key02" not in left and set(left) <= {b"\x90key03"}
        fresh = reader.snapshot(await reader.current_timestamp())
        assert await asyncio.wait_for(fresh.get(b"\x90key03"), NO_HANG) is None
        assert await reader.runtime.wait_background(NO_HANG)
        assert cluster.engine.scan_lock(2**63 - 1) == []


async def test_snapshot_arguments_are_checked(client: AsyncTransactionClient) -> None:
    with pytest.raises(TypeError):
        client.snapshot("now")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="64-bit"):
        client.snapshot(2**64)
    snap = client.snapshot(await client.current_timestamp())
    with pytest.raises(TypeError):
        snap.scan_iter("a")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        await snap.scan(b"a", limit=-1)


async def test_a_snapshot_at_max_uint64_caches_nothing(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    # client-go TestSnapshotCacheBypassMaxUint64: reading at MaxUint64 means "the newest
    # version", which changes: nothing read that way may be served again from a cache.
    await write(client, {b"\x10max-x": b"x1", b"\x50max-y": b"y1"})
    snap = client.snapshot(2**64 - 1)
    assert await snap.get(b"\x10max-x") == b"x1"
    assert await snap.batch_get([b"\x50max-y"]) == {b"\x50max-y": b"y1"}
    await write(client, {b"\x10max-x": b"x2", b"\x50max-y": b"y2"})
    gets, batch_gets = cluster.counters.count("KvGet"), cluster.counters.count("KvBatchGet")
    assert await snap.get(b"\x10max-x") == b"x2"
    assert await snap.batch_get([b"\x50max-y"]) == {b"\x50max-y": b"y2"}
    assert cluster.counters.count("KvGet") == gets + 1
    assert cluster.counters.count("KvBatchGet") == batch_gets + 1
    # A snapshot at an ordinary ts keeps caching.
    cached = client.snapshot(await client.current_timestamp())
    assert await cached.get(b"\x10max-x") == b"x2"
    assert await cached.get(b"\x10max-x") == b"x2"
    assert cluster.counters.count("KvGet") == gets + 2
