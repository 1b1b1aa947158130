"""PDClient, PDOracle and RegionLocator against the embedded cluster (tikv_mockstore).

tikv-pd does not depend on tikv-mockstore; these tests need the workspace, which has both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest
from tikv_mockstore import MockCluster
from tikv_pd.codec import CodecV1
from tikv_pd.locator import RegionLocator
from tikv_pd.pd_client import PDClient
from tikv_pd.pd_oracle import PDOracle

NO_HANG = 60.0


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=3, regions=4, pd_members=3) as mock:
        yield mock


async def test_thousand_callers_few_tso_requests(cluster: MockCluster) -> None:
    async with await PDClient.connect(cluster.pd_endpoints) as client:
        assert client.cluster_id == cluster.cluster_id
        before = cluster.counters.count("Tso")
        stamps = await asyncio.wait_for(
            asyncio.gather(*(client.get_timestamp() for _ in range(1000))), NO_HANG
        )
        served = cluster.counters.count("Tso") - before
        assert len(set(stamps)) == 1000
        assert served == client.tso_requests_sent
        assert served <= 20, served
        assert max(stamps) < cluster.current_ts()


async def test_pd_leader_moves_during_traffic_without_failures(cluster: MockCluster) -> None:
    async with await PDClient.connect([cluster.pd_endpoints[1]]) as client:
        locator = RegionLocator(client, codec=CodecV1("txn"))
        stop = asyncio.Event()
        counts = {"ts": 0, "regions": 0}

        async def tso_worker() -> None:
            last = 0
            while not stop.is_set():
                ts = await client.get_timestamp()
                assert ts > last
                last = ts
                counts["ts"] += 1

        async def region_worker() -> None:
            while not stop.is_set():
                locator.cache.clear()
                region = await locator.locate_key(b"\x90")
                assert region.contains(b"\x90")
                counts["regions"] += 1

        workers = [asyncio.ensure_future(tso_worker()) for _ in range(10)]
        workers.append(asyncio.ensure_future(region_worker()))
        for _ in range(3):
            leader = cluster.move_pd_leader()
            mark = dict(counts)
            deadline = asyncio.get_running_loop().time() + NO_HANG
            while not (
                client.leader == leader.client_url.removeprefix("http://")
                and counts["ts"] > mark["ts"] + 100
                and counts["regions"] > mark["regions"] + 3
            ):
                assert asyncio.get_running_loop().time() < deadline, "no progress"
                for w in workers:
                    if w.done():
                        w.result()
                await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*workers), NO_HANG)


async def test_tso_stream_dropped_waiters_recover(cluster: MockCluster) -> None:
    async with await PDClient.connect(cluster.pd_endpoints) as client:
        cluster.faults.add("Tso", drop_stream=True, times=1)
        stamps = await asyncio.wait_for(
            asyncio.gather(*(client.get_timestamp() for _ in range(20))), NO_HANG
        )
        assert len(set(stamps)) == 20


async def test_locator_groups_transactional_keys_over_regions(cluster: MockCluster) -> None:
    async with await PDClient.connect(cluster.pd_endpoints) as client:
        locator = RegionLocator(client, codec=CodecV1("txn"))
        keys = [b"\xd0", b"\x10", b"\x50", b"\x90", b"\x11", b"\xd1"]
        groups = await locator.group_keys_by_region(keys)
        assert len(groups) == 4
        by_first = {ks[0]: ks for ks in groups.values()}
        assert by_first[b"\xd0"] == [b"\xd0", b"\xd1"]
        assert by_first[b"\x10"] == [b"\x10", b"\x11"]
        # Boundaries came back decoded (the mock splits at encoded one-byte keys).
        starts = sorted(r.start_key for r in groups)
        assert starts == [b"", b"\x40", b"\x80", b"\xc0"]
        parts = await locator.split_range(b"\x20", b"\xa0")
        assert [(s, e) for _, s, e in parts] == [
            (b"\x20", b"\x40"),
            (b"\x40", b"\x80"),
            (b"\x80", b"\xa0"),
        ]
        for region in groups:
            assert region.leader is not None
            address = await locator.store_address(region.leader.store_id)
            assert address == cluster.store_addresses[region.leader.store_id]


async def test_unary_unavailable_is_retried_and_oracle_works(cluster: MockCluster) -> None:
    async with await PDClient.connect(cluster.pd_endpoints) as client:
        cluster.faults.add("GetStore", status=grpc.StatusCode.UNAVAILABLE, times=1)
        store_id = next(iter(cluster.store_addresses))
        store = await client.get_store(store_id)
        assert store.address == cluster.store_addresses[store_id]
        async with await PDOracle.create(client) as oracle:
            ts = await oracle.get_timestamp()
            assert await oracle.get_low_resolution_timestamp() == ts
            assert not oracle.is_expired(ts, 60_000)
        assert await client.update_gc_safe_point(5) == 5
        assert cluster.gc_safe_point == 5
