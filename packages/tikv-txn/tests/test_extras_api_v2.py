"""Pre-split and commit-ts reads under API v2 (keyspaces).

Inside the client keys are keyspace-prefixed; what users see is their own keys. The
splits must land at the prefixed keys in the cluster's region table (TiKV encodes the
split keys it is sent), and reads return the user's keys with their commit ts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from tikv_mockstore import MockCluster
from tikv_pd.codec import keyspace_prefix
from tikv_pd.config import Config, TransactionOptions
from tikv_txn import AsyncTransactionClient, ValueEntry
from tikv_txn.policy import pre_split_keys

THRESHOLD = 200
SIZE = 2000


@pytest.fixture(scope="module")
def cluster_and_prefix() -> Iterator[tuple[MockCluster, bytes]]:
    with MockCluster(stores=1, api_version=2) as mock:
        keyspace = mock.create_keyspace("extras")
        yield mock, keyspace_prefix("txn", keyspace.id)


@pytest.fixture
async def client(
    cluster_and_prefix: tuple[MockCluster, bytes],
) -> AsyncIterator[AsyncTransactionClient]:
    cluster, _ = cluster_and_prefix
    config = Config(txn_pre_split_detect_threshold=THRESHOLD, txn_pre_split_size_threshold=SIZE)
    async with await AsyncTransactionClient.connect(
        cluster.pd_endpoints, keyspace="extras", config=config, api_version=2
    ) as c:
        yield c


@pytest.mark.parametrize("mode", ["optimistic", "pessimistic"])
async def test_pre_split_under_api_v2(
    client: AsyncTransactionClient, cluster_and_prefix: tuple[MockCluster, bytes], mode: str
) -> None:
    cluster, prefix = cluster_and_prefix
    keys = [mode.encode() + b"/%06d" % i for i in range(THRESHOLD)]
    options = TransactionOptions(mode=mode)  # type: ignore[arg-type]
    txn = await client.begin(options)
    for k in keys:
        txn.put(k, b"v")
    await txn.commit()
    sizes = (
        [(k, len(prefix + k)) for k in keys]
        if mode == "pessimistic"
        else [(k, len(prefix + k) + 1) for k in keys]
    )
    splits = pre_split_keys(
        sizes, lambda i: i[0], lambda i: i[1], detect_threshold=THRESHOLD, size_threshold=SIZE
    )
    assert splits
    for k in splits:
        region = cluster.region_by_key(prefix + k, txn=True)
        assert region is not None
        assert region.user_start == prefix + k
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.batch_get(keys) == dict.fromkeys(keys, b"v")


async def test_commit_ts_reads_under_api_v2(client: AsyncTransactionClient) -> None:
    async with client.begin() as txn:
        txn.put(b"a", b"1")
        txn.put(b"b", b"2")
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.get_with_commit_ts(b"a") == ValueEntry(b"1", txn.commit_ts)
    assert await snap.batch_get_with_commit_ts([b"a", b"b", b"c"]) == {
        b"a": ValueEntry(b"1", txn.commit_ts),
        b"b": ValueEntry(b"2", txn.commit_ts),
    }
