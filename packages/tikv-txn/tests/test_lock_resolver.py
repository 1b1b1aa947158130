"""The lock resolver against the embedded cluster (client-go ``txnlock/lock_resolver.go`` rules).

Locks are left by transactions stopped half-way through their commit (the committer's
steps run one by one); a second client meets them and must settle them: lite or
whole-region resolution, the status cache, TxnNotFound handling, async-commit recovery
through the secondaries, and GC's batch resolution.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from _txn_helpers import (
    FIRST_BYTES,
    NO_HANG,
    client_lock,
    expire_locks,
    locked_keys,
    prepared,
    seed,
)
from tikv_mockstore import MockCluster
from tikv_mockstore.mvcc.types import Mutation
from tikv_pd.backoff import Backoffer
from tikv_pd.config import Config, TransactionOptions
from tikv_pd.errors import LockInfo, TxnError
from tikv_pd.interceptor import RPCInterceptor, RPCInvoker, RPCRequest, rpc_interceptor
from tikv_pd.oracle import compose_ts
from tikv_txn import AsyncTransactionClient
from tikv_txn.lock_resolver import RESOLVED_CACHE_SIZE, LockResolver
from tikv_txn.policy import TxnStatus


async def test_lite_resolve_touches_only_the_read_key_and_caches_the_status(
    client: AsyncTransactionClient, reader: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    primary = b"\x10" + p + b"primary"
    others = [b"\x90" + p + b"%02d" % i for i in range(10)]
    committer = await prepared(client, [primary, *others])
    await committer.prewrite()
    await committer.get_commit_ts()
    await committer.commit_primary()
    assert locked_keys(cluster, p) == sorted(others)
    snap = reader.snapshot(await reader.current_timestamp())
    assert await asyncio.wait_for(snap.get(others[0]), NO_HANG) == b"new"
    # Small transaction (txn_size < 512): only the key that was read is resolved (in the
    # background, since the reader reads through a committed transaction's lock).
    assert await reader.runtime.wait_background(NO_HANG)
    assert locked_keys(cluster, p) == sorted(others[1:])
    stats = reader.runtime.resolver.stats
    checks = stats["check_txn_status"]
    # The same snapshot reads through the transaction's other locks without asking;
    # a new one meets the next lock and finds the committed status in the cache.
    assert await asyncio.wait_for(snap.get(others[2]), NO_HANG) == b"new"
    assert stats["check_txn_status"] == checks and stats["cache_hits"] == 0
    snap = reader.snapshot(await reader.current_timestamp())
    assert await asyncio.wait_for(snap.get(others[1]), NO_HANG) == b"new"
    # The committed status was cached: no second CheckTxnStatus.
    assert stats["check_txn_status"] == checks
    assert stats["cache_hits"] >= 1
    cached = reader.runtime.resolver.cached_status(committer.start_ts)
    assert cached is not None
    assert cached.commit_ts == committer.commit_ts


async def test_region_resolve_cleans_every_lock_of_the_txn_in_the_region(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    config = Config(resolve_lock_lite_threshold=0)  # never lite
    primary = b"\x10" + p + b"primary"
    others = [b"\x90" + p + b"%02d" % i for i in range(10)]
    committer = await prepared(client, [primary, *others])
    await committer.prewrite()
    await committer.get_commit_ts()
    await committer.commit_primary()
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints, config=config) as r:
        snap = r.snapshot(await r.current_timestamp())
        assert await asyncio.wait_for(snap.get(others[3]), NO_HANG) == b"new"
        assert locked_keys(cluster, p) == []
        assert r.runtime.resolver.stats["resolve_lock"] == 1
        assert await snap.batch_get(others) == dict.fromkeys(others, b"new")


async def test_status_cache_is_bounded(client: AsyncTransactionClient) -> None:
    resolver = client.runtime.resolver
    for txn in range(1, RESOLVED_CACHE_SIZE + 101):
        resolver._save_resolved(txn, TxnStatus(commit_ts=txn + 1))
    assert resolver.cached_status(1) is None
    assert resolver.cached_status(100) is None
    assert resolver.cached_status(101) is not None
    assert len(resolver._resolved) == RESOLVED_CACHE_SIZE
    # Undetermined statuses are never cached.
    resolver._save_resolved(10**9, TxnStatus(ttl=3000))
    assert resolver.cached_status(10**9) is None


async def test_secondary_without_primary_is_rolled_back_once_expired(
    client: AsyncTransactionClient, reader: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    keys = [b"\x10" + p + b"a", b"\xd0" + p + b"b"]
    await seed(client, keys)
    committer = await prepared(client, keys)
    # Prewrite the secondary only: the primary lock never reaches TiKV (client crash).
    bo = Backoffer(10_000)
    await committer._run_batches(committer.batches[1:], lambda b: committer._prewrite_batch(b, bo))
    assert locked_keys(cluster, p) == [keys[1]]
    await expire_locks(cluster, reader)
    snap = reader.snapshot(await reader.current_timestamp())
    assert await asyncio.wait_for(snap.get(keys[1]), NO_HANG) == b"old"
    assert locked_keys(cluster, p) == []
    status = reader.runtime.resolver.cached_status(committer.start_ts)
    assert status is not None
    assert status.is_rolled_back
    # The rollback record protects against the late primary prewrite.
    with pytest.raises(TxnError):
        await committer._prewrite_batch(committer.batches[0], Backoffer(10_000))


async def test_async_commit_recovery_commits_when_every_secondary_is_locked(
    client: AsyncTransactionClient, reader: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    keys = [f + p + b"ac" for f in FIRST_BYTES]
    await seed(client, keys)
    committer = await prepared(client, keys, options=TransactionOptions(async_commit=True))
    assert committer.async_commit
    await committer.prewrite()  # then the client dies: no commit RPC at all
    assert committer.async_commit, "TiKV accepted async commit"
    assert locked_keys(cluster, p) == sorted(keys)
    await expire_locks(cluster, reader)
    snap = reader.snapshot(await reader.current_timestamp())
    # Reading any one key settles the whole transaction through CheckSecondaryLocks.
    assert await asyncio.wait_for(snap.get(keys[2]), NO_HANG) == b"new"
    assert reader.runtime.resolver.stats["check_secondary_locks"] >= 1
    assert locked_keys(cluster, p) == []
    status = reader.runtime.resolver.cached_status(committer.start_ts)
    assert status is not None
    assert status.commit_ts == committer.min_commit_ts
    assert await snap.batch_get(keys) == dict.fromkeys(keys, b"new")


async def test_async_commit_recovery_rolls_back_when_a_secondary_is_missing(
    client: AsyncTransactionClient, reader: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    keys = [f + p + b"am" for f in FIRST_BYTES]
    await seed(client, keys)
    committer = await prepared(client, keys, options=TransactionOptions(async_commit=True))
    committer.min_commit_ts = await client.current_timestamp() + 1
    committer.max_commit_ts = committer.min_commit_ts + (60_000 << 18)
    committer.lock_ttl = 3000
    committer._prewrite_started = True
    bo = Backoffer(10_000)
    # The primary and one secondary are prewritten; the other two never are.
    await committer._prewrite_batch(committer.batches[0], bo)
    await committer._prewrite_batch(committer.batches[1], bo)
    assert len(locked_keys(cluster, p)) == 2
    await expire_locks(cluster, reader)
    snap = reader.snapshot(await reader.current_timestamp())
    assert await asyncio.wait_for(snap.batch_get(keys), NO_HANG) == dict.fromkeys(keys, b"old")
    assert locked_keys(cluster, p) == []
    status = reader.runtime.resolver.cached_status(committer.start_ts)
    assert status is not None
    assert status.is_rolled_back


async def test_batch_resolve_locks_for_gc(
    client: AsyncTransactionClient, reader: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    """GC's semantics (client-go ``BatchResolveLocks``) through the resolver's entry point."""
    from tikv_mockstore.mvcc import Mutation, Op

    committed_keys = [b"\x50" + p + b"c%d" % i for i in range(3)]
    aborted_keys = [b"\x50" + p + b"x%d" % i for i in range(3)]
    live_keys = [b"\x50" + p + b"y%d" % i for i in range(3)]
    pessimistic_keys = [b"\x50" + p + b"z%d" % i for i in range(2)]
    await seed(client, pessimistic_keys)
    # One transaction committed its primary (in another region) and crashed...
    done = await prepared(client, [b"\x10" + p + b"cp", *committed_keys])
    await done.prewrite()
    await done.get_commit_ts()
    await done.commit_primary()
    # ...one crashed after prewrite...
    dead = await prepared(client, [b"\x10" + p + b"xp", *aborted_keys])
    await dead.prewrite()
    await expire_locks(cluster, reader)
    # ...one is still running (its locks have not expired: GC rolls it back anyway)...
    live = await prepared(client, [b"\x10" + p + b"yp", *live_keys])
    await live.prewrite()
    # ...and one holds pessimistic locks (rolled back whatever its primary says).
    lock_ts = await client.current_timestamp()
    cluster.engine.pessimistic_lock(
        [Mutation(Op.PESSIMISTIC_LOCK, k) for k in pessimistic_keys],
        pessimistic_keys[0],
        lock_ts,
        20_000,
        lock_ts,
    )
    locks = [
        client_lock(lk)
        for lk in cluster.engine.scan_lock(2**63 - 1, b"\x50", b"\x90")
        if p in lk.key
    ]
    wanted = committed_keys + aborted_keys + live_keys + pessimistic_keys
    assert sorted(lk.key for lk in locks) == sorted(wanted)
    # The region splits after the scan, behind the resolver's back: the locks past the
    # split must be resolved too (one ResolveLock per region as it is now).
    await reader.runtime.sender.locator.locate_key(committed_keys[0])
    cluster.split([b"\x50" + p + b"y"], txn=True)
    await reader.runtime.resolver.batch_resolve_locks(Backoffer(20_000), locks)
    assert [k for k in locked_keys(cluster, p) if k.startswith(b"\x50")] == []
    snap = reader.snapshot(await reader.current_timestamp())
    got = await snap.batch_get(wanted)
    assert got == {
        **dict.fromkeys(committed_keys, b"new"),
        **dict.fromkeys(pessimistic_keys, b"old"),
    }
    live_status = reader.runtime.resolver.cached_status(live.start_ts)
    assert live_status is not None
    assert live_status.is_rolled_back


def _recorder(log: list[str]) -> RPCInterceptor:
    def wrap(next: RPCInvoker) -> RPCInvoker:
        async def invoke(rpc: RPCRequest) -> Any:
            log.append(rpc.command)
            return await next(rpc)

        return invoke

    return rpc_interceptor("txn-recorder", wrap)


TWO_PC = TransactionOptions.optimistic(async_commit=False, try_one_pc=False)


async def test_lock_resolution_of_a_read_runs_inside_the_transactions_interceptor(
    client: AsyncTransactionClient, reader: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    # client-go: the resolver sends with the reader's context, hence its interceptor.
    keys = [b"\x10" + p + b"a", b"\x50" + p + b"b"]
    dead = await prepared(client, keys, options=TWO_PC)
    await dead.prewrite()
    await expire_locks(cluster, reader)
    log: list[str] = []
    txn = await reader.begin(TWO_PC)
    txn.set_rpc_interceptor(_recorder(log))
    assert await asyncio.wait_for(txn.get(keys[1]), NO_HANG) is None
    assert {"Get", "CheckTxnStatus", "ResolveLock"} <= set(log)
    assert locked_keys(cluster, p) == []
    await txn.rollback()


async def test_lock_resolution_of_a_prewrite_runs_inside_the_transactions_interceptor(
    client: AsyncTransactionClient, reader: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    keys = [b"\x10" + p + b"a", b"\x50" + p + b"b"]
    dead = await prepared(client, keys, options=TWO_PC)
    await dead.prewrite()
    await expire_locks(cluster, reader)
    log: list[str] = []
    txn = await reader.begin(TWO_PC)
    txn.set_rpc_interceptor(_recorder(log))
    txn.put(keys[1], b"mine")
    assert await asyncio.wait_for(txn.commit(), NO_HANG) > 0
    assert "Prewrite" in log
    assert {"CheckTxnStatus", "ResolveLock"} <= set(log)


async def test_lock_resolution_of_a_pessimistic_lock_runs_inside_the_transactions_interceptor(
    client: AsyncTransactionClient, reader: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    key = b"\x50" + p + b"k"
    holder = await client.begin(pessimistic=True)
    await holder.lock_keys([key])
    # The holder never finishes: it "crashed" (its heartbeat stops).
    committer = holder._committer
    assert committer is not None
    committer.stop_heartbeat()
    await expire_locks(cluster, reader)
    log: list[str] = []
    txn = await reader.begin(pessimistic=True)
    txn.set_rpc_interceptor(_recorder(log))
    await asyncio.wait_for(txn.lock_keys([key]), NO_HANG)
    assert "PessimisticLock" in log
    assert "CheckTxnStatus" in log
    await txn.rollback()


async def test_writer_blocked_by_short_ttl_locks_checks_each_about_twice(
    client: AsyncTransactionClient, reader: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    # Abandoned single-key transactions whose 200 ms TTL runs out while the writer waits.
    # The low-resolution ts refreshes only every 2 s: sent as CheckTxnStatus's current_ts
    # it keeps the locks "alive" long after their TTL, and a writer re-checking every
    # lock at most one TTL apart used to send ~10 CheckTxnStatus per lock. With the
    # estimated "now" triggering a fresh TSO, each lock is checked about twice: once
    # alive, once expired (rolled back by the check itself: each lock is its own primary).
    keys = [bytes([first[0]]) + p + b"%02d" % i for i, first in enumerate(FIRST_BYTES * 2)]
    for key in keys:
        ts = await client.current_timestamp()
        cluster.engine.prewrite(
            [Mutation.put(key, b"dead")], key, ts, 200, txn_size=1, min_commit_ts=ts + 1
        )
    stats = reader.runtime.resolver.stats
    checks = stats["check_txn_status"]
    async with reader.begin() as txn:
        for key in keys:
            txn.put(key, b"live")
    sent = stats["check_txn_status"] - checks
    # About 2 per lock; a check landing a moment before a lock's expiry adds one or two
    # (the old behaviour sent ~20 per lock: 176 for these 8; with a cached ts exactly at
    # the expiry, hundreds: see the test below).
    assert sent <= 5 * len(keys), f"{sent} CheckTxnStatus for {len(keys)} locks"
    assert await reader.runtime.wait_background(NO_HANG)  # secondaries commit after return
    assert locked_keys(cluster, p) == []
    snap = reader.snapshot(await reader.current_timestamp())
    assert await snap.batch_get(keys) == dict.fromkeys(keys, b"live")


class _Oracle:
    """An oracle whose cached, estimated and fresh timestamps the test sets."""

    def __init__(self, cached: int, estimated: int, fresh: int) -> None:
        self.cached, self.estimated, self.fresh = cached, estimated, fresh
        self.fetched = 0

    async def get_low_resolution_timestamp(self) -> int:
        return self.cached

    async def get_stale_timestamp(self, prev_seconds: float) -> int:
        assert prev_seconds == 0
        return self.estimated

    async def get_timestamp(self) -> int:
        self.fetched += 1
        return self.fresh


@pytest.mark.parametrize(
    ("cached_ms", "estimated_ms", "fetches"),
    [
        (100, 150, 0),  # alive by both: the cached ts will do
        (200, 201, 1),  # exactly at expiry TiKV still sees it alive (strictly greater)
        (199, 201, 1),  # expired only by the estimate: fresh
        (201, 210, 0),  # already past expiry at the cached ts
        (200, 200, 0),  # the estimate is not past it either
    ],
)
async def test_current_ts_is_fetched_fresh_when_only_the_estimate_is_past_the_ttl(
    cached_ms: int, estimated_ms: int, fetches: int
) -> None:
    # TiKV check_txn_status: expired iff physical(lock) + ttl < physical(current_ts). A
    # cached ts exactly at the expiry once made every check use it (alive, wait 0 ms,
    # retry at once) until the cache refreshed: 1,453 CheckTxnStatus for 8 locks in CI.
    lock_ts = compose_ts(1_000_000, 5)
    at = lambda ms: compose_ts(1_000_000 + ms, 0)  # noqa: E731
    oracle = _Oracle(at(cached_ms), at(estimated_ms), at(300))
    runtime: Any = SimpleNamespace(oracle=oracle)
    resolver = LockResolver(runtime)
    lock = LockInfo(primary_lock=b"k", lock_version=lock_ts, key=b"k", lock_ttl=200)
    current = await resolver._current_ts(lock)
    assert oracle.fetched == fetches
    assert current == (at(300) if fetches else at(cached_ms))
