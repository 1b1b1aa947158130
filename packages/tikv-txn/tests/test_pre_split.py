"""Pre-splitting a region that receives many keys of one transaction (client-go
``ticlient_test.go`` TestSplitRegionIn2PC, optimistic and pessimistic).

With the thresholds lowered as the client-go test lowers them (500 keys, 5000 bytes), a
transaction writing 500 keys into one region splits it with TiKV's ``SplitRegion``
before prewrite (pessimistic: before locking), then sends its keys to the new regions.
The mock cluster's region table is the judge: it must hold the new boundaries at the
keys :func:`tikv_txn.policy.pre_split_keys` chose, and every key must read back.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator

import pytest
from tikv_mockstore import MockCluster
from tikv_pd.config import Config, TransactionOptions
from tikv_txn import AsyncTransactionClient
from tikv_txn.committer import split_region_keys
from tikv_txn.policy import pre_split_keys

THRESHOLD = 500
SIZE = 5000
_ids = itertools.count()


@pytest.fixture(scope="module")
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=3, regions=2) as mock:
        yield mock


@pytest.fixture
async def client(cluster: MockCluster) -> AsyncIterator[AsyncTransactionClient]:
    config = Config(txn_pre_split_detect_threshold=THRESHOLD, txn_pre_split_size_threshold=SIZE)
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints, config=config) as c:
        yield c


def make_keys(prefix: bytes, count: int = THRESHOLD) -> list[bytes]:
    return [prefix + b"%08d" % i for i in range(count)]


def value(i: int) -> bytes:
    return b"value-%d" % i


def same_region(cluster: MockCluster, a: bytes, b: bytes) -> bool:
    ra = cluster.region_by_key(a, txn=True)
    rb = cluster.region_by_key(b, txn=True)
    assert ra is not None and rb is not None
    return ra.id == rb.id


def starts_region(cluster: MockCluster, key: bytes) -> bool:
    region = cluster.region_by_key(key, txn=True)
    assert region is not None
    return region.user_start == key


async def test_optimistic_commit_splits_the_region_first(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    keys = make_keys(b"\x10psplit%03d/key" % next(_ids))
    assert same_region(cluster, keys[0], keys[-1])
    splits_before = cluster.counters.count("SplitRegion")
    txn = await client.begin(TransactionOptions.optimistic())
    for i, key in enumerate(keys):
        txn.put(key, value(i))
    commit_ts = await txn.commit()
    assert commit_ts > txn.start_ts
    assert cluster.counters.count("SplitRegion") > splits_before
    # The region was split where client-go's rule says: every 5000 bytes of key + value.
    expected = pre_split_keys(
        [(k, len(k) + len(value(i))) for i, k in enumerate(keys)],
        lambda item: item[0],
        lambda item: item[1],
        detect_threshold=THRESHOLD,
        size_threshold=SIZE,
    )
    assert expected  # the test's sizes do call for a split
    assert all(starts_region(cluster, k) for k in expected)
    assert not same_region(cluster, keys[0], keys[-1])
    # The new regions were scattered by PD (client-go SplitRegions(scatter=true)): the
    # mock's scatter spreads leaders, so the transaction's keys are led from more than
    # one store now. The region from the last split key on keeps the old region's id
    # (TiKV derives the right side) and is not a new one: the ones before it are.
    for k in [keys[0], *expected[:-1]]:
        region = cluster.region_by_key(k, txn=True)
        assert region is not None
        assert cluster.state.operator_of(region.id) == b"scatter-region"
    leaders = {cluster.region_by_key(k, txn=True).leader.store_id for k in keys}  # type: ignore[union-attr]
    assert len(leaders) > 1
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get(keys) == {k: value(i) for i, k in enumerate(keys)}


async def test_pessimistic_lock_splits_the_region_before_locking(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    keys = make_keys(b"\x90psplit%03d/pkey" % next(_ids))
    assert same_region(cluster, keys[0], keys[-1])
    txn = await client.begin(TransactionOptions.pessimistic())
    await txn.lock_keys(keys)
    # Locking alone split the region (values are empty: 5000 bytes of keys each).
    assert not same_region(cluster, keys[0], keys[-1])
    expected = pre_split_keys(
        keys, lambda k: k, len, detect_threshold=THRESHOLD, size_threshold=SIZE
    )
    assert expected
    assert all(starts_region(cluster, k) for k in expected)
    locked = {lock.key for lock in cluster.engine.scan_lock(2**63 - 1)}
    assert set(keys) <= locked
    for i, key in enumerate(keys):
        txn.put(key, value(i))
    await txn.commit()
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get(keys) == {k: value(i) for i, k in enumerate(keys)}


async def test_a_small_transaction_does_not_split(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    keys = make_keys(b"\x10psplit%03d/small" % next(_ids), THRESHOLD - 1)
    before = len(cluster.regions())
    async with client.begin() as txn:
        for i, key in enumerate(keys):
            txn.put(key, value(i))
    assert len(cluster.regions()) == before
    assert same_region(cluster, keys[0], keys[-1])


async def test_split_region_keys_skips_existing_boundaries(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    prefix = b"\x10psplit%03d/direct" % next(_ids)
    a, b = prefix + b"a", prefix + b"b"
    assert await split_region_keys(client.runtime, [a, b]) != []
    assert starts_region(cluster, a)
    assert starts_region(cluster, b)
    before = cluster.counters.count("SplitRegion")
    # Both keys already start their regions: nothing is sent.
    assert await split_region_keys(client.runtime, [a, b]) == []
    assert cluster.counters.count("SplitRegion") == before


async def test_pd_scatter_and_operator_calls(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    pd = client.runtime.pd
    assert pd is not None
    prefix = b"\x10psplit%03d/scatter" % next(_ids)
    (new_id,) = await split_region_keys(client.runtime, [prefix])
    assert await pd.get_operator(new_id) is None  # PD's "Not Found": no operator yet
    assert await pd.scatter_regions([new_id, 999_999]) == [999_999]
    op = await pd.get_operator(new_id)
    assert op is not None
    assert op[0] == b"scatter-region"
    with pytest.raises(ValueError, match="empty"):
        await pd.scatter_regions([])
    with pytest.raises(ValueError, match="region_id"):
        await pd.get_operator(0)
