"""PDOracle over the fake PD: fresh, low-resolution and stale timestamps, expiry, refresh."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from tikv_pd.errors import ClientClosedError
from tikv_pd.oracle import Oracle, extract_physical
from tikv_pd.pd_client import PDClient
from tikv_pd.pd_oracle import PDOracle

sys.path.insert(0, str(Path(__file__).parent))
from _pd_fake import FakePDCluster

NO_HANG = 60.0


@pytest.fixture
async def pd() -> AsyncIterator[tuple[FakePDCluster, PDClient]]:
    async with FakePDCluster(members=1) as cluster:
        client = await PDClient.connect(cluster.endpoints)
        try:
            yield cluster, client
        finally:
            await client.close()


async def poll(cond: Callable[[], bool]) -> None:
    deadline = asyncio.get_running_loop().time() + NO_HANG
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_create_fetches_and_implements_the_protocol(
    pd: tuple[FakePDCluster, PDClient],
) -> None:
    cluster, client = pd
    async with await PDOracle.create(client) as oracle:
        assert isinstance(oracle, Oracle)
        assert oracle.last_timestamp is not None
        assert cluster.state.tso_counts == [1]
        a = await oracle.get_timestamp()
        b = await oracle.get_timestamp()
        assert oracle.last_timestamp == b > a


async def test_low_resolution_timestamp_needs_no_rpc(pd: tuple[FakePDCluster, PDClient]) -> None:
    cluster, client = pd
    async with await PDOracle.create(client, update_interval=3600) as oracle:
        fresh = await oracle.get_timestamp()
        sent = len(cluster.state.tso_counts)
        assert await oracle.get_low_resolution_timestamp() == fresh
        assert len(cluster.state.tso_counts) == sent


async def test_background_refresh_advances_the_cached_timestamp(
    pd: tuple[FakePDCluster, PDClient],
) -> None:
    _, client = pd
    async with await PDOracle.create(client, update_interval=0.02) as oracle:
        first = await oracle.get_low_resolution_timestamp()
        await poll(lambda: oracle.refreshes >= 2)
        assert await oracle.get_low_resolution_timestamp() > first


async def test_stale_timestamp_is_about_prev_seconds_ago(
    pd: tuple[FakePDCluster, PDClient],
) -> None:
    _, client = pd
    async with await PDOracle.create(client, update_interval=3600) as oracle:
        stale = await oracle.get_stale_timestamp(1.0)
        fresh = await oracle.get_timestamp()
        # The estimate is the cached ts advanced by the local time since it arrived,
        # minus one second: at least ~1000 ms before any later fresh timestamp.
        assert extract_physical(fresh) - extract_physical(stale) >= 990
        with pytest.raises(ValueError, match="prev_seconds"):
            await oracle.get_stale_timestamp(-1)
        with pytest.raises(ValueError, match="prev_seconds"):
            await oracle.get_stale_timestamp(10**12)
        with pytest.raises(TypeError):
            await oracle.get_stale_timestamp("1")  # type: ignore[arg-type]


async def test_expiry_against_the_cached_timestamp(pd: tuple[FakePDCluster, PDClient]) -> None:
    _, client = pd
    async with await PDOracle.create(client, update_interval=3600) as oracle:
        now = await oracle.get_timestamp()
        assert oracle.is_expired(now, 0)
        assert not oracle.is_expired(now, 600_000)
        assert oracle.until_expired(now, 600_000) == 600_000
        old = now - (5_000 << 18)
        assert oracle.is_expired(old, 3_000)
        assert oracle.until_expired(old, 3_000) == -2_000
        await oracle.set_external_timestamp(now)
        assert await oracle.get_external_timestamp() == now
        assert await oracle.get_min_timestamp() > now


async def test_get_timestamp_retries_through_a_tso_outage(
    pd: tuple[FakePDCluster, PDClient],
) -> None:
    cluster, client = pd
    async with await PDOracle.create(client, update_interval=3600) as oracle:
        kills = {"left": 3}  # more than the PD client's single re-send

        async def kill(member: int, count: int) -> None:
            if kills["left"]:
                kills["left"] -= 1
                raise RuntimeError("tso down")

        cluster.state.tso_hook = kill
        before = oracle.last_timestamp
        assert before is not None
        ts = await asyncio.wait_for(oracle.get_timestamp(), NO_HANG)
        assert ts > before and kills["left"] == 0


async def test_refresh_failure_is_recorded_and_close_stops(
    pd: tuple[FakePDCluster, PDClient],
) -> None:
    cluster, client = pd
    oracle = await PDOracle.create(client, update_interval=0.02)

    async def down(member: int, count: int) -> None:
        raise RuntimeError("tso down")

    cluster.state.tso_hook = down
    await poll(lambda: oracle.last_refresh_error is not None)
    cluster.state.tso_hook = None
    await poll(lambda: oracle.last_refresh_error is None)
    await oracle.close()
    await oracle.close()
    with pytest.raises(ClientClosedError):
        await oracle.get_timestamp()
    with pytest.raises(ClientClosedError):
        await oracle.get_low_resolution_timestamp()


async def test_constructor_validation(pd: tuple[FakePDCluster, PDClient]) -> None:
    _, client = pd
    with pytest.raises(TypeError, match="PDClient"):
        PDOracle(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="update_interval"):
        PDOracle(client, update_interval=0)
