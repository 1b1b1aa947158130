"""Reads that meet injected key errors and live locks: the semantics of client-go
``integration_tests/snapshot_fail_test.go`` (``TestBatchGetResponseKeyError``,
``TestScanResponseKeyError``, ``TestRetryPointGetResolveTS``) through ``TransactionClient``.

client-go fabricates the key errors with its ``rpcBatchGetResult`` / ``rpcScanResult``
failpoints (``client_fp_test.go``): a ``Locked`` error whose lock sits on the first requested
key, one version below the reader, TTL 50 ms, with no such lock in the store. Here the mock
store answers the same way (``faults.add(key_error="locked")``), either as a whole-request
error (TiKV's ``error`` plus a first pair) or as one key's pair. The client must resolve the
reported lock (no transaction is found, so it waits out the TTL and rolls it back) and read
again, returning every value.
"""

from __future__ import annotations

from typing import Any

import pytest
from _support import region_id, within
from tikv_mockstore import MockCluster
from tikv_txn import TransactionClient

MAX_TS = 2**64 - 1


@pytest.mark.parametrize("per_key", [False, True], ids=["whole-request", "per-key"])
def test_batch_get_response_key_error(
    txn: TransactionClient,
    tprefix: bytes,
    mock: MockCluster,
    faults: list[Any],
    per_key: bool,
) -> None:
    k1, k2 = tprefix + b"k1", tprefix + b"k2"
    with txn.begin() as t:
        t.put(k1, b"v1")
        t.put(k2, b"v2")
    checks = mock.counters.count("KvCheckTxnStatus")
    fault = mock.faults.add(
        "KvBatchGet",
        region=region_id(mock, k1),
        key_error="locked",
        per_key=per_key,
        times=1,
    )
    faults.append(fault)
    reader = txn.begin()
    # A whole-request error reports one lock only: every key is read again, not just the
    # locked one (client-go keeps all pending keys when the response-level error is set).
    assert reader.batch_get([k1, k2]) == {k1: b"v1", k2: b"v2"}
    reader.rollback()
    assert mock.faults.get(fault.id) is None  # the error was served (times=1)
    # The fabricated lock was resolved, not skipped: its primary's status was checked.
    assert mock.counters.count("KvCheckTxnStatus") > checks


def test_scan_response_key_error(
    txn: TransactionClient, tprefix: bytes, mock: MockCluster, faults: list[Any]
) -> None:
    k1, k2, k3 = (tprefix + k for k in (b"k1", b"k2", b"k3"))
    with txn.begin() as t:
        t.put(k1, b"v1")
        t.put(k2, b"v2")
        t.put(k3, b"v3")
    region = region_id(mock, k1)
    faults.append(mock.faults.add("KvScan", region=region, key_error="locked", times=1))
    reader = txn.begin()
    got = list(reader.scan_iter(tprefix + b"a", tprefix + b"z"))
    assert got == [(k1, b"v1"), (k2, b"v2"), (k3, b"v3")]
    reader.rollback()
    faults.append(mock.faults.add("KvScan", region=region, key_error="locked", times=1))
    reader = txn.begin()
    assert list(reader.scan_iter(k2, tprefix + b"k4")) == [(k2, b"v2"), (k3, b"v3")]
    reader.rollback()
    # One key's pair carries the lock while the others are served: the locked key is read
    # on its own after the lock is resolved, in its place.
    faults.append(
        mock.faults.add("KvScan", region=region, key_error="locked", per_key=True, times=1)
    )
    reader = txn.begin()
    assert list(reader.scan_iter(k1, tprefix + b"k4")) == [(k1, b"v1"), (k2, b"v2"), (k3, b"v3")]
    reader.rollback()
    assert all(mock.faults.get(f.id) is None for f in faults)


def test_scan_response_non_lock_key_error_is_typed(
    txn: TransactionClient, tprefix: bytes, mock: MockCluster, faults: list[Any]
) -> None:
    from tikv_txn import TiKVError

    k1 = tprefix + b"k1"
    with txn.begin() as t:
        t.put(k1, b"v1")
    faults.append(
        mock.faults.add(
            "KvScan", region=region_id(mock, k1), key_error="abort", message="gone", times=1
        )
    )
    reader = txn.begin()
    with pytest.raises(TiKVError) as info:
        list(reader.scan_iter(tprefix, tprefix + b"\xff"))
    assert "gone" in str(info.value)
    reader.rollback()


def test_retry_point_get_resolve_ts(
    txn: TransactionClient, tprefix: bytes, mock: MockCluster
) -> None:
    # client-go TestRetryPointGetResolveTS: a 2PC transaction (no async commit, no 1PC)
    # prewrites k1 (primary) and k2 and stops before committing. A point get at the max
    # timestamp meets k2's lock; checking the primary must not push its min commit ts (TiKV
    # leaves it when the caller's ts is the max), the reader ignores the lock and reads
    # nothing, and the writer then commits at the commit ts it would have used anyway.
    k1, k2 = tprefix + b"k1", tprefix + b"k2"
    writer = txn.begin()
    writer.put(k1, b"v1")
    writer.put(k2, b"v2")
    committer = writer.async_transaction._new_committer()
    loop = txn.loop_thread
    assert loop.run(committer.prepare())
    loop.run(committer.prewrite())
    assert committer.primary == k1
    lock_before = mock.engine.lock_of(k1)
    assert lock_before is not None
    checks = mock.counters.count("KvCheckTxnStatus")
    assert loop.run(within(txn.async_client.snapshot(MAX_TS).get(k2), 10)) is None
    # The lock was met and its primary checked, not skipped.
    assert mock.counters.count("KvCheckTxnStatus") > checks
    lock_after = mock.engine.lock_of(k1)
    assert lock_after is not None
    assert lock_after.min_commit_ts == lock_before.min_commit_ts
    loop.run(committer.get_commit_ts())
    loop.run(committer.commit_primary())
    loop.run(committer.commit_batches(committer.batches[1:]))
    commit_ts = committer.commit_ts
    assert txn.snapshot(commit_ts).get(k2) == b"v2"
    assert txn.snapshot(commit_ts - 1).get(k2) is None


def test_retry_max_ts_point_get_skips_a_later_lock(
    txn: TransactionClient, tprefix: bytes, mock: MockCluster, faults: list[Any]
) -> None:
    # client-go TestRetryMaxTsPointGetSkipLock: a point get at the max timestamp (an
    # autocommit point get) is blocked only by the first lock it meets. Here that first lock
    # is fabricated by the store (resolved: no such transaction, rolled back after its 50 ms
    # TTL); when the get is sent again it meets the live lock of another async-commit
    # transaction, which it must read past at once (old value) instead of waiting for that
    # transaction.
    from tikv_txn import TransactionOptions

    k1, k2 = tprefix + b"k1", tprefix + b"k2"
    with txn.begin() as t:
        t.put(k1, b"v1")
        t.put(k2, b"v2")
    writer = txn.begin(TransactionOptions(async_commit=True))
    writer.put(k1, b"v3")
    writer.put(k2, b"v4")
    committer = writer.async_transaction._new_committer()
    loop = txn.loop_thread
    assert loop.run(committer.prepare())
    loop.run(committer.prewrite())
    assert committer.async_commit
    live = mock.engine.lock_of(k2)
    assert live is not None and live.use_async_commit
    fault = mock.faults.add("KvGet", region=region_id(mock, k2), key_error="locked", times=1)
    faults.append(fault)
    got = loop.run(within(txn.async_client.snapshot(MAX_TS).get(k2), 10))
    assert got == b"v2"
    assert mock.faults.get(fault.id) is None  # the first (fabricated) lock was met
    lock_now = mock.engine.lock_of(k2)
    assert lock_now is not None and lock_now.start_ts == live.start_ts  # left alone
    # The writer still commits.
    loop.run(committer.get_commit_ts())
    loop.run(committer.commit_primary())
    loop.run(committer.commit_batches(committer.batches[1:]))
    assert txn.begin().batch_get([k1, k2]) == {k1: b"v3", k2: b"v4"}


def test_reset_snapshot_ts(txn: TransactionClient, tprefix: bytes, mock: MockCluster) -> None:
    # client-go TestResetSnapshotTS: a reader reads past a live lock (TiKV pushed the
    # writer's min commit ts beyond it). The writer then commits its primary only; once the
    # reader moves its snapshot to the commit ts, the skipped lock must be checked again
    # (its primary is committed), so the reader sees the new value.
    x, y = tprefix + b"x", tprefix + b"y"
    # y in its own region, so that committing the primary's batch leaves y locked (client-go
    # limits the batch size with a failpoint for the same effect).
    mock.split([y], txn=True)
    with txn.begin() as t:
        t.put(x, b"x0")
        t.put(y, b"y0")
    writer = txn.begin()
    writer.put(x, b"x1")
    writer.put(y, b"y1")
    committer = writer.async_transaction._new_committer()
    loop = txn.loop_thread
    assert loop.run(committer.prepare())
    loop.run(committer.prewrite())
    assert committer.primary == x
    reader = txn.begin()
    assert loop.run(within(reader.async_transaction.get(y), 10)) == b"y0"
    loop.run(committer.get_commit_ts())
    loop.run(committer.commit_primary())  # the secondary y stays locked
    assert committer.commit_ts > reader.start_ts
    snapshot = reader.snapshot
    snapshot.set_ts(committer.commit_ts)
    assert snapshot.ts == committer.commit_ts
    assert mock.engine.lock_of(y) is not None
    assert loop.run(within(reader.async_transaction.get(y), 10)) == b"y1"
    assert reader.snapshot.get(x) == b"x1"
    reader.rollback()
    with pytest.raises(ValueError, match="64-bit"):
        snapshot.set_ts(0)
    with pytest.raises(TypeError, match="int"):
        snapshot.set_ts("1")  # type: ignore[arg-type]


def test_set_ts_keeps_the_locks_it_was_told_to_read_past(
    txn: TransactionClient, tprefix: bytes, mock: MockCluster
) -> None:
    # A pipelined transaction's snapshot reads past its own locks (read_past_locks_of);
    # moving the snapshot's ts must not make it stop.
    z = tprefix + b"z"
    with txn.begin() as t:
        t.put(z, b"old")
    writer = txn.begin()
    writer.put(z, b"new")
    committer = writer.async_transaction._new_committer()
    loop = txn.loop_thread
    assert loop.run(committer.prepare())
    loop.run(committer.prewrite())
    snap = txn.async_client.snapshot(txn.current_timestamp())
    snap.read_past_locks_of(writer.start_ts)
    checks = mock.counters.count("KvCheckTxnStatus")
    assert loop.run(within(snap.get(z), 10)) == b"old"
    snap.set_ts(txn.current_timestamp())
    assert loop.run(within(snap.get(z), 10)) == b"old"
    assert mock.counters.count("KvCheckTxnStatus") == checks  # never had to ask
    loop.run(committer.cleanup())
