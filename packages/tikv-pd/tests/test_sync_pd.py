"""The sync facade pattern end to end: one PD client on a LoopThread, used by many threads."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tikv_pd.errors import ClientClosedError
from tikv_pd.pd_client import PDClient
from tikv_pd.sync import LoopThread

sys.path.insert(0, str(Path(__file__).parent))
from _pd_fake import FakePDCluster


@pytest.fixture
def setup() -> Iterator[tuple[LoopThread, FakePDCluster, PDClient]]:
    lt = LoopThread(name="pd-sync-test")

    async def start() -> tuple[FakePDCluster, PDClient]:
        fake = FakePDCluster(members=1)
        await fake.__aenter__()
        fake.set_regions([b"m"], stores=[1])
        return fake, await PDClient.connect(fake.endpoints)

    fake, client = lt.run(start())
    try:
        yield lt, fake, client
    finally:

        async def stop() -> None:
            await client.close()
            await fake.__aexit__(None, None, None)

        lt.run(stop())
        lt.close()


def test_threads_share_one_tso_stream(setup: tuple[LoopThread, FakePDCluster, PDClient]) -> None:
    lt, fake, client = setup
    per_thread: dict[int, list[int]] = {}
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        barrier.wait()
        per_thread[n] = [lt.run(client.get_timestamp(), timeout=60) for _ in range(50)]

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(per_thread) == list(range(8))
    everything = [ts for stamps in per_thread.values() for ts in stamps]
    assert len(everything) == len(set(everything)) == 400
    for stamps in per_thread.values():
        assert stamps == sorted(stamps)
    # Every call went over the one stream of the one client.
    assert sum(fake.state.tso_counts) == 400
    assert len(fake.state.tso_counts) == client.tso_requests_sent


def test_region_lookup_from_a_thread(setup: tuple[LoopThread, FakePDCluster, PDClient]) -> None:
    lt, _, client = setup
    region = lt.run(client.get_region(b"z"))
    assert region is not None and region.start_key == b"m"


async def test_sync_call_inside_asyncio_is_refused(
    setup: tuple[LoopThread, FakePDCluster, PDClient],
) -> None:
    lt, _, client = setup
    with pytest.raises(RuntimeError, match="running event loop"):
        lt.run(client.get_timestamp())


def test_closing_the_loop_fails_waiting_threads(
    setup: tuple[LoopThread, FakePDCluster, PDClient],
) -> None:
    lt, fake, client = setup
    gate = asyncio.Event()
    entered = threading.Event()

    async def stall(member: int, count: int) -> None:
        entered.set()
        await gate.wait()

    fake.state.tso_hook = stall
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            lt.run(client.get_timestamp())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    assert entered.wait(30)

    async def close_client() -> None:
        await client.close()

    lt.run(close_client())
    thread.join(30)
    assert len(errors) == 1 and isinstance(errors[0], ClientClosedError)
    fake.state.tso_hook = None
    lt.loop.call_soon_threadsafe(gate.set)
