"""Pipelined DML through ``TransactionClient``.

The semantics of client-go ``integration_tests/pipelined_memdb_test.go``
(``TestPipelinedAndFlush``, ``TestPipelinedMemDBBufferGet``, ``TestPipelinedSkipFlushedLock``,
``TestPipelinedCommit``, ``TestPipelinedRollback``).

Flush thresholds are lowered on the transaction, as client-go's tests do with failpoints.
Request counts are read from the embedded cluster only; the outcomes (what a reader sees,
that no lock stays) hold on a real cluster too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from tikv_mockstore import MockCluster
from tikv_txn import (
    AsyncPipelinedTransaction,
    FlushThresholds,
    Transaction,
    TransactionClient,
    TransactionOptions,
)

PIPELINED = TransactionOptions(pipelined=True)
SMALL = FlushThresholds(min_keys=64, min_size=1, force_size=16 * 1024)
DEADLINE = 60.0


@pytest.fixture
def tprefix(prefix: bytes) -> bytes:
    """Transactional keys under first byte 0x50 (see test_split.py)."""
    return b"\x50" + prefix


@pytest.fixture
def client(pd_endpoints: list[str], tprefix: bytes) -> Iterator[TransactionClient]:
    with TransactionClient.connect(pd_endpoints) as c:
        yield c
        with c.begin() as cleanup:
            for key, _ in cleanup.scan(tprefix, tprefix + b"\xff", limit=10_000):
                cleanup.delete(key)


def _small(txn: Transaction) -> AsyncPipelinedTransaction:
    inner = txn.async_transaction
    assert isinstance(inner, AsyncPipelinedTransaction)
    inner.set_flush_thresholds(SMALL)
    return inner


def _read(client: TransactionClient, keys: list[bytes]) -> dict[bytes, bytes]:
    return client.snapshot(client.current_timestamp()).batch_get(keys)


def _wait_no_locks(embedded: MockCluster | None, start_ts: int) -> None:
    """Poll (with a deadline) until the embedded cluster holds no lock of ``start_ts``.

    On a real cluster there is nothing to inspect; the reads that follow resolve any lock
    they meet, so their outcome is checked all the same.
    """
    if embedded is None:
        return
    deadline = time.monotonic() + DEADLINE
    while True:
        left = [lk for lk in embedded.engine.scan_lock(2**63 - 1) if lk.lock_version == start_ts]
        if not left:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{len(left)} locks of {start_ts} are still there")
        time.sleep(0.02)


def test_pipelined_commit(
    client: TransactionClient, tprefix: bytes, embedded: MockCluster | None
) -> None:
    keys = [tprefix + b"k%05d" % i for i in range(1000)]
    flushes = embedded.counters.count("KvFlush") if embedded is not None else 0
    txn = client.begin(options=PIPELINED)
    inner = _small(txn)
    for i, key in enumerate(keys):
        txn.put(key, b"v%d" % i)
    assert inner.generation >= 2  # flushed while written
    # Flushed and buffered writes are both visible to the transaction.
    assert txn.get(keys[0]) == b"v0"
    assert txn.get(keys[-1]) == b"v999"
    assert txn.batch_get(keys[:3]) == {keys[0]: b"v0", keys[1]: b"v1", keys[2]: b"v2"}
    # Its snapshot reads past its own locks (client-go TestPipelinedSkipFlushedLock).
    assert txn.snapshot.get(keys[0]) is None
    commit_ts = txn.commit()
    assert commit_ts > txn.start_ts
    if embedded is not None:
        assert embedded.counters.count("KvFlush") - flushes >= inner.generation
    _wait_no_locks(embedded, txn.start_ts)  # the asynchronous resolve after commit
    got = _read(client, keys)
    assert got == {key: b"v%d" % i for i, key in enumerate(keys)}


def test_pipelined_rollback(
    client: TransactionClient, tprefix: bytes, embedded: MockCluster | None
) -> None:
    keys = [tprefix + b"r%05d" % i for i in range(500)]
    with client.begin() as seed:
        seed.put(keys[0], b"old")
    txn = client.begin(options=PIPELINED)
    inner = _small(txn)
    for key in keys:
        txn.put(key, b"new")
    assert inner.generation >= 2
    generation = inner.generation
    txn.put(tprefix + b"s-last", b"new")
    assert txn.flush(force=True)  # waits for the running flush, flushes the rest
    assert inner.generation == generation + 1
    txn.rollback()
    _wait_no_locks(embedded, txn.start_ts)
    assert _read(client, [*keys, tprefix + b"s-last"]) == {keys[0]: b"old"}


def test_flush_is_for_pipelined_transactions(client: TransactionClient) -> None:
    txn = client.begin()
    with pytest.raises(TypeError, match="pipelined"):
        txn.flush()
    txn.rollback()


def test_pipelined_context_manager_rolls_back_on_error(
    client: TransactionClient, tprefix: bytes, embedded: MockCluster | None
) -> None:
    keys = [tprefix + b"e%05d" % i for i in range(300)]

    def fail_midway() -> None:
        with client.begin(options=PIPELINED) as txn:
            holder.append(txn)
            _small(txn)
            for key in keys:
                txn.put(key, b"x")
            raise RuntimeError("boom")

    holder: list[Transaction] = []
    with pytest.raises(RuntimeError, match="boom"):
        fail_midway()
    txn = holder[0]
    start_ts = txn.start_ts
    assert txn.state == "rolled back"
    _wait_no_locks(embedded, start_ts)
    assert _read(client, keys) == {}
