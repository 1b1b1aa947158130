"""Lite lock cleanup batched per transaction and region.

client-go ``integration_tests/lock_test.go`` ``TestBatchLiteResolveLocksByRegion`` and
``TestBatchLiteResolveLocksForReadIgnoresInlineCleanupError``: the locks one small
transaction left on several keys are resolved with one ``ResolveLock`` per region that
lists exactly those keys; a transaction with one lock keeps the single-key request; a large
transaction (``txn_size`` at the lite threshold or above) is resolved region-wide, with no
keys. A writer waits for the cleanups; a reader does not (they run in the background), and
a reader's in-place cleanup that fails does not fail the read.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _txn_helpers import NO_HANG, K, client_lock, locked_keys
from tikv_mockstore import MockCluster
from tikv_pd.backoff import Backoffer
from tikv_pd.config import Config, TransactionOptions
from tikv_pd.errors import LockInfo, TiKVError
from tikv_pd.interceptor import RPCInvoker, RPCRequest, rpc_interceptor
from tikv_proto import kvrpcpb_pb2
from tikv_txn import AsyncTransactionClient
from tikv_txn.committer import commit_primary_keys
from tikv_txn.lock_resolver import ASYNC_RESOLVE_LOCK_LIMIT

LITE_THRESHOLD = 8
TWO_PC = TransactionOptions.optimistic(async_commit=False, try_one_pc=False)


@pytest.fixture
async def resolver_client(cluster: MockCluster) -> AsyncIterator[AsyncTransactionClient]:
    config = Config(resolve_lock_lite_threshold=LITE_THRESHOLD)
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints, config=config) as c:
        yield c


async def primary_committed(
    client: AsyncTransactionClient, primary: bytes, secondaries: list[bytes]
) -> tuple[int, int]:
    """Prewrite ``primary`` and ``secondaries``, commit only the primary's region."""
    txn = await client.begin(TWO_PC)
    txn.put(primary, b"primary value")
    for i, key in enumerate(secondaries):
        txn.put(key, b"secondary %d" % i)
    committer = txn._new_committer()
    assert await committer.prepare()
    await committer.prewrite()
    await committer.get_commit_ts()
    await committer.commit_primary()
    return committer.start_ts, committer.commit_ts


def pinned_locks(cluster: MockCluster, keys: list[bytes], txn_size: int) -> list[LockInfo]:
    """The server's locks on ``keys`` with ``txn_size`` pinned (as client-go's test does)."""
    out = []
    for key in keys:
        lock = cluster.engine.lock_of(key)
        assert lock is not None, key
        out.append(dataclasses.replace(client_lock(lock.to_lock_info(key)), txn_size=txn_size))
    return out


class ResolveLog:
    """The ResolveLock attempts the resolver's client sends: (region, request)."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, kvrpcpb_pb2.ResolveLockRequest]] = []

    def interceptor(self) -> Any:
        def wrap(next: RPCInvoker) -> RPCInvoker:
            async def invoke(rpc: RPCRequest) -> Any:
                if rpc.command == "ResolveLock":
                    request = kvrpcpb_pb2.ResolveLockRequest()
                    request.CopyFrom(rpc.request)
                    self.sent.append((rpc.region_id, request))
                return await next(rpc)

            return invoke

        return rpc_interceptor("resolve-log", wrap)

    def by_txn(self) -> dict[int, list[tuple[int, kvrpcpb_pb2.ResolveLockRequest]]]:
        out: dict[int, list[tuple[int, kvrpcpb_pb2.ResolveLockRequest]]] = {}
        for region_id, request in self.sent:
            out.setdefault(request.start_version, []).append((region_id, request))
        return out


@pytest.mark.parametrize("for_read", [False, True], ids=["write", "for_read"])
async def test_lite_locks_are_resolved_per_transaction_and_region(
    cluster: MockCluster,
    client: AsyncTransactionClient,
    resolver_client: AsyncTransactionClient,
    p: bytes,
    for_read: bool,
) -> None:
    # A small transaction with locks in two regions (0x50: two keys, 0x90: one).
    multi = [K(b"\x50", p, "multi_a1"), K(b"\x50", p, "multi_a2"), K(b"\x90", p, "multi_z1")]
    multi_ts, multi_commit = await primary_committed(client, K(b"\x10", p, "multi_p"), multi)
    # A small transaction with one lock.
    single = [K(b"\x50", p, "single_s")]
    single_ts, single_commit = await primary_committed(client, K(b"\x10", p, "single_p"), single)
    # A large one (by its txn_size): resolved region-wide.
    large = [K(b"\xd0", p, "large_s")]
    large_ts, large_commit = await primary_committed(client, K(b"\x10", p, "large_p"), large)
    locks = (
        pinned_locks(cluster, multi, LITE_THRESHOLD - 1)
        + pinned_locks(cluster, single, LITE_THRESHOLD - 1)
        + pinned_locks(cluster, large, LITE_THRESHOLD + 1)
    )
    assert locked_keys(cluster, p) == sorted(multi + single + large)

    log = ResolveLog()
    resolver_client.add_rpc_interceptor(log.interceptor())
    resolver = resolver_client.runtime.resolver
    caller_start_ts = await resolver_client.current_timestamp() if for_read else 0
    hold = cluster.faults.add("ResolveLock", hang=True)
    try:
        call = asyncio.ensure_future(
            resolver.resolve_locks(Backoffer(20_000), caller_start_ts, locks, for_read=for_read)
        )
        if for_read:
            # The reader's call returns while every cleanup is still held by the store.
            result = await asyncio.wait_for(call, NO_HANG)
            assert result.ms_before_expired == 0
            assert result.committed == {multi_ts, single_ts, large_ts}
            assert result.resolved_in_background == len(locks)
            assert await asyncio.to_thread(cluster.faults.wait_hanging, 4, NO_HANG)
            # One background task per transaction (client-go schedules each region's
            # request of a multi-region batch as its own task; here one task sends them).
            assert resolver_client.runtime.pending_tasks == 3
        else:
            # The writer's call waits for its cleanups.
            assert await asyncio.to_thread(cluster.faults.wait_hanging, 1, NO_HANG)
            assert not call.done()
        hold.release()
        if not for_read:
            result = await asyncio.wait_for(call, NO_HANG)
            assert result.ms_before_expired == 0
        assert await resolver_client.runtime.wait_background(NO_HANG)
    finally:
        hold.release()
        cluster.faults.remove(hold)

    sent = log.by_txn()
    assert set(sent) == {multi_ts, single_ts, large_ts}
    # The multi-key transaction: one request per region, with exactly its keys there.
    multi_regions = {
        cluster.region_by_key(multi[0], txn=True).id,  # type: ignore[union-attr]
        cluster.region_by_key(multi[2], txn=True).id,  # type: ignore[union-attr]
    }
    assert len(multi_regions) == 2
    assert sorted(region for region, _ in sent[multi_ts]) == sorted(multi_regions)
    assert sorted(k for _, r in sent[multi_ts] for k in r.keys) == sorted(multi)
    assert all(r.commit_version == multi_commit and len(r.keys) for _, r in sent[multi_ts])
    # The single-lock transaction keeps the single-key request.
    assert [(list(r.keys), r.commit_version) for _, r in sent[single_ts]] == [
        (single, single_commit)
    ]
    # The large transaction: one region-wide request, no keys.
    assert [(list(r.keys), r.commit_version) for _, r in sent[large_ts]] == [([], large_commit)]
    assert locked_keys(cluster, p) == []


async def test_a_readers_inline_lite_cleanup_failure_does_not_fail_the_read(
    cluster: MockCluster,
    client: AsyncTransactionClient,
    resolver_client: AsyncTransactionClient,
    p: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = [K(b"\x50", p, "fallback_a"), K(b"\x50", p, "fallback_b")]
    start_ts, _ = await primary_committed(client, K(b"\x10", p, "fallback_p"), keys)
    locks = pinned_locks(cluster, keys, 1)
    resolver = resolver_client.runtime.resolver
    # The background pool is full: the reader cleans up in place, and the cleanup fails.
    monkeypatch.setattr(resolver, "_background_resolves", ASYNC_RESOLVE_LOCK_LIMIT)
    fault = cluster.faults.add("ResolveLock", key_error="abort", times=10)
    try:
        result = await asyncio.wait_for(
            resolver.resolve_locks(
                Backoffer(20_000),
                await resolver_client.current_timestamp(),
                locks,
                for_read=True,
            ),
            NO_HANG,
        )
    finally:
        cluster.faults.remove(fault)
    assert fault.hits >= 1
    assert result.committed == {start_ts}
    assert result.resolved_in_background == 0
    assert locked_keys(cluster, p) == sorted(keys)
    # A writer resolving the same locks gets the failure instead.
    fault = cluster.faults.add("ResolveLock", key_error="abort", times=1)
    try:
        with pytest.raises(TiKVError):
            await asyncio.wait_for(
                resolver.resolve_locks(Backoffer(20_000), 0, locks, for_read=False), NO_HANG
            )
    finally:
        cluster.faults.remove(fault)
    assert locked_keys(cluster, p) == sorted(keys)
    # Without faults the reader's in-place cleanup goes through.
    snap = resolver_client.snapshot(await resolver_client.current_timestamp())
    assert await snap.batch_get(keys) == {keys[0]: b"secondary 0", keys[1]: b"secondary 1"}
    assert locked_keys(cluster, p) == []


@pytest.mark.parametrize("commit_primary", [True, False], ids=["primary_commit", "rollback"])
async def test_a_large_transactions_locks_met_by_a_read_are_resolved_region_wide(
    cluster: MockCluster,
    client: AsyncTransactionClient,
    resolver_client: AsyncTransactionClient,
    p: bytes,
    commit_primary: bool,
) -> None:
    # client-go TestResolveLockWithTiKVSideAsync (classic TiKV: is_async stays off): a
    # transaction of 20 keys, more than the lite threshold, in one region; its primary is
    # committed or rolled back. A batch get meeting the other 19 locks gets the right
    # values, and they are resolved region-wide (no keys), never lite.
    keys = [K(b"\x90", p, f"large_{i:03d}") for i in range(20)]
    txn = await client.begin(TWO_PC)
    for i, key in enumerate(keys):
        txn.put(key, b"value %d" % i)
    committer = txn._new_committer()
    assert await committer.prepare()
    await committer.prewrite()
    if commit_primary:
        await committer.get_commit_ts()
        # Commit the primary key alone (its batch holds every key of the region here).
        await commit_primary_keys(
            client.runtime,
            [committer.primary],
            start_ts=committer.start_ts,
            commit_ts=lambda: committer.commit_ts,
            newer_commit_ts=committer.get_commit_ts,
            options=client.runtime.base_options,
            operation="commit primary only",
        )
    else:
        cluster.clock.advance(60_000)  # the locks' TTL runs out: readers roll back
    assert len(locked_keys(cluster, p)) == (19 if commit_primary else 20)
    log = ResolveLog()
    resolver_client.add_rpc_interceptor(log.interceptor())
    stats = resolver_client.runtime.resolver.stats
    snap = resolver_client.snapshot(await resolver_client.current_timestamp())
    got = await asyncio.wait_for(snap.batch_get(keys), NO_HANG)
    if commit_primary:
        assert got == {key: b"value %d" % i for i, key in enumerate(keys)}
    else:
        assert got == {}
    assert await resolver_client.runtime.wait_background(NO_HANG)
    assert locked_keys(cluster, p) == []
    assert log.sent
    commit_ts = committer.commit_ts if commit_primary else 0
    for _, request in log.sent:
        assert list(request.keys) == []
        assert request.commit_version == commit_ts
    assert stats["resolve_lock"] == len(log.sent)
