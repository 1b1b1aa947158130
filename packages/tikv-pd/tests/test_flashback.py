"""Flashback region errors (client-go ``onRegionError``, ``region_request.go``).

TiKV answers ``FlashbackInProgress`` to ordinary requests while a region is flashed back
and ``FlashbackNotPrepared`` to a second-phase flashback request on a region that was
not prepared. client-go stops at once for both, without backing off; only a replica
read on a follower is retried, on the leader (``onFlashbackInProgress``). The error
reaches the caller as :class:`~tikv_pd.errors.FlashbackError` with the region id and
the flashback's start ts.
"""

from __future__ import annotations

import pickle
from collections.abc import AsyncIterator, Iterator

import pytest
from tikv_mockstore import MockCluster
from tikv_pd.errors import FlashbackError, RegionError, UndeterminedError
from tikv_pd.region_errors import Action, decide, to_exception
from tikv_proto import errorpb_pb2
from tikv_raw import AsyncRawClient
from tikv_txn import AsyncTransactionClient

KEY = b"\x10flashback"
NO_HANG = 60.0


def in_progress(region_id: int, start_ts: int) -> errorpb_pb2.Error:
    return errorpb_pb2.Error(
        message="region is in flashback",
        FlashbackInProgress=errorpb_pb2.FlashbackInProgress(
            region_id=region_id, flashback_start_ts=start_ts
        ),
    )


def test_decisions_stop_at_once() -> None:
    for err in (
        in_progress(5, 77),
        errorpb_pb2.Error(FlashbackNotPrepared=errorpb_pb2.FlashbackNotPrepared(region_id=5)),
    ):
        d = decide(err, region_id=5)
        assert d.action is Action.FAIL
        assert d.backoff is None
        assert not d.invalidate_region and not d.ambiguous


def test_to_exception_carries_the_servers_facts() -> None:
    exc = to_exception(in_progress(5, 77), region_id=9)
    assert isinstance(exc, FlashbackError) and isinstance(exc, RegionError)
    assert (exc.kind, exc.region_id, exc.flashback_start_ts) == ("FlashbackInProgress", 5, 77)
    assert exc.in_progress
    assert "region 5" in str(exc) and "77" in str(exc)
    # The region id of the request stands in when TiKV left it out.
    exc = to_exception(
        errorpb_pb2.Error(FlashbackNotPrepared=errorpb_pb2.FlashbackNotPrepared()), region_id=9
    )
    assert isinstance(exc, FlashbackError)
    assert (exc.kind, exc.region_id, exc.flashback_start_ts) == ("FlashbackNotPrepared", 9, 0)
    assert not exc.in_progress
    assert "not prepared" in str(exc)
    copy = pickle.loads(
        pickle.dumps(FlashbackError("FlashbackInProgress", 3, flashback_start_ts=4))
    )
    assert (copy.region_id, copy.flashback_start_ts, copy.kind) == (3, 4, "FlashbackInProgress")
    with pytest.raises(ValueError, match="flashback error kind"):
        FlashbackError("not_leader", 1)


# ---------------------------------------------------------------------------------------
# Against the mock cluster
# ---------------------------------------------------------------------------------------


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=3, regions=1) as mock:
        yield mock


@pytest.fixture
async def client(cluster: MockCluster) -> AsyncIterator[AsyncTransactionClient]:
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as c:
        yield c


async def write(client: AsyncTransactionClient, key: bytes, value: bytes) -> None:
    async with client.begin() as txn:
        txn.put(key, value)
    assert await client.runtime.wait_background(NO_HANG)


def region_and_leader(cluster: MockCluster) -> tuple[int, int]:
    region = cluster.region_by_key(KEY, txn=True)
    assert region is not None
    return region.id, region.leader_store_id


async def test_leader_read_fails_at_once_with_the_region_and_start_ts(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    await write(client, KEY, b"v")
    region_id, _ = region_and_leader(cluster)
    sender = client.runtime.sender
    backoffs = sender.stats.backoffs
    before = cluster.counters.count("KvGet")
    cluster.faults.add("KvGet", region_error=in_progress(region_id, 4242))
    snap = client.snapshot(await client.current_timestamp())
    with pytest.raises(FlashbackError) as info:
        await snap.get(KEY)
    assert (info.value.region_id, info.value.flashback_start_ts) == (region_id, 4242)
    assert info.value.in_progress
    # One attempt, no sleep: the workload is expected to stop during a flashback.
    assert cluster.counters.count("KvGet") - before == 1
    assert sender.stats.backoffs == backoffs
    # The region stays cached (nothing is wrong with the client's view of it).
    assert sender.locator.cache.lookup(KEY) is not None


async def test_follower_read_is_retried_on_the_leader(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    await write(client, KEY, b"v")
    region_id, leader = region_and_leader(cluster)
    followers = [s.id for s in cluster.stores() if s.id != leader]
    for store in followers:
        cluster.faults.add("KvGet", store=store, region_error=in_progress(region_id, 1))
    snap = client.snapshot(await client.current_timestamp(), replica_read="follower")
    assert await snap.get(KEY) == b"v"
    ctx = cluster.counters.last_context("KvGet", leader)
    assert ctx is not None and not ctx.replica_read
    assert sum(cluster.counters.count("KvGet", s) for s in followers) == 1
    # When the leader is in flashback too, the error stands after that one retry.
    cluster.faults.add("KvGet", store=leader, region_error=in_progress(region_id, 1))
    before = cluster.counters.count("KvGet")
    with pytest.raises(FlashbackError):
        await client.snapshot(await client.current_timestamp(), replica_read="follower").get(KEY)
    assert cluster.counters.count("KvGet") - before == 2


async def test_write_in_flashback_fails_without_retry(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    region_id, _ = region_and_leader(cluster)
    cluster.faults.add("KvPrewrite", region_error="FlashbackInProgress")
    txn = await client.begin()
    txn.put(KEY, b"v")
    with pytest.raises(FlashbackError) as info:
        await txn.commit()
    assert not isinstance(info.value, UndeterminedError)
    assert info.value.region_id == region_id  # filled by the mock from the request
    assert cluster.counters.count("KvPrewrite") == 1
    assert cluster.counters.count("KvCommit") == 0


async def test_flashback_not_prepared_is_surfaced(cluster: MockCluster) -> None:
    async with await AsyncRawClient.connect(cluster.pd_endpoints) as raw:
        region = cluster.region_by_key(b"r")
        assert region is not None
        cluster.faults.add("RawPut", region_error="FlashbackNotPrepared", times=1)
        with pytest.raises(FlashbackError) as info:
            await raw.put(b"r", b"v")
        assert (info.value.kind, info.value.region_id) == ("FlashbackNotPrepared", region.id)
        assert cluster.counters.count("RawPut") == 1
        # The fault fired once: the next put goes through.
        await raw.put(b"r", b"v")
        assert await raw.get(b"r") == b"v"
