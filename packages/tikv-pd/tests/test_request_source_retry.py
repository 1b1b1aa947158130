"""Request-source patching on retries and caller cancellation, against the mock cluster.

client-go ``patchRequestSource`` (``internal/locate/region_request.go``): a snapshot read
whose caller gave a request source sends ``<read type>_<source>`` on its first attempt
and ``retry_<first read type>_<this replica>_<source>`` on every resend; other requests
send the source unchanged. ``TestOnSendFailedWithCancelled`` /
``TestNoReloadRegionWhenCtxCanceled`` (``region_request_test.go``): a caller's
cancellation during a send propagates as cancellation and touches neither the store's
health nor the region cache.

What TiKV received is read from the mock's per-store ``last_context``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from tikv_mockstore import MockCluster
from tikv_pd.request import SOURCE_PATCHED_COMMANDS, patch_request_source
from tikv_proto import kvrpcpb_pb2
from tikv_raw import AsyncRawClient
from tikv_txn import AsyncTransactionClient

SOURCE = "external_txn"  # what the transactional client sends (tikv_txn._runtime)
KEY = b"\x10patched"
NO_HANG = 60.0


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=3, regions=1) as mock:
        yield mock


@pytest.fixture
async def client(cluster: MockCluster) -> AsyncIterator[AsyncTransactionClient]:
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as c:
        c.runtime.sender.rng = random.Random(3)
        yield c


async def write(client: AsyncTransactionClient, key: bytes, value: bytes) -> int:
    async with client.begin() as txn:
        txn.put(key, value)
    assert await client.runtime.wait_background(NO_HANG)
    return txn.commit_ts


def leader_and_followers(cluster: MockCluster, key: bytes) -> tuple[int, list[int]]:
    region = cluster.region_by_key(key, txn=True)
    assert region is not None
    return region.leader_store_id, [
        p.store_id for p in region.peers if p.store_id != region.leader_store_id
    ]


def context(cluster: MockCluster, method: str, store: int | None) -> kvrpcpb_pb2.Context:
    ctx = cluster.counters.last_context(method, store)
    assert ctx is not None, f"no {method} reached store {store}"
    return ctx


def sources(cluster: MockCluster, method: str) -> dict[int, str]:
    """The last request source of ``method`` per store that received one."""
    out: dict[int, str] = {}
    for store in cluster.stores():
        ctx = cluster.counters.last_context(method, store.id)
        if ctx is not None:
            out[store.id] = ctx.request_source
    return out


# ---------------------------------------------------------------------------------------
# The format (client-go TestRetryRequestSource's table)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("first", ["leader", "follower", "stale_follower", "stale_leader"])
@pytest.mark.parametrize("retry", ["leader", "follower"])
def test_patch_request_source_table(first: str, retry: str) -> None:
    replica = first.removeprefix("stale_")
    assert patch_request_source("test", first, replica, retry=False) == f"{first}_test"
    assert patch_request_source("test", first, retry, retry=True) == f"retry_{first}_{retry}_test"


def test_only_snapshot_reads_are_patched() -> None:
    # client-go sets InputRequestSource on the snapshot's get, batch get and scan only.
    assert {"Get", "BatchGet", "BufferBatchGet", "Scan"} == SOURCE_PATCHED_COMMANDS


# ---------------------------------------------------------------------------------------
# On the wire
# ---------------------------------------------------------------------------------------


async def test_leader_read_first_attempt_then_retry_after_a_leader_change(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    await write(client, KEY, b"v")
    ts = await client.current_timestamp()
    assert await client.snapshot(ts).get(KEY) == b"v"
    old_leader, followers = leader_and_followers(cluster, KEY)
    ctx = context(cluster, "KvGet", old_leader)
    assert ctx.request_source == f"leader_{SOURCE}"
    assert not ctx.is_retry_request
    # The leader moves; the client's cache still names the old one, which answers
    # NotLeader with the new leader: the resend is a retry of a leader read, on the leader.
    region = cluster.region_by_key(KEY, txn=True)
    assert region is not None
    cluster.transfer_leader(region.id, followers[0])
    assert await client.snapshot(ts).get(KEY) == b"v"
    assert context(cluster, "KvGet", old_leader).request_source == f"leader_{SOURCE}"
    ctx = context(cluster, "KvGet", followers[0])
    assert ctx.request_source == f"retry_leader_leader_{SOURCE}"
    assert ctx.is_retry_request


async def test_retry_after_an_injected_region_error_on_the_same_leader(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    await write(client, KEY, b"v")
    leader, _ = leader_and_followers(cluster, KEY)
    region = cluster.region_by_key(KEY, txn=True)
    assert region is not None
    fault = cluster.faults.add("KvGet", region=region.id, region_error="server_is_busy", times=1)
    assert await client.snapshot(await client.current_timestamp()).get(KEY) == b"v"
    assert fault.hits == 1
    assert cluster.counters.count("KvGet", leader) == 2
    ctx = context(cluster, "KvGet", leader)  # the second (last) attempt
    assert ctx.request_source == f"retry_leader_leader_{SOURCE}"
    assert ctx.is_retry_request


async def test_follower_read_retried_on_another_follower(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    await write(client, KEY, b"v")
    leader, followers = leader_and_followers(cluster, KEY)
    # Whichever follower is drawn first answers ServerIsBusy; the selector moves on at
    # once to the other follower (client-go canFastRetry).
    cluster.faults.add("KvGet", region_error="server_is_busy", times=1)
    snap = client.snapshot(await client.current_timestamp(), replica_read="follower")
    assert await snap.get(KEY) == b"v"
    got = sources(cluster, "KvGet")
    assert leader not in got
    assert sorted(got.values()) == [f"follower_{SOURCE}", f"retry_follower_follower_{SOURCE}"]
    assert set(got) == set(followers)


async def test_stale_read_refused_by_a_follower_is_retried_on_the_leader(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    for store in cluster.stores():
        cluster.set_store_labels(store.id, {"zone": f"z{store.id}"})
    await write(client, KEY, b"v")
    ts = await client.current_timestamp()
    cluster.clock.advance(1)  # every replica's safe ts passes ts
    leader, followers = leader_and_followers(cluster, KEY)
    local = followers[0]
    cluster.faults.add("KvGet", store=local, region_error="data_is_not_ready", times=1)
    snap = client.snapshot(ts, stale_read=True, match_labels={"zone": f"z{local}"})
    assert await snap.get(KEY) == b"v"
    first = context(cluster, "KvGet", local)
    assert first.stale_read
    assert first.request_source == f"stale_follower_{SOURCE}"
    # client-go: after DataIsNotReady the leader serves it as a normal leader read.
    retry = context(cluster, "KvGet", leader)
    assert not retry.stale_read and not retry.replica_read
    assert retry.request_source == f"retry_stale_follower_leader_{SOURCE}"
    assert retry.is_retry_request


async def test_stale_read_first_served_by_the_leader(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    for store in cluster.stores():
        cluster.set_store_labels(store.id, {"zone": f"z{store.id}"})
    await write(client, KEY, b"v")
    ts = await client.current_timestamp()
    cluster.clock.advance(1)
    leader, _ = leader_and_followers(cluster, KEY)
    snap = client.snapshot(ts, stale_read=True, match_labels={"zone": f"z{leader}"})
    assert await snap.get(KEY) == b"v"
    assert context(cluster, "KvGet", leader).request_source == f"stale_leader_{SOURCE}"


async def test_batch_get_resharded_after_a_split_is_sent_as_a_retry(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    keys = [b"\x10a", b"\x10z"]
    for k in keys:
        await write(client, k, b"v" + k)
    ts = await client.current_timestamp()
    assert await client.snapshot(ts).batch_get(keys) == {k: b"v" + k for k in keys}
    leader, _ = leader_and_followers(cluster, keys[0])
    assert context(cluster, "KvBatchGet", leader).request_source == f"leader_{SOURCE}"
    # A split the client has not seen: EpochNotMatch, the keys are re-located into two
    # regions and each part is resent as a retry of the first attempt.
    cluster.split([b"\x10m"], txn=True)
    before = cluster.counters.count("KvBatchGet")
    assert await client.snapshot(ts).batch_get(keys) == {k: b"v" + k for k in keys}
    assert cluster.counters.count("KvBatchGet") - before == 3
    for store, source in sources(cluster, "KvBatchGet").items():
        assert source == f"retry_leader_leader_{SOURCE}", store
    assert context(cluster, "KvBatchGet", None).is_retry_request


async def test_scan_and_writes(client: AsyncTransactionClient, cluster: MockCluster) -> None:
    await write(client, KEY, b"v")
    leader, _ = leader_and_followers(cluster, KEY)
    snap = client.snapshot(await client.current_timestamp())
    assert [k for k, _ in await snap.scan(b"\x10", b"\x11", limit=10)] == [KEY]
    assert context(cluster, "KvScan", leader).request_source == f"leader_{SOURCE}"
    # Writes keep the caller's source as it is (client-go patches snapshot reads only).
    assert context(cluster, "KvPrewrite", leader).request_source == SOURCE
    assert context(cluster, "KvCommit", leader).request_source == SOURCE


async def test_no_source_no_patch(cluster: MockCluster) -> None:
    # Raw requests carry no source (client-go rawkv); even a retried one stays empty.
    async with await AsyncRawClient.connect(cluster.pd_endpoints) as raw:
        cluster.faults.add("RawGet", region_error="server_is_busy", times=1)
        assert await raw.get(b"r") is None
    ctx = context(cluster, "RawGet", None)
    assert ctx.request_source == ""
    assert ctx.is_retry_request


# ---------------------------------------------------------------------------------------
# Cancellation by the caller (client-go TestOnSendFailedWithCancelled)
# ---------------------------------------------------------------------------------------


async def wait_hanging(cluster: MockCluster, count: int) -> None:
    deadline = time.monotonic() + NO_HANG
    while cluster.faults.hanging() < count:
        assert time.monotonic() < deadline, "the request never reached the store"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_caller_cancellation_is_not_a_store_failure(
    client: AsyncTransactionClient, cluster: MockCluster, how: str
) -> None:
    await write(client, KEY, b"v")
    sender = client.runtime.sender
    locator = sender.locator
    leader, _ = leader_and_followers(cluster, KEY)
    ts = await client.current_timestamp()
    addresses = sorted(sender.transport.addresses())
    hang = cluster.faults.add("KvGet", hang=True)
    if how == "cancel":
        task = asyncio.ensure_future(client.snapshot(ts).get(KEY))
        await wait_hanging(cluster, 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        # The caller's own deadline: asyncio's TimeoutError, not a backoff budget
        # (tikv_pd.errors.TimeoutError) nor a store failure.
        with pytest.raises(TimeoutError) as info:
            async with asyncio.timeout(0.2):
                await client.snapshot(ts).get(KEY)
        assert type(info.value) is TimeoutError
    # Nothing was blamed on the store or the region.
    assert sender.stats.send_failures == 0
    assert sender.stats.backoffs == 0
    assert not sender.health.has_unreachable()
    assert locator.cache.lookup(KEY) is not None
    cluster.faults.remove(hang)
    # The same connections serve the next read.
    assert await client.snapshot(ts).get(KEY) == b"v"
    assert sorted(sender.transport.addresses()) == addresses
    assert context(cluster, "KvGet", leader).request_source == f"leader_{SOURCE}"


async def test_cancellation_during_backoff_propagates(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    await write(client, KEY, b"v")
    sender = client.runtime.sender
    # Every attempt is refused with ServerIsBusy: the read backs off until cancelled.
    cluster.faults.add("KvGet", region_error="server_is_busy")
    task = asyncio.ensure_future(client.snapshot(await client.current_timestamp()).get(KEY))
    deadline = time.monotonic() + NO_HANG
    while cluster.counters.count("KvGet") < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sender.stats.send_failures == 0
    assert not sender.health.has_unreachable()


async def test_grpc_cancelled_by_the_server_is_retried(cluster: MockCluster) -> None:
    # A CANCELLED status the caller did not cause (keepalive, a store shutting down) is a
    # send failure: retried, and the read succeeds; the store is not marked unreachable
    # (only a refused connection does that).
    async with await AsyncRawClient.connect(cluster.pd_endpoints) as raw:
        await raw.put(b"k", b"v")
        cluster.faults.add("RawGet", status=grpc.StatusCode.CANCELLED, times=1)
        assert await raw.get(b"k") == b"v"
        sender = raw._shared.router.sender
        assert sender.stats.send_failures >= 1
        assert not sender.health.has_unreachable()


async def test_a_cancelled_send_is_counted_as_context_canceled(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from tikv_pd.metrics import disable_metrics, enable_metrics

    registry = prometheus_client.CollectorRegistry()
    enable_metrics(registry)
    try:
        await write(client, KEY, b"v")
        leader, _ = leader_and_followers(cluster, KEY)
        hang = cluster.faults.add("KvGet", hang=True)
        task = asyncio.ensure_future(client.snapshot(await client.current_timestamp()).get(KEY))
        await wait_hanging(cluster, 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        cluster.faults.remove(hang)
        labels = {"type": "context-canceled", "store": str(leader)}
        assert registry.get_sample_value("tikv_client_go_rpc_err_total", labels) == 1
    finally:
        disable_metrics()


class ThrottledError(Exception):
    """What a resource controller raises when the group is out of request units."""


class ThrottlingController:
    def is_background_request(self, resource_group: str, request_source: str) -> bool:
        return False

    async def on_request_wait(self, resource_group: str, info: object) -> object:
        raise ThrottledError(resource_group)

    async def on_response_wait(
        self, resource_group: str, request: object, response: object
    ) -> None:
        raise AssertionError("no response expected")


async def test_a_throttled_request_is_not_a_store_failure(cluster: MockCluster) -> None:
    # client-go TestOnSendFailByResourceGroupThrottled: the resource controller's refusal
    # reaches the caller as it is; the store is not marked and nothing is sent.
    from tikv_pd.request_context import RequestContext, set_resource_controller

    async with await AsyncRawClient.connect(
        cluster.pd_endpoints, request_context=RequestContext(resource_group_name="rg")
    ) as raw:
        await raw.put(b"k", b"v")  # before the controller: served
        sender = raw._shared.router.sender
        set_resource_controller(ThrottlingController())  # type: ignore[arg-type]
        try:
            before = cluster.counters.count("RawGet")
            with pytest.raises(ThrottledError, match="rg"):
                await raw.get(b"k")
            assert cluster.counters.count("RawGet") == before
            assert sender.stats.send_failures == 0 and sender.stats.backoffs == 0
            assert not sender.health.has_unreachable()
            assert sender.locator.cache.lookup(b"k") is not None
        finally:
            set_resource_controller(None)
        assert await raw.get(b"k") == b"v"
