"""Transactions on the embedded cluster: CRUD, own writes, isolation, conflicts, 1PC, async commit.

Every test uses its own key prefix inside a shared 3-store, 4-region cluster (regions
split at first bytes 0x40 / 0x80 / 0xC0), so keys ``K(b"\\x10", ...)`` and
``K(b"\\xd0", ...)`` live in different regions.
"""

from __future__ import annotations

import asyncio

import pytest
from _txn_helpers import FIRST_BYTES, K, locked_keys
from tikv_mockstore import MockCluster
from tikv_pd.codec import keyspace_prefix
from tikv_txn import (
    AsyncTransaction,
    AsyncTransactionClient,
    KeyExistsError,
    TransactionClient,
    TransactionClosedError,
    TransactionOptions,
    WriteConflictError,
)


async def test_put_get_delete_round_trip(client: AsyncTransactionClient, p: bytes) -> None:
    keys = [K(f, p, "a") for f in FIRST_BYTES]
    async with client.begin() as txn:
        for i, key in enumerate(keys):
            txn.put(key, b"v%d" % i)
    assert txn.commit_ts > txn.start_ts
    reader = await client.begin()
    assert [await reader.get(k) for k in keys] == [b"v0", b"v1", b"v2", b"v3"]
    assert await reader.get(K(b"\x10", p, "missing")) is None
    async with client.begin() as txn:
        txn.delete(keys[1])
        txn.put(keys[2], b"new")
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get([*keys, K(b"\x50", p, "nope")]) == {
        keys[0]: b"v0",
        keys[2]: b"new",
        keys[3]: b"v3",
    }
    # The old snapshot still reads the old versions (MVCC).
    assert await reader.get(keys[1]) == b"v1"
    await reader.rollback()


async def test_reads_see_own_writes_merged_over_snapshot(
    client: AsyncTransactionClient, p: bytes
) -> None:
    committed = {K(f, p, n): f + n.encode() for f in FIRST_BYTES for n in ("b", "d")}
    async with client.begin() as txn:
        for k, v in committed.items():
            txn.put(k, v)
    txn = await client.begin()
    txn.put(K(b"\x10", p, "a"), b"own-a")  # new key
    txn.put(K(b"\x50", p, "b"), b"own-b")  # overwrite
    txn.delete(K(b"\x90", p, "d"))  # hide a committed key
    txn.delete(K(b"\x90", p, "zz"))  # delete of a key that never existed
    assert await txn.get(K(b"\x50", p, "b")) == b"own-b"
    assert await txn.get(K(b"\x90", p, "d")) is None
    got = await txn.batch_get([K(b"\x10", p, "a"), K(b"\x90", p, "d"), K(b"\xd0", p, "b")])
    assert got == {K(b"\x10", p, "a"): b"own-a", K(b"\xd0", p, "b"): b"\xd0b"}

    expected = dict(committed)
    expected[K(b"\x10", p, "a")] = b"own-a"
    expected[K(b"\x50", p, "b")] = b"own-b"
    del expected[K(b"\x90", p, "d")]
    ordered = sorted(expected.items())
    everything = await txn.scan(b"", None, limit=10_000)
    mine = [(k, v) for k, v in everything if p in k]
    assert mine == ordered
    # Other tests' keys lie between the regions' parts of this test: filter them out.
    rev = await txn.scan(K(b"\x10", p, ""), K(b"\xd0", p, "c"), limit=10_000, reverse=True)
    assert [kv for kv in rev if p in kv[0]] == [
        (k, v) for k, v in reversed(ordered) if k < K(b"\xd0", p, "c")
    ]
    in_first_region = [kv for kv in ordered if kv[0].startswith(b"\x10")]
    assert await txn.scan(K(b"\x10", p, ""), K(b"\x10", p, "~"), limit=1) == in_first_region[:1]
    assert (
        await txn.scan(K(b"\x50", p, ""), K(b"\x50", p, "~"), limit=2, reverse=True)
        == [kv for kv in reversed(ordered) if kv[0].startswith(b"\x50")][:2]
    )
    keys_only = await txn.scan(K(b"\x10", p, ""), K(b"\x90", p, "~"), limit=100, key_only=True)
    assert [kv for kv in keys_only if p in kv[0]] == [
        (k, b"") for k, _ in ordered if k < K(b"\x90", p, "~")
    ]
    streamed = [kv async for kv in txn.scan_iter(K(b"\x10", p, ""), K(b"\xd0", p, "~"))]
    assert [kv for kv in streamed if p in kv[0]] == ordered
    await txn.rollback()


async def test_snapshot_isolation(client: AsyncTransactionClient, p: bytes) -> None:
    key = K(b"\x50", p, "x")
    async with client.begin() as txn:
        txn.put(key, b"1")
    early = await client.begin()
    assert await early.get(key) == b"1"
    async with client.begin() as txn:
        txn.put(key, b"2")
        txn.put(K(b"\x90", p, "new"), b"n")
    # A transaction started before that commit keeps reading its snapshot.
    assert await early.get(key) == b"1"
    assert await early.get(K(b"\x90", p, "new")) is None
    assert await early.scan(K(b"\x90", p, ""), K(b"\x90", p, "~"), limit=10) == []
    late = await client.begin()
    assert await late.get(key) == b"2"


async def test_write_conflict_carries_server_facts_and_leaves_no_locks(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    key = K(b"\x10", p, "c")
    other = K(b"\xd0", p, "c")
    loser = await client.begin()
    loser.put(other, b"loser")  # a key in another region that prewrites fine
    loser.put(key, b"loser")
    async with client.begin() as winner:
        winner.put(key, b"winner")
    with pytest.raises(WriteConflictError) as info:
        await loser.commit()
    err = info.value
    assert err.key == key
    assert err.start_ts == loser.start_ts
    assert err.conflict_commit_ts == winner.commit_ts
    assert err.conflict_start_ts == winner.start_ts
    assert loser.state == "failed"
    with pytest.raises(TransactionClosedError):
        loser.put(key, b"again")
    # The cleanup runs in the background: the other key's lock is rolled back.
    assert await client.runtime.wait_background(30)
    assert locked_keys(cluster, p) == []
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.get(key) == b"winner"
    assert await snap.get(other) is None


async def test_insert_of_existing_key_raises_key_exists(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    key = K(b"\x90", p, "i")
    async with client.begin() as txn:
        txn.insert(key, b"first")
    txn = await client.begin()
    txn.insert(key, b"second")
    txn.put(K(b"\x10", p, "side"), b"s")
    with pytest.raises(KeyExistsError) as info:
        await txn.commit()
    assert info.value.key == key
    assert await client.runtime.wait_background(30)
    assert locked_keys(cluster, p) == []
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.get(key) == b"first"
    assert await snap.get(K(b"\x10", p, "side")) is None
    # Insert after deleting in the same transaction is an overwrite.
    async with client.begin() as txn:
        txn.delete(key)
        txn.insert(key, b"third")
    assert await client.snapshot(await client.current_timestamp()).get(key) == b"third"


async def test_read_only_and_rollback_send_nothing(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    before = cluster.counters.snapshot()
    txn = await client.begin()
    assert await txn.get(K(b"\x10", p, "r")) is None
    assert await txn.commit() == 0
    txn = await client.begin()
    txn.put(K(b"\x10", p, "r"), b"x")
    await txn.rollback()
    after = cluster.counters.snapshot()
    writes = ("KvPrewrite", "KvCommit", "KvBatchRollback", "KvCleanup")
    for method in writes:
        assert sum(v for (s, m), v in after.items() if m == method) == sum(
            v for (s, m), v in before.items() if m == method
        ), method
    with pytest.raises(TransactionClosedError):
        await txn.get(b"x")
    with pytest.raises(TransactionClosedError):
        await txn.rollback()


async def test_context_manager_rolls_back_on_error(
    client: AsyncTransactionClient, p: bytes
) -> None:
    key = K(b"\x50", p, "cm")

    async def body() -> AsyncTransaction:
        async with client.begin() as txn:
            txn.put(key, b"v")
            raise RuntimeError(txn)

    with pytest.raises(RuntimeError) as info:
        await body()
    txn = info.value.args[0]
    assert txn.state == "rolled back"
    assert await client.snapshot(await client.current_timestamp()).get(key) is None


async def test_bad_input_is_refused_before_sending(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    before = cluster.counters.snapshot()
    with pytest.raises(ValueError, match="pessimistic"):
        client.begin(TransactionOptions(pipelined=True), pessimistic=True)
    with pytest.raises(TypeError, match="pessimistic"):
        client.begin(pessimistic=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.begin(options="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pipelined"):
        client.begin(TransactionOptions.pessimistic(pipelined=True))
    with pytest.raises(ValueError, match="txn_scope"):
        client.begin(TransactionOptions(txn_scope="dc-1"))
    txn = await client.begin()
    with pytest.raises(TypeError):
        txn.put("k", b"v")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        txn.put(b"k", b"")
    with pytest.raises(TypeError):
        await txn.get("k")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await txn.batch_get(b"abc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        await txn.scan(b"a", b"b", limit=0)
    with pytest.raises(ValueError, match="greater"):
        await txn.scan(b"b", b"a", limit=1)
    with pytest.raises(ValueError, match="positive"):
        client.snapshot(0)
    with pytest.raises(ValueError, match="pd_endpoints"):
        await AsyncTransactionClient.connect([])
    after = cluster.counters.snapshot()
    kv = {k: v for k, v in after.items() if k[0] != 0}
    assert kv == {k: v for k, v in before.items() if k[0] != 0}
    await txn.rollback()


async def test_one_pc_single_region_sends_no_commit(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    opts = TransactionOptions(try_one_pc=True)
    commits = cluster.counters.count("KvCommit")
    prewrites = cluster.counters.count("KvPrewrite")
    async with client.begin(opts) as txn:
        txn.put(K(b"\x50", p, "1"), b"a")
        txn.put(K(b"\x50", p, "2"), b"b")
    assert txn.commit_ts > txn.start_ts
    assert cluster.counters.count("KvCommit") == commits
    assert cluster.counters.count("KvPrewrite") == prewrites + 1
    assert locked_keys(cluster, p) == []
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get([K(b"\x50", p, "1"), K(b"\x50", p, "2")]) == {
        K(b"\x50", p, "1"): b"a",
        K(b"\x50", p, "2"): b"b",
    }
    # Two regions: 1PC is impossible, the commit falls back to 2PC.
    async with client.begin(opts) as txn:
        txn.put(K(b"\x10", p, "m"), b"x")
        txn.put(K(b"\xd0", p, "m"), b"y")
    assert cluster.counters.count("KvCommit") > commits
    assert (await snap.get(K(b"\x10", p, "m"))) is None  # older snapshot
    newer = client.snapshot(await client.current_timestamp())
    assert await newer.get(K(b"\xd0", p, "m")) == b"y"


async def test_async_commit_returns_before_commit_rpcs_and_is_atomic(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    keys = [K(f, p, "ac") for f in FIRST_BYTES]
    # Hold every commit RPC: async commit must not need them to be decided.
    fault = cluster.faults.add("KvCommit", hang=True)
    try:
        txn = await client.begin(TransactionOptions(async_commit=True))
        for i, key in enumerate(keys):
            txn.put(key, b"%d" % i)
        commit_ts = await asyncio.wait_for(txn.commit(), 60)
        assert commit_ts > txn.start_ts
        assert await asyncio.to_thread(cluster.faults.wait_hanging, 1, 30)
        # The locks are still on the servers; a reader after the commit ts resolves
        # them from the secondaries once the primary's TTL passed (moved clock).
        assert sorted(locked_keys(cluster, p)) == sorted(keys)
        lock = cluster.engine.scan_lock(2**63 - 1, keys[0], keys[0] + b"\x00")[0]
        assert lock.use_async_commit
        cluster.clock.advance(10_000)
        await client.current_timestamp()  # refresh the cached low-resolution ts
        snap = client.snapshot(await client.current_timestamp())
        got = await asyncio.wait_for(snap.batch_get(keys), 60)
        assert got == {k: b"%d" % i for i, k in enumerate(keys)}
        assert cluster.counters.count("KvCheckSecondaryLocks") > 0
        old = client.snapshot(commit_ts - 1)
        assert await old.batch_get(keys) == {}
    finally:
        cluster.faults.remove(fault)
    assert await client.runtime.wait_background(60)


def test_sync_client_round_trip(cluster: MockCluster, p: bytes) -> None:
    with TransactionClient.connect(cluster.pd_endpoints) as client:
        with client.begin() as txn:
            txn.put(K(b"\x10", p, "a"), b"1")
            txn.insert(K(b"\x90", p, "b"), b"2")
            assert txn.get(K(b"\x10", p, "a")) == b"1"
        assert txn.commit_ts > 0
        snap = client.snapshot(client.current_timestamp())
        assert snap.get(K(b"\x90", p, "b")) == b"2"
        mine = [kv for kv in snap.scan(K(b"\x10", p, ""), None, limit=1000) if p in kv[0]]
        assert mine == [
            (K(b"\x10", p, "a"), b"1"),
            (K(b"\x90", p, "b"), b"2"),
        ]
        assert [kv for kv in snap.scan_iter(K(b"\x10", p, ""), reverse=True) if p in kv[0]] == [
            (K(b"\x90", p, "b"), b"2"),
            (K(b"\x10", p, "a"), b"1"),
        ]
        txn = client.begin()
        txn.insert(K(b"\x90", p, "b"), b"dup")
        with pytest.raises(KeyExistsError):
            txn.commit()
        txn = client.begin(pessimistic=True)
        assert txn.get_for_update(K(b"\x90", p, "b")) == b"2"
        txn.put(K(b"\x90", p, "b"), b"3")
        assert txn.commit() > 0
        assert client.snapshot(client.current_timestamp()).get(K(b"\x90", p, "b")) == b"3"


async def test_keyspaces_isolate_transactions_under_api_v2() -> None:
    with MockCluster(stores=3, api_version=2) as cluster:
        alpha_id = cluster.create_keyspace("alpha").id
        cluster.create_keyspace("beta")
        alpha = await AsyncTransactionClient.connect(cluster.pd_endpoints, keyspace="alpha")
        beta = await AsyncTransactionClient.connect(cluster.pd_endpoints, keyspace="beta")
        try:
            async with alpha.begin() as txn:
                txn.put(b"k1", b"a1")
                txn.put(b"k2", b"a2")
            async with beta.begin() as txn:
                txn.put(b"k1", b"b1")
            a_snap = alpha.snapshot(await alpha.current_timestamp())
            b_snap = beta.snapshot(await beta.current_timestamp())
            assert await a_snap.get(b"k1") == b"a1"
            assert await b_snap.get(b"k1") == b"b1"
            assert await a_snap.scan(b"", None, limit=10) == [(b"k1", b"a1"), (b"k2", b"a2")]
            assert await b_snap.scan(b"", None, limit=10, reverse=True) == [(b"k1", b"b1")]
            assert await b_snap.batch_get([b"k1", b"k2"]) == {b"k1": b"b1"}
            # On the server every key carries its keyspace's prefix.
            stored = cluster.engine.mvcc_by_key(keyspace_prefix("txn", alpha_id) + b"k2")
            assert len(stored.writes) == 1
            assert cluster.engine.mvcc_by_key(b"k2").writes == ()
        finally:
            await alpha.close()
            await beta.close()


async def test_large_transaction_is_cut_into_16k_batches_primary_first(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    keys = [K(b"\x50", p, f"big{i:02d}") for i in range(10)]
    value = b"x" * 5000
    prewrites = cluster.counters.count("KvPrewrite")
    commits = cluster.counters.count("KvCommit")
    txn = await client.begin()
    for key in keys:
        txn.put(key, value)
    await txn.commit()
    assert await client.runtime.wait_background(60)
    # ~5 KiB per mutation, batches close once they reach 16 KiB: 4 + 4 + 2 mutations.
    assert cluster.counters.count("KvPrewrite") - prewrites == 3
    assert cluster.counters.count("KvCommit") - commits == 3
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get(keys) == dict.fromkeys(keys, value)


async def test_async_commit_and_one_pc_fall_back_to_2pc_when_tikv_refuses(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    # A start ts 10 s in the past puts max_commit_ts (start + elapsed + 2 s) below the
    # commit ts TiKV computes, so TiKV answers with a zero commit ts; the commit must
    # still succeed, through 2PC.
    now = await client.current_timestamp()
    old = now - (10_000 << 18)
    for opts in (
        TransactionOptions(start_ts=old, async_commit=True),
        TransactionOptions(start_ts=old, try_one_pc=True),
    ):
        key = K(b"\x90", p, f"fb-{opts.async_commit}")
        commits = cluster.counters.count("KvCommit")
        txn = await client.begin(opts)
        txn.put(key, b"v")
        commit_ts = await txn.commit()
        committer = txn._committer
        assert committer is not None
        assert not committer.async_commit
        assert not committer.one_pc
        assert cluster.counters.count("KvCommit") == commits + 1
        assert commit_ts > now
        snap = client.snapshot(await client.current_timestamp())
        assert await snap.get(key) == b"v"


async def test_prewrite_resolves_an_abandoned_older_lock(
    client: AsyncTransactionClient, cluster: MockCluster, p: bytes
) -> None:
    key = K(b"\x10", p, "abandoned")
    dead = await client.begin()
    dead.put(key, b"dead")
    committer = dead._new_committer()
    assert await committer.prepare()
    await committer.prewrite()  # and the client dies
    cluster.clock.advance(60_000)
    await client.current_timestamp()
    async with client.begin() as txn:
        txn.put(key, b"alive")
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.get(key) == b"alive"
    assert locked_keys(cluster, p) == []
    status = client.runtime.resolver.cached_status(dead.start_ts)
    assert status is not None
    assert status.is_rolled_back


async def test_sync_client_refuses_calls_from_a_running_loop(cluster: MockCluster) -> None:
    client = await asyncio.to_thread(TransactionClient.connect, cluster.pd_endpoints)
    try:
        with pytest.raises(RuntimeError, match="async"):
            client.current_timestamp()
        txn = await asyncio.to_thread(client.begin)
        txn.put(b"\x10loop-check", b"v")  # buffered writes need no loop
        with pytest.raises(RuntimeError, match="async"):
            txn.commit()
        await asyncio.to_thread(txn.rollback)
    finally:
        await asyncio.to_thread(client.close)
