"""A TiKV store stopped and restarted under a concurrent raw write workload.

Invariants (what client-go guarantees and what we check):

- every acknowledged write is readable afterwards, with the acknowledged value (or the
  value of a later write of the same key whose outcome is unknown);
- nothing the workload never wrote appears;
- a read that starts after a write was acknowledged never returns an older value;
- CAS increments: every acknowledged swap is applied exactly once; a CAS that raised
  ``UndeterminedError`` may or may not be applied, so the counter ends between the
  acknowledged count and that plus the undetermined count;
- no operation hangs beyond its backoff budget; an operation that gives up raises a typed
  :class:`tikv_pd.errors.TiKVError`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest
from _support import (
    NO_HANG,
    WriteLog,
    apoll,
    poll,
    refuses_connections,
    sender_stats,
    spread_keys,
    within,
)
from tikv_mockstore import MockCluster
from tikv_raw import AsyncRawClient, ClientClosedError, RawClient, TiKVError, UndeterminedError

WRITERS = 6
BATCH = 12


def _seq(value: bytes) -> int:
    return int(value.rsplit(b"-", 1)[1])


def _batch(writer: int, op: int) -> dict[bytes, bytes]:
    """Op ``op`` of ``writer``: new keys over every region plus an overwrite of a hot key."""
    keys = spread_keys(b"w%d/" % writer, (op + 1) * BATCH)[op * BATCH :]
    pairs = dict.fromkeys(keys, b"w%d-%08d" % (writer, op))
    pairs[b"hot/w%d" % writer] = b"w%d-%08d" % (writer, op)
    return pairs


def _busiest_store(cluster: MockCluster) -> int:
    leaders: dict[int, int] = {}
    for region in cluster.regions():
        assert region.leader is not None
        leaders[region.leader.store_id] = leaders.get(region.leader.store_id, 0) + 1
    return max(leaders, key=lambda s: leaders[s])


async def _stored(cluster: MockCluster, keys: set[bytes]) -> dict[bytes, bytes]:
    """What the cluster holds for ``keys``, read with a fresh client (a cold cache)."""
    async with await AsyncRawClient.connect(cluster.pd_endpoints) as c:
        return await c.batch_get(sorted(keys))


async def _cas_counter(
    client: AsyncRawClient, key: bytes, stop: asyncio.Event, tally: dict[str, int]
) -> None:
    while not stop.is_set():
        try:
            current = await client.get(key)
            new = b"%d" % (int(current or b"0") + 1)
            _, swapped = await client.compare_and_swap(key, current, new)
            if swapped:
                tally["acked"] += 1
        except UndeterminedError:
            tally["undetermined"] += 1
        except TiKVError:
            tally["failed"] += 1  # e.g. the read gave up: nothing was written


async def test_store_stop_restart_under_async_batch_writers(
    cluster: MockCluster, client: AsyncRawClient
) -> None:
    log = WriteLog()
    stop = asyncio.Event()
    acked_seq: dict[bytes, int] = {}
    stale_reads: list[tuple[bytes, int, int]] = []

    async def writer(w: int) -> None:
        op = 0
        while not stop.is_set():
            pairs = _batch(w, op)
            try:
                await client.batch_put(pairs)
            except TiKVError as exc:
                log.failed(pairs, exc)
            else:
                log.ok(pairs)
                for k in pairs:
                    acked_seq[k] = op
            op += 1

    async def reader() -> None:
        hot = [b"hot/w%d" % w for w in range(WRITERS)]
        while not stop.is_set():
            floor = {k: acked_seq.get(k, -1) for k in hot}
            try:
                got = await client.batch_get(hot)
            except TiKVError:
                continue
            for k, v in got.items():
                if _seq(v) < floor[k]:
                    stale_reads.append((k, _seq(v), floor[k]))

    tally = {"acked": 0, "undetermined": 0, "failed": 0}
    async with await AsyncRawClient.connect(cluster.pd_endpoints, atomic=True) as atomic:
        tasks = [asyncio.ensure_future(writer(w)) for w in range(WRITERS)]
        tasks.append(asyncio.ensure_future(reader()))
        tasks += [
            asyncio.ensure_future(_cas_counter(atomic, b"\x90cas", stop, tally)) for _ in range(3)
        ]
        stats = sender_stats(client)

        def progressed(n: int) -> Callable[[], bool]:
            mark = log.ops
            return lambda: log.ops >= mark + n or any(t.done() for t in tasks)

        await apoll(progressed(20), what="workload started")
        # 1. The busiest store goes down and its leaders stay there (no election yet):
        # writes to its regions fail to connect and are retried until it comes back.
        victim = _busiest_store(cluster)
        failures = stats.send_failures
        await asyncio.to_thread(cluster.stop_store, victim, move_leaders=False)
        assert refuses_connections(cluster.store_addresses[victim])
        await apoll(lambda: stats.send_failures >= failures + 3, what="sends to the dead store")
        await asyncio.to_thread(cluster.restart_store, victim)
        await apoll(progressed(20), what="progress after the restart")
        # 2. Another store goes down and Raft elects new leaders elsewhere: the workload
        # continues while it is down (send failure -> region reload -> new leader).
        victim2 = _busiest_store(cluster)
        await asyncio.to_thread(cluster.stop_store, victim2, move_leaders=True)
        await apoll(progressed(20), what="progress while a store is down")
        await asyncio.to_thread(cluster.restart_store, victim2)
        await apoll(progressed(20), what="progress after the second restart")
        stop.set()
        await within(asyncio.gather(*tasks))
        counter = await atomic.get(b"\x90cas")

    assert not stale_reads, stale_reads[:5]
    assert all(isinstance(e, TiKVError) for e in log.errors), log.errors[:3]
    # The store came back well within the 20 s raw budget: no write had to give up.
    assert not log.errors, log.errors[:3]
    assert stats.send_failures > failures
    log.check(await _stored(cluster, set(log.acked) | set(log.after_ack)))
    value = int(counter or b"0")
    assert tally["acked"] <= value <= tally["acked"] + tally["undetermined"], (tally, value)
    assert tally["acked"] > 0


def test_store_stop_restart_under_sync_threads(cluster: MockCluster) -> None:
    """The blocking facade: threads share one RawClient while a store goes down."""
    log = WriteLog()
    stop = threading.Event()
    crashed: list[BaseException] = []

    with RawClient.connect(cluster.pd_endpoints) as client:

        def writer(w: int) -> None:
            try:
                op = 0
                while not stop.is_set():
                    pairs = _batch(w, op)
                    try:
                        client.batch_put(pairs)
                    except TiKVError as exc:
                        log.failed(pairs, exc)
                    else:
                        log.ok(pairs)
                    op += 1
            except BaseException as exc:  # an untyped error: the test fails on it
                crashed.append(exc)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        try:

            def progressed(n: int) -> Callable[[], bool]:
                mark = log.ops
                return lambda: log.ops >= mark + n or bool(crashed)

            poll(progressed(10), what="workload started")
            victim = _busiest_store(cluster)
            cluster.stop_store(victim, move_leaders=True)
            poll(progressed(20), what="progress while a store is down")
            cluster.restart_store(victim)
            poll(progressed(10), what="progress after the restart")
        finally:
            stop.set()
            for t in threads:
                t.join(NO_HANG)
        assert not any(t.is_alive() for t in threads), "a writer hung"
        assert not crashed, crashed
        assert not log.errors, log.errors[:3]
        keys = sorted(set(log.acked) | set(log.after_ack))
        log.check(client.batch_get(keys))
        # A scan over every region sees each written key exactly once.
        scanned = [k for k, _ in client.scan_iter(b"", None) if not k.startswith(b"hot/")]
        assert len(scanned) == len(set(scanned))
        assert set(scanned) == {k for k in keys if not k.startswith(b"hot/")}


@pytest.mark.slow
async def test_every_store_down_longer_than_the_budget_is_a_typed_timeout(
    cluster: MockCluster,
) -> None:
    """No live replica at all: the client gives up with a typed error after its budget.

    client-go sleeps at most 20 s (``RawkvMaxBackoff``) per raw operation before it
    returns; we check that the read ends, with a ``TiKVError``, within a generous bound,
    and that the client works again once the stores are back.
    """
    async with await AsyncRawClient.connect(cluster.pd_endpoints) as client:
        await client.put(b"\x10k", b"v")
        for store in cluster.stores():
            await asyncio.to_thread(cluster.stop_store, store.id, move_leaders=False)
        with pytest.raises(TiKVError):
            await within(client.get(b"\x10k"))
        for store in cluster.stores():
            await asyncio.to_thread(cluster.restart_store, store.id)
        assert await within(client.get(b"\x10k")) == b"v"


async def test_write_to_a_store_that_drops_the_connection_after_sending(
    cluster: MockCluster,
) -> None:
    """Short variant: a connection lost after sending. Idempotent writes are resent and
    succeed; a CAS is not resent and raises UndeterminedError; either way nothing hangs."""
    async with await AsyncRawClient.connect(cluster.pd_endpoints, atomic=True) as client:
        region = cluster.region_by_key(b"\x10")
        assert region is not None and region.leader is not None
        store = region.leader.store_id
        fault = cluster.faults.add("RawPut", store=store, drop_stream=True, times=2)
        await within(client.put(b"\x10put", b"v1"))
        assert fault.hits == 2
        assert await client.get(b"\x10put") == b"v1"
        cluster.faults.add("RawCompareAndSwap", store=store, drop_stream=True, times=1)
        with pytest.raises(UndeterminedError):
            await within(client.compare_and_swap(b"\x10put", b"v1", b"v2"))
        # The drop happened before the store served it: the old value is still there,
        # and the next CAS (no fault left) decides normally.
        assert await client.get(b"\x10put") == b"v1"
        assert await client.compare_and_swap(b"\x10put", b"v1", b"v2") == (b"v1", True)


async def _pending_get_then_close(cluster: MockCluster) -> BaseException:
    """A read retrying against dead stores, ended by closing its client."""
    client = await AsyncRawClient.connect(cluster.pd_endpoints)
    await client.put(b"\x10k", b"v")
    for store in cluster.stores():
        await asyncio.to_thread(cluster.stop_store, store.id, move_leaders=False)
    stats = sender_stats(client)
    task = asyncio.ensure_future(client.get(b"\x10k"))
    await apoll(lambda: stats.send_failures >= 2, what="the read is retrying")
    await client.close()
    with pytest.raises(ClientClosedError) as info:
        await within(task, 10)  # at once, not after the 20 s backoff budget
    return info.value


async def test_closing_the_client_ends_operations_that_are_retrying(cluster: MockCluster) -> None:
    error = await _pending_get_then_close(cluster)
    assert isinstance(error, TiKVError)


async def test_client_closed_error_says_closed_once(cluster: MockCluster) -> None:
    error = await _pending_get_then_close(cluster)
    assert "closed is closed" not in str(error)
    assert "closed" in str(error)


async def test_flaky_connections_under_concurrent_writers(
    cluster: MockCluster, client: AsyncRawClient
) -> None:
    """Connections drop at random (5% of requests, whole BatchCommands streams) while
    writers and readers run: every write is retried to success (raw writes are
    idempotent), every acknowledged write is readable, reads never see stale data."""
    fault = cluster.faults.add(drop_stream=True, probability=0.05)
    log = WriteLog()
    try:

        async def writer(w: int) -> None:
            for op in range(15):
                pairs = _batch(w, op)
                try:
                    await client.batch_put(pairs)
                except TiKVError as exc:
                    log.failed(pairs, exc)
                else:
                    log.ok(pairs)
                    got = await client.batch_get(list(pairs))
                    assert got == pairs

        await within(asyncio.gather(*(writer(w) for w in range(4))))
    finally:
        cluster.faults.remove(fault)
    assert fault.hits > 0
    assert not log.errors, log.errors[:3]
    assert sender_stats(client).send_failures > 0
    log.check(await _stored(cluster, set(log.acked) | set(log.after_ack)))
