"""PDOracle.validate_read_ts and the adaptive refresh over the fake PD (client-go pd_test.go).

The fake PD's clock is frozen in the future for the exact cases: every TSO request then
hands out the next logical value, as client-go's MockPdClient does.
"""

from __future__ import annotations

import asyncio
import pickle
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from tikv_pd.errors import ClientClosedError, FutureTSReadError, LatestStaleReadError
from tikv_pd.oracle import MAX_TIMESTAMP, compose_ts, extract_physical
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


def freeze_pd_clock(cluster: FakePDCluster) -> None:
    # Physical time far ahead of the wall clock: only the logical part moves.
    cluster.state.physical = int(time.time() * 1000) + 10**8
    cluster.state.logical = 0


async def unstarted_oracle(client: PDClient, interval: float = 2.0) -> PDOracle:
    """An oracle without its refresh task (client-go NoUpdateTS), seeded with one ts."""
    oracle = PDOracle(client, update_interval=interval)
    await oracle.get_timestamp()
    return oracle


async def poll(cond: Callable[[], bool]) -> None:
    deadline = asyncio.get_running_loop().time() + NO_HANG
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("stale_read", [False, True])
async def test_validate_read_ts(pd: tuple[FakePDCluster, PDClient], stale_read: bool) -> None:
    # client-go TestValidateReadTS.
    cluster, client = pd
    freeze_pd_clock(cluster)
    oracle = await unstarted_oracle(client)
    try:
        if stale_read:
            with pytest.raises(LatestStaleReadError):
                await oracle.validate_read_ts(MAX_TIMESTAMP, stale_read=True)
        else:
            await oracle.validate_read_ts(MAX_TIMESTAMP)

        ts = await oracle.get_timestamp()
        await oracle.validate_read_ts(1, stale_read=stale_read)
        await oracle.validate_read_ts(ts, stale_read=stale_read)
        assert oracle.validation_fetches == 0  # under the cached ts: no RPC

        # Beyond the cache: a fresh ts (ts + 1) from PD lets it pass.
        ts = await oracle.get_timestamp()
        await oracle.validate_read_ts(ts + 1, stale_read=stale_read)
        assert oracle.validation_fetches == 1
        # ts + 2 passes on the one retry (the second fresh ts).
        ts = await oracle.get_timestamp()
        await oracle.validate_read_ts(ts + 2, stale_read=stale_read)
        assert oracle.validation_fetches == 3
        # ts + 3 is out of reach of one retry: refused, with both timestamps.
        ts = await oracle.get_timestamp()
        with pytest.raises(FutureTSReadError) as info:
            await oracle.validate_read_ts(ts + 3, stale_read=stale_read)
        assert info.value.read_ts == ts + 3
        assert info.value.current_ts == ts + 2
        assert isinstance(info.value, ValueError)
        assert f"read ts {ts + 3} is newer than the current ts {ts + 2}" in str(info.value)

        # Another client of the same PD took two timestamps: ts + 3 exists now.
        ts = await oracle.get_timestamp()
        cluster.state.logical += 2
        await oracle.validate_read_ts(ts + 3, stale_read=stale_read)
        assert oracle.last_timestamp == ts + 3
    finally:
        await oracle.close()


async def test_normal_reads_do_not_adapt_the_interval(pd: tuple[FakePDCluster, PDClient]) -> None:
    # client-go TestValidateReadTSForNormalReadDoNotAffectUpdateInterval.
    cluster, client = pd
    freeze_pd_clock(cluster)
    oracle = await unstarted_oracle(client)
    try:
        ts = await oracle.get_timestamp()
        await oracle.validate_read_ts(ts)
        await oracle.validate_read_ts(ts + 2)  # fetches ts + 1, retries with ts + 2
        with pytest.raises(FutureTSReadError):
            await oracle.validate_read_ts(ts + 5)  # fetches ts + 3 and ts + 4
        await oracle.validate_read_ts(ts + 5)  # fetches ts + 5
        assert oracle.validation_fetches == 5
        assert oracle.adaptive_interval.last_short_staleness_read is None
        assert oracle.adaptive_interval.state == ""
        assert oracle._shrink_requests.empty()
        assert oracle.update_interval == 2.0
    finally:
        await oracle.close()


async def test_concurrent_validations_share_one_fetch_and_survive_a_cancelled_caller(
    pd: tuple[FakePDCluster, PDClient],
) -> None:
    # client-go TestValidateReadTSForStaleReadReusingGetTSResult, with our one retry.
    cluster, client = pd
    freeze_pd_clock(cluster)
    oracle = await unstarted_oracle(client)
    gate = asyncio.Event()

    async def hold(_member: int, _count: int) -> None:
        await gate.wait()

    try:
        base = await oracle.get_timestamp()
        cluster.state.tso_hook = hold
        cluster.state.logical = (base & 0x3FFFF) + 100  # the next fresh ts is base + 100
        t = base + 100
        tso_before = cluster.state.calls["Tso"]
        reads = [t - 2, t + 2, t - 1, t + 1, t]
        tasks = [asyncio.create_task(oracle.validate_read_ts(r, stale_read=True)) for r in reads]
        await poll(lambda: cluster.state.calls["Tso"] == tso_before + 1)
        assert oracle.validation_fetches == 1  # one fetch for the five callers
        assert not any(task.done() for task in tasks)

        tasks[2].cancel()  # the caller reading at t - 1 gives up
        await asyncio.wait([tasks[2]])
        assert tasks[2].cancelled()
        assert not any(task.done() for i, task in enumerate(tasks) if i != 2)

        gate.set()
        results = await asyncio.wait_for(
            asyncio.gather(*tasks[:2], *tasks[3:], return_exceptions=True), NO_HANG
        )
        # t - 2 and t pass on the shared fetch (t); t + 1 and t + 2 retry together on a
        # second shared fetch (t + 1): t + 1 passes, t + 2 is refused.
        assert results[0] is None and results[3] is None and results[2] is None
        err = results[1]
        assert isinstance(err, FutureTSReadError)
        assert (err.read_ts, err.current_ts) == (t + 2, t + 1)
        assert oracle.validation_fetches == 2
        assert cluster.state.calls["Tso"] == tso_before + 2
    finally:
        gate.set()
        await oracle.close()


async def test_a_short_staleness_stale_read_shrinks_the_background_interval(
    pd: tuple[FakePDCluster, PDClient],
) -> None:
    _, client = pd
    async with await PDOracle.create(client, update_interval=2.0) as oracle:
        last = oracle.last_timestamp
        assert last is not None
        # Staleness 3 s > 2 s: nothing changes.
        await oracle.validate_read_ts(compose_ts(extract_physical(last) - 3000, 0), stale_read=True)
        assert oracle.adaptive_interval.last_short_staleness_read is None
        # Staleness about 1 s <= 2 s: the refresh task shrinks its interval to about
        # 0.9 s (the staleness minus 100 ms).
        await oracle.validate_read_ts(compose_ts(extract_physical(last) - 1000, 0), stale_read=True)
        assert oracle.adaptive_interval.last_short_staleness_read is not None
        await poll(lambda: oracle.adaptive_interval.state == "adapting")
        assert 0.5 <= oracle.update_interval < 1.0
        assert oracle.adaptive_interval.configured == 2.0
        # The refresh keeps running at the new pace.
        refreshed = oracle.refreshes
        await poll(lambda: oracle.refreshes > refreshed)


async def test_set_update_interval(pd: tuple[FakePDCluster, PDClient]) -> None:
    _, client = pd
    async with await PDOracle.create(client, update_interval=3600) as oracle:
        first = oracle.refreshes
        oracle.set_update_interval(0.02)
        assert oracle.update_interval == 0.02
        assert oracle.adaptive_interval.configured == 0.02
        # The new interval is picked up (the current wait may end first: 3600 s would
        # hang, so wake the task the way a stale read does).
        oracle._shrink_requests.put_nowait(0.001)
        await poll(lambda: oracle.refreshes >= first + 2)
        assert oracle.adaptive_interval.state == "unadjustable"
        with pytest.raises(ValueError, match="must be > 0"):
            oracle.set_update_interval(0)


async def test_validate_read_ts_rejects_bad_input_before_any_rpc(
    pd: tuple[FakePDCluster, PDClient],
) -> None:
    cluster, client = pd
    oracle = await unstarted_oracle(client)
    tso = cluster.state.calls["Tso"]
    with pytest.raises(TypeError, match="read_ts must be an int"):
        await oracle.validate_read_ts(1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="read_ts must be an int"):
        await oracle.validate_read_ts(True)
    with pytest.raises(TypeError, match="stale_read must be a bool"):
        await oracle.validate_read_ts(1, stale_read=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="64-bit timestamp"):
        await oracle.validate_read_ts(-1)
    with pytest.raises(ValueError, match="64-bit timestamp"):
        await oracle.validate_read_ts(2**64)
    for mixed_up in (2**63 - 1, 2**63, 2**64 - 2):
        with pytest.raises(ValueError, match=r"2\*\*63 - 1"):
            await oracle.validate_read_ts(mixed_up)
    assert cluster.state.calls["Tso"] == tso
    await oracle.close()
    with pytest.raises(ClientClosedError):
        await oracle.validate_read_ts(1)


async def test_close_fails_a_caller_waiting_on_the_fetch(
    pd: tuple[FakePDCluster, PDClient],
) -> None:
    cluster, client = pd
    oracle = await unstarted_oracle(client)
    gate = asyncio.Event()

    async def hold(_member: int, _count: int) -> None:
        await gate.wait()

    cluster.state.tso_hook = hold
    last = oracle.last_timestamp
    assert last is not None
    waiting = asyncio.create_task(oracle.validate_read_ts(last + 10**6))
    await poll(lambda: oracle.validation_fetches == 1)
    await oracle.close()
    with pytest.raises(ClientClosedError, match="oracle was closed while a read ts"):
        await asyncio.wait_for(waiting, NO_HANG)
    gate.set()


def test_errors_pickle_with_their_facts() -> None:
    err = pickle.loads(pickle.dumps(FutureTSReadError(10, 7)))
    assert (err.read_ts, err.current_ts) == (10, 7)
    assert "read ts 10 is newer than the current ts 7" in str(err)
    stale = pickle.loads(pickle.dumps(LatestStaleReadError()))
    assert isinstance(stale, ValueError)
    assert "max timestamp" in str(stale)
