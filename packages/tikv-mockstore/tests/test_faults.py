"""Fault injection (region errors, statuses, probability, delay, hang, dropped streams) and
request counters."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from tikv_mockstore import MockCluster
from tikv_mockstore.faults import FaultInjector
from tikv_mockstore.testing import Stubs, context_for
from tikv_proto import errorpb_pb2, kvrpcpb_pb2, pdpb_pb2, tikvpb_pb2


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=2, split_raw=[b"m"]) as c:
        yield c


@pytest.fixture
def stubs(cluster: MockCluster) -> Iterator[Stubs]:
    with Stubs(cluster) as s:
        yield s


def _get(stubs: Stubs, key: bytes = b"a") -> kvrpcpb_pb2.RawGetResponse:
    stub, ctx = stubs.route(key)
    return stub.RawGet(kvrpcpb_pb2.RawGetRequest(context=ctx, key=key))


def test_region_error_n_times(cluster: MockCluster, stubs: Stubs) -> None:
    fault = cluster.faults.add("RawGet", region_error="server_is_busy", times=2)
    assert _get(stubs).region_error.HasField("server_is_busy")
    assert _get(stubs).region_error.HasField("server_is_busy")
    assert not _get(stubs).HasField("region_error")
    assert fault.hits == 2


def test_not_leader_fault_names_the_leader(cluster: MockCluster, stubs: Stubs) -> None:
    cluster.faults.add("RawGet", region_error="not_leader", times=1)
    resp = _get(stubs)
    region = cluster.region_by_key(b"a")
    assert region is not None
    assert resp.region_error.not_leader.region_id == region.id
    assert resp.region_error.not_leader.leader.store_id == region.leader_store_id


def test_epoch_not_match_fault_has_current_region(cluster: MockCluster, stubs: Stubs) -> None:
    cluster.faults.add("Get", region_error="epoch_not_match", times=1)  # command name works
    stub, ctx = stubs.route(b"a")
    resp = stub.RawGet(kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"a"))
    assert not resp.HasField("region_error")  # "Get" is KvGet, not RawGet
    cluster.faults.clear()
    cluster.faults.add("RawGet", region_error="epoch_not_match", times=1)
    resp = _get(stubs)
    (current,) = resp.region_error.epoch_not_match.current_regions
    assert current.id == ctx.region_id
    assert current.HasField("region_epoch")


def test_grpc_status(cluster: MockCluster, stubs: Stubs) -> None:
    cluster.faults.add("RawGet", status=grpc.StatusCode.UNAVAILABLE, times=1, message="boom")
    with pytest.raises(grpc.RpcError) as err:
        _get(stubs)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert err.value.details() == "boom"
    assert not _get(stubs).HasField("region_error")
    cluster.faults.add("RawGet", status=14, times=1)  # by number
    with pytest.raises(grpc.RpcError):
        _get(stubs)


def test_store_and_region_filters(cluster: MockCluster, stubs: Stubs) -> None:
    left = cluster.region_by_key(b"a")
    right = cluster.region_by_key(b"z")
    assert left is not None and right is not None
    cluster.faults.add("RawGet", region=right.id, region_error="region_not_found")
    assert not _get(stubs, b"a").HasField("region_error")
    assert _get(stubs, b"z").region_error.region_not_found.region_id == right.id
    cluster.faults.clear()
    cluster.faults.add(store=2, region_error="server_is_busy")  # any method, store 2 only
    assert not _get(stubs, b"a").HasField("region_error")  # leaders are on store 1
    follower_ctx = context_for(left, store_id=2)
    resp = stubs.tikv(2).RawGet(kvrpcpb_pb2.RawGetRequest(context=follower_ctx, key=b"a"))
    assert resp.region_error.HasField("server_is_busy")


def test_probability() -> None:
    inj = FaultInjector(seed=3)
    never = inj.add("RawGet", region_error="server_is_busy", probability=0.0)
    assert all(inj.apply("RawGet", 1, 1) is None for _ in range(50))
    assert never.hits == 0
    inj.clear()
    half = inj.add("RawGet", region_error="server_is_busy", probability=0.5)
    fired = sum(inj.apply("RawGet", 1, 1) is not None for _ in range(400))
    assert 0 < fired < 400
    assert half.hits == fired


def test_delay_then_serve(cluster: MockCluster, stubs: Stubs) -> None:
    fault = cluster.faults.add("RawGet", delay=0.01, times=1)
    assert not _get(stubs).HasField("region_error")
    assert fault.hits == 1


def test_hang_until_released(cluster: MockCluster, stubs: Stubs) -> None:
    fault = cluster.faults.add("RawPut", hang=True)
    stub, ctx = stubs.route(b"h")
    call = stub.RawPut.future(kvrpcpb_pb2.RawPutRequest(context=ctx, key=b"h", value=b"1"))
    assert cluster.faults.wait_hanging(1, timeout=10)
    assert not call.done()
    fault.release()
    assert not call.result(timeout=10).error
    assert _get(stubs, b"h").value == b"1"


def test_hang_in_batch_does_not_block_other_sub_requests(
    cluster: MockCluster, stubs: Stubs
) -> None:
    fault = cluster.faults.add("RawPut", hang=True)
    stub, ctx = stubs.route(b"a")
    q: queue.Queue[tikvpb_pb2.BatchCommandsRequest | None] = queue.Queue()

    def gen() -> Iterator[tikvpb_pb2.BatchCommandsRequest]:
        while (item := q.get()) is not None:
            yield item

    it = iter(stub.BatchCommands(gen()))
    req = tikvpb_pb2.BatchCommandsRequest(request_ids=[1, 2])
    req.requests.add(RawPut=kvrpcpb_pb2.RawPutRequest(context=ctx, key=b"a", value=b"v"))
    req.requests.add(RawGet=kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"a"))
    q.put(req)
    first = next(it)
    assert list(first.request_ids) == [2]
    # The sub-request hanging inside the stream counts like a hanging unary call.
    assert cluster.faults.wait_hanging(1, timeout=10)
    assert cluster.faults.hanging() == 1
    fault.release()
    second = next(it)
    assert list(second.request_ids) == [1]
    q.put(None)
    assert list(it) == []


def test_hang_on_batch_commands_stalls_the_whole_stream(cluster: MockCluster, stubs: Stubs) -> None:
    fault = cluster.faults.add("BatchCommands", hang=True, times=1)
    stub, ctx = stubs.route(b"a")
    req = tikvpb_pb2.BatchCommandsRequest(request_ids=[1])
    req.requests.add(RawGet=kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"a"))
    call = stub.BatchCommands(iter([req]))
    with futures.ThreadPoolExecutor(1) as pool:
        answers = pool.submit(lambda: list(call))
        assert cluster.faults.wait_hanging(1, timeout=10)
        assert not answers.done()
        fault.release()
        (resp,) = answers.result(timeout=10)
    assert list(resp.request_ids) == [1]
    assert fault.hits == 1
    # A stream fault with a status ends the stream; a fault without a method does not
    # act on the stream itself, only on its sub-requests.
    cluster.faults.add("BatchCommands", status="UNAVAILABLE", times=1)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.BatchCommands(iter([req])))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    unnamed = cluster.faults.add(region_error="server_is_busy", times=1)
    (busy,) = list(stub.BatchCommands(iter([req])))
    assert busy.responses[0].RawGet.region_error.HasField("server_is_busy")
    assert unnamed.hits == 1


def test_drop_stream(cluster: MockCluster, stubs: Stubs) -> None:
    cluster.faults.add("RawGet", drop_stream=True, times=1)
    stub, ctx = stubs.route(b"a")
    req = tikvpb_pb2.BatchCommandsRequest(request_ids=[1])
    req.requests.add(RawGet=kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"a"))
    with pytest.raises(grpc.RpcError) as err:
        list(stub.BatchCommands(iter([req])))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_pd_faults(cluster: MockCluster, stubs: Stubs) -> None:
    cluster.faults.add("GetRegion", status="UNAVAILABLE", times=1)
    pd, h = stubs.pd(), stubs.header()
    with pytest.raises(grpc.RpcError) as err:
        pd.GetRegion(pdpb_pb2.GetRegionRequest(header=h, region_key=b"a"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert pd.GetRegion(pdpb_pb2.GetRegionRequest(header=h, region_key=b"a")).HasField("region")
    # A fault without a method targets TiKV only.
    cluster.faults.add(status="INTERNAL")
    assert pd.GetRegion(pdpb_pb2.GetRegionRequest(header=h, region_key=b"a")).HasField("region")


def test_bad_fault_specs(cluster: MockCluster) -> None:
    with pytest.raises(ValueError, match="unknown TiKV / PD method"):
        cluster.faults.add("NoSuchMethod", status="UNAVAILABLE")
    with pytest.raises(ValueError, match="region error kind"):
        cluster.faults.add("RawGet", region_error="bogus")
    with pytest.raises(ValueError, match="effect"):
        cluster.faults.add("RawGet")
    with pytest.raises(ValueError, match="probability"):
        cluster.faults.add("RawGet", status="UNAVAILABLE", probability=2)
    with pytest.raises(ValueError, match="either"):
        cluster.faults.add("RawGet", status="UNAVAILABLE", region_error="not_leader")
    with pytest.raises(ValueError, match="PD method"):
        cluster.faults.add("GetRegion", region_error="not_leader")


def test_counters_and_last_context(cluster: MockCluster, stubs: Stubs) -> None:
    cluster.counters.reset()
    stub, ctx = stubs.route(b"c")
    ctx.request_source = "internal_test"
    ctx.resource_control_context.resource_group_name = "rg1"
    stub.RawPut(kvrpcpb_pb2.RawPutRequest(context=ctx, key=b"c", value=b"1"))
    stub.RawGet(kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"c"))
    stub.RawGet(kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"c"))
    assert cluster.counters.count("RawGet") == 2
    assert cluster.counters.count("RawGet", store=2) == 0
    assert cluster.counters.count("KvCommit") == 0
    assert cluster.counters.count("Commit") == 0
    last = cluster.counters.last_context("RawPut", store=ctx.peer.store_id)
    assert last is not None
    assert last.request_source == "internal_test"
    assert last.resource_control_context.resource_group_name == "rg1"
    snap = cluster.counters.snapshot()
    assert snap[(ctx.peer.store_id, "RawPut")] == 1
    stubs.pd().GetMembers(pdpb_pb2.GetMembersRequest())
    assert cluster.counters.count("GetMembers", store=0) == 1


def test_custom_region_error(cluster: MockCluster, stubs: Stubs) -> None:
    busy = errorpb_pb2.Error(
        message="busy", server_is_busy=errorpb_pb2.ServerIsBusy(reason="r", estimated_wait_ms=80)
    )
    cluster.faults.add("RawGet", region_error=busy, times=1)
    assert _get(stubs).region_error == busy
    with pytest.raises(ValueError, match="one error field"):
        cluster.faults.add("RawGet", region_error=errorpb_pb2.Error(message="nothing"))
