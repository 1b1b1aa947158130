"""Reads that return each value's commit ts (client-go ``kv.WithReturnCommitTS``).

Ports ``snapshot_test.go`` TestGetAndBatchGetWithReturnCommitTS and the commit-ts half of
TestSnapshotCache, and ``kv/kv_test.go``'s ValueEntry: the snapshot asks TiKV for the
commit ts (``need_commit_ts``), the mock fills it from its MVCC records, and a value
cached by a plain read is read again when its commit ts is wanted.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from _txn_helpers import FIRST_BYTES, NO_HANG
from tikv_mockstore import MockCluster
from tikv_pd.interceptor import Interceptor, RPCRequest
from tikv_txn import AsyncTransactionClient, TransactionClient, TxnError, ValueEntry

_ids = itertools.count()


def keys(*names: str) -> list[bytes]:
    """One key per name, spread over the regions (first bytes 0x10, 0x50, 0x90, 0xd0)."""
    p = b"rts%03d/" % next(_ids)
    return [FIRST_BYTES[i % 4] + p + n.encode() for i, n in enumerate(names)]


async def commit(client: AsyncTransactionClient, pairs: dict[bytes, bytes]) -> int:
    async with client.begin() as txn:
        for k, v in pairs.items():
            txn.put(k, v)
    assert await client.runtime.wait_background(NO_HANG)
    return txn.commit_ts


def test_value_entry() -> None:
    entry = ValueEntry(b"x", 123)
    assert entry.value == b"x"
    assert entry.commit_ts == 123
    assert entry == (b"x", 123)


async def test_get_and_batch_get_with_commit_ts(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    a, b, c, d, e = keys("a", "b", "c", "d", "e")
    first = await commit(client, {a: b"a1", b: b"b1", c: b"c1"})
    second = await commit(client, {b: b"b2"})  # a newer version of b
    assert second > first
    snap = client.snapshot(await client.current_timestamp())
    entries = await snap.batch_get_with_commit_ts([a, b, d])
    assert entries == {a: ValueEntry(b"a1", first), b: ValueEntry(b"b2", second)}
    assert await snap.get_with_commit_ts(c) == ValueEntry(b"c1", first)
    assert await snap.get_with_commit_ts(e) is None
    # An older snapshot sees the older version, with its own commit ts.
    old = client.snapshot(second - 1)
    assert await old.get_with_commit_ts(b) == ValueEntry(b"b1", first)


async def test_cached_values_are_read_again_for_their_commit_ts(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    x, y, a, b = keys("x", "y", "a", "b")
    ts = await commit(client, {x: b"x", a: b"a"})
    snap = client.snapshot(await client.current_timestamp())
    # Plain reads fill the cache (values, and "not found" for y and b).
    assert await snap.batch_get([x, y]) == {x: b"x"}
    assert await snap.get(a) == b"a"
    assert await snap.get(b) is None
    gets, batch_gets = cluster.counters.count("KvGet"), cluster.counters.count("KvBatchGet")
    assert await snap.batch_get([x, y]) == {x: b"x"}  # from the cache
    assert cluster.counters.count("KvBatchGet") == batch_gets
    # The cached x has no commit ts: it is read again; y is known missing.
    assert await snap.batch_get_with_commit_ts([x, y]) == {x: ValueEntry(b"x", ts)}
    assert cluster.counters.count("KvBatchGet") == batch_gets + 1
    assert await snap.get_with_commit_ts(a) == ValueEntry(b"a", ts)
    assert cluster.counters.count("KvGet") == gets + 1
    assert await snap.get_with_commit_ts(b) is None
    assert cluster.counters.count("KvGet") == gets + 1  # not found, from the cache
    # Now the commit ts are cached too: no further request, same answers.
    assert await snap.batch_get_with_commit_ts([x, y]) == {x: ValueEntry(b"x", ts)}
    assert await snap.get_with_commit_ts(a) == ValueEntry(b"a", ts)
    assert await snap.get_with_commit_ts(x) == ValueEntry(b"x", ts)
    assert await snap.get(a) == b"a"
    assert cluster.counters.count("KvGet") == gets + 1
    assert cluster.counters.count("KvBatchGet") == batch_gets + 1


async def test_a_value_read_past_a_lock_carries_its_commit_ts(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    # A committed transaction whose secondary lock is still there: the read resolves
    # it, then reads the committed version with its commit ts.
    primary, secondary = keys("p", "s")
    txn = await client.begin()
    txn.put(primary, b"p")
    txn.put(secondary, b"s")
    committer = txn._new_committer()
    assert await committer.prepare()
    await committer.prewrite()
    commit_ts = await committer.get_commit_ts()
    await committer.commit_primary()
    assert any(lock.key == secondary for lock in cluster.engine.scan_lock(2**63 - 1))
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.get_with_commit_ts(secondary) == ValueEntry(b"s", commit_ts)
    assert await snap.batch_get_with_commit_ts([primary, secondary]) == {
        primary: ValueEntry(b"p", commit_ts),
        secondary: ValueEntry(b"s", commit_ts),
    }


class DropCommitTs(Interceptor):
    """A server that ignores ``need_commit_ts``: every commit ts comes back 0."""

    name = "drop-commit-ts"

    def after_response(self, rpc: RPCRequest, response: Any) -> None:
        if rpc.command == "Get":
            response.commit_ts = 0
        elif rpc.command == "BatchGet":
            for pair in response.pairs:
                pair.commit_ts = 0


async def test_a_value_without_its_commit_ts_is_an_error(
    client: AsyncTransactionClient,
) -> None:
    (k,) = keys("k")
    await commit(client, {k: b"v"})
    snap = client.snapshot(await client.current_timestamp())
    snap.set_rpc_interceptor(DropCommitTs())
    with pytest.raises(TxnError, match="commit timestamp is required"):
        await snap.get_with_commit_ts(k)
    with pytest.raises(TxnError, match="commit timestamp is required"):
        await snap.batch_get_with_commit_ts([k])
    assert await snap.get(k) == b"v"  # plain reads need no commit ts


async def test_bad_keys_are_refused(client: AsyncTransactionClient) -> None:
    snap = client.snapshot(await client.current_timestamp())
    with pytest.raises(TypeError):
        await snap.get_with_commit_ts("k")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await snap.batch_get_with_commit_ts([b"k", "k"])  # type: ignore[list-item]


def test_blocking_facade(cluster: MockCluster) -> None:
    (k,) = keys("sync")
    with TransactionClient.connect(cluster.pd_endpoints) as client:
        with client.begin() as txn:
            txn.put(k, b"v")
        snap = client.snapshot(client.current_timestamp())
        assert snap.get_with_commit_ts(k) == ValueEntry(b"v", txn.commit_ts)
        assert snap.batch_get_with_commit_ts([k]) == {k: ValueEntry(b"v", txn.commit_ts)}


class RecordNeedCommitTs(Interceptor):
    """Records ``need_commit_ts`` of every Get / BatchGet sent."""

    name = "record-need-commit-ts"

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []

    async def before_send(self, rpc: RPCRequest) -> None:
        if rpc.command in ("Get", "BatchGet"):
            self.seen.append((rpc.command, rpc.request.need_commit_ts))


async def test_only_the_commit_ts_reads_ask_for_it(client: AsyncTransactionClient) -> None:
    # client-go TestGetOptions / TestBatchGetOptions: the option is off by default and
    # on with WithReturnCommitTS; here the choice is the method, and it reaches the wire.
    a, b = keys("a", "b")
    await commit(client, {a: b"1", b: b"2"})
    ts = await client.current_timestamp()
    plain, with_ts = client.snapshot(ts), client.snapshot(ts)
    recorder = RecordNeedCommitTs()
    plain.set_rpc_interceptor(recorder)
    await plain.get(a)
    await plain.batch_get([b])
    assert recorder.seen == [("Get", False), ("BatchGet", False)]
    recorder.seen.clear()
    with_ts.set_rpc_interceptor(recorder)
    await with_ts.get_with_commit_ts(a)
    await with_ts.batch_get_with_commit_ts([b])
    assert recorder.seen == [("Get", True), ("BatchGet", True)]
