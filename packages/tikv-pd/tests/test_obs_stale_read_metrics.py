"""Stale-read metrics (client-go ``internal/locate/metrics_collector.go``).

``tikv_client_go_stale_read_bytes{result=local|cross-zone, direction=out|in}`` and
``tikv_client_go_stale_read_req_counter{type=local|cross-zone}`` move on every attempt of
a stale read; ``tikv_client_go_stale_read_counter{result=hit|miss}`` once per answered
request part (hit: the first replica asked answered). Traffic is cross-zone when the
client's ``Config.zone_label`` and the target store's ``zone`` label are both known and
differ. The sizes are checked against what an interceptor saw on the wire.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

prometheus_client = pytest.importorskip("prometheus_client")

from tikv_mockstore import MockCluster  # noqa: E402
from tikv_pd.config import Config  # noqa: E402
from tikv_pd.interceptor import RPCInvoker, RPCRequest, rpc_interceptor  # noqa: E402
from tikv_pd.metrics import disable_metrics, enable_metrics  # noqa: E402
from tikv_txn import AsyncSnapshot, AsyncTransactionClient  # noqa: E402

KEY = b"\x10stale-metrics"
NO_HANG = 60.0
BYTES = "tikv_client_go_stale_read_bytes_total"
REQS = "tikv_client_go_stale_read_req_counter_total"
HITS = "tikv_client_go_stale_read_counter_total"


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=3, regions=1) as mock:
        for store in mock.stores():
            mock.set_store_labels(store.id, {"zone": f"z{store.id}"})
        yield mock


@pytest.fixture
def registry() -> Iterator[Any]:
    reg = prometheus_client.CollectorRegistry()
    enable_metrics(reg)
    yield reg
    disable_metrics()


def value(registry: Any, name: str, **labels: str) -> float:
    got = registry.get_sample_value(name, labels)
    return 0.0 if got is None else float(got)


class Sizes:
    """An interceptor recording each attempt's request and response sizes."""

    def __init__(self) -> None:
        self.out: list[int] = []
        self.into: list[int] = []
        self.stale: list[bool] = []

    def interceptor(self) -> Any:
        def wrap(next: RPCInvoker) -> RPCInvoker:
            async def invoke(rpc: RPCRequest) -> Any:
                self.out.append(rpc.request.ByteSize())
                self.stale.append(rpc.context.stale_read)
                response = await next(rpc)
                self.into.append(response.ByteSize())
                return response

            return invoke

        return rpc_interceptor("sizes", wrap)


async def connect(cluster: MockCluster, zone: str) -> AsyncTransactionClient:
    return await AsyncTransactionClient.connect(
        cluster.pd_endpoints, config=Config(zone_label=zone)
    )


async def prepared(client: AsyncTransactionClient, cluster: MockCluster) -> int:
    """Write KEY and return a ts every replica can serve stale."""
    async with client.begin() as txn:
        txn.put(KEY, b"v" * 100)
    assert await client.runtime.wait_background(NO_HANG)
    ts = await client.current_timestamp()
    cluster.clock.advance(1)
    return ts


def leader_and_followers(cluster: MockCluster) -> tuple[int, list[int]]:
    region = cluster.region_by_key(KEY, txn=True)
    assert region is not None
    leader = region.leader_store_id
    return leader, [p.store_id for p in region.peers if p.store_id != leader]


def stale_snapshot(
    client: AsyncTransactionClient, ts: int, zone: str, sizes: Sizes
) -> AsyncSnapshot:
    snap = client.snapshot(ts, stale_read=True, match_labels={"zone": zone})
    snap.set_rpc_interceptor(sizes.interceptor())
    return snap


async def test_local_stale_read_hit(cluster: MockCluster, registry: Any) -> None:
    async with await connect(cluster, "z1") as client:
        ts = await prepared(client, cluster)
        _, followers = leader_and_followers(cluster)
        zone = f"z{followers[0]}"
        client.runtime.sender.zone_label = zone  # the client lives in that follower's zone
        sizes = Sizes()
        assert await stale_snapshot(client, ts, zone, sizes).get(KEY) == b"v" * 100
    assert sizes.stale == [True]
    assert value(registry, BYTES, result="local", direction="out") == sizes.out[0] > 0
    assert value(registry, BYTES, result="local", direction="in") == sizes.into[0] > 100
    assert value(registry, REQS, type="local") == 1
    assert value(registry, HITS, result="hit") == 1
    assert value(registry, HITS, result="miss") == 0
    assert value(registry, REQS, type="cross-zone") == 0
    assert value(registry, BYTES, result="cross-zone", direction="out") == 0


async def test_cross_zone_stale_read(cluster: MockCluster, registry: Any) -> None:
    async with await connect(cluster, "elsewhere") as client:
        ts = await prepared(client, cluster)
        _, followers = leader_and_followers(cluster)
        sizes = Sizes()
        snap = stale_snapshot(client, ts, f"z{followers[0]}", sizes)
        assert await snap.get(KEY) == b"v" * 100
    assert value(registry, BYTES, result="cross-zone", direction="out") == sizes.out[0]
    assert value(registry, BYTES, result="cross-zone", direction="in") == sizes.into[0]
    assert value(registry, REQS, type="cross-zone") == 1
    assert value(registry, REQS, type="local") == 0
    assert value(registry, HITS, result="hit") == 1


async def test_unknown_zone_counts_as_local(cluster: MockCluster, registry: Any) -> None:
    async with await connect(cluster, "") as client:  # the client's zone is not known
        ts = await prepared(client, cluster)
        sizes = Sizes()
        assert await stale_snapshot(client, ts, "z2", sizes).get(KEY) == b"v" * 100
    assert value(registry, REQS, type="local") == 1
    assert value(registry, BYTES, result="local", direction="out") == sizes.out[0]


async def test_refused_stale_read_is_a_miss_and_both_attempts_count(
    cluster: MockCluster, registry: Any
) -> None:
    async with await connect(cluster, "z9") as client:
        ts = await prepared(client, cluster)
        leader, followers = leader_and_followers(cluster)
        local = followers[0]
        cluster.faults.add("KvGet", store=local, region_error="data_is_not_ready", times=1)
        sizes = Sizes()
        assert await stale_snapshot(client, ts, f"z{local}", sizes).get(KEY) == b"v" * 100
    # The follower refused; the leader served a normal read: two attempts of one stale
    # read (client-go counts by the request's stale flag, not the attempt's).
    assert sizes.stale == [True, False]
    assert value(registry, REQS, type="cross-zone") == 2
    assert value(registry, BYTES, result="cross-zone", direction="out") == sum(sizes.out)
    assert value(registry, BYTES, result="cross-zone", direction="in") == sum(sizes.into)
    assert value(registry, HITS, result="miss") == 1
    assert value(registry, HITS, result="hit") == 0
    assert leader != local


async def test_other_reads_do_not_count(cluster: MockCluster, registry: Any) -> None:
    async with await connect(cluster, "z1") as client:
        ts = await prepared(client, cluster)
        assert await client.snapshot(ts).get(KEY) == b"v" * 100
        assert await client.snapshot(ts, replica_read="follower").get(KEY) == b"v" * 100
    for name in (BYTES, REQS, HITS):
        assert not [
            s for family in registry.collect() for s in family.samples if s.name == name and s.value
        ]


# ---------------------------------------------------------------------------------------
# read_request_bytes (client-go ReadRequest{Leader,Follower}{Local,Remote}Bytes)
# ---------------------------------------------------------------------------------------

READ = "tikv_client_go_read_request_bytes"


async def test_read_request_bytes_by_replica_kind_and_zone(
    cluster: MockCluster, registry: Any
) -> None:
    leader, _ = leader_and_followers(cluster)
    async with await connect(cluster, f"z{leader}") as client:
        ts = await prepared(client, cluster)
        sizes = Sizes()
        snap = client.snapshot(ts)
        snap.set_rpc_interceptor(sizes.interceptor())
        assert await snap.get(KEY) == b"v" * 100
        assert value(registry, READ + "_count", type="leader", result="local") == 1
        assert value(registry, READ + "_sum", type="leader", result="local") == (
            sizes.out[0] + sizes.into[0]
        )
        # A follower read in another zone.
        sizes = Sizes()
        snap = client.snapshot(ts, replica_read="follower")
        snap.set_rpc_interceptor(sizes.interceptor())
        assert await snap.get(KEY) == b"v" * 100
        assert value(registry, READ + "_count", type="follower", result="cross-zone") == 1
        assert value(registry, READ + "_sum", type="follower", result="cross-zone") == (
            sizes.out[0] + sizes.into[0]
        )
        # Writes are not reads.
        async with client.begin() as txn:
            txn.put(KEY, b"w")
        assert await client.runtime.wait_background(NO_HANG)
    assert value(registry, READ + "_count", type="leader", result="local") == 1


async def test_read_request_bytes_need_a_known_zone(cluster: MockCluster, registry: Any) -> None:
    async with await connect(cluster, "") as client:
        ts = await prepared(client, cluster)
        assert await client.snapshot(ts).get(KEY) == b"v" * 100
    assert not [
        s
        for family in registry.collect()
        for s in family.samples
        if s.name.startswith(READ) and s.value
    ]
