"""Interceptors, spans and metrics of the transactional client on MockCluster.

MockCluster(regions=4) splits the transactional key space at first bytes 0x40 / 0x80 /
0xC0, so the keys below live in four regions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from tikv_mockstore import MockCluster
from tikv_pd.config import TransactionOptions
from tikv_pd.interceptor import Interceptor, RPCInvoker, RPCRequest, rpc_interceptor
from tikv_txn import AsyncTransactionClient

KEYS = [b"\x10k", b"\x50k", b"\x90k", b"\xd0k"]
TWO_PC = TransactionOptions.optimistic(async_commit=False, try_one_pc=False)


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=3, regions=4) as mock:
        yield mock


@pytest.fixture
async def client(cluster: MockCluster) -> AsyncIterator[AsyncTransactionClient]:
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as c:
        yield c


def recorder(name: str, log: list[str]) -> Any:
    def wrap(next: RPCInvoker) -> RPCInvoker:
        async def invoke(rpc: RPCRequest) -> Any:
            log.append(f"{name}:{rpc.command}")
            return await next(rpc)

        return invoke

    return rpc_interceptor(name, wrap)


class Tag(Interceptor):
    def __init__(self, name: str, tag: bytes) -> None:
        self.name = name
        self.tag = tag

    async def before_send(self, rpc: RPCRequest) -> None:
        rpc.context.resource_group_tag = self.tag


async def test_client_and_transaction_interceptors_nest_in_order(
    cluster: MockCluster, client: AsyncTransactionClient
) -> None:
    log: list[str] = []
    client.add_rpc_interceptor(recorder("client", log))
    txn = await client.begin(TWO_PC)
    txn.add_rpc_interceptor(recorder("txn", log))
    txn.add_rpc_interceptor(Tag("tag", b"txn-tag"))
    assert await txn.get(KEYS[0]) is None
    assert log == ["client:Get", "txn:Get"]
    ctx = cluster.counters.last_context("KvGet")
    assert ctx is not None
    assert ctx.resource_group_tag == b"txn-tag"
    log.clear()
    txn.put(KEYS[1], b"v")
    await txn.commit()
    # Prewrite and the primary's commit go through both chains, the client's first.
    assert log[:2] == ["client:Prewrite", "txn:Prewrite"]
    assert "txn:Commit" in log
    assert log.index("client:Commit") == log.index("txn:Commit") - 1
    ctx = cluster.counters.last_context("KvPrewrite")
    assert ctx is not None
    assert ctx.resource_group_tag == b"txn-tag"
    # Another transaction of the same client has only the client's interceptor.
    log.clear()
    other = await client.begin(TWO_PC)
    assert await other.get(KEYS[1]) == b"v"
    assert log == ["client:Get"]
    ctx = cluster.counters.last_context("KvGet")
    assert ctx is not None
    assert ctx.resource_group_tag == b""


async def test_snapshot_interceptor(cluster: MockCluster, client: AsyncTransactionClient) -> None:
    snap = client.snapshot(await client.current_timestamp())
    snap.set_rpc_interceptor(Tag("tag", b"snap"))
    await snap.batch_get(KEYS)
    ctx = cluster.counters.last_context("KvBatchGet")
    assert ctx is not None
    assert ctx.resource_group_tag == b"snap"
    snap.set_rpc_interceptor(None)
    await snap.get(b"\x20not-read-yet")  # not in the snapshot's read cache: sent
    ctx = cluster.counters.last_context("KvGet")
    assert ctx is not None
    assert ctx.resource_group_tag == b""


async def test_per_store_admin_requests_pass_the_client_interceptor(
    cluster: MockCluster, client: AsyncTransactionClient
) -> None:
    from tikv_txn.delete_range import unsafe_destroy_range

    seen: list[tuple[str, int, str]] = []

    class Stores(Interceptor):
        async def before_send(self, rpc: RPCRequest) -> None:
            seen.append((rpc.command, rpc.store_id, rpc.target))

    client.set_rpc_interceptor(Stores())
    assert await unsafe_destroy_range(client.runtime, client._pd, b"\x30", b"\xb0") == 3
    # Not routed by region, yet every store's request went through the interceptor.
    assert sorted(seen) == sorted(
        ("UnsafeDestroyRange", store_id, address)
        for store_id, address in cluster.store_addresses.items()
    )


async def test_interceptor_added_after_the_first_pessimistic_lock(
    cluster: MockCluster, client: AsyncTransactionClient
) -> None:
    log: list[str] = []
    txn = await client.begin(pessimistic=True)
    await txn.lock_keys([KEYS[0]])  # the transaction's committer exists from here on
    txn.add_rpc_interceptor(recorder("txn", log))
    await txn.lock_keys([KEYS[2]])
    txn.put(KEYS[2], b"v")
    await txn.commit()
    assert "txn:PessimisticLock" in log
    assert "txn:Prewrite" in log
    assert "txn:Commit" in log
