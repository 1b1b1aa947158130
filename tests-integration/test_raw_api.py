"""The semantics of client-go's ``integration_tests/raw/api_test.go``, on both client flavours.

Each scenario runs on the sync ``RawClient`` and on the asyncio ``AsyncRawClient``: the
sync one is a facade over the async one, and both must behave the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest
from tikv_mockstore import MockCluster
from tikv_raw import AsyncRawClient, RawClient


def _split(embedded: MockCluster | None, keys: Sequence[bytes]) -> None:
    """Split regions at ``keys`` on the embedded cluster (a real one keeps its regions)."""
    if embedded is not None:
        embedded.split(list(keys))


def test_simple(raw: RawClient, prefix: bytes) -> None:
    key = prefix + b"key"
    assert raw.get(key) is None
    raw.put(key, b"value")
    assert raw.get(key) == b"value"
    raw.delete(key)
    assert raw.get(key) is None


async def test_simple_async(araw: AsyncRawClient, prefix: bytes) -> None:
    key = prefix + b"key"
    assert await araw.get(key) is None
    await araw.put(key, b"value")
    assert await araw.get(key) == b"value"
    await araw.delete(key)
    assert await araw.get(key) is None


def _scan_fixture(count: int, prefix: bytes) -> dict[bytes, bytes]:
    return {prefix + b"key@%05d" % i: b"value@%05d" % i for i in range(count)}


def test_scan_across_a_split(raw: RawClient, prefix: bytes, embedded: MockCluster | None) -> None:
    pairs = _scan_fixture(20480, prefix)
    raw.batch_put(pairs)
    _split(embedded, [prefix + b"key@04096"])
    ordered = sorted(pairs.items())
    # The maximum limit of one scan (client-go MaxRawKVScanLimit), across the split.
    assert raw.scan(prefix, None, limit=10240) == ordered[:10240]
    assert raw.scan(prefix + b"key@04090", prefix + b"key@04100", limit=100) == ordered[4090:4100]
    with pytest.raises(ValueError, match="limit"):
        raw.scan(prefix, None, limit=10241)
    # Beyond the limit, the iterator pages lazily over every region.
    assert list(raw.scan_iter(prefix, prefix + b"key@~")) == ordered


async def test_reverse_scan_async(araw: AsyncRawClient, prefix: bytes) -> None:
    for i in range(10):
        await araw.put(prefix + b"key:%d" % i, b"value:%d" % i)
    got = await araw.scan(prefix + b"key:", prefix + b"key;", limit=5, reverse=True)
    assert got == [(prefix + b"key:%d" % i, b"value:%d" % i) for i in range(9, 4, -1)]


def test_batch_ops(raw: RawClient, prefix: bytes) -> None:
    keys = [prefix + b"k1", prefix + b"k2"]
    raw.batch_put(dict(zip(keys, [b"v1", b"v2"], strict=True)))
    assert raw.batch_get([*keys, prefix + b"missing"]) == {keys[0]: b"v1", keys[1]: b"v2"}
    raw.batch_delete(keys)
    assert raw.batch_get(keys) == {}


async def test_compare_and_swap_async(pd_endpoints: list[str], prefix: bytes) -> None:
    key = prefix + b"cas"
    client = await AsyncRawClient.connect(pd_endpoints, atomic=True)
    try:
        await client.delete(key)
        assert await client.compare_and_swap(key, None, b"hello world") == (None, True)
        assert await client.get(key) == b"hello world"
        assert await client.compare_and_swap(key, b"hello", b"world") == (b"hello world", False)
        assert await client.get(key) == b"hello world"
        swapped = await client.compare_and_swap(key, b"hello world", b"world")
        assert swapped == (b"hello world", True)
        assert await client.get(key) == b"world"
        await client.delete(key)
    finally:
        await client.close()


def test_compare_and_swap_needs_atomic_mode(raw: RawClient, prefix: bytes) -> None:
    with pytest.raises(ValueError, match="atomic"):
        raw.compare_and_swap(prefix + b"k", None, b"v")


def test_ttl_expires_with_the_store_clock(mock: MockCluster, prefix: bytes) -> None:
    # TiKV serves raw TTLs only with storage TTL support (API V1TTL or V2); the shared
    # cluster is a plain V1 one, as TiDB needs, so this scenario has a cluster of its own.
    del mock
    with (
        MockCluster(stores=3, regions=4, api_version="V1TTL") as ttl_cluster,
        RawClient.connect(ttl_cluster.pd_endpoints) as client,
    ):
        # Frozen, so a wall-clock second boundary cannot shorten the TTL under test.
        ttl_cluster.clock.freeze()
        key = prefix + b"key"
        client.put(key, b"value", ttl=timedelta(seconds=2))
        ttl_cluster.clock.advance(1000)
        rest = client.get_key_ttl(key)
        assert rest is not None
        assert 0 < rest <= 1
        ttl_cluster.clock.advance(1000)
        assert client.get(key) is None
        assert client.get_key_ttl(key) is None


def test_delete_range_across_a_split(
    raw: RawClient, prefix: bytes, embedded: MockCluster | None
) -> None:
    pairs = _scan_fixture(20480, prefix)
    raw.batch_put(pairs)
    _split(embedded, [prefix + b"key@04096"])
    # The first key after the prefix's range (prefix with its last byte incremented): a
    # delete of the prefix must stop right before it.
    outside = prefix[:-1] + bytes([prefix[-1] + 1])
    raw.put(outside, b"keep")
    try:
        raw.delete_prefix(prefix)
        for i in range(3):
            assert raw.get(prefix + b"key@%05d" % i) is None
        assert list(raw.scan_iter(prefix, outside)) == []
        assert raw.get(outside) == b"keep"
    finally:
        raw.delete(outside)
