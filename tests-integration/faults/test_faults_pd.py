"""PD faults: the PD leader moved again and again under raw and TSO traffic; TSO streams
dropped under waiting callers.

Invariants: timestamps are unique and increase for each caller; every waiter gets a
timestamp or a typed error (``PDError``), none hangs; raw writes acknowledged while PD
changed leaders are all readable; region lookups (forced by splits) keep working.
"""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
from _support import NO_HANG, WriteLog, apoll, poll, spread_keys, within
from tikv_mockstore import MockCluster
from tikv_pd.config import Config
from tikv_pd.errors import PDError
from tikv_pd.pd_client import PDClient
from tikv_raw import AsyncRawClient, RawClient, TiKVError

MOVES = 6


async def test_pd_leader_moved_repeatedly_under_raw_and_tso_traffic(
    cluster3pd: MockCluster,
) -> None:
    cluster = cluster3pd
    log = WriteLog()
    stop = asyncio.Event()
    stamps: list[list[int]] = [[] for _ in range(8)]
    # Connect through a follower: the client must discover the leader and follow it.
    endpoints = cluster.pd_endpoints[1:] + cluster.pd_endpoints[:1]
    async with (
        await AsyncRawClient.connect(endpoints) as raw,
        await PDClient.connect(endpoints) as pd,
    ):

        async def tso_caller(i: int) -> None:
            while not stop.is_set():
                stamps[i].append(await pd.get_timestamp())

        async def writer(w: int) -> None:
            op = 0
            while not stop.is_set():
                keys = spread_keys(b"pd%d/" % w, (op + 1) * 8)[op * 8 :]
                pairs = dict.fromkeys(keys, b"%d" % op)
                try:
                    await raw.batch_put(pairs)
                except TiKVError as exc:
                    log.failed(pairs, exc)
                else:
                    log.ok(pairs)
                op += 1

        tasks = [asyncio.ensure_future(tso_caller(i)) for i in range(len(stamps))]
        tasks += [asyncio.ensure_future(writer(w)) for w in range(3)]

        def alive() -> None:
            for t in tasks:
                if t.done():
                    t.result()  # a worker died: raise its error here

        split_at = 0x08
        for _ in range(MOVES):
            leader = cluster.move_pd_leader()
            # A split makes cached regions stale: the writers must ask the (new) PD leader.
            cluster.split([bytes([split_at]) + b"pd"])
            split_at += 0x20
            marks = (log.ops, sum(map(len, stamps)))
            await apoll(
                lambda marks=marks: (  # type: ignore[misc]
                    alive() is None
                    and log.ops >= marks[0] + 5
                    and sum(map(len, stamps)) >= marks[1] + 50
                ),
                within=NO_HANG,
                what="raw and TSO progress after a PD leader move",
            )
            address = leader.client_url.removeprefix("http://")
            await apoll(lambda a=address: pd.leader == a, within=NO_HANG, what="leader followed")
        stop.set()
        await within(asyncio.gather(*tasks))

        assert not log.errors, log.errors[:3]
        got = await raw.batch_get(sorted(log.acked))
        log.check(got)
    every = [ts for caller in stamps for ts in caller]
    assert len(every) == len(set(every)), "a timestamp was handed out twice"
    for caller in stamps:
        assert caller == sorted(caller), "a caller saw time go backwards"
    assert max(every) < cluster.current_ts()


async def test_tso_stream_reset_waiters_get_a_timestamp_or_a_typed_error(
    cluster3pd: MockCluster,
) -> None:
    cluster = cluster3pd
    # A 1 s PD deadline (default 3 s) keeps the hung-stream case short.
    config = Config(pd_timeout=1.0)
    async with await PDClient.connect(cluster.pd_endpoints, config=config) as pd:
        before = await pd.get_timestamp()
        # 1. The stream breaks once under 200 waiters: the batch is re-sent on a new
        # stream, everyone gets a unique timestamp.
        fault = cluster.faults.add("Tso", drop_stream=True, times=1)
        got = await within(asyncio.gather(*(pd.get_timestamp() for _ in range(200))))
        assert fault.hits == 1
        assert len(set(got)) == 200
        assert min(got) > before
        # 2. Every stream breaks for a while: waiters end (timestamp or PDError), never
        # hang; once PD answers again, timestamps flow and still increase.
        fault = cluster.faults.add("Tso", status=grpc.StatusCode.UNAVAILABLE)
        outcomes = await within(
            asyncio.gather(*(pd.get_timestamp() for _ in range(50)), return_exceptions=True)
        )
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert errors, "every Tso call fails: some waiter must have been told"
        assert all(isinstance(e, PDError) for e in errors), errors[:3]
        assert all(o > max(got) for o in outcomes if isinstance(o, int))
        cluster.faults.remove(fault)
        after = await within(asyncio.gather(*(pd.get_timestamp() for _ in range(50))))
        assert len(set(after)) == 50
        assert min(after) > max(got)
        # 3. The stream hangs (no answer): waiters are failed by the TSO deadline instead
        # of waiting forever, and the next request works.
        fault = cluster.faults.add("Tso", hang=True, times=1)
        try:
            outcome = await within(
                asyncio.gather(pd.get_timestamp(), return_exceptions=True), NO_HANG
            )
        finally:
            fault.release()
        assert isinstance(outcome[0], int | PDError), outcome
        assert await within(pd.get_timestamp()) > max(after)


@pytest.mark.parametrize("moves", [3])
async def test_tso_across_pd_leader_moves_with_a_stream_drop(
    cluster3pd: MockCluster, moves: int
) -> None:
    """Leader moves and stream drops together: no caller fails, no duplicate timestamp."""
    cluster = cluster3pd
    async with await PDClient.connect(cluster.pd_endpoints) as pd:
        seen: list[int] = []
        for _ in range(moves):
            cluster.move_pd_leader()
            cluster.faults.add("Tso", drop_stream=True, times=1)
            seen += await within(asyncio.gather(*(pd.get_timestamp() for _ in range(100))))
        assert len(seen) == len(set(seen)) == 100 * moves


def test_pd_leader_moves_under_sync_client_threads(cluster3pd: MockCluster) -> None:
    """The blocking facade: threads keep writing while PD changes leaders and regions split."""
    cluster = cluster3pd
    log = WriteLog()
    stop = threading.Event()
    crashed: list[BaseException] = []
    with RawClient.connect(cluster.pd_endpoints) as client:

        def writer(w: int) -> None:
            op = 0
            try:
                while not stop.is_set():
                    keys = spread_keys(b"spd%d/" % w, (op + 1) * 8)[op * 8 :]
                    pairs = dict.fromkeys(keys, b"%d" % op)
                    try:
                        client.batch_put(pairs)
                    except TiKVError as exc:
                        log.failed(pairs, exc)
                    else:
                        log.ok(pairs)
                    op += 1
            except BaseException as exc:
                crashed.append(exc)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        try:
            for i in range(3):
                cluster.move_pd_leader()
                cluster.split([bytes([0x18 + 0x40 * i]) + b"spd"])
                mark = log.ops
                poll(lambda m=mark: log.ops >= m + 5 or bool(crashed), within=NO_HANG)
        finally:
            stop.set()
            for t in threads:
                t.join(NO_HANG)
        assert not any(t.is_alive() for t in threads)
        assert not crashed, crashed
        assert not log.errors, log.errors[:3]
        log.check(client.batch_get(sorted(log.acked)))


async def test_pd_leader_crashes_repeatedly_under_raw_and_tso_traffic(
    cluster3pd: MockCluster,
) -> None:
    """The PD leader's server dies (its port refuses connections) three times in a row,
    each time under TSO callers and raw writers that need region lookups.

    TSO callers get a timestamp or a typed ``PDError`` (never a hang, never a duplicate);
    raw writes keep being acknowledged and every acknowledged one is readable.
    """
    cluster = cluster3pd
    log = WriteLog()
    stop = asyncio.Event()
    stamps: list[int] = []
    tso_errors: list[BaseException] = []
    async with (
        await AsyncRawClient.connect(cluster.pd_endpoints) as raw,
        await PDClient.connect(cluster.pd_endpoints) as pd,
    ):

        async def tso_caller() -> None:
            last = 0
            while not stop.is_set():
                try:
                    ts = await pd.get_timestamp()
                except PDError as exc:
                    tso_errors.append(exc)
                    await asyncio.sleep(0.01)  # pace retries of a failing caller
                    continue
                assert ts > last
                last = ts
                stamps.append(ts)

        async def writer(w: int) -> None:
            op = 0
            while not stop.is_set():
                keys = spread_keys(b"crash%d/" % w, (op + 1) * 8)[op * 8 :]
                pairs = dict.fromkeys(keys, b"%d" % op)
                try:
                    await raw.batch_put(pairs)
                except TiKVError as exc:
                    log.failed(pairs, exc)
                else:
                    log.ok(pairs)
                op += 1

        tasks = [asyncio.ensure_future(tso_caller()) for _ in range(6)]
        tasks += [asyncio.ensure_future(writer(w)) for w in range(2)]

        def alive() -> None:
            for t in tasks:
                if t.done():
                    t.result()

        for i in range(3):
            stopped = await asyncio.to_thread(cluster.stop_pd)
            cluster.split([bytes([0x28 + 0x40 * i]) + b"crash"])  # force region lookups
            marks = (log.ops, len(stamps))
            await apoll(
                lambda marks=marks: (  # type: ignore[misc]
                    alive() is None and log.ops >= marks[0] + 5 and len(stamps) >= marks[1] + 50
                ),
                within=NO_HANG,
                what="raw and TSO progress after a PD leader crash",
            )
            await asyncio.to_thread(cluster.restart_pd, stopped.member_id)
        stop.set()
        await within(asyncio.gather(*tasks))
        assert not log.errors, log.errors[:3]
        log.check(await raw.batch_get(sorted(log.acked)))
    assert len(stamps) == len(set(stamps))
    assert all(isinstance(e, PDError) for e in tso_errors)


async def test_every_pd_member_down(cluster3pd: MockCluster) -> None:
    """PD is entirely unreachable for a while: raw reads and writes keep working from the
    region cache (a split is learnt from EpochNotMatch, not from PD); TSO callers get a
    typed PDError quickly instead of hanging; once PD is back, both recover."""
    cluster = cluster3pd
    pairs = {bytes([i * 32]) + b"pd-down": b"v%d" % i for i in range(8)}
    async with (
        await AsyncRawClient.connect(cluster.pd_endpoints) as raw,
        await PDClient.connect(cluster.pd_endpoints) as pd,
    ):
        await raw.batch_put(pairs)
        before = await pd.get_timestamp()
        members = cluster.pd_members()
        for member in members:
            await asyncio.to_thread(cluster.stop_pd, member.member_id)
        try:
            assert await within(raw.batch_get(list(pairs))) == pairs
            cluster.split([b"\x21"])  # a region splits while PD is away
            assert await within(raw.batch_get(list(pairs))) == pairs
            await within(raw.put(b"\x20pd-down-new", b"x"))
            with pytest.raises(PDError):
                await within(pd.get_timestamp())
        finally:
            for member in members:
                await asyncio.to_thread(cluster.restart_pd, member.member_id)

        async def first_timestamp_after_restart() -> int:
            # The channel reconnects on its own backoff schedule, so the first calls after
            # the restart may still fail with a typed PDError; recovery must come before the
            # deadline. (PDClient re-sends a failed TSO batch once; PDOracle retries longer.)
            while True:
                try:
                    return await pd.get_timestamp()
                except PDError:
                    await asyncio.sleep(0.05)

        assert await within(first_timestamp_after_restart()) > before
        assert await raw.get(b"\x20pd-down-new") == b"x"
