"""GC on the embedded cluster (client-go ``tikv/gc.go``, BatchResolveLocks, CheckVisibility).

Each test gets its own cluster (3 stores, 4 regions): the GC safepoint and service
safepoints are cluster-wide state. Outcomes are checked in what the server holds
afterwards (``cluster.engine``): no lock at or below the safepoint, old versions gone,
newer data and locks intact, readers seeing whole transactions or nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from _txn_helpers import FIRST_BYTES, NO_HANG, prepared, seed
from tikv_mockstore import MockCluster
from tikv_pd.codec import keyspace_prefix
from tikv_pd.config import TransactionOptions
from tikv_pd.errors import GCTooEarlyError
from tikv_txn import AsyncTransactionClient, TransactionClient
from tikv_txn import gc as gcmod

MAX = 2**64 - 1


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=3, regions=4) as mock:
        yield mock


def keys_across(tag: bytes, n: int = 2) -> list[bytes]:
    """``n`` keys in each of the four regions."""
    return [first + tag + b"%02d" % i for first in FIRST_BYTES for i in range(n)]


def locks_at_or_below(cluster: MockCluster, ts: int) -> list[bytes]:
    return sorted(lock.key for lock in cluster.engine.scan_lock(ts))


def write_versions(cluster: MockCluster, key: bytes) -> list[int]:
    """Commit timestamps of ``key``'s write records (newest first)."""
    return [commit_ts for commit_ts, _ in cluster.engine.mvcc_by_key(key).writes]


async def test_gc_resolves_locks_collects_old_versions_and_keeps_newer_data(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    seeded = keys_across(b"seed/")
    await seed(client, seeded, b"v1", b"v2")
    # Txn A committed its primary only: its secondaries in other regions stay locked.
    a_keys = keys_across(b"a/")
    a = await prepared(client, a_keys, b"a-new")
    await a.prewrite()
    await a.get_commit_ts()
    await a.commit_primary()
    # Txn B was abandoned after prewrite (its client "crashed"); its TTL is far from over.
    b_keys = keys_across(b"b/")
    await seed(client, b_keys, b"b-old")
    b = await prepared(client, b_keys, b"b-new")
    await b.prewrite()
    safe_point = await client.current_timestamp()
    # Txn C started after the safepoint: GC must leave its locks alone.
    c_keys = keys_across(b"c/")
    c = await prepared(client, c_keys, b"c-new")
    await c.prewrite()
    # A's primary batch (its first region) is committed; its other regions and B are locked.
    expected = sorted([k for k in a_keys if not k.startswith(FIRST_BYTES[0])] + b_keys)
    assert locks_at_or_below(cluster, safe_point) == expected

    result = await gcmod.run_gc(client.runtime, client._pd, safe_point)

    assert result.safe_point == safe_point == cluster.gc_safe_point
    assert result.resolved_below == safe_point
    assert result.locks_resolved == len(expected)
    assert result.regions == 4
    assert result.collected_regions == 4
    assert locks_at_or_below(cluster, safe_point) == []
    assert locks_at_or_below(cluster, MAX) == sorted(c_keys)  # C untouched
    # Readers see A whole (committed) and B not at all (rolled back).
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get(a_keys) == dict.fromkeys(a_keys, b"a-new")
    assert await snap.batch_get(b_keys) == dict.fromkeys(b_keys, b"b-old")
    assert await snap.batch_get(seeded) == dict.fromkeys(seeded, b"v2")
    # Versions below the safepoint are gone except the newest one of each key.
    for key in seeded:
        versions = write_versions(cluster, key)
        assert len([ts for ts in versions if ts <= safe_point]) == 1, key
    # C can still commit above the safepoint (readers resolve its secondaries).
    await c.get_commit_ts()
    await c.commit_primary()
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get(c_keys) == dict.fromkeys(c_keys, b"c-new")


async def test_reads_below_the_safepoint_fail_with_gc_too_early(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    keys = keys_across(b"r/")
    await seed(client, keys, b"x")
    old_ts = await client.current_timestamp()
    await seed(client, keys, b"y")
    safe_point = await client.current_timestamp()
    assert await client.gc(safe_point) == safe_point
    old = client.snapshot(old_ts)
    with pytest.raises(GCTooEarlyError) as info:
        await old.get(keys[0])
    assert (info.value.read_ts, info.value.safepoint) == (old_ts, safe_point)
    with pytest.raises(GCTooEarlyError):
        await old.batch_get(keys)
    with pytest.raises(GCTooEarlyError):
        await old.scan(b"", None, limit=100)
    # A read at the safepoint itself (and above) still works.
    at = client.snapshot(safe_point)
    assert await at.batch_get(keys) == dict.fromkeys(keys, b"y")
    # Another client learns the safepoint from PD.
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as other:
        with pytest.raises(GCTooEarlyError):
            await other.snapshot(old_ts).get(keys[-1])
        assert await other.gc_safe_point() == safe_point


async def test_safepoint_never_moves_back(client: AsyncTransactionClient) -> None:
    first = await client.current_timestamp()
    second = await client.current_timestamp()
    assert await client.gc(second) == second
    assert await client.gc(first) == second
    assert await client.gc_safe_point() == second


async def test_service_safepoint_holds_gc_back(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    barrier = await client.current_timestamp()
    answer = await client.update_service_gc_safe_point("br", 600, barrier)
    assert answer.min_safe_point == barrier
    # A transaction that started after the barrier but before the wanted safepoint.
    keys = keys_across(b"s/")
    txn = await prepared(client, keys, b"v")
    await txn.prewrite()
    wanted = await client.current_timestamp()
    result = await gcmod.run_gc(client.runtime, client._pd, wanted)
    assert result.resolved_below == barrier
    assert result.safe_point == barrier == cluster.gc_safe_point
    # Its locks are above the barrier: GC must not touch them.
    assert locks_at_or_below(cluster, MAX) == sorted(keys)
    # Reads between the barrier and the wanted safepoint still work.
    assert await client.snapshot(barrier).get(keys[0]) is None
    # Once the service is gone, GC reaches the wanted safepoint (and rolls back the txn).
    await client.update_service_gc_safe_point("br", 0, barrier)
    assert await client.gc(wanted) == wanted
    assert locks_at_or_below(cluster, MAX) == []


async def test_many_locks_in_a_region_are_scanned_in_batches(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    keys = [b"\x20batch/%03d" % i for i in range(25)]  # all in one region
    for key in keys:  # one transaction per lock: a batch's ResolveLock settles only its own
        txn = await prepared(client, [key], b"v")
        await txn.prewrite()
    safe_point = await client.current_timestamp()
    before = cluster.counters.count("KvScanLock")
    stat, resolved = await gcmod.resolve_locks_below(client.runtime, safe_point, scan_limit=4)
    assert resolved == 25
    assert stat.completed_regions == 4
    assert locks_at_or_below(cluster, safe_point) == []
    # 25 locks in batches of 4: seven scans of that region, one for each other region.
    assert cluster.counters.count("KvScanLock") - before >= 7 + 3
    assert await client.snapshot(await client.current_timestamp()).batch_get(keys) == {}


async def test_gc_after_regions_split_behind_the_clients_back(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    keys = keys_across(b"split/", 4)
    a = await prepared(client, keys, b"v")
    await a.prewrite()
    await a.get_commit_ts()
    await a.commit_primary()
    safe_point = await client.current_timestamp()
    # The client has cached the four regions; now each splits in the middle of A's keys.
    cluster.split([first + b"split/02" for first in FIRST_BYTES], txn=True)
    result = await gcmod.run_gc(client.runtime, client._pd, safe_point)
    assert locks_at_or_below(cluster, safe_point) == []
    assert result.regions >= 8
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get(keys) == dict.fromkeys(keys, b"v")


async def test_gc_rides_out_store_and_region_errors(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    keys = keys_across(b"faults/")
    left = await prepared(client, keys, b"v")
    await left.prewrite()
    safe_point = await client.current_timestamp()
    scans = cluster.faults.add("KvScanLock", status="UNAVAILABLE", times=2)
    resolves = cluster.faults.add("KvResolveLock", region_error="epoch_not_match", times=2)
    collects = cluster.faults.add("KvGC", region_error="not_leader", times=1)
    result = await gcmod.run_gc(client.runtime, client._pd, safe_point)
    assert (scans.hits, resolves.hits, collects.hits) == (2, 2, 1)
    assert result.safe_point == safe_point
    assert result.collected_regions == 4
    assert locks_at_or_below(cluster, MAX) == []
    assert await client.snapshot(await client.current_timestamp()).batch_get(keys) == {}


async def test_stores_that_do_not_serve_kvgc_are_not_asked_again(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    # Real TiKV answers KvGC with UNIMPLEMENTED: its own GC worker reads PD's safepoint.
    cluster.faults.add("KvGC", status="UNIMPLEMENTED")
    first = await gcmod.run_gc(client.runtime, client._pd, await client.current_timestamp())
    assert first.collected_regions is None
    sent = cluster.counters.count("KvGC")
    second = await gcmod.run_gc(client.runtime, client._pd, await client.current_timestamp())
    assert second.collected_regions is None
    assert second.safe_point > first.safe_point
    assert cluster.counters.count("KvGC") == sent


async def test_gc_settles_an_async_commit_transaction(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    keys = keys_across(b"ac/")
    txn = await prepared(client, keys, b"v", TransactionOptions(async_commit=True))
    assert txn.async_commit
    await txn.prewrite()  # every lock is written: the transaction is logically committed
    safe_point = await client.current_timestamp()
    cluster.clock.advance(60_000)  # its locks expire
    await client.current_timestamp()
    await asyncio.wait_for(client.gc(safe_point), NO_HANG)
    # Settled from its secondaries (TiKV never rolls back an async-commit primary).
    assert client.runtime.resolver.stats["check_secondary_locks"] >= 1
    assert locks_at_or_below(cluster, MAX) == []
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get(keys) == dict.fromkeys(keys, b"v")


async def test_gc_rolls_back_pessimistic_locks(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    from tikv_mockstore.mvcc import Mutation, Op

    keys = keys_across(b"pl/")
    await seed(client, keys, b"old")
    start_ts = await client.current_timestamp()
    # A pessimistic transaction (taken on the server directly) that never prewrote.
    cluster.engine.pessimistic_lock(
        [Mutation(Op.PESSIMISTIC_LOCK, k) for k in keys], keys[0], start_ts, 20_000, start_ts
    )
    assert locks_at_or_below(cluster, MAX) == sorted(keys)
    safe_point = await client.current_timestamp()
    result = await gcmod.run_gc(client.runtime, client._pd, safe_point)
    assert result.locks_resolved == len(keys)
    assert locks_at_or_below(cluster, MAX) == []
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get(keys) == dict.fromkeys(keys, b"old")


async def test_gc_under_api_v2_stays_in_its_keyspace() -> None:
    with MockCluster(stores=3, api_version=2) as cluster:
        alpha_id = cluster.create_keyspace("alpha").id
        cluster.create_keyspace("beta")
        alpha = await AsyncTransactionClient.connect(cluster.pd_endpoints, keyspace="alpha")
        beta = await AsyncTransactionClient.connect(cluster.pd_endpoints, keyspace="beta")
        try:
            for c in (alpha, beta):
                await seed(c, [b"k1", b"k2"], b"old")
                left = await prepared(c, [b"k1", b"k2"], b"new")
                await left.prewrite()  # abandoned
            assert len(locks_at_or_below(cluster, MAX)) == 4
            safe_point = await alpha.current_timestamp()
            assert await alpha.gc(safe_point) == safe_point
            # Only alpha's keyspace was swept, and only its safepoint moved.
            remaining = locks_at_or_below(cluster, MAX)
            assert len(remaining) == 2
            alpha_prefix = keyspace_prefix("txn", alpha_id)
            assert not any(k.startswith(alpha_prefix) for k in remaining)
            assert cluster.state.gc_safe_point_of(alpha_id) == safe_point
            assert cluster.gc_safe_point == 0
            assert await beta.gc_safe_point() == 0
            snap = alpha.snapshot(await alpha.current_timestamp())
            assert await snap.batch_get([b"k1", b"k2"]) == {b"k1": b"old", b"k2": b"old"}
        finally:
            await alpha.close()
            await beta.close()


async def test_gc_progress_callback_sees_every_region(client: AsyncTransactionClient) -> None:
    seen: list[int] = []
    safe_point = await client.current_timestamp()
    result = await gcmod.run_gc(
        client.runtime,
        client._pd,
        safe_point,
        concurrency=2,
        on_progress=lambda p: seen.append(p.completed_regions),
    )
    assert seen == [1, 2, 3, 4]
    assert result.regions == 4


async def test_gc_rejects_bad_safepoints(client: AsyncTransactionClient) -> None:
    with pytest.raises(ValueError, match="positive"):
        await client.gc(0)
    with pytest.raises(TypeError):
        await client.gc("1")  # type: ignore[arg-type]


def test_sync_client_gc_delete_range_and_visibility(cluster: MockCluster) -> None:
    with TransactionClient.connect(cluster.pd_endpoints) as client:
        with client.begin() as txn:
            txn.put(b"\x10sync", b"1")
        old = client.current_timestamp()
        with client.begin() as txn:
            txn.put(b"\x10sync", b"2")
        safe_point = client.current_timestamp()
        assert client.gc(safe_point) == safe_point
        assert client.gc_safe_point() == safe_point
        with pytest.raises(GCTooEarlyError):
            client.snapshot(old).get(b"\x10sync")
        assert client.snapshot(client.current_timestamp()).get(b"\x10sync") == b"2"
        svc = client.update_service_gc_safe_point("cdc", 60, safe_point)
        assert svc.min_safe_point == safe_point
        assert client.delete_range(b"\x10", b"\x11") == 1
        assert client.snapshot(client.current_timestamp()).get(b"\x10sync") is None


# -- the safepoint cache (no network) -----------------------------------------------------


class _Loader:
    def __init__(self) -> None:
        self.value = 100
        self.calls = 0
        self.fail: BaseException | None = None
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> int:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return self.value


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_safepoint_cache_reloads_after_the_poll_interval() -> None:
    loader, clock = _Loader(), _Clock()
    cache = gcmod.SafePointCache(loader, clock=clock)
    await cache.check(100)  # equal to the safepoint: visible
    with pytest.raises(GCTooEarlyError):
        await cache.check(99)
    assert loader.calls == 1
    loader.value = 200
    clock.now += 5
    await cache.check(150)  # cached value still used
    assert loader.calls == 1
    clock.now += 5
    with pytest.raises(GCTooEarlyError) as info:
        await cache.check(150)
    assert info.value.safepoint == 200
    assert loader.calls == 2


async def test_safepoint_cache_loads_once_for_concurrent_checks() -> None:
    loader, clock = _Loader(), _Clock()
    loader.gate = asyncio.Event()
    cache = gcmod.SafePointCache(loader, clock=clock)
    checks = [asyncio.create_task(cache.check(500)) for _ in range(10)]
    await asyncio.sleep(0)
    loader.gate.set()
    await asyncio.gather(*checks)
    assert loader.calls == 1


async def test_safepoint_cache_trusts_an_old_value_only_for_a_while() -> None:
    from tikv_pd.errors import PDError

    loader, clock = _Loader(), _Clock()
    cache = gcmod.SafePointCache(loader, clock=clock)
    await cache.check(100)
    loader.fail = PDError("PD unreachable")
    clock.now += 50
    await cache.check(100)  # reload failed; the 50 s old value is still trusted
    clock.now += 50
    with pytest.raises(PDError):
        await cache.check(100)


async def test_safepoint_cache_advance_never_goes_back() -> None:
    loader, clock = _Loader(), _Clock()
    cache = gcmod.SafePointCache(loader, clock=clock)
    cache.advance(300)
    cache.advance(200)
    assert cache.safe_point == 300
    with pytest.raises(GCTooEarlyError):
        await cache.check(299)
    assert loader.calls == 0  # advance counts as a fresh load
