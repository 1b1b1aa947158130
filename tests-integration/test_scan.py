"""Scans over region boundaries: the semantics of client-go ``integration_tests/scan_test.go``
(row counts 1, one batch, one batch + 1, three batches; regions split at rows 123 and 456;
scans with and without an upper bound, key-only), on the raw and transactional clients.
"""

from __future__ import annotations

import pytest
from tikv_mockstore import MockCluster
from tikv_raw import RawClient, prefix_range
from tikv_txn import TransactionClient, TransactionOptions

SCAN_BATCH = 256  # client-go scanBatchSize
ROWS = [1, SCAN_BATCH, SCAN_BATCH + 1, SCAN_BATCH * 3]


def _key(prefix: bytes, i: int) -> bytes:
    return prefix + b"prefix%10d" % i


def _value(i: int) -> bytes:
    return b"%d" % i


@pytest.mark.parametrize("rows", ROWS)
def test_raw_scan(raw: RawClient, prefix: bytes, embedded: MockCluster | None, rows: int) -> None:
    raw.batch_put({_key(prefix, i): _value(i) for i in range(rows)})
    if embedded is not None:
        embedded.split([_key(prefix, i) for i in (123, 456) if rows > i])
    start, end = prefix_range(prefix)
    expected = [(_key(prefix, i), _value(i)) for i in range(rows)]
    assert raw.get(_key(prefix, 0)) == _value(0)
    # Without an upper bound (to the end of the prefix), paged and in one call.
    assert list(raw.scan_iter(start, end, page_size=SCAN_BATCH)) == expected
    assert raw.scan(start, end, limit=10240) == expected
    # With an upper bound.
    half = rows // 2
    assert raw.scan(start, _key(prefix, half), limit=10240) == expected[:half]
    # Key only.
    assert raw.scan(start, end, limit=10240, key_only=True) == [(k, b"") for k, _ in expected]
    assert raw.scan(start, _key(prefix, half), limit=10240, key_only=True) == [
        (k, b"") for k, _ in expected[:half]
    ]
    # Reverse, across the same boundaries.
    assert raw.scan(start, end, limit=10240, reverse=True) == expected[::-1]


@pytest.mark.parametrize("rows", ROWS)
def test_txn_scan(
    txn: TransactionClient, tprefix: bytes, embedded: MockCluster | None, rows: int
) -> None:
    with txn.begin() as t:
        for i in range(rows):
            t.put(_key(tprefix, i), _value(i))
    if embedded is not None:
        embedded.split([_key(tprefix, i) for i in (123, 456) if rows > i], txn=True)
    end = tprefix + b"\xff"
    expected = [(_key(tprefix, i), _value(i)) for i in range(rows)]
    reader = txn.begin()
    assert reader.get(_key(tprefix, 0)) == _value(0)
    assert list(reader.scan_iter(tprefix, end)) == expected
    half = rows // 2
    assert reader.scan(tprefix, _key(tprefix, half), limit=10240) == expected[:half]
    assert reader.scan(tprefix, end, limit=10240, key_only=True) == [(k, b"") for k, _ in expected]
    assert reader.scan(tprefix, end, limit=10240, reverse=True) == expected[::-1]
    reader.rollback()
    # Read committed: a transaction that prewrote key 0 (and stopped there) leaves a lock;
    # an RC scan reads past it without waiting or resolving it (client-go meets no lock).
    writer = txn.begin()
    writer.put(_key(tprefix, 0), _value(1))
    # Drive 2PC by hand: prepare and prewrite, then stop before the commit.
    committer = writer.async_transaction._new_committer()
    assert txn.loop_thread.run(committer.prepare())
    txn.loop_thread.run(committer.prewrite())
    try:
        rc = txn.begin(TransactionOptions(isolation="RC"))
        assert list(rc.scan_iter(tprefix, end)) == expected
        assert rc.get(_key(tprefix, 0)) == _value(0)
        rc.rollback()
        if embedded is not None:  # the lock is still there: nobody resolved it
            assert [
                lock.key for lock in embedded.engine.scan_lock(2**63 - 1) if tprefix in lock.key
            ]
    finally:
        txn.loop_thread.run(committer.cleanup())
