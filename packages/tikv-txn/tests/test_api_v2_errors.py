"""Under API v2 (keyspaces) every error a user receives carries user keys.

TiKV stores and reports keyspace-prefixed keys; client-go's v2 codec decodes every key of
a ``KeyError`` before the user sees it (``internal/apicodec/codec_v2.go``
``decodeKeyError``). These tests meet each kind of error through the public API of a
client of keyspace "demo" and check that no key in it (or in its message) still carries
the keyspace prefix.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any

import pytest
from tikv_mockstore import MockCluster
from tikv_mockstore.kv_pessimistic import lock_wait_manager
from tikv_pd.codec import keyspace_prefix
from tikv_pd.config import LOCK_NO_WAIT, TransactionOptions
from tikv_pd.errors import (
    DeadlockError,
    KeyExistsError,
    KeyIsLockedError,
    LockWaitTimeoutError,
    TimeoutError,
    WriteConflictError,
)
from tikv_txn import AsyncTransaction, AsyncTransactionClient, TransactionClient

NO_HANG = 60.0
TWO_PC = TransactionOptions.optimistic(async_commit=False, try_one_pc=False)
_ids = itertools.count()


@pytest.fixture(scope="module")
def cluster_and_prefix() -> Iterator[tuple[MockCluster, bytes]]:
    with MockCluster(stores=3, api_version=2) as mock:
        keyspace = mock.create_keyspace("demo")
        yield mock, keyspace_prefix("txn", keyspace.id)


@pytest.fixture
def cluster(cluster_and_prefix: tuple[MockCluster, bytes]) -> MockCluster:
    return cluster_and_prefix[0]


@pytest.fixture
def prefix(cluster_and_prefix: tuple[MockCluster, bytes]) -> bytes:
    return cluster_and_prefix[1]


@pytest.fixture
async def client(cluster: MockCluster) -> AsyncIterator[AsyncTransactionClient]:
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints, keyspace="demo") as c:
        yield c


@pytest.fixture
def p() -> bytes:
    return b"v2err%04d/" % next(_ids)


def assert_no_prefix(err: BaseException, prefix: bytes) -> None:
    """Neither the message nor the repr of ``err`` shows a stored (prefixed) key."""
    assert repr(prefix)[2:-1] not in str(err), str(err)


async def blocked(
    cluster: MockCluster, txn: AsyncTransaction, call: Awaitable[Any]
) -> asyncio.Future[Any]:
    """Start a lock request of ``txn``; return once the server has it waiting.

    Waiting until the client merely sent it is not enough: a request still in flight when
    the test's next request arrives would reach the server second, and the deadlock would be
    detected on the other side.
    """
    manager = lock_wait_manager(cluster.engine)
    task = asyncio.ensure_future(call)
    deadline = time.monotonic() + NO_HANG
    while not task.done() and not any(e.txn == txn.start_ts for e in manager.wait_for_entries()):
        assert time.monotonic() < deadline, "the lock request never waited on the server"
        await asyncio.sleep(0.001)
    assert not task.done()
    return task


async def test_write_conflict_carries_user_keys(
    client: AsyncTransactionClient, prefix: bytes, p: bytes
) -> None:
    key = p + b"acct/alice"
    first = await client.begin(TWO_PC)
    async with client.begin(TWO_PC) as second:
        second.put(key, b"second")
    first.put(key, b"first")
    with pytest.raises(WriteConflictError) as info:
        await first.commit()
    err = info.value
    assert err.key == key
    assert err.primary == key
    assert err.conflict_commit_ts == second.commit_ts
    assert_no_prefix(err, prefix)


async def test_write_conflict_with_a_younger_lock_carries_user_keys(
    client: AsyncTransactionClient, prefix: bytes, p: bytes
) -> None:
    # Built by the client (a younger transaction's lock fails an optimistic prewrite).
    key, other = p + b"b", p + b"a"  # ``other`` sorts first: the primary
    old = await client.begin(TWO_PC)
    young = await client.begin(TWO_PC)
    young.put(key, b"young")
    committer = young._new_committer()
    assert await committer.prepare()
    await committer.prewrite()
    old.put(other, b"old")
    old.put(key, b"old")
    with pytest.raises(WriteConflictError) as info:
        await old.commit()
    assert info.value.key == key
    assert info.value.primary == other
    assert info.value.conflict_start_ts == young.start_ts
    assert_no_prefix(info.value, prefix)
    await committer.cleanup()


async def test_key_exists_carries_the_user_key(
    client: AsyncTransactionClient, prefix: bytes, p: bytes
) -> None:
    key = p + b"taken"
    async with client.begin() as txn:
        txn.put(key, b"1")
    txn = await client.begin(TWO_PC)
    txn.insert(key, b"2")
    with pytest.raises(KeyExistsError) as info:
        await txn.commit()
    assert info.value.key == key
    assert_no_prefix(info.value, prefix)
    # A pessimistic insert learns it when it locks the key.
    txn = await client.begin(pessimistic=True)
    txn.insert(key, b"3")
    with pytest.raises(KeyExistsError) as info:
        await txn.lock_pending_writes()
    assert info.value.key == key
    await txn.rollback()
    # ... or from its lock's answer when it locked (and read) the key before.
    txn = await client.begin(pessimistic=True)
    assert await txn.get_for_update(key) == b"1"
    with pytest.raises(KeyExistsError) as info:
        txn.insert(key, b"4")
    assert info.value.key == key
    await txn.rollback()


async def test_deadlock_wait_chain_carries_user_keys(
    client: AsyncTransactionClient, cluster: MockCluster, prefix: bytes, p: bytes
) -> None:
    k1, k2 = p + b"1", p + b"2"
    t1 = await client.begin(pessimistic=True)
    t2 = await client.begin(pessimistic=True)
    await t1.lock_keys([k1])
    await t2.lock_keys([k2])
    first = await blocked(cluster, t1, t1.lock_keys([k2]))  # t1 waits for t2
    with pytest.raises(DeadlockError) as info:
        await asyncio.wait_for(t2.lock_keys([k1]), NO_HANG)  # t2 would wait for t1: a cycle
    err = info.value
    assert err.lock_key == k1
    chain_keys = {e.key for e in err.wait_chain if e.key}
    assert chain_keys, "the detector reported the keys of the chain"
    assert chain_keys <= {k1, k2}
    assert_no_prefix(err, prefix)
    await t2.rollback()
    await asyncio.wait_for(first, NO_HANG)
    await t1.rollback()


async def test_lock_errors_carry_user_keys(
    client: AsyncTransactionClient, prefix: bytes, p: bytes
) -> None:
    primary, key = p + b"a", p + b"k"  # the primary sorts first
    holder = await client.begin(pessimistic=True)
    await holder.lock_keys([key])
    waiter = await client.begin(pessimistic=True)
    with pytest.raises(LockWaitTimeoutError) as lock_wait:
        await waiter.lock_keys([key], lock_wait_timeout_ms=LOCK_NO_WAIT)
    assert lock_wait.value.key == key
    assert lock_wait.value.lock_ts == holder.start_ts
    assert_no_prefix(lock_wait.value, prefix)
    await waiter.rollback()
    await holder.rollback()
    # A write blocked by an older live lock until its budget runs out: the lock in the
    # error (and in its message) is in user keys.
    live = await client.begin(TWO_PC)
    live.put(primary, b"1")
    live.put(key, b"1")
    committer = live._new_committer()
    assert await committer.prepare()
    await committer.prewrite()
    client.runtime.budgets.prewrite = 300
    writer = await client.begin(TWO_PC)
    writer.put(key, b"2")
    with pytest.raises(TimeoutError) as timeout:
        await writer.commit()
    last = timeout.value.last_error
    assert isinstance(last, KeyIsLockedError)
    assert last.lock.key == key
    assert last.lock.primary_lock == primary
    assert_no_prefix(timeout.value, prefix)
    await committer.cleanup()


def test_the_blocking_client_raises_user_keys_too(cluster: MockCluster, prefix: bytes) -> None:
    key = b"v2err-sync/k"
    with TransactionClient.connect(cluster.pd_endpoints, keyspace="demo") as client:
        with client.begin() as txn:
            txn.put(key, b"1")
        txn = client.begin()
        txn.insert(key, b"2")
        with pytest.raises(KeyExistsError) as info:
            txn.commit()
        assert info.value.key == key
        assert_no_prefix(info.value, prefix)


async def test_a_pipelined_flush_raises_user_keys(
    client: AsyncTransactionClient, prefix: bytes, p: bytes
) -> None:
    key = p + b"flushed"
    async with client.begin() as txn:
        txn.put(key, b"1")
    txn = await client.begin(TransactionOptions(pipelined=True))
    txn.insert(key, b"2")
    with pytest.raises(KeyExistsError) as info:
        await txn.commit()  # flushes the buffer: KvFlush answers AlreadyExist
    assert info.value.key == key
    assert_no_prefix(info.value, prefix)
