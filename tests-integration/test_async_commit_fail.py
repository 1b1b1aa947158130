"""Async commit interrupted mid-prewrite: client-go ``integration_tests/async_commit_fail_test.go``
(``TestAsyncCommitPrewriteCancelled``, ``TestAsyncCommitContextCancelCausingUndetermined``)
and the 2PC counterpart of the latter from ``2pc_test.go``
(``TestContextCancelCausingUndetermined``).

The transaction's keys live in two regions; the prewrite (or commit) of one is held by the
embedded cluster's fault injection (it hangs on the server until released), so the
caller's cancellation lands exactly while it is in flight. Whatever happens to the held
request afterwards (it lands late, or never), readers must settle the transaction all or
nothing. The cluster is private to the module (faults, splits, clock moves).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

import grpc
import pytest
from tikv_mockstore import MockCluster
from tikv_mockstore.faults import Fault
from tikv_pd.backoff import Backoffer
from tikv_pd.config import TransactionOptions
from tikv_pd.errors import UndeterminedError, WriteConflictError
from tikv_txn import AsyncTransaction, AsyncTransactionClient

_ids = itertools.count()
MAX_TS = (1 << 63) - 1
NO_HANG = 60.0
ASYNC = TransactionOptions(async_commit=True, try_one_pc=False)
TWO_PC = TransactionOptions(async_commit=False, try_one_pc=False)


@pytest.fixture
def keys(cluster: MockCluster) -> tuple[bytes, bytes]:
    """Two keys in two regions (a split between them)."""
    p = b"\xd0acf%04d/" % next(_ids)
    cluster.split([p + b"z"], txn=True)
    return p + b"a", p + b"z"


def locked(cluster: MockCluster, key: bytes) -> bool:
    return any(lk.key == key for lk in cluster.engine.scan_lock(MAX_TS))


async def poll(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + NO_HANG
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def hanging(cluster: MockCluster, count: int = 1) -> None:
    assert await asyncio.to_thread(cluster.faults.wait_hanging, count, NO_HANG)


async def start_held_commit(
    cluster: MockCluster,
    txn: AsyncTransaction,
    keys: tuple[bytes, bytes],
    *,
    method: str = "KvPrewrite",
    held: int = 1,
    status: grpc.StatusCode | None = None,
) -> tuple[asyncio.Future[int], Fault]:
    """Write ``va`` / ``vz`` to the two keys, hold one ``method`` request at the region of
    ``keys[held]`` (once released it fails with ``status``, or is applied), start the
    commit and wait until the held request is at the store. Release the returned fault."""
    a, z = keys
    region = cluster.region_by_key(keys[held], txn=True)
    assert region is not None
    hold = cluster.faults.add(method, region=region.id, hang=True, times=1, status=status)
    try:
        txn.put(a, b"va")
        txn.put(z, b"vz")
        commit = asyncio.ensure_future(txn.commit())
        await hanging(cluster)
    except BaseException:
        hold.release()
        raise
    return commit, hold


async def settle(
    client: AsyncTransactionClient, cluster: MockCluster, keys: list[bytes]
) -> dict[bytes, bytes]:
    """Let every lock expire, then read: readers resolve whatever was left."""
    cluster.clock.advance(60_000)
    snap = client.snapshot(await client.current_timestamp())
    got = await asyncio.wait_for(snap.batch_get(keys), NO_HANG)
    assert not any(locked(cluster, k) for k in keys)
    return got


@pytest.mark.parametrize(
    "held_lands", [True, False], ids=["held-prewrite-lands", "held-prewrite-lost"]
)
async def test_cancelled_async_commit_prewrite_is_undetermined(
    client: AsyncTransactionClient,
    cluster: MockCluster,
    keys: tuple[bytes, bytes],
    held_lands: bool,
) -> None:
    """The caller gives up while one region's async-commit prewrite is in flight: the
    task ends cancelled, the transaction says its outcome is unknown, nothing is rolled
    back, and readers later see both writes or neither."""
    a, z = keys
    txn = await client.begin(ASYNC)
    # "lost": once released it fails without being applied, as a dropped request.
    lost = None if held_lands else grpc.StatusCode.UNAVAILABLE
    commit, hold = await start_held_commit(cluster, txn, keys, status=lost)
    try:
        await poll(lambda: locked(cluster, a), "the other region's prewrite")
        commit.cancel()
        with pytest.raises(asyncio.CancelledError):
            await commit
    finally:
        hold.release()
    assert isinstance(txn.undetermined_error, UndeterminedError)
    assert txn.state == "failed"
    # Nothing was rolled back behind the readers' backs.
    assert await client.runtime.wait_background(NO_HANG)
    assert locked(cluster, a)
    if held_lands:
        await poll(lambda: locked(cluster, z), "the held prewrite to land")
    got = await settle(client, cluster, [a, z])
    assert got == ({a: b"va", z: b"vz"} if held_lands else {})


async def test_async_commit_timeout_is_undetermined(
    client: AsyncTransactionClient, cluster: MockCluster, keys: tuple[bytes, bytes]
) -> None:
    """The same through ``asyncio.timeout``: the caller gets TimeoutError."""
    a, z = keys
    txn = await client.begin(ASYNC)
    commit, hold = await start_held_commit(cluster, txn, keys)
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(commit, 0.05)
    finally:
        hold.release()
    assert isinstance(txn.undetermined_error, UndeterminedError)
    await poll(lambda: locked(cluster, z), "the held prewrite to land")
    assert await settle(client, cluster, [a, z]) == {a: b"va", z: b"vz"}


async def test_async_commit_prewrite_cancelled_by_a_conflict(
    client: AsyncTransactionClient, cluster: MockCluster, keys: tuple[bytes, bytes]
) -> None:
    """TestAsyncCommitPrewriteCancelled: one region's prewrite meets a write conflict
    while the other's is held; the conflict is reported (not an unknown outcome: a key
    without its lock can never commit) and everything is rolled back, the held
    prewrite included when it lands late."""
    a, z = keys
    txn = await client.begin(ASYNC)
    async with client.begin(TWO_PC) as other:
        other.put(a, b"other")
    commit, hold = await start_held_commit(cluster, txn, keys)
    try:
        with pytest.raises(WriteConflictError):
            await asyncio.wait_for(asyncio.shield(commit), NO_HANG)
    finally:
        hold.release()
    assert txn.undetermined_error is None
    assert await client.runtime.wait_background(NO_HANG)
    await poll(lambda: not locked(cluster, z) and not locked(cluster, a), "the rollback")
    got = await settle(client, cluster, [a, z])
    assert got == {a: b"other"}


async def test_cancelled_primary_commit_is_undetermined(
    client: AsyncTransactionClient, cluster: MockCluster, keys: tuple[bytes, bytes]
) -> None:
    """2PC (TestContextCancelCausingUndetermined): cancelled while the primary's commit
    is in flight. The commit lands after the caller left: the transaction is committed,
    its secondary resolved by readers from the primary."""
    a, z = keys
    txn = await client.begin(TWO_PC)
    commit, hold = await start_held_commit(cluster, txn, keys, method="KvCommit", held=0)
    try:
        commit.cancel()
        with pytest.raises(asyncio.CancelledError):
            await commit
    finally:
        hold.release()
    assert isinstance(txn.undetermined_error, UndeterminedError)
    assert await client.runtime.wait_background(NO_HANG)
    await poll(lambda: not locked(cluster, a), "the held commit to land")
    assert locked(cluster, z)  # the secondary was never committed by the client
    assert await settle(client, cluster, [a, z]) == {a: b"va", z: b"vz"}


async def test_cancelled_before_the_primary_commit_rolls_back(
    client: AsyncTransactionClient, cluster: MockCluster, keys: tuple[bytes, bytes]
) -> None:
    """2PC cancelled during prewrite: nothing can have committed, so the outcome is
    known (no undetermined error) and the prewritten locks are rolled back at once."""
    a, z = keys
    txn = await client.begin(TWO_PC)
    commit, hold = await start_held_commit(cluster, txn, keys)
    try:
        await poll(lambda: locked(cluster, a), "the other region's prewrite")
        commit.cancel()
        with pytest.raises(asyncio.CancelledError):
            await commit
    finally:
        hold.release()
    assert txn.undetermined_error is None
    assert await client.runtime.wait_background(NO_HANG)
    # The held prewrite of z lands after the rollback record and is refused.
    await poll(lambda: cluster.faults.hanging() == 0, "the held prewrite to finish")
    await poll(lambda: not locked(cluster, a) and not locked(cluster, z), "the rollback")
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get([a, z]) == {}


@pytest.mark.parametrize(
    "names",
    [["a"], ["a", "b"], ["a", "b", "d"], ["a", "b", "h", "i", "u"], ["i", "a", "z", "u", "b"]],
    ids=lambda names: "".join(names),
)
async def test_secondary_list_in_primary_lock(
    client: AsyncTransactionClient, cluster: MockCluster, names: list[str]
) -> None:
    """TestSecondaryListInPrimaryLock: the primary lock of an async-commit transaction
    lists every other key, whatever regions they are in (regions split at h, o, u)."""
    p = b"\xd0acs%04d/" % next(_ids)
    cluster.split([p + c for c in (b"h", b"o", b"u")], txn=True)
    keys = [p + n.encode() for n in names]
    txn = await client.begin(ASYNC)
    for key in keys:
        txn.put(key, b"v")
    committer = txn._new_committer()
    assert await committer.prepare()
    assert committer.async_commit
    await committer.prewrite()  # and nothing more: the locks stay as prewrite left them
    primary = committer.primary
    locks = {lk.key: lk for lk in cluster.engine.scan_lock(MAX_TS) if lk.key.startswith(p)}
    assert sorted(locks) == sorted(keys)
    assert locks[primary].use_async_commit
    assert sorted(locks[primary].secondaries) == sorted(k for k in keys if k != primary)
    await committer.cleanup()
    assert not any(locked(cluster, k) for k in keys)


async def test_async_commit_falls_back_once_its_primary_expired(
    client: AsyncTransactionClient, cluster: MockCluster, keys: tuple[bytes, bytes]
) -> None:
    """TestRollbackAsyncCommitEnforcesFallback: the primary's async-commit prewrite
    landed, the other region's is held; meanwhile the primary lock expires and a
    reader checks it (CheckTxnStatus raises TiKV's max ts past the transaction's
    max_commit_ts). The held prewrite then cannot use async commit: TiKV answers with
    a zero commit ts, the committer falls back to 2PC, and the commit still succeeds."""
    a, z = keys
    region_z = cluster.region_by_key(z, txn=True)
    assert region_z is not None
    hold = cluster.faults.add("KvPrewrite", region=region_z.id, hang=True, times=1)
    try:
        txn = await client.begin(ASYNC)
        txn.put(a, b"va")
        txn.put(z, b"vz")
        committer = txn._new_committer()
        assert await committer.prepare()
        assert committer.async_commit and committer.primary == a
        prewrite = asyncio.ensure_future(committer.prewrite())
        await hanging(cluster)
        await poll(lambda: locked(cluster, a), "the primary's prewrite")
        cluster.clock.advance(10_000)  # past the lock TTL and the max commit ts
        now = await client.current_timestamp()
        status = await client.runtime.resolver.get_txn_status(
            Backoffer(10_000),
            txn.start_ts,
            a,
            caller_start_ts=now,
            current_ts=now,
            rollback_if_not_exist=False,
        )
        assert status.ttl > 0 and not status.is_committed  # async commit: never rolled back
        hold.release()
        await asyncio.wait_for(prewrite, NO_HANG)
    finally:
        hold.release()
    assert not committer.async_commit  # fell back to 2PC
    await committer.get_commit_ts()
    await committer.commit_primary()
    await committer.commit_batches(committer.batches[1:])
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get([a, z]) == {a: b"va", z: b"vz"}


async def test_point_get_at_max_ts_with_async_commit(
    client: AsyncTransactionClient, cluster: MockCluster, keys: tuple[bytes, bytes]
) -> None:
    """TestPointGetWithAsyncCommit: an async-commit transaction whose commit phase never
    ran (prewrite only). A read at the maximum ts cannot skip its locks (its commit ts
    may lie below any ts); once they expired it resolves them from the secondaries and
    reads the new values. Such a read must not raise TiKV's max ts to the maximum: a
    later async-commit transaction still commits at an ordinary ts."""
    a, z = keys
    async with client.begin(ASYNC) as seed:
        seed.put(a, b"a")
        seed.put(z, b"z")
    txn = await client.begin(ASYNC)
    txn.put(a, b"v1")
    txn.put(z, b"v2")
    committer = txn._new_committer()
    assert await committer.prepare()
    await committer.prewrite()  # and nothing more
    assert committer.async_commit
    assert locked(cluster, a) and locked(cluster, z)
    cluster.clock.advance(60_000)  # the locks expired
    snap = client.snapshot(2**64 - 1)
    assert await asyncio.wait_for(snap.get(a), NO_HANG) == b"v1"
    assert await asyncio.wait_for(snap.get(z), NO_HANG) == b"v2"
    later = await client.begin(ASYNC)
    assert await later.get(a) == b"v1"
    later.put(a, b"v3")
    commit_ts = await later.commit()
    assert later._committer is not None and later._committer.async_commit
    assert commit_ts < 2**63
    fresh = client.snapshot(await client.current_timestamp())
    assert await fresh.batch_get([a, z]) == {a: b"v3", z: b"v2"}
