"""Stores whose address changes under the raw client: client-go ``rawkv/rawkv_test.go``
``TestUpdateStoreAddr``, ``TestReplaceAddrWithNewStore`` and
``TestReplaceNewAddrAndOldOfflineImmediately``, plus a store that moves to a new port.

As in client-go's suite, the cluster has two stores and one region with a peer on each, led
by store 1. The mock store really moves: a store that changes address stops serving on the old
port and serves the same store id and data on the new one, and PD reports the new address.
A request that reaches another store at an old address gets ``StoreNotMatch``; one sent to an
address nobody serves any more fails to connect. Either way the client must ask PD for the
store again and use the new address, within the operation's backoff budget.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from tikv_mockstore import MockCluster
from tikv_pd.locator import RegionLocator
from tikv_raw import AsyncRawClient

KEY, VALUE = b"test_key", b"test_value"


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=2) as c:
        (region,) = c.regions()
        assert region.leader_store_id == 1
        assert {p.store_id for p in region.peers} == {1, 2}
        yield c


@pytest.fixture
async def client(cluster: MockCluster) -> AsyncIterator[AsyncRawClient]:
    async with await AsyncRawClient.connect(cluster.pd_endpoints) as c:
        await c.put(KEY, VALUE)
        yield c


def _locator(client: AsyncRawClient) -> RegionLocator:
    locator = client._shared.router.locator  # type: ignore[attr-defined]
    assert isinstance(locator, RegionLocator)
    return locator


def _replace_store_1_by_store_2(cluster: MockCluster) -> None:
    """client-go: both stores trade addresses, then store 1 goes away and store 2 leads."""
    (region,) = cluster.regions()
    cluster.swap_store_addresses(1, 2)
    cluster.transfer_leader(region.id, 2)
    cluster.remove_peer(region.id, 1)
    cluster.remove_store(1)  # tombstone; its server (on store 2's old port) stops


async def test_update_store_addr(cluster: MockCluster, client: AsyncRawClient) -> None:
    # TestUpdateStoreAddr: the stores trade addresses. The client's cached address of the
    # leader (store 1) now reaches store 2, which answers StoreNotMatch; the client reloads
    # store 1 from PD and reads from its new address.
    before = dict(cluster.store_addresses)
    assert await _locator(client).store_address(1) == before[1]
    cluster.counters.reset()
    cluster.swap_store_addresses(1, 2)
    assert await client.get(KEY) == VALUE
    assert cluster.counters.count("RawGet", store=2) >= 1  # met store 2 at the old address
    assert cluster.counters.count("RawGet", store=1) >= 1  # served by store 1, moved
    assert await _locator(client).store_address(1) == before[2]
    await client.put(KEY, b"after the swap")
    assert await client.get(KEY) == b"after the swap"


async def test_replace_addr_with_new_store(cluster: MockCluster, client: AsyncRawClient) -> None:
    # TestReplaceAddrWithNewStore: store 2 takes store 1's address, store 1 is removed and
    # store 2 leads. The cached leader (store 1) is asked at its old address, where store 2
    # answers StoreNotMatch; PD says store 1 is a tombstone, so the region is reloaded and
    # store 2 is resolved (to store 1's old address).
    before = dict(cluster.store_addresses)
    _replace_store_1_by_store_2(cluster)
    assert await client.get(KEY) == VALUE
    assert await _locator(client).store_address(2) == before[1]


async def test_replace_new_addr_and_old_offline_immediately(
    cluster: MockCluster, client: AsyncRawClient
) -> None:
    # TestReplaceNewAddrAndOldOfflineImmediately: as above, but the client already knows
    # store 2 by its old address (client-go preloads it with a follower read). After the
    # region reload the leader is store 2, whose cached address is now the removed store's
    # and refuses connections: the client must re-resolve store 2 from PD after the failed
    # send instead of retrying the dead address until its budget runs out.
    before = dict(cluster.store_addresses)
    assert await _locator(client).store_address(2) == before[2]
    _replace_store_1_by_store_2(cluster)
    assert await client.get(KEY) == VALUE
    assert await _locator(client).store_address(2) == before[1]
    await client.put(KEY, b"v2")
    assert await client.get(KEY) == b"v2"


async def test_leader_store_moves_to_a_new_port(
    cluster: MockCluster, client: AsyncRawClient
) -> None:
    # A store restarts on a new address and nobody serves the old one: the send fails to
    # connect, and the client finds the new address through PD.
    old = cluster.store_addresses[1]
    transport = client._shared.router.transport  # type: ignore[attr-defined]
    assert old in transport.addresses()
    new = cluster.move_store(1)
    assert new != old
    assert await client.get(KEY) == VALUE
    assert await _locator(client).store_address(1) == new
    await client.put(KEY, b"moved")
    assert await client.get(KEY) == b"moved"
    # The connection to the old address is closed (it would keep dialling a dead port).
    assert old not in transport.addresses()
    assert new in transport.addresses()


# client-go runs most of its raw suite after the same replacement (store 2 takes store 1's
# address, store 1 goes away, store 2 leads): every operation must find its way there.

PAIRS = {
    b"db": b"TiDB",
    b"key2": b"value2",
    b"key1": b"value1",
    b"key4": b"value4",
    b"key3": b"value3",
    b"kv": b"TiKV",
}


async def test_column_families_after_store_replacement(
    cluster: MockCluster, client: AsyncRawClient
) -> None:
    # TestColumnFamilyForClient / TestColumnFamilyForOptions (TiKV has the "default",
    # "write" and "lock" column families; client-go's mock accepts any name).
    write, lock = client.with_cf("write"), client.with_cf("lock")
    await write.put(b"key_cf1", b"value_cf1")
    await lock.put(b"key_cf2", b"value_cf2")
    _replace_store_1_by_store_2(cluster)
    assert await write.get(b"key_cf1") == b"value_cf1"
    assert await write.get(b"key_cf2") is None
    assert await lock.get(b"key_cf2") == b"value_cf2"
    assert await lock.get(b"key_cf1") is None
    assert await client.get(b"key_cf1") is None
    assert await client.get(b"key_cf2") is None
    await write.delete(b"key_cf1")
    assert await write.get(b"key_cf1") is None
    await lock.delete(b"key_cf2")
    assert await lock.get(b"key_cf2") is None


async def test_batch_after_store_replacement(cluster: MockCluster, client: AsyncRawClient) -> None:
    # TestBatch.
    cf = client.with_cf("write")
    await cf.batch_put(PAIRS)
    _replace_store_1_by_store_2(cluster)
    assert await cf.batch_get(list(PAIRS)) == PAIRS
    await cf.batch_delete(list(PAIRS))
    assert await cf.get(b"db") is None
    assert await cf.batch_get(list(PAIRS)) == {}


async def test_scan_after_store_replacement(cluster: MockCluster, client: AsyncRawClient) -> None:
    # TestScan: a bounded scan with a limit, then a key-only reverse scan.
    cf = client.with_cf("write")
    await cf.batch_put(PAIRS)
    _replace_store_1_by_store_2(cluster)
    got = await cf.scan(b"key1", b"keyz", limit=3)
    assert got == [(b"key1", b"value1"), (b"key2", b"value2"), (b"key3", b"value3")]
    keys = [k for k, _ in await cf.scan(b"", b"key3", limit=10, key_only=True, reverse=True)]
    assert keys == [b"key2", b"key1", b"db"]


async def test_delete_range_after_store_replacement(
    cluster: MockCluster, client: AsyncRawClient
) -> None:
    # TestDeleteRange.
    cf = client.with_cf("write")
    await cf.batch_put(PAIRS)
    _replace_store_1_by_store_2(cluster)
    await cf.delete_range(b"key3", None)
    assert await cf.scan(b"key3", None, limit=10) == []
    assert [k for k, _ in await cf.scan(limit=10)] == [b"db", b"key1", b"key2"]
    await cf.delete_range(b"", None)
    assert await cf.scan(limit=10) == []


async def test_compare_and_swap_after_store_replacement(cluster: MockCluster) -> None:
    # TestCompareAndSwap: CAS needs the atomic mode; then a failed and a successful swap.
    async with await AsyncRawClient.connect(cluster.pd_endpoints) as plain:
        await plain.with_cf("write").put(b"kv", b"TiDB")
        _replace_store_1_by_store_2(cluster)
        with pytest.raises(ValueError, match="atomic"):
            await plain.with_cf("write").compare_and_swap(b"kv", b"TiDB", b"TiKV")
    async with await AsyncRawClient.connect(cluster.pd_endpoints, atomic=True) as atomic:
        cf = atomic.with_cf("write")
        assert await cf.compare_and_swap(b"kv", b"TiKV", b"TiKV") == (b"TiDB", False)
        assert await cf.compare_and_swap(b"kv", b"TiDB", b"TiKV") == (b"TiDB", True)
        assert await cf.get(b"kv") == b"TiKV"


async def test_checksum_after_store_replacement(
    cluster: MockCluster, client: AsyncRawClient
) -> None:
    # TestRawChecksum: XOR of CRC-64/XZ of key + value, counts and bytes.
    from _raw_fake_router import crc64_xz

    await client.delete(KEY)
    await client.batch_put(PAIRS)
    _replace_store_1_by_store_2(cluster)
    check = await client.checksum(b"db", None)
    expected = 0
    for k, v in PAIRS.items():
        expected ^= crc64_xz(k + v)
    assert check.crc64_xor == expected
    assert check.total_kvs == len(PAIRS)
    assert check.total_bytes == sum(len(k) + len(v) for k, v in PAIRS.items())


async def test_replace_store_with_a_new_store_at_its_address(
    cluster: MockCluster, client: AsyncRawClient
) -> None:
    # TestReplaceStore as client-go writes it: store 1 becomes a tombstone and a new store
    # takes its address, a peer and the leadership. The client's cached leader address now
    # reaches the new store (StoreNotMatch), and the write lands there.
    (region,) = cluster.regions()
    old = cluster.store_addresses[1]
    cluster.remove_store(1)
    new = cluster.add_store(port=int(old.rsplit(":", 1)[1]))
    assert cluster.store_addresses[new] == old
    cluster.add_peer(region.id, new)
    cluster.transfer_leader(region.id, new)
    cluster.counters.reset()
    await client.put(KEY, b"on the new store")
    assert cluster.counters.count("RawPut", store=new) >= 1
    assert await client.get(KEY) == b"on the new store"
    assert await _locator(client).store_address(new) == old
