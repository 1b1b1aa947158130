"""Pipelined DML against the mock cluster: flushes, generations, reads, commit, abort, crash.

What TiKV holds is checked through ``cluster.engine`` (locks with their generations,
committed data), what was sent through the request counters. Background work (the
asynchronous resolve after commit / rollback) is waited for by polling with a deadline;
lock TTLs expire by moving the cluster's clock, never by sleeping.
"""

from __future__ import annotations

import asyncio
import itertools
import threading

import pytest
from _txn_helpers import FIRST_BYTES, NO_HANG, poll, seed
from tikv_mockstore import MockCluster
from tikv_pd.codec import keyspace_prefix
from tikv_pd.config import TransactionOptions
from tikv_txn import (
    AsyncTransactionClient,
    KeyExistsError,
    TransactionClient,
    TransactionClosedError,
    TxnError,
    WriteConflictError,
)
from tikv_txn.pipelined import (
    PIPELINED_REQUEST_SOURCE,
    AsyncPipelinedTransaction,
    FlushThresholds,
    throttle_ms,
)
from tikv_txn.policy import (
    PIPELINED_FORCE_FLUSH_SIZE,
    PIPELINED_MIN_FLUSH_KEYS,
    PIPELINED_MIN_FLUSH_SIZE,
)

_ids = itertools.count()
PIPELINED = TransactionOptions(pipelined=True)
#: Small thresholds (client-go's tests use failpoints the same way): a flush every 100 keys.
SMALL = FlushThresholds(min_keys=100, min_size=1, force_size=1 << 30)


def make_keys(n: int, tag: bytes = b"k") -> list[bytes]:
    """``n`` keys spread over the four regions, unique to the calling test."""
    prefix = b"pl%04d/" % next(_ids)
    return [FIRST_BYTES[i % 4] + prefix + tag + b"%06d" % i for i in range(n)]


def locks_of_txn(cluster: MockCluster, start_ts: int) -> list[bytes]:
    return [lk.key for lk in cluster.engine.scan_lock(2**63 - 1) if lk.lock_version == start_ts]


def engine_locks(cluster: MockCluster, keys: list[bytes]) -> dict[bytes, object]:
    wanted = set(keys)
    out: dict[bytes, object] = {}
    for key in wanted:
        lock = cluster.engine.mvcc_by_key(key).lock
        if lock is not None:
            out[key] = lock
    return out


async def begin(
    client: AsyncTransactionClient, thresholds: FlushThresholds | None = None
) -> AsyncPipelinedTransaction:
    txn = await client.begin(options=PIPELINED)
    assert isinstance(txn, AsyncPipelinedTransaction)
    if thresholds is not None:
        txn.set_flush_thresholds(thresholds)
    return txn


async def wait_flushed(txn: AsyncPipelinedTransaction) -> None:
    await poll(lambda: not txn.flushing, "the running flush")


# -- options ------------------------------------------------------------------------------


def test_defaults_are_client_go_thresholds() -> None:
    t = FlushThresholds()
    assert (t.min_keys, t.min_size, t.force_size) == (
        PIPELINED_MIN_FLUSH_KEYS,
        PIPELINED_MIN_FLUSH_SIZE,
        PIPELINED_FORCE_FLUSH_SIZE,
    )
    assert (t.min_keys, t.min_size, t.force_size) == (10_000, 16 << 20, 128 << 20)
    with pytest.raises(ValueError, match="min_keys"):
        FlushThresholds(min_keys=-1)


async def test_begin_gives_a_pipelined_transaction(client: AsyncTransactionClient) -> None:
    txn = await client.begin(options=PIPELINED)
    assert isinstance(txn, AsyncPipelinedTransaction)
    assert txn.flush_thresholds == FlushThresholds()
    assert await txn.commit() == 0  # nothing written: no RPC
    with pytest.raises(ValueError, match="pipelined"):
        TransactionOptions(pipelined=True, async_commit=True)
    with pytest.raises(ValueError, match="pipelined"):
        client.begin(options=TransactionOptions.pessimistic(pipelined=True))


async def test_scans_are_refused(client: AsyncTransactionClient) -> None:
    txn = await begin(client)
    txn.put(b"\x10scan", b"v")
    with pytest.raises(NotImplementedError, match="pipelined"):
        await txn.scan(b"", None, limit=10)
    # The committed data can still be scanned through the snapshot.
    assert isinstance(await txn.snapshot.scan(b"\x10scan", b"\x10scao", limit=10), list)
    await txn.rollback()


# -- a large transaction ------------------------------------------------------------------


async def test_large_transaction_flushes_in_the_background_and_commits(
    client: AsyncTransactionClient, reader: AsyncTransactionClient, cluster: MockCluster
) -> None:
    """50,000 keys of 1 KB with client-go's thresholds: flushed while written, all readable."""
    keys = make_keys(50_000)
    value = b"v" * 1000
    flushes = cluster.counters.count("KvFlush")
    commits = cluster.counters.count("KvCommit")
    prewrites = cluster.counters.count("KvPrewrite")
    txn = await begin(client)
    for i, key in enumerate(keys):
        txn.put(key, value)
        if i % 1000 == 999:
            await asyncio.sleep(0)  # let the background flush run
    # 16 MiB of buffer memory (~14,700 entries of 1 KB) and 10,000 keys were reached:
    # generation 1 is flushing or done.
    assert txn.generation >= 1
    assert 14_000 <= txn.flushed_keys < len(keys)
    assert txn.primary == min(keys)  # the first key of generation 1
    commit_ts = await txn.commit()
    assert commit_ts > txn.start_ts
    assert txn.generation >= 2  # at least one background flush plus the final one
    assert txn.flushed_keys == len(keys)
    # Many Flush requests (batches cut once they reach 16 KiB), no prewrite, one commit
    # (the primary).
    per_batch = 16 * 1024 // 1013 + 1
    assert cluster.counters.count("KvFlush") - flushes >= len(keys) // per_batch
    assert cluster.counters.count("KvPrewrite") == prewrites
    assert cluster.counters.count("KvCommit") - commits == 1
    # Every key is readable right away (readers resolve what the async resolve has not).
    snap = reader.snapshot(await reader.current_timestamp())
    got = await asyncio.wait_for(snap.batch_get(keys), NO_HANG)
    assert len(got) == len(keys)
    assert set(got.values()) == {value}
    # The asynchronous resolve leaves no lock of the transaction behind.
    await poll(lambda: not locks_of_txn(cluster, txn.start_ts), "the commit resolve")
    assert txn.resolve_task is not None
    assert cluster.counters.last_context("KvFlush").request_source == PIPELINED_REQUEST_SOURCE


# -- generations and reads ----------------------------------------------------------------


async def test_later_generation_supersedes_and_reads_see_every_tier(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    keys = make_keys(400)
    old = make_keys(4, b"old")
    await seed(client, dict.fromkeys(old, b"committed"))
    txn = await begin(client, SMALL)
    for key in keys[:100]:  # the 100th write starts generation 1
        txn.put(key, b"gen1")
    assert txn.generation == 1
    await wait_flushed(txn)
    first = engine_locks(cluster, keys[:100])
    assert len(first) == 100
    assert {lk.generation for lk in first.values()} == {1}  # type: ignore[attr-defined]
    # Generation 2 rewrites half of generation 1, deletes one of its keys, adds new ones.
    for key in keys[:50]:
        txn.put(key, b"gen2")
    txn.delete(keys[75])
    for key in keys[100:149]:
        txn.put(key, b"new2")
    assert txn.generation == 2
    await wait_flushed(txn)
    txn.put(keys[300], b"buffered")  # stays in memory (below the thresholds)
    locks = engine_locks(cluster, keys[:150])
    assert {lk.generation for k, lk in locks.items() if k in keys[:50]} == {2}  # type: ignore[attr-defined]
    assert locks[keys[75]].generation == 2  # type: ignore[attr-defined]
    assert locks[keys[99]].generation == 1  # type: ignore[attr-defined]
    assert locks[keys[120]].generation == 2  # type: ignore[attr-defined]
    assert keys[149] not in locks
    assert txn.flushed_keys == 200
    # Reads: the flushed generations come from TiKV (KvBufferBatchGet), newest wins.
    bbg = cluster.counters.count("KvBufferBatchGet")
    assert await txn.get(keys[0]) == b"gen2"
    assert await txn.get(keys[99]) == b"gen1"
    assert await txn.get(keys[75]) is None  # deleted in generation 2
    assert cluster.counters.count("KvBufferBatchGet") > bbg
    assert await txn.get(keys[300]) == b"buffered"  # the buffer
    assert await txn.get(old[0]) == b"committed"  # the snapshot
    assert await txn.get(keys[350]) is None  # nowhere
    got = await txn.batch_get(
        [keys[1], keys[60], keys[75], keys[120], keys[300], old[1], keys[399]]
    )
    assert got == {
        keys[1]: b"gen2",
        keys[60]: b"gen1",
        keys[120]: b"new2",
        keys[300]: b"buffered",
        old[1]: b"committed",
    }
    # The snapshot reads past the transaction's own locks (no wait on its own primary).
    assert await asyncio.wait_for(txn.snapshot.get(keys[0]), NO_HANG) is None
    read = cluster.counters.last_context("KvGet")
    assert read is not None
    assert txn.start_ts in read.resolved_locks
    commit_ts = await txn.commit()
    await poll(lambda: not locks_of_txn(cluster, txn.start_ts), "the commit resolve")
    snap = client.snapshot(await client.current_timestamp())
    final = await snap.batch_get(keys + old)
    assert final == {
        **dict.fromkeys(keys[:50], b"gen2"),
        **{k: b"gen1" for k in keys[50:100] if k != keys[75]},
        **dict.fromkeys(keys[100:149], b"new2"),
        keys[300]: b"buffered",
        **dict.fromkeys(old, b"committed"),
    }
    assert commit_ts > txn.start_ts


async def test_insert_of_an_existing_key_fails_and_rolls_back(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    keys = make_keys(150)
    await seed(client, {keys[5]: b"exists"})
    txn = await begin(client, SMALL)
    for key in keys:
        txn.insert(key, b"new")
    with pytest.raises(KeyExistsError):
        await txn.commit()
    assert txn.state == "failed"
    await poll(lambda: not locks_of_txn(cluster, txn.start_ts), "the rollback resolve")
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get(keys) == {keys[5]: b"exists"}


async def test_write_conflict_is_reported_and_the_flushed_locks_rolled_back(
    client: AsyncTransactionClient, reader: AsyncTransactionClient, cluster: MockCluster
) -> None:
    keys = make_keys(300)
    txn = await begin(client, SMALL)
    # Another transaction commits a key after this one started.
    await seed(reader, {keys[250]: b"other"})
    for key in keys:
        txn.put(key, b"mine")
    with pytest.raises(WriteConflictError) as info:
        await txn.commit()
    assert info.value.key == keys[250]
    await poll(lambda: not locks_of_txn(cluster, txn.start_ts), "the rollback resolve")
    snap = reader.snapshot(await reader.current_timestamp())
    assert await snap.batch_get(keys) == {keys[250]: b"other"}
    with pytest.raises(TransactionClosedError):
        txn.put(keys[0], b"again")


# -- abort and crash ----------------------------------------------------------------------


async def test_abort_midway_leaves_no_writes_and_no_locks(
    client: AsyncTransactionClient, reader: AsyncTransactionClient, cluster: MockCluster
) -> None:
    keys = make_keys(1000)
    old = dict.fromkeys(keys[::10], b"old")
    await seed(client, old)
    txn = await begin(client, SMALL)
    for i, key in enumerate(keys):
        txn.put(key, b"new")
        if i % 100 == 99:
            await txn.flush(force=True)  # waits for the running flush, starts the next
    await wait_flushed(txn)
    assert txn.generation >= 5
    assert len(locks_of_txn(cluster, txn.start_ts)) >= 500
    await txn.rollback()
    assert txn.state == "rolled back"
    await poll(lambda: not locks_of_txn(cluster, txn.start_ts), "the rollback resolve")
    snap = reader.snapshot(await reader.current_timestamp())
    assert await snap.batch_get(keys) == old
    # GC at the current ts: still nothing of the transaction, and no locks at all.
    await reader.gc(await reader.current_timestamp())
    assert not locks_of_txn(cluster, txn.start_ts)
    snap = reader.snapshot(await reader.current_timestamp())
    assert await snap.batch_get(keys) == old
    with pytest.raises(TransactionClosedError):
        await txn.get(keys[0])


async def test_abandoned_transaction_is_resolved_by_readers_after_its_ttl(
    cluster: MockCluster, reader: AsyncTransactionClient
) -> None:
    keys = make_keys(500)
    old = dict.fromkeys(keys[:4], b"old")
    await seed(reader, old)
    crashed = await AsyncTransactionClient.connect(cluster.pd_endpoints)
    txn = await begin(crashed, SMALL)
    for key in keys:
        txn.put(key, b"never")
    await txn.flush(force=True)
    await wait_flushed(txn)
    start_ts = txn.start_ts
    assert len(locks_of_txn(cluster, start_ts)) == len(keys)
    await crashed.close()  # the client goes away: no commit, no rollback, no heartbeat
    # Before the TTL expires a reader may not roll the locks back: it pushes the
    # transaction's min_commit_ts past its own ts and reads past the locks.
    snap = reader.snapshot(await reader.current_timestamp())
    assert await asyncio.wait_for(snap.batch_get(keys[:8]), NO_HANG) == old
    assert len(locks_of_txn(cluster, start_ts)) == len(keys)
    # After it (20 s, the flushed locks' TTL, never extended again) a reader rolls the
    # transaction back: its primary first, then the locks it meets.
    cluster.clock.advance(60_000)
    snap = reader.snapshot(await reader.current_timestamp())
    got = await asyncio.wait_for(snap.batch_get(keys), NO_HANG)
    assert got == old
    # The locks the reader met are gone; GC removes the rest.
    assert not set(locks_of_txn(cluster, start_ts)) & set(keys)
    await reader.gc(await reader.current_timestamp())
    assert not locks_of_txn(cluster, start_ts)


# -- heartbeat ----------------------------------------------------------------------------


async def test_heartbeat_keeps_the_primary_alive_and_pushes_min_commit_ts(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    keys = make_keys(200)
    client.runtime.budgets.heartbeat_interval_s = 0.02
    txn = await begin(client, SMALL)
    for key in keys:
        txn.put(key, b"v")
    await wait_flushed(txn)
    await poll(lambda: txn.heartbeats >= 2, "two heartbeats")
    primary = cluster.engine.mvcc_by_key(txn.primary).lock
    assert primary is not None
    assert primary.min_commit_ts > txn.start_ts + 1  # pushed to the heartbeat's ts
    assert primary.ttl >= 20_000
    await txn.commit()
    beats = txn.heartbeats
    await poll(lambda: not locks_of_txn(cluster, txn.start_ts), "the commit resolve")
    assert txn.heartbeats == beats  # stopped at commit
    snap = client.snapshot(await client.current_timestamp())
    assert len(await snap.batch_get(keys)) == len(keys)


# -- the blocking client ------------------------------------------------------------------


def test_blocking_writer_waits_for_the_running_flush(cluster: MockCluster) -> None:
    """The blocking client's put blocks at the force threshold until the flush finishes."""
    keys = make_keys(2000)
    with TransactionClient.connect(cluster.pd_endpoints) as client:
        txn = client.begin(options=PIPELINED)
        inner = txn.async_transaction
        assert isinstance(inner, AsyncPipelinedTransaction)
        # A flush at 100 keys; at 4 KiB the writer waits for the running one.
        inner.set_flush_thresholds(FlushThresholds(min_keys=100, min_size=1, force_size=4096))
        writer = threading.current_thread()
        for key in keys:
            txn.put(key, b"x" * 40)
            # Never more than the force threshold (plus the entry that reached it) while
            # a flush runs: the writer waited for it.
            assert inner.buffer_memory <= 4096 + 256
        assert threading.current_thread() is writer
        assert inner.generation >= 10
        assert txn.get(keys[0]) == b"x" * 40
        commit_ts = txn.commit()
        assert commit_ts > 0
        snap = client.snapshot(client.current_timestamp())
        assert len(snap.batch_get(keys)) == len(keys)


# -- the heartbeat stops: the transaction cannot go on -------------------------------------


async def test_primary_rolled_back_by_others_stops_the_heartbeat_and_further_flushes(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    """client-go TestPipelinedDMLFailedByPKRollback."""
    keys = make_keys(2)
    client.runtime.budgets.heartbeat_interval_s = 0.02
    txn = await begin(client)
    txn.put(keys[0], b"v1")
    assert await txn.flush(force=True)
    await wait_flushed(txn)
    assert txn.primary == keys[0]
    assert txn.heartbeat_running
    # Someone (GC, a reader after the TTL) rolls the primary back.
    cluster.engine.resolve_lock(txn.start_ts, 0, keys=[keys[0]])
    await poll(lambda: not txn.heartbeat_running, "the heartbeat to stop")
    txn.put(keys[1], b"v2")
    assert await txn.flush(force=True)
    with pytest.raises(TxnError, match="heartbeat stopped"):
        await txn.commit()
    await poll(lambda: not locks_of_txn(cluster, txn.start_ts), "the rollback resolve")
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get(keys) == {}


async def test_heartbeat_stops_after_the_pipelined_max_ttl(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    """client-go TestPipelinedDMLFailedByPKMaxTTLExceeded (24 h for pipelined DML)."""
    keys = make_keys(2)
    client.runtime.budgets.heartbeat_interval_s = 0.02
    txn = await begin(client)
    txn.put(keys[0], b"v1")
    await txn.flush(force=True)
    await wait_flushed(txn)
    await poll(lambda: txn.heartbeats >= 1, "a heartbeat")
    assert txn.heartbeat_running
    cluster.clock.advance(23 * 3600 * 1000)  # past the 1 h MaxTxnTTL: still beating
    beats = txn.heartbeats
    await poll(lambda: txn.heartbeats > beats, "a heartbeat after 23 h")
    cluster.clock.advance(2 * 3600 * 1000)  # past 24 h
    await poll(lambda: not txn.heartbeat_running, "the heartbeat to stop")
    txn.put(keys[1], b"v2")
    await txn.flush(force=True)
    with pytest.raises(TxnError, match="heartbeat stopped"):
        await txn.commit()


# -- write throttle -----------------------------------------------------------------------


def test_throttle_sleeps_the_ratio_of_the_time() -> None:
    """client-go throttlePipelinedTxn: sleep / (sleep + flush) = ratio."""
    assert throttle_ms(0.0, 500) == 0
    assert throttle_ms(0.5, 200) == 200
    assert throttle_ms(0.75, 100) == 300
    assert throttle_ms(0.5, 0) == 0  # no flush measured yet
    assert throttle_ms(1.0, 100) == 0  # invalid ratios never sleep
    assert throttle_ms(-0.1, 100) == 0


async def test_throttled_transaction_commits(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    keys = make_keys(300)
    txn = await client.begin(
        options=TransactionOptions(pipelined=True, pipelined_write_throttle_ratio=0.5)
    )
    assert isinstance(txn, AsyncPipelinedTransaction)
    txn.set_flush_thresholds(SMALL)
    for i, key in enumerate(keys):
        txn.put(key, b"t")
        if i % 100 == 99:
            await txn.flush(force=True)
    await txn.commit()
    assert txn.generation >= 3
    snap = client.snapshot(await client.current_timestamp())
    assert len(await snap.batch_get(keys)) == len(keys)


# -- API v2 -------------------------------------------------------------------------------


async def test_pipelined_transaction_under_a_keyspace() -> None:
    """Keys, flushed ranges and buffer reads carry the keyspace prefix (API v2)."""
    with MockCluster(stores=1, api_version=2) as cluster:
        ks = cluster.create_keyspace("pdml").id
        async with await AsyncTransactionClient.connect(
            cluster.pd_endpoints, keyspace="pdml"
        ) as client:
            keys = [b"k%04d" % i for i in range(250)]
            txn = await begin(client, SMALL)
            for key in keys:
                txn.put(key, b"v2")
            await wait_flushed(txn)
            prefix = keyspace_prefix("txn", ks)
            assert txn.primary == prefix + keys[0]
            assert txn.flushed_range is not None
            assert txn.flushed_range[0].startswith(prefix)
            assert await txn.get(keys[1]) == b"v2"  # flushed: KvBufferBatchGet
            assert await txn.batch_get(keys[:3]) == dict.fromkeys(keys[:3], b"v2")
            await txn.commit()
            await poll(lambda: not locks_of_txn(cluster, txn.start_ts), "the commit resolve")
            snap = client.snapshot(await client.current_timestamp())
            assert len(await snap.batch_get(keys)) == len(keys)
            assert cluster.engine.mvcc_by_key(prefix + keys[0]).writes


async def test_buffer_reads_are_cached_until_the_next_flush(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    """client-go TestPipelinedPrefetch / TestMemBufferBatchGetCache."""
    keys = make_keys(200)
    txn = await begin(client, SMALL)
    for key in keys[:100]:
        txn.put(key, b"one")
    await wait_flushed(txn)
    before = cluster.counters.count("KvBufferBatchGet")
    assert await txn.batch_get([*keys[:10], keys[150]]) == dict.fromkeys(keys[:10], b"one")
    sent = cluster.counters.count("KvBufferBatchGet")
    assert sent > before
    # Found and not-found answers are both cached: no more requests for these keys.
    assert await txn.get(keys[3]) == b"one"
    assert await txn.get(keys[150]) is None
    assert cluster.counters.count("KvBufferBatchGet") == sent
    # A new generation rewrites keys[3]: the cache must not hide it once flushed.
    txn.put(keys[3], b"two")
    for key in keys[100:199]:
        txn.put(key, b"one")
    assert txn.generation == 2
    await wait_flushed(txn)
    assert await txn.get(keys[3]) == b"two"
    assert cluster.counters.count("KvBufferBatchGet") > sent
    await txn.rollback()


# -- optimistic locks ---------------------------------------------------------------------


async def test_lock_keys_marks_unwritten_keys_and_keeps_flushed_values(
    client: AsyncTransactionClient, reader: AsyncTransactionClient, cluster: MockCluster
) -> None:
    keys = make_keys(102)
    written, unwritten, other = keys[0], keys[100], keys[101]
    await seed(client, {unwritten: b"committed"})
    txn = await begin(client, SMALL)
    for key in keys[:100]:
        txn.put(key, b"mine")
    await wait_flushed(txn)  # generation 1 holds `written`
    assert await txn.get_for_update(unwritten) == b"committed"
    await txn.lock_keys([written])  # already locked by its own Put: nothing to add
    assert await txn.check_exists_for_update([written, keys[50]]) == {
        written: True,
        keys[50]: True,
    }
    assert await txn.flush(force=True)
    await wait_flushed(txn)
    locks = engine_locks(cluster, [written, unwritten])
    assert locks[written].generation == 1  # type: ignore[attr-defined]
    assert locks[written].value == b"mine"  # type: ignore[attr-defined]
    assert locks[unwritten].generation == 2  # type: ignore[attr-defined]
    assert locks[unwritten].lock_type.name == "LOCK"  # type: ignore[attr-defined]
    await txn.commit()
    await poll(lambda: not locks_of_txn(cluster, txn.start_ts), "the commit resolve")
    snap = reader.snapshot(await reader.current_timestamp())
    assert await snap.batch_get([written, unwritten]) == {
        written: b"mine",
        unwritten: b"committed",
    }
    # A marked key that another transaction wrote meanwhile is a write conflict.
    txn = await begin(client, SMALL)
    txn.put(written, b"again")
    await txn.lock_keys([other])
    await seed(reader, {other: b"theirs"})
    with pytest.raises(WriteConflictError):
        await txn.commit()


async def test_async_writer_gets_backpressure_from_flush(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    """An asyncio writer that awaits flush() never holds more than the force threshold."""
    keys = make_keys(1500)
    force = 8 * 1024
    txn = await begin(client, FlushThresholds(min_keys=10, min_size=1, force_size=force))
    entry = len(keys[0]) + 40 + 128
    for key in keys:
        txn.put(key, b"y" * 40)
        await txn.flush()
        pending = txn._flushing.pending_memory if txn.flushing and txn._flushing else 0
        assert txn.buffer_memory + pending < force + entry
    assert txn.generation >= 10
    await txn.commit()
    snap = client.snapshot(await client.current_timestamp())
    assert len(await snap.batch_get(keys)) == len(keys)


# -- regions change under a pipelined transaction ------------------------------------------


async def test_regions_split_between_flushes_and_before_the_resolve(
    client: AsyncTransactionClient, reader: AsyncTransactionClient, cluster: MockCluster
) -> None:
    """Flushes, buffer reads and the range resolve follow splits (stale region cache)."""
    keys = make_keys(400)
    txn = await begin(client, SMALL)
    for key in keys[:100]:
        txn.put(key, b"a")
    await wait_flushed(txn)
    before = len(cluster.regions())
    # Split inside what generation 1 flushed and inside what generation 2 will flush.
    cluster.split(sorted([keys[40], keys[41], keys[150], keys[151], keys[300]]), txn=True)
    assert len(cluster.regions()) > before
    for key in keys[100:]:
        txn.put(key, b"b")
    assert await txn.get(keys[40]) == b"a"  # KvBufferBatchGet through the new regions
    assert await txn.batch_get([keys[41], keys[151]]) == {keys[41]: b"a", keys[151]: b"b"}
    await txn.commit()
    await poll(lambda: not locks_of_txn(cluster, txn.start_ts), "the commit resolve")
    snap = reader.snapshot(await reader.current_timestamp())
    got = await snap.batch_get(keys)
    assert got == {k: (b"a" if i < 100 else b"b") for i, k in enumerate(keys)}
