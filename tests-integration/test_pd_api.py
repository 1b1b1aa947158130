"""PD APIs through ``PDClient``: the semantics of client-go ``integration_tests/pd_api_test.go``
(TSO, min resolved ts from PD), ``gc_test.go`` / ``safepoint_test.go`` (GC and service
safepoints) and the oracle part of ``store_test.go`` (``TestOracle``).

Read-only checks run on any cluster; the ones that move safepoints or inject faults use a
private embedded cluster (moving a real cluster's GC safepoint is not a test's business).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from tikv_mockstore import MockCluster
from tikv_pd.oracle import compose_ts, extract_physical
from tikv_pd.pd_client import PDClient
from tikv_pd.pd_oracle import PDOracle


@pytest.fixture
async def pd(pd_endpoints: list[str]) -> AsyncIterator[PDClient]:
    async with await PDClient.connect(pd_endpoints) as client:
        yield client


@pytest.fixture
async def private(mock: MockCluster) -> AsyncIterator[tuple[MockCluster, PDClient]]:
    """A private one-store cluster and a PD client of it."""
    del mock  # only for its skip on a real cluster
    with MockCluster(stores=1) as cluster:
        async with await PDClient.connect(cluster.pd_endpoints) as client:
            yield cluster, client


async def test_tso_is_unique_and_increasing(pd: PDClient) -> None:
    first = await pd.get_timestamp()
    many = await asyncio.gather(*(pd.get_timestamp() for _ in range(500)))
    later = await pd.get_timestamp()
    assert len(set(many)) == 500
    assert first < min(many) and max(many) < later
    # Concurrent callers shared TsoRequests (batched into few RPCs).
    assert pd.tso_requests_sent < 500


async def test_tso_physical_part_is_wall_clock_ms(pd: PDClient) -> None:
    ts = await pd.get_timestamp()
    physical = extract_physical(ts)
    assert compose_ts(physical, 0) <= ts < compose_ts(physical + 1, 0)
    assert abs(physical - time.time() * 1000) < 60_000  # PD time is wall-clock ms


async def test_get_timestamp_async_future(pd: PDClient) -> None:
    # client-go GetTSAsync: request now, wait later.
    future = pd.request_timestamp()
    direct = await pd.get_timestamp()
    assert await future < direct


async def test_stores_are_known_to_pd(pd: PDClient) -> None:
    stores = await pd.get_all_stores()
    assert stores
    for store in stores:
        same = await pd.get_store(store.id)
        assert same.address == store.address
    assert pd.cluster_id != 0
    assert pd.leader


async def test_min_ts_across_tso_groups(pd: PDClient) -> None:
    # PD's GetMinTS: a timestamp no larger than any TSO group's current one.
    before = await pd.get_timestamp()
    min_ts = await pd.get_min_ts()
    after = await pd.get_timestamp()
    assert before <= min_ts < after


async def test_gc_safepoint_only_moves_forward(private: tuple[MockCluster, PDClient]) -> None:
    cluster, pd = private
    assert await pd.get_gc_safe_point() == 0
    ts = await pd.get_timestamp()
    assert await pd.update_gc_safe_point(ts - 1000) == ts - 1000
    assert cluster.gc_safe_point == ts - 1000
    # A smaller safepoint is ignored: PD answers with the one it keeps.
    assert await pd.update_gc_safe_point(ts - 5000) == ts - 1000
    assert await pd.get_gc_safe_point() == ts - 1000
    assert await pd.update_gc_safe_point(ts) == ts


async def test_service_safepoints_hold_back_gc(private: tuple[MockCluster, PDClient]) -> None:
    # client-go safepoint_test.go / gc_test.go: a service safepoint is a barrier GC waits on.
    _cluster, pd = private
    ts = await pd.get_timestamp()
    first = await pd.update_service_gc_safe_point("br", 3600, ts - 2000)
    assert first.min_safe_point == ts - 2000
    second = await pd.update_service_gc_safe_point("cdc", 3600, ts - 1000)
    assert second.min_safe_point == ts - 2000  # the smallest service safepoint wins
    # Removing "br" (ttl <= 0) lifts its barrier.
    lifted = await pd.update_service_gc_safe_point("br", 0, ts - 2000)
    assert lifted.min_safe_point == ts - 1000
    with pytest.raises((TypeError, ValueError)):
        await pd.update_service_gc_safe_point("", 10, ts)


async def test_external_timestamp(private: tuple[MockCluster, PDClient]) -> None:
    _cluster, pd = private
    assert await pd.get_external_timestamp() == 0
    ts = await pd.get_timestamp()
    await pd.set_external_timestamp(ts - 10)
    assert await pd.get_external_timestamp() == ts - 10


async def test_oracle_retries_while_tso_is_unavailable(
    private: tuple[MockCluster, PDClient],
) -> None:
    # client-go store_test.go TestOracle: timestamps increase; while the oracle is
    # disabled, GetTimestampWithRetry retries until it works again; an old ts expires.
    cluster, pd = private
    async with await PDOracle.create(pd) as oracle:
        t1 = await oracle.get_timestamp()
        t2 = await oracle.get_timestamp()
        assert t1 < t2
        low1 = await oracle.get_low_resolution_timestamp()
        assert low1 <= t2
        fault = cluster.faults.add("Tso", status=grpc.StatusCode.UNAVAILABLE, times=3)
        t3 = await asyncio.wait_for(oracle.get_timestamp(), 60)
        assert fault.hits == 3
        assert t2 < t3
        # A lock of t2 with a 1 ms TTL expires as soon as PD time passes t2 + 1 ms.
        deadline = asyncio.get_running_loop().time() + 30
        while not oracle.is_expired(t2, 1):
            assert asyncio.get_running_loop().time() < deadline
            await oracle.get_timestamp()
            await asyncio.sleep(0.005)
        assert not oracle.is_expired(await oracle.get_timestamp(), 60_000)
