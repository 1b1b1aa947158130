"""Readers do not wait for the cleanup of a committed transaction's locks.

client-go ``integration_tests/snapshot_fail_test.go`` ``TestSnapshotUseResolveForRead``:
a reader that meets a lock of a transaction committed before it resolves that lock in the
background and reads through it at once (``Context.committed_locks``); the lock is gone
shortly after. Here the cleanup's ``ResolveLock`` is held by the mock (a hanging fault),
so the read finishing while the lock is still there is what shows it did not wait.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator

import pytest
from tikv_mockstore import MockCluster
from tikv_pd.config import TransactionOptions
from tikv_pd.interceptor import Interceptor, RPCRequest
from tikv_txn import AsyncTransactionClient

NO_HANG = 30.0
_ids = itertools.count()


@pytest.fixture(scope="module")
def cluster() -> Iterator[MockCluster]:
    # Regions split by first byte: keys under \x10, \x50 and \x90 are in three regions,
    # so committing the primary's region leaves the other keys locked.
    with MockCluster(stores=1, regions=4) as mock:
        yield mock


@pytest.fixture
async def client(cluster: MockCluster) -> AsyncIterator[AsyncTransactionClient]:
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as c:
        yield c


async def committed_primary_only(
    client: AsyncTransactionClient, keys: list[bytes], *, async_commit: bool
) -> int:
    """Prewrite ``keys`` (the first is the primary), commit only the primary."""
    options = TransactionOptions(async_commit=async_commit)
    txn = await client.begin(options)
    for key in keys:
        txn.put(key, b"value of " + key)
    committer = txn._new_committer()
    assert await committer.prepare()
    await committer.prewrite()
    await committer.get_commit_ts()
    await committer.commit_primary()
    return committer.commit_ts


def lock_on(cluster: MockCluster, key: bytes) -> bool:
    return cluster.engine.lock_of(key) is not None


async def wait_until(predicate: object) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + NO_HANG
    while not predicate():  # type: ignore[operator]
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@pytest.mark.parametrize("async_commit", [False, True])
async def test_reads_go_through_a_committed_lock_while_it_is_resolved_in_background(
    cluster: MockCluster, client: AsyncTransactionClient, async_commit: bool
) -> None:
    n = next(_ids)
    x, y, z = (first + b"rr%03d" % n for first in (b"\x10", b"\x50", b"\x90"))
    commit_ts = await committed_primary_only(client, [x, y, z], async_commit=async_commit)
    assert lock_on(cluster, y) and lock_on(cluster, z)
    hold = cluster.faults.add("ResolveLock", hang=True)
    try:
        async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as reader:
            snap = reader.snapshot(await reader.current_timestamp())
            assert await asyncio.wait_for(snap.get(y), NO_HANG) == b"value of " + y
            # The read finished while the cleanup was held: it read through the lock.
            assert lock_on(cluster, y)
            assert reader.runtime.resolver.stats["resolve_in_background"] >= 1
            fresh = reader.snapshot(await reader.current_timestamp())
            assert await asyncio.wait_for(fresh.batch_get([y, z]), NO_HANG) == {
                y: b"value of " + y,
                z: b"value of " + z,
            }
            third = reader.snapshot(await reader.current_timestamp())
            pairs = await asyncio.wait_for(third.scan(x, None, limit=100), NO_HANG)
            assert [pair for pair in pairs if pair[0] in (x, y, z)] == [
                (key, b"value of " + key) for key in (x, y, z)
            ]
            assert lock_on(cluster, y) and lock_on(cluster, z)
            assert await asyncio.to_thread(cluster.faults.wait_hanging, 1, NO_HANG)
            hold.release()
            # Once the cleanup may run, the locks go away without anyone reading again.
            assert await wait_until(lambda: not lock_on(cluster, y) and not lock_on(cluster, z))
            assert await reader.runtime.wait_background(NO_HANG)
            assert reader.runtime.background_errors == []
            # A read wanting commit timestamps got them from the resolved versions.
            entry = await fresh.get_with_commit_ts(y)
            assert entry is not None and entry.commit_ts == commit_ts
    finally:
        hold.release()
        cluster.faults.remove(hold)


async def test_a_read_wanting_commit_ts_waits_for_the_cleanup(
    cluster: MockCluster, client: AsyncTransactionClient
) -> None:
    # Read through a lock, a value has no commit ts yet: such a read leaves the
    # transaction out of committed_locks and returns once the lock is resolved.
    n = next(_ids)
    x, y = (first + b"rc%03d" % n for first in (b"\x10", b"\x50"))
    commit_ts = await committed_primary_only(client, [x, y], async_commit=False)
    hold = cluster.faults.add("ResolveLock", hang=True)
    try:
        async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as reader:
            snap = reader.snapshot(await reader.current_timestamp())
            read = asyncio.ensure_future(snap.get_with_commit_ts(y))
            assert await asyncio.to_thread(cluster.faults.wait_hanging, 1, NO_HANG)
            assert not read.done()
            hold.release()
            entry = await asyncio.wait_for(read, NO_HANG)
            assert entry is not None
            assert (entry.value, entry.commit_ts) == (b"value of " + y, commit_ts)
    finally:
        hold.release()
        cluster.faults.remove(hold)


async def test_a_retrying_reader_joins_the_running_cleanup(
    cluster: MockCluster, client: AsyncTransactionClient
) -> None:
    # A read wanting commit timestamps meets the same lock on every retry while the
    # cleanup runs: it must not start one more cleanup (one more ResolveLock) each time.
    n = next(_ids)
    x, y = (first + b"rj%03d" % n for first in (b"\x10", b"\x50"))
    commit_ts = await committed_primary_only(client, [x, y], async_commit=False)
    hold = cluster.faults.add("ResolveLock", hang=True)
    try:
        async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as reader:
            snap = reader.snapshot(await reader.current_timestamp())
            gets = cluster.counters.count("KvGet")
            read = asyncio.ensure_future(snap.get_with_commit_ts(y))
            # The read keeps meeting the lock (it backs off between attempts).
            assert await wait_until(lambda: cluster.counters.count("KvGet") >= gets + 4)
            assert not read.done()
            assert reader.runtime.resolver.stats["resolve_in_background"] == 1
            hold.release()
            entry = await asyncio.wait_for(read, NO_HANG)
            assert entry is not None and entry.commit_ts == commit_ts
            assert await reader.runtime.wait_background(NO_HANG)
            assert reader.runtime.background_errors == []
    finally:
        hold.release()
        cluster.faults.remove(hold)


class _BatchGets(Interceptor):
    """Records (need_commit_ts, committed_locks) of every BatchGet sent."""

    name = "batch-gets"

    def __init__(self) -> None:
        self.sent: list[tuple[bool, tuple[int, ...]]] = []

    async def before_send(self, rpc: RPCRequest) -> None:
        if rpc.command == "BatchGet":
            request = rpc.request
            self.sent.append((request.need_commit_ts, tuple(request.context.committed_locks)))


async def test_an_adjusted_batch_get_wanting_commit_ts_leaves_committed_locks_out(
    cluster: MockCluster, client: AsyncTransactionClient
) -> None:
    # The replica-read adjuster sends each region batch with its own options; a batch get
    # wanting commit timestamps must leave the committed transactions out there too.
    n = next(_ids)
    x, y = (first + b"ra%03d" % n for first in (b"\x10", b"\x50"))
    commit_ts = await committed_primary_only(client, [x, y], async_commit=False)
    hold = cluster.faults.add("ResolveLock", hang=True)
    try:
        async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as reader:
            snap = reader.snapshot(
                await reader.current_timestamp(), TransactionOptions(replica_read="mixed")
            )
            snap.set_replica_read_adjuster(lambda count: (None, "mixed"))
            recorder = _BatchGets()
            snap.add_rpc_interceptor(recorder)
            # A plain read reads through the lock: the transaction is known committed.
            assert await asyncio.wait_for(snap.get(y), NO_HANG) == b"value of " + y
            assert lock_on(cluster, y)
            read = asyncio.ensure_future(snap.batch_get_with_commit_ts([y]))
            assert await wait_until(lambda: recorder.sent)
            hold.release()
            found = await asyncio.wait_for(read, NO_HANG)
            assert {k: tuple(v) for k, v in found.items()} == {y: (b"value of " + y, commit_ts)}
            assert recorder.sent
            assert all(need and not committed for need, committed in recorder.sent)
    finally:
        hold.release()
        cluster.faults.remove(hold)
