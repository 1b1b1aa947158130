"""The cluster id in every request context (client-go TestClusterIDInReq).

client-go sets ``req.ClusterId`` (``kvrpcpb.Context.cluster_id``) from PD on every request;
TiKV (``src/server/service/kv.rs``) refuses a non-zero id that is not its own with
``INVALID_ARGUMENT`` — for BatchCommands the whole stream fails — and accepts 0. The mock
store does the same; the pipeline fills the id and treats the refusal as fatal (no retry:
this store belongs to another cluster).
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from tikv_mockstore import MockCluster
from tikv_mockstore.testing import Stubs
from tikv_pd.request import ContextCache, build_context
from tikv_pd.transport import TransportError
from tikv_proto import kvrpcpb_pb2, tikvpb_pb2
from tikv_raw import AsyncRawClient
from tikv_txn import AsyncTransactionClient


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=3) as mock:
        yield mock


def test_build_context_sets_the_cluster_id() -> None:
    from tikv_pd.region_cache import Peer, Region, RegionEpoch
    from tikv_pd.request import DEFAULT_OPTIONS

    region = Region(1, b"", b"", RegionEpoch(1, 1), (Peer(11, 1),), Peer(11, 1))
    assert build_context(region, Peer(11, 1), DEFAULT_OPTIONS).cluster_id == 0
    assert build_context(region, Peer(11, 1), DEFAULT_OPTIONS, cluster_id=42).cluster_id == 42
    calls: list[int] = []

    def source() -> int:
        calls.append(1)
        return 7

    cache = ContextCache(cluster_id=source)
    assert cache.get(region, Peer(11, 1), DEFAULT_OPTIONS, 0).cluster_id == 7
    assert cache.get(region, Peer(11, 1), DEFAULT_OPTIONS, 0).cluster_id == 7
    assert len(calls) == 1  # asked when a context is built, not per request


def test_the_mock_refuses_another_clusters_requests(cluster: MockCluster) -> None:
    with Stubs(cluster) as stubs:
        stub, ctx = stubs.route(b"k")
        ctx.cluster_id = cluster.cluster_id + 1
        with pytest.raises(grpc.RpcError) as info:
            stub.RawPut(kvrpcpb_pb2.RawPutRequest(context=ctx, key=b"k", value=b"v"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        # Its own id and 0 (not sent) are served.
        for cid in (cluster.cluster_id, 0):
            ctx.cluster_id = cid
            resp = stub.RawPut(kvrpcpb_pb2.RawPutRequest(context=ctx, key=b"k", value=b"v"))
            assert not resp.HasField("region_error") and not resp.error
        # BatchCommands: the stream fails.
        ctx.cluster_id = cluster.cluster_id + 1
        message = tikvpb_pb2.BatchCommandsRequest(
            requests=[
                tikvpb_pb2.BatchCommandsRequest.Request(
                    RawGet=kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"k")
                )
            ],
            request_ids=[1],
        )
        with pytest.raises(grpc.RpcError) as info:
            list(stub.BatchCommands(iter([message])))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


async def test_every_request_carries_the_pd_cluster_id(cluster: MockCluster) -> None:
    async with await AsyncRawClient.connect(cluster.pd_endpoints) as raw:
        await raw.put(b"k", b"v")
        assert await raw.get(b"k") == b"v"
    for method in ("RawPut", "RawGet"):
        ctx = cluster.counters.last_context(method)
        assert ctx is not None and ctx.cluster_id == cluster.cluster_id
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as txn_client:
        async with txn_client.begin() as txn:
            txn.put(b"\x10k", b"v")
        snap = txn_client.snapshot(await txn_client.current_timestamp())
        assert await snap.get(b"\x10k") == b"v"
    for method in ("KvPrewrite", "KvGet"):
        ctx = cluster.counters.last_context(method)
        assert ctx is not None and ctx.cluster_id == cluster.cluster_id


async def test_a_store_of_another_cluster_is_not_retried(cluster: MockCluster) -> None:
    async with await AsyncRawClient.connect(cluster.pd_endpoints) as raw:
        sender = raw._shared.router.sender
        # As if PD had named another cluster: the stores refuse every request.
        sender.contexts = ContextCache(cluster_id=lambda: cluster.cluster_id + 1)
        before = cluster.counters.count("RawGet")
        with pytest.raises(TransportError) as info:
            await raw.get(b"k")
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert sender.stats.backoffs == 0
        assert cluster.counters.count("RawGet") == before  # refused before being served
