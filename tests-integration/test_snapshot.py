"""Snapshot reads: the semantics of client-go ``integration_tests/snapshot_test.go``
(``TestBatchGet``, ``TestBatchGetNotExist``, ``TestSnapshotCache``, ``TestSkipLargeTxnLock``,
``TestPointGetSkipTxnLock``, ``TestSnapshotThreadSafe``) through ``TransactionClient``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from typing import TypeVar

import pytest
from tikv_mockstore import MockCluster
from tikv_txn import TransactionClient

MAX_TS = 2**64 - 1
T = TypeVar("T")


async def _within(awaitable: Awaitable[T], seconds: float) -> T:
    """Await with a deadline: a read blocked by a lock fails the test instead of waiting."""
    return await asyncio.wait_for(awaitable, seconds)


def _keys(tprefix: bytes, rows: int) -> list[bytes]:
    return [tprefix + b"key%08d" % i for i in range(rows)]


def _check_all(txn: TransactionClient, tprefix: bytes, keys: list[bytes]) -> None:
    """A batch get of ``keys`` equals a scan of the prefix (client-go checkAll)."""
    reader = txn.begin()
    got = reader.batch_get(keys)
    scanned = list(reader.scan_iter(tprefix, tprefix + b"\xff"))
    assert got == dict(scanned)
    reader.rollback()


@pytest.mark.parametrize("rows", [1, 10, 300])
def test_batch_get_and_batch_get_not_exist(
    txn: TransactionClient, tprefix: bytes, rows: int
) -> None:
    keys = _keys(tprefix, rows)
    with txn.begin() as t:
        for i, k in enumerate(keys):
            t.put(k, b"%d" % i)
    _check_all(txn, tprefix, keys)
    _check_all(txn, tprefix, [*keys, tprefix + b"noSuchKey"])


def test_snapshot_cache(txn: TransactionClient, tprefix: bytes, mock: MockCluster) -> None:
    x, y, a, b = (tprefix + k for k in (b"cache_x", b"cache_y", b"cache_a", b"cache_b"))
    with txn.begin() as t:
        t.put(x, b"x")
        t.delete(y)  # a delete is cached as "absent" too
        t.put(a, b"a")
        t.delete(b)
    snap = txn.snapshot(txn.current_timestamp())
    assert snap.batch_get([x, y]) == {x: b"x"}
    assert snap.get(a) == b"a"
    assert snap.get(b) is None
    sent = mock.counters.count("KvGet") + mock.counters.count("KvBatchGet")
    # Served from the snapshot's cache: no request reaches TiKV.
    assert snap.batch_get([x, y]) == {x: b"x"}
    assert snap.get(a) == b"a"
    assert snap.get(b) is None
    assert mock.counters.count("KvGet") + mock.counters.count("KvBatchGet") == sent


def test_skip_large_txn_lock(txn: TransactionClient, tprefix: bytes) -> None:
    x, y = tprefix + b"x", tprefix + b"y"
    writer = txn.begin()
    writer.put(x, b"x")
    writer.put(y, b"y")
    committer = writer.async_transaction._new_committer()
    loop = txn.loop_thread
    assert loop.run(committer.prepare())
    loop.run(committer.prewrite())
    # A reader that starts later is not blocked by the live locks: TiKV pushes the
    # writer's min commit ts beyond the reader, which reads what was there before.
    reader = txn.begin()
    assert loop.run(_within(reader.async_transaction.get(x), 2)) is None
    assert reader.batch_get([tprefix + b"z"]) == {}
    reader.rollback()
    loop.run(committer.get_commit_ts())
    loop.run(committer.commit_primary())
    loop.run(committer.commit_batches(committer.batches[1:]))
    assert committer.commit_ts > reader.start_ts  # pushed past the reader
    after = txn.begin()
    assert after.batch_get([x, y]) == {x: b"x", y: b"y"}
    after.rollback()


def test_point_get_skips_txn_lock(txn: TransactionClient, tprefix: bytes) -> None:
    x, y = tprefix + b"x_key", tprefix + b"y_key"
    writer = txn.begin()
    writer.put(x, b"x")
    writer.put(y, b"y")
    committer = writer.async_transaction._new_committer()
    loop = txn.loop_thread
    assert loop.run(committer.prepare())
    loop.run(committer.prewrite())
    assert committer.primary == x
    # A read at the max timestamp is not blocked by a secondary's lock: old data.
    assert loop.run(_within(txn.async_client.snapshot(MAX_TS).get(y), 2)) is None
    loop.run(committer.get_commit_ts())
    loop.run(committer.commit_primary())
    # The primary is committed: the secondary's lock now resolves to the new value.
    assert loop.run(_within(txn.async_client.snapshot(MAX_TS).get(y), 2)) == b"y"


def test_snapshot_thread_safe(txn: TransactionClient, tprefix: bytes) -> None:
    key, missing = tprefix + b"key", tprefix + b"key_not_exist"
    with txn.begin() as t:
        t.put(key, b"x")
    snap = txn.snapshot(txn.current_timestamp())
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(30):
                assert snap.get(key) == b"x"
                assert snap.batch_get([key, missing]) == {key: b"x"}
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[:3]
