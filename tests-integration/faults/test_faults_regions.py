"""Region-level faults: a split storm under traffic, injected region errors, a busy store,
a slow store.

Invariants: requests succeed (the faults are all retryable within the budget); results
are exact (a scan sees every key exactly once, in order); the server counters and the
client's pipeline counters show the retries that happened — no more, no fewer.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading

import pytest
from _support import NO_HANG, WriteLog, apoll, new_cluster, sender_stats, spread_keys, within
from tikv_mockstore import MockCluster
from tikv_pd.codec import keyspace_prefix
from tikv_pd.config import Config
from tikv_raw import AsyncRawClient, RawClient, TiKVError, UndeterminedError

PD_REGION_LOOKUPS = ("GetRegion", "GetPrevRegion", "GetRegionByID", "ScanRegions")


def _pd_region_lookups(cluster: MockCluster) -> int:
    return sum(cluster.counters.count(m, store=0) for m in PD_REGION_LOOKUPS) + sum(
        n
        for (sid, m), n in cluster.counters.snapshot().items()
        if sid == 0 and m == "BatchScanRegions"
    )


# -- split storm -----------------------------------------------------------------------


async def test_split_storm_under_batch_puts_and_scans(
    cluster: MockCluster, client: AsyncRawClient
) -> None:
    """40 splits while writers batch-put and scanners scan: every scan sees each key once,
    in order, including every key acknowledged before the scan started."""
    prefix = b"\x55storm/"
    log = WriteLog()
    stop = asyncio.Event()
    problems: list[str] = []
    scans = {"forward": 0, "reverse": 0}

    async def writer(w: int) -> None:
        op = 0
        while not stop.is_set():
            # Keys cycle (values are overwritten): the data stays small enough for every
            # scan to finish while writers run flat out.
            slot = (op % 25) * 4 + w
            pairs = {prefix + b"%02d-%05d" % (i, slot): b"v%d" % op for i in range(24)}
            try:
                await client.batch_put(pairs)
            except TiKVError as exc:
                log.failed(pairs, exc)
            else:
                log.ok(pairs)
            op += 1

    async def scanner(reverse: bool) -> None:
        while not stop.is_set():
            before = set(log.acked)
            if reverse:
                got = [
                    k
                    for k, _ in await client.scan(prefix, prefix + b"~", limit=10240, reverse=True)
                ]
                expected_order = sorted(got, reverse=True)
            else:
                got = [k async for k, _ in client.scan_iter(prefix, prefix + b"~")]
                expected_order = sorted(got)
            if got != expected_order:
                problems.append(f"{'reverse' if reverse else 'forward'} scan out of order")
            if len(got) != len(set(got)):
                problems.append(f"{len(got) - len(set(got))} keys seen twice")
            if len(got) < 10240 and not before <= set(got):
                problems.append(f"{len(before - set(got))} acknowledged keys missing")
            scans["reverse" if reverse else "forward"] += 1

    tasks = [asyncio.ensure_future(writer(w)) for w in range(4)]
    tasks += [asyncio.ensure_future(scanner(r)) for r in (False, True, False)]
    try:
        rng = random.Random(7)
        for i in range(40):
            cluster.split([prefix + b"%02d-%05d" % (rng.randrange(24), rng.randrange(400))])
            if i % 4 == 3:  # leaders move too, as PD balances the new regions
                region = rng.choice(cluster.regions())
                stores = [p.store_id for p in region.peers]
                cluster.transfer_leader(region.id, rng.choice(stores))
            mark = (log.ops, scans["forward"] + scans["reverse"])
            await apoll(
                lambda mark=mark: (  # type: ignore[misc]
                    any(t.done() for t in tasks)
                    or (log.ops > mark[0] and scans["forward"] + scans["reverse"] > mark[1])
                ),
                within=NO_HANG,
                what="progress between splits",
            )
    finally:
        # Stop the workload even when a check above failed: its tasks would
        # otherwise outlive the test.
        stop.set()
    await within(asyncio.gather(*tasks))

    assert not problems, problems[:5]
    assert not log.errors, log.errors[:3]
    assert len(cluster.regions()) >= 8 + 30  # random split keys may repeat
    final = [(k, v) async for k, v in client.scan_iter(prefix, prefix + b"~")]
    assert [k for k, _ in final] == sorted(log.acked)
    log.check(dict(final))
    assert sender_stats(client).region_errors.get("epoch_not_match", 0) > 0


# -- region errors injected N times -----------------------------------------------------

KINDS = ["not_leader", "epoch_not_match", "region_not_found", "store_not_match", "stale_command"]


@pytest.mark.parametrize("kind", KINDS)
async def test_region_error_injected_n_times_is_retried_exactly_n_times(
    cluster: MockCluster, client: AsyncRawClient, kind: str
) -> None:
    key = b"\x30key"
    await client.put(key, b"v")
    region = cluster.region_by_key(key)
    assert region is not None and region.leader is not None
    stats = sender_stats(client)
    times = 3
    for method in ("RawGet", "RawBatchGet", "RawScan", "RawPut"):
        cluster.faults.add(method, region=region.id, region_error=kind, times=times)
    cluster.counters.reset()
    lookups = _pd_region_lookups(cluster)
    errors_before = stats.region_errors.get(kind, 0)

    assert await within(client.get(key)) == b"v"
    assert await within(client.batch_get([key])) == {key: b"v"}
    assert await within(client.scan(key, key + b"\0", limit=10)) == [(key, b"v")]
    await within(client.put(key, b"v2"))
    assert await client.get(key) == b"v2"

    # The server saw each command times + 1 times, and the client counted each error.
    for method in ("RawBatchGet", "RawScan", "RawPut"):
        assert cluster.counters.count(method) == times + 1, method
    assert cluster.counters.count("RawGet") == times + 2
    assert stats.region_errors.get(kind, 0) - errors_before == 4 * times
    if kind == "region_not_found":
        # The region is dropped from the cache and looked up again in PD.
        assert _pd_region_lookups(cluster) > lookups


@pytest.mark.parametrize("kind", KINDS)
def test_region_error_injected_n_times_sync_client(
    cluster: MockCluster, sync_client: RawClient, kind: str
) -> None:
    """The same exact-count check through the blocking facade."""
    key = b"\x50key"
    sync_client.put(key, b"v")
    region = cluster.region_by_key(key)
    assert region is not None
    stats = sender_stats(sync_client)
    before = stats.region_errors.get(kind, 0)
    cluster.faults.add("RawGet", region=region.id, region_error=kind, times=3)
    cluster.counters.reset()
    assert sync_client.get(key) == b"v"
    assert cluster.counters.count("RawGet") == 4
    assert stats.region_errors.get(kind, 0) - before == 3


def test_region_errors_under_concurrent_batches_sync_and_async(cluster: MockCluster) -> None:
    """Every kind at once, fired at random, under batch traffic from both client flavours.

    StoreNotMatch closes the store's connections while other parts of the same batch are
    in flight on them: those parts must fail as "not sent" and be retried, never wait.
    """
    for kind in KINDS:
        for method in ("RawBatchPut", "RawBatchGet", "RawScan"):
            cluster.faults.add(method, region_error=kind, times=4, probability=0.3)
    model: dict[bytes, bytes] = {}
    fired = 0
    with RawClient.connect(cluster.pd_endpoints) as sync_client:

        def sync_part() -> None:
            for op in range(10):
                pairs = dict.fromkeys(spread_keys(b"s%d/" % op, 32), b"s%d" % op)
                sync_client.batch_put(pairs)
                assert sync_client.batch_get(list(pairs)) == pairs
                model.update(pairs)

        async def async_part() -> int:
            async with await AsyncRawClient.connect(cluster.pd_endpoints) as async_client:
                for op in range(10):
                    pairs = dict.fromkeys(spread_keys(b"a%d/" % op, 32), b"a%d" % op)
                    await async_client.batch_put(pairs)
                    assert await async_client.batch_get(list(pairs)) == pairs
                    model.update(pairs)
                stats = sender_stats(async_client)
                return sum(stats.region_errors.get(k, 0) for k in KINDS)

        thread = threading.Thread(target=sync_part)
        thread.start()
        fired += asyncio.run(asyncio.wait_for(async_part(), NO_HANG))
        thread.join(NO_HANG)
        assert not thread.is_alive()
        assert list(sync_client.scan_iter(b"", None)) == sorted(model.items())
        stats = sender_stats(sync_client)
        fired += sum(stats.region_errors.get(k, 0) for k in KINDS)
    assert fired > 0


async def test_stale_command_on_cas_is_undetermined(cluster: MockCluster) -> None:
    """StaleCommand means the command may have been proposed: a CAS is not resent."""
    async with await AsyncRawClient.connect(cluster.pd_endpoints, atomic=True) as client:
        await client.put(b"\x30cas", b"a")
        cluster.faults.add("RawCompareAndSwap", region_error="stale_command", times=1)
        with pytest.raises(UndeterminedError):
            await within(client.compare_and_swap(b"\x30cas", b"a", b"b"))
        assert cluster.counters.count("RawCompareAndSwap") == 1  # not resent
        assert await client.compare_and_swap(b"\x30cas", b"a", b"b") == (b"a", True)


# -- a busy store, a slow store ----------------------------------------------------------


def _store_of(cluster: MockCluster, key: bytes) -> int:
    region = cluster.region_by_key(key)
    assert region is not None and region.leader is not None
    return region.leader.store_id


async def _busy_workload(
    cluster: MockCluster, client: AsyncRawClient, busy_faults: list[object]
) -> None:
    stats = sender_stats(client)
    before = stats.region_errors.get("server_is_busy", 0)

    async def worker(w: int) -> dict[bytes, bytes]:
        pairs = dict.fromkeys(spread_keys(b"busy%d/" % w, 24), b"w%d" % w)
        await client.batch_put(pairs)
        assert await client.batch_get(list(pairs)) == pairs
        return pairs

    results = await within(asyncio.gather(*(worker(w) for w in range(6))))
    fired = sum(f.hits for f in busy_faults)  # type: ignore[attr-defined]
    assert fired > 0
    assert stats.region_errors.get("server_is_busy", 0) - before == fired
    model = {k: v for part in results for k, v in part.items()}
    assert await client.batch_get(list(model)) == model


async def test_server_is_busy_on_one_store(cluster: MockCluster, client: AsyncRawClient) -> None:
    """Short variant: the busy store refuses its first requests; they wait and succeed.

    ServerIsBusy backs off 1-2 s, then 2-4 s, ... (client-go tikvServerBusy, excluded
    from the budget), so each request meets it at most once here.
    """
    busy = _store_of(cluster, b"\x30")
    faults = [
        cluster.faults.add(m, store=busy, region_error="server_is_busy", times=4)
        for m in ("RawBatchPut", "RawBatchGet")
    ]
    await _busy_workload(cluster, client, faults)
    assert all(f.hits == 4 for f in faults)


@pytest.mark.slow
async def test_server_is_busy_storm_on_one_store(
    cluster: MockCluster, client: AsyncRawClient
) -> None:
    """A storm: half of the busy store's requests are refused, some several times in a row."""
    busy = _store_of(cluster, b"\x30")
    faults = [
        cluster.faults.add(m, store=busy, region_error="server_is_busy", times=6, probability=0.5)
        for m in ("RawBatchPut", "RawBatchGet", "RawGet")
    ]
    await _busy_workload(cluster, client, faults)


async def test_network_delay_on_one_store(cluster: MockCluster, client: AsyncRawClient) -> None:
    slow = _store_of(cluster, b"\x30")
    fault = cluster.faults.add(store=slow, delay=0.2)
    try:
        pairs = dict.fromkeys(spread_keys(b"slow/", 64), b"v")
        await within(client.batch_put(pairs))
        assert await within(client.batch_get(list(pairs))) == pairs
        assert [k for k, _ in await within(client.scan(b"", None, limit=1000))] == sorted(pairs)
        assert fault.hits > 0
    finally:
        cluster.faults.remove(fault)


async def test_store_slower_than_the_rpc_timeout_is_retried(cluster: MockCluster) -> None:
    """Requests to a store that answers after the RPC deadline time out and are resent."""
    config = Config(read_timeout_short=0.5)
    async with await AsyncRawClient.connect(cluster.pd_endpoints, config=config) as client:
        await client.put(b"\x30slow", b"v")
        slow = _store_of(cluster, b"\x30slow")
        fault = cluster.faults.add("RawGet", store=slow, delay=1.5, times=2)
        assert await within(client.get(b"\x30slow")) == b"v"
        assert fault.hits == 2
        assert sender_stats(client).send_failures >= 2


def test_sync_client_threads_share_retries_under_faults(cluster: MockCluster) -> None:
    """The blocking facade under injected NotLeader + a delay: threads all finish."""
    cluster.faults.add("RawPut", region_error="not_leader", times=10)
    cluster.faults.add("RawGet", delay=0.05, times=20)
    errors: list[BaseException] = []
    with RawClient.connect(cluster.pd_endpoints) as client:

        def work(t: int) -> None:
            try:
                for i in range(10):
                    key = bytes([(t * 40 + i * 3) % 256]) + b"t%d-%d" % (t, i)
                    client.put(key, b"%d" % i)
                    assert client.get(key) == b"%d" % i
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(NO_HANG)
        assert not any(t.is_alive() for t in threads)
        assert not errors, errors
        assert sender_stats(client).region_errors.get("not_leader", 0) == 10


async def test_merge_storm_under_batch_puts_and_scans(
    cluster: MockCluster, client: AsyncRawClient
) -> None:
    """Thirty regions merged back one by one while writers and scanners run: requests to
    a merged-away region (RegionNotFound) or an outdated target (EpochNotMatch) are
    re-routed; every scan sees each key once, in order, including every key acknowledged
    before it started."""
    prefix = b"\x55merge/"
    cluster.split([prefix + b"%03d" % i for i in range(0, 300, 10)])
    log = WriteLog()
    stop = asyncio.Event()
    problems: list[str] = []
    scans = [0]

    async def writer(w: int) -> None:
        op = 0
        while not stop.is_set():
            # Keys cycle (values are overwritten): bounded data, so scans finish.
            pairs = {
                prefix + b"%03d-w%d-%d" % (i, w, op % 20): b"v%d" % op for i in range(0, 300, 7)
            }
            try:
                await client.batch_put(pairs)
            except TiKVError as exc:
                log.failed(pairs, exc)
            else:
                log.ok(pairs)
            op += 1

    async def scanner(reverse: bool) -> None:
        while not stop.is_set():
            before = set(log.acked)
            if reverse:
                got = [
                    k
                    async for k, _ in client.scan_iter(
                        prefix, prefix + b"~", reverse=True, page_size=64
                    )
                ]
                ordered = sorted(got, reverse=True)
            else:
                got = [k async for k, _ in client.scan_iter(prefix, prefix + b"~", page_size=64)]
                ordered = sorted(got)
            if got != ordered or len(got) != len(set(got)):
                problems.append("a scan was out of order or saw a key twice")
            if len(got) < 10240 and not before <= set(got):
                problems.append(f"{len(before - set(got))} acknowledged keys missing")
            scans[0] += 1

    tasks = [asyncio.ensure_future(writer(w)) for w in range(3)]
    tasks += [asyncio.ensure_future(scanner(r)) for r in (False, True)]
    try:
        rng = random.Random(11)
        stats = sender_stats(client)
        while True:
            inside = [r for r in cluster.regions() if r.start_key.startswith(prefix)]
            if len(inside) <= 2:
                break
            source = rng.choice(inside)
            left = next(r for r in cluster.regions() if r.end_key == source.start_key)
            cluster.merge(source.id, left.id)
            mark = (log.ops, scans[0])
            await apoll(
                lambda mark=mark: (  # type: ignore[misc]
                    any(t.done() for t in tasks) or (log.ops > mark[0] and scans[0] > mark[1])
                ),
                within=NO_HANG,
                what="progress between merges",
            )
    finally:
        # Stop the workload even when a check above failed: its tasks would
        # otherwise outlive the test.
        stop.set()
    await within(asyncio.gather(*tasks))

    assert not problems, problems[:5]
    assert not log.errors, log.errors[:3]
    final = [(k, v) async for k, v in client.scan_iter(prefix, prefix + b"~")]
    assert [k for k, _ in final] == sorted(log.acked)
    log.check(dict(final))
    kinds = stats.region_errors
    assert kinds.get("region_not_found", 0) + kinds.get("epoch_not_match", 0) > 0, kinds


async def test_split_storm_in_an_api_v2_keyspace_stays_isolated() -> None:
    """API v2: splits inside one keyspace under traffic in two keyspaces; each client sees
    exactly its own keys (encoded boundaries, keyspace-prefixed requests)."""
    if os.environ.get("TIKV_PD_ENDPOINTS"):
        pytest.skip("fault scenarios need the embedded cluster's control API")
    with new_cluster(api_version=2) as cluster:
        ks_a = cluster.create_keyspace("fault_a")
        cluster.create_keyspace("fault_b")
        head = keyspace_prefix("raw", ks_a.id)
        regions_before = len(cluster.regions())
        async with (
            await AsyncRawClient.connect(cluster.pd_endpoints, keyspace="fault_a") as a,
            await AsyncRawClient.connect(cluster.pd_endpoints, keyspace="fault_b") as b,
        ):
            model_a: dict[bytes, bytes] = {}
            model_b: dict[bytes, bytes] = {}

            async def fill(client: AsyncRawClient, model: dict[bytes, bytes], tag: bytes) -> None:
                for op in range(12):
                    pairs = {b"k%03d-%s-%d" % (i, tag, op): tag for i in range(0, 200, 9)}
                    await client.batch_put(pairs)
                    model.update(pairs)

            async def splitter() -> None:
                rng = random.Random(5)
                for _ in range(20):
                    await asyncio.to_thread(cluster.split, [head + b"k%03d" % rng.randrange(200)])
                    await asyncio.sleep(0)

            await within(asyncio.gather(fill(a, model_a, b"a"), fill(b, model_b, b"b"), splitter()))
            assert len(cluster.regions()) >= regions_before + 10
            assert [kv async for kv in a.scan_iter(b"", None)] == sorted(model_a.items())
            assert [kv async for kv in b.scan_iter(b"", None)] == sorted(model_b.items())
            assert (
                await a.scan(b"", None, limit=5, reverse=True) == sorted(model_a.items())[-5:][::-1]
            )
            await a.delete_range(b"", None)
            assert await a.scan(b"", None, limit=10) == []
            assert len([kv async for kv in b.scan_iter(b"", None)]) == len(model_b)
