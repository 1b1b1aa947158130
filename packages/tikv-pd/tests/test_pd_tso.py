"""The batching TSO stream: batching, ordering, stream failures, leader moves, close."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tikv_pd import pd_client as pd_client_module
from tikv_pd.config import Config
from tikv_pd.errors import ClientClosedError, PDError
from tikv_pd.pd_client import PDClient

sys.path.insert(0, str(Path(__file__).parent))
from _pd_fake import FakePDCluster

# A generous safety net: a test that hangs fails here instead of at the pytest timeout.
NO_HANG = 60.0


@pytest.fixture
async def pd3() -> AsyncIterator[FakePDCluster]:
    async with FakePDCluster(members=3) as cluster:
        cluster.set_regions([b"m"], stores=[1])
        yield cluster


async def test_thousand_concurrent_callers_share_few_requests(pd3: FakePDCluster) -> None:
    async with await PDClient.connect(pd3.endpoints, config=Config(pd_timeout=2.0)) as client:

        async def caller() -> list[int]:
            return [await client.get_timestamp() for _ in range(3)]

        results = await asyncio.wait_for(asyncio.gather(*(caller() for _ in range(1000))), NO_HANG)
        flat = [ts for per_caller in results for ts in per_caller]
        assert len(flat) == 3000
        assert len(set(flat)) == 3000, "timestamps must be unique"
        for per_caller in results:
            assert per_caller[0] < per_caller[1] < per_caller[2]
        counts = pd3.state.tso_counts
        assert sum(counts) == 3000
        assert len(counts) == client.tso_requests_sent
        # One request in flight at a time: callers that arrive meanwhile share the next.
        assert len(counts) <= 30, counts
        assert max(counts) >= 500
        assert client.timestamps_served == 3000


async def test_batch_gets_consecutive_logicals_in_fifo_order(pd3: FakePDCluster) -> None:
    async with await PDClient.connect(pd3.endpoints) as client:
        futures = [client.request_timestamp() for _ in range(5)]
        stamps = await asyncio.wait_for(asyncio.gather(*futures), NO_HANG)
        assert pd3.state.tso_counts == [5]
        assert stamps == list(range(stamps[0], stamps[0] + 5))
        # PD answered with the largest: the last caller got exactly PD's timestamp.
        assert stamps[-1] == (pd3.state.physical << 18) | (pd3.state.logical - 1)
        later = await client.get_timestamp()
        assert later > stamps[-1]


async def test_batch_size_is_capped(pd3: FakePDCluster) -> None:
    config = Config(tso_max_batch_size=7)
    async with await PDClient.connect(pd3.endpoints, config=config) as client:
        stamps = await asyncio.wait_for(
            asyncio.gather(*(client.get_timestamp() for _ in range(20))), NO_HANG
        )
        assert len(set(stamps)) == 20
        assert max(pd3.state.tso_counts) <= 7
        assert sum(pd3.state.tso_counts) == 20


async def test_stream_killed_once_callers_get_timestamps_after_reconnect(
    pd3: FakePDCluster,
) -> None:
    kills = {"left": 1}

    async def kill_once(member: int, count: int) -> None:
        if kills["left"]:
            kills["left"] -= 1
            raise RuntimeError("stream killed by test")

    pd3.state.tso_hook = kill_once
    async with await PDClient.connect(pd3.endpoints) as client:
        stamps = await asyncio.wait_for(
            asyncio.gather(*(client.get_timestamp() for _ in range(50))), NO_HANG
        )
        assert len(set(stamps)) == 50
        assert kills["left"] == 0
        # The broken batch was re-sent on a new stream.
        assert client.tso_requests_sent >= 2


async def test_stream_always_broken_fails_every_waiter_with_pd_error(
    pd3: FakePDCluster,
) -> None:
    async def always_kill(member: int, count: int) -> None:
        raise RuntimeError("TSO unavailable")

    async with await PDClient.connect(pd3.endpoints) as client:
        pd3.state.tso_hook = always_kill
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(client.get_timestamp() for _ in range(40)), return_exceptions=True),
            NO_HANG,
        )
        assert len(outcomes) == 40
        assert all(isinstance(o, PDError) for o in outcomes), outcomes
        # The stream recovers once PD does.
        pd3.state.tso_hook = None
        assert await asyncio.wait_for(client.get_timestamp(), NO_HANG) > 0


async def test_unanswered_request_times_out_instead_of_hanging(pd3: FakePDCluster) -> None:
    never = asyncio.Event()

    async def stall(member: int, count: int) -> None:
        await never.wait()

    async with await PDClient.connect(pd3.endpoints, config=Config(pd_timeout=0.2)) as client:
        pd3.state.tso_hook = stall
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(client.get_timestamp() for _ in range(10)), return_exceptions=True),
            NO_HANG,
        )
        assert all(isinstance(o, PDError) and "timed out" in str(o) for o in outcomes)
        never.set()


async def test_wrong_count_breaks_stream_and_batch_is_retried(pd3: FakePDCluster) -> None:
    async with await PDClient.connect(pd3.endpoints) as client:
        pd3.state.tso_wrong_count = 1
        stamps = await asyncio.wait_for(
            asyncio.gather(*(client.get_timestamp() for _ in range(8))), NO_HANG
        )
        assert len(set(stamps)) == 8
        assert pd3.state.tso_wrong_count == 0


async def test_leader_moves_during_traffic_no_request_fails(pd3: FakePDCluster) -> None:
    async with await PDClient.connect(pd3.endpoints) as client:
        stop = asyncio.Event()
        got: list[list[int]] = [[] for _ in range(20)]

        async def tso_worker(i: int) -> None:
            while not stop.is_set():
                got[i].append(await client.get_timestamp())

        async def region_worker() -> int:
            n = 0
            while not stop.is_set():
                region = await client.get_region(b"a")
                assert region is not None
                n += 1
            return n

        workers = [asyncio.create_task(tso_worker(i)) for i in range(20)]
        regions = asyncio.create_task(region_worker())
        for leader in (1, 2, 0, 2):
            served = client.timestamps_served
            pd3.move_leader(leader)

            def progressed(mark: int = served, target: int = leader) -> bool:
                return (
                    client.timestamps_served > mark + 200 and client.leader == pd3.endpoints[target]
                )

            deadline = asyncio.get_running_loop().time() + NO_HANG
            while not progressed():
                assert asyncio.get_running_loop().time() < deadline, "no progress"
                for w in (*workers, regions):
                    if w.done():
                        w.result()  # surface a worker's failure
                await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*workers), NO_HANG)
        assert await asyncio.wait_for(regions, NO_HANG) > 0
        for per_worker in got:
            assert per_worker == sorted(per_worker)
        everything = [ts for w in got for ts in w]
        assert len(everything) == len(set(everything))


async def test_close_fails_pending_waiters_with_client_closed(pd3: FakePDCluster) -> None:
    never = asyncio.Event()
    entered = asyncio.Event()

    async def stall(member: int, count: int) -> None:
        entered.set()
        await never.wait()

    client = await PDClient.connect(pd3.endpoints, config=Config(pd_timeout=30.0))
    pd3.state.tso_hook = stall
    waiters = [asyncio.ensure_future(client.get_timestamp()) for _ in range(5)]
    await asyncio.wait_for(entered.wait(), NO_HANG)
    await asyncio.wait_for(client.close(), NO_HANG)
    outcomes = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), NO_HANG)
    assert all(isinstance(o, ClientClosedError) for o in outcomes), outcomes
    never.set()
    with pytest.raises(ClientClosedError):
        client.request_timestamp()


async def test_cancelled_caller_does_not_disturb_others(pd3: FakePDCluster) -> None:
    async with await PDClient.connect(pd3.endpoints) as client:
        futures = [client.request_timestamp() for _ in range(6)]
        futures[2].cancel()
        done = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), NO_HANG)
        assert isinstance(done[2], asyncio.CancelledError)
        values = [d for i, d in enumerate(done) if i != 2]
        assert all(isinstance(v, int) for v in values)
        assert pd3.state.tso_counts == [5]


async def test_dispatcher_crash_fails_waiters_instead_of_hanging(
    pd3: FakePDCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await PDClient.connect(pd3.endpoints) as client:

        def broken(self: object) -> list[object]:
            raise RuntimeError("bug in batching")

        monkeypatch.setattr(pd_client_module._TsoDispatcher, "_take_batch", broken)
        with pytest.raises(PDError, match="stopped unexpectedly"):
            await asyncio.wait_for(client.get_timestamp(), NO_HANG)
        with pytest.raises(PDError, match="stopped unexpectedly"):
            client.request_timestamp()


async def test_stream_that_ended_while_idle_is_reopened_without_a_failure(
    pd3: FakePDCluster,
) -> None:
    async with await PDClient.connect(pd3.endpoints) as client:
        pd3.state.tso_end_stream_after_answer = True
        for _ in range(3):
            await asyncio.wait_for(client.get_timestamp(), NO_HANG)
            # White-box: wait until the client has seen the stream end (status OK).
            deadline = asyncio.get_running_loop().time() + NO_HANG
            while not client._tso._stream or not client._tso._stream.done():
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.005)
        assert client._tso.last_error is None
        assert client.tso_requests_sent == 3


async def test_leader_crash_callers_get_timestamps_from_the_new_leader(
    pd3: FakePDCluster,
) -> None:
    async with await PDClient.connect(pd3.endpoints) as client:
        assert await client.get_timestamp() > 0
        await pd3.stop_member(0)
        pd3.move_leader(2)
        stamps = await asyncio.wait_for(
            asyncio.gather(*(client.get_timestamp() for _ in range(30))), NO_HANG
        )
        assert len(set(stamps)) == 30
        assert client.leader == pd3.endpoints[2]
