"""Async commit: the semantics of client-go ``integration_tests/async_commit_test.go``
(``TestRepeatableRead``, ``TestAsyncCommitLinearizability``,
``TestResolveTxnFallbackFromAsyncCommit``) through ``TransactionClient``.

The fallback scenario builds its prewrites by hand (as client-go's probe does) and sends
them straight to the store over gRPC: a transaction whose async-commit prewrite fell back
to 2PC on one key and not on the other, abandoned with a 1 ms lock TTL; readers must
resolve whichever lock they meet first and read the old values, without waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from tikv_mockstore import MockCluster
from tikv_proto import kvrpcpb_pb2, tikvpb_pb2_grpc
from tikv_txn import AsyncTransactionClient, TransactionClient, TransactionOptions

ASYNC = TransactionOptions(async_commit=True)
LINEARIZABLE = TransactionOptions(async_commit=True, causal_consistency=False)


def test_async_commit_repeatable_read(txn: TransactionClient, tprefix: bytes) -> None:
    k = tprefix + b"k1"
    with txn.begin(ASYNC) as t:
        t.put(k, b"v1")
    t1 = txn.begin(ASYNC)
    assert t1.get(k) == b"v1"
    t1.put(k, b"v2")
    for _ in range(20):
        txn.current_timestamp()
    t2 = txn.begin(ASYNC)
    assert t2.get(k) == b"v1"
    t1.commit()
    assert t2.get(k) == b"v1"  # t2's snapshot predates t1's commit
    t2.rollback()
    t3 = txn.begin(ASYNC)
    assert t3.get(k) == b"v2"
    t3.rollback()


def test_async_commit_linearizability(txn: TransactionClient, tprefix: bytes) -> None:
    t1 = txn.begin(LINEARIZABLE)
    t2 = txn.begin(LINEARIZABLE)
    t1.put(tprefix + b"a", b"a1")
    t2.put(tprefix + b"b", b"b1")
    ts2 = t2.commit()  # t2 commits first ...
    ts1 = t1.commit()
    assert ts2 < ts1  # ... so, without causal consistency, its commit ts is smaller


# -- TestResolveTxnFallbackFromAsyncCommit -----------------------------------------------


@pytest.fixture
async def aclient(mock: MockCluster) -> AsyncIterator[AsyncTransactionClient]:
    async with await AsyncTransactionClient.connect(mock.pd_endpoints) as client:
        yield client


def _prewrite(
    cluster: MockCluster,
    key: bytes,
    value: bytes,
    *,
    primary: bytes,
    secondaries: list[bytes],
    start_ts: int,
    fallback: bool,
) -> kvrpcpb_pb2.PrewriteResponse:
    """One async-commit prewrite of ``key`` sent to its region's leader over gRPC."""
    region = cluster.region_by_key(key, txn=True)
    assert region is not None and region.leader is not None
    pb = region.to_pb()
    request = kvrpcpb_pb2.PrewriteRequest(
        context=kvrpcpb_pb2.Context(
            region_id=region.id, region_epoch=pb.region_epoch, peer=region.leader.to_pb()
        ),
        mutations=[kvrpcpb_pb2.Mutation(op=kvrpcpb_pb2.Put, key=key, value=value)],
        primary_lock=primary,
        start_version=start_ts,
        lock_ttl=1,  # ms: expired by the time anyone reads
        txn_size=1,
        use_async_commit=True,
        secondaries=secondaries,
        min_commit_ts=start_ts + 1,
        # A max commit ts below the min commit ts makes TiKV fall back to 2PC for this key.
        max_commit_ts=1 if fallback else 0,
    )
    address = cluster.store_addresses[region.leader.store_id]
    with grpc.insecure_channel(address) as channel:
        response: kvrpcpb_pb2.PrewriteResponse = tikvpb_pb2_grpc.TikvStub(channel).KvPrewrite(
            request, timeout=10
        )
    assert not response.HasField("region_error"), response.region_error
    assert not response.errors, response.errors
    assert (response.min_commit_ts == 0) == fallback  # 0: this key fell back to 2PC
    return response


@pytest.mark.parametrize(
    ("fallback", "read_first"),
    [
        ((True, False), 0),  # fallback primary, read primary
        ((True, False), 1),  # fallback primary, read secondary
        ((False, True), 0),  # fallback secondary, read primary
        ((False, True), 1),  # fallback secondary, read secondary
        ((True, True), 0),  # fallback both, read primary
        ((True, True), 1),  # fallback both, read secondary
    ],
)
async def test_resolve_txn_fallback_from_async_commit(
    aclient: AsyncTransactionClient,
    mock: MockCluster,
    tprefix: bytes,
    fallback: tuple[bool, bool],
    read_first: int,
) -> None:
    keys = [tprefix + b"k0", tprefix + b"k1"]
    old = [b"v00", b"v10"]
    async with aclient.begin() as t0:
        t0.put(keys[0], old[0])
        t0.put(keys[1], old[1])
    start_ts = await aclient.current_timestamp()
    for i in (0, 1):
        _prewrite(
            mock,
            keys[i],
            b"v%d1" % i,
            primary=keys[0],
            secondaries=[keys[1]] if i == 0 else [],
            start_ts=start_ts,
            fallback=fallback[i],
        )
    try:
        for i in (read_first, 1 - read_first):
            reader = await aclient.begin()
            # client-go gives each read one second: the expired locks are resolved at once.
            assert await asyncio.wait_for(reader.get(keys[i]), 1) == old[i]
            await reader.rollback()
    finally:
        async with aclient.begin() as cleanup:
            cleanup.delete(keys[0])
            cleanup.delete(keys[1])


# -- pessimistic variants ------------------------------------------------------------------


PESSIMISTIC_ASYNC = TransactionOptions(mode="pessimistic", async_commit=True, try_one_pc=False)


def test_async_commit_repeatable_read_pessimistic(txn: TransactionClient, tprefix: bytes) -> None:
    """TestRepeatableRead, pessimistic half: a pessimistic transaction committed with
    async commit is invisible to a snapshot taken before its commit and visible after."""
    k = tprefix + b"k1"
    with txn.begin(ASYNC) as t:
        t.put(k, b"v1")
    t1 = txn.begin(PESSIMISTIC_ASYNC)
    assert t1.get(k) == b"v1"
    t1.put(k, b"v2")  # locked now (the blocking facade locks at once)
    for _ in range(20):
        txn.current_timestamp()
    t2 = txn.begin(ASYNC)
    assert t2.get(k) == b"v1"
    t1.commit()
    committer = t1.async_transaction._committer
    assert committer is not None and committer.async_commit  # really async commit
    assert t2.get(k) == b"v1"
    t2.rollback()
    t3 = txn.begin(ASYNC)
    assert t3.get(k) == b"v2"
    t3.rollback()


async def test_pessimistic_txn_resolves_an_async_commit_lock(
    aclient: AsyncTransactionClient, mock: MockCluster, tprefix: bytes
) -> None:
    """TestPessimisticTxnResolveAsyncCommitLock: a key left locked by an abandoned
    async-commit transaction (every key locked: it counts as committed) is resolved by a
    pessimistic writer, which then commits over it."""
    k = tprefix + b"k"
    start_ts = await aclient.current_timestamp()
    _prewrite(mock, k, b"abandoned", primary=k, secondaries=[], start_ts=start_ts, fallback=False)
    txn = await aclient.begin(PESSIMISTIC_ASYNC)
    await txn.lock_keys([tprefix + b"k1"])
    txn.put(k, k)
    commit_ts = await asyncio.wait_for(txn.commit(), 60)
    assert await aclient.snapshot(commit_ts).get(k) == k
    # The abandoned transaction was committed by the resolution (all its keys locked),
    # before the writer's commit.
    assert await aclient.snapshot(commit_ts - 1).get(k) == b"abandoned"
