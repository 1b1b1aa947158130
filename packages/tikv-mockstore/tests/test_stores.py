"""Store life cycle (stop / restart / add / remove), PD leader moves, clean shutdown."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import pytest
from tikv_mockstore import MockCluster
from tikv_mockstore.cluster import ClusterError, StoreState
from tikv_mockstore.testing import Stubs, context_for
from tikv_proto import kvrpcpb_pb2, pdpb_pb2, tikvpb_pb2_grpc


def _mock_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("mock-")]


def test_stopped_store_refuses_connections_and_restarts_on_its_port() -> None:
    with MockCluster(stores=3) as cluster, Stubs(cluster) as stubs:
        (region,) = cluster.regions()
        address = cluster.store_addresses[1]
        cluster.stop_store(1)
        with pytest.raises(grpc.RpcError) as err:
            stubs.tikv(1).RawGet(
                kvrpcpb_pb2.RawGetRequest(context=context_for(region), key=b"k"), timeout=5
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # Raft elected a new leader on an up store; PD knows it and still lists store 1.
        moved = cluster.region(region.id)
        assert moved is not None and moved.leader_store_id in (2, 3)
        assert moved.version == region.version
        stores = {s.id: s for s in cluster.stores()}
        assert stores[1].state is StoreState.STOPPED
        pd_store = stubs.pd().GetStore(pdpb_pb2.GetStoreRequest(header=stubs.header(), store_id=1))
        assert pd_store.store.address == address
        ok = stubs.tikv(moved.leader_store_id).RawPut(
            kvrpcpb_pb2.RawPutRequest(context=context_for(moved), key=b"k", value=b"v")
        )
        assert not ok.error and not ok.HasField("region_error")
        cluster.restart_store(1)
        assert cluster.store_addresses[1] == address
        follower = stubs.tikv(1).RawGet(
            kvrpcpb_pb2.RawGetRequest(context=context_for(moved, store_id=1), key=b"k"),
            timeout=10,
            wait_for_ready=True,
        )
        assert follower.region_error.not_leader.leader.store_id == moved.leader_store_id
        cluster.transfer_leader(region.id, 1)
        back = cluster.region(region.id)
        assert back is not None
        got = stubs.tikv(1).RawGet(kvrpcpb_pb2.RawGetRequest(context=context_for(back), key=b"k"))
        assert got.value == b"v"


def test_stop_without_moving_leaders() -> None:
    with MockCluster(stores=2) as cluster:
        (region,) = cluster.regions()
        cluster.stop_store(1, move_leaders=False)
        still = cluster.region(region.id)
        assert still is not None and still.leader_store_id == 1


def test_add_and_remove_store() -> None:
    with MockCluster(stores=2) as cluster, Stubs(cluster) as stubs:
        new = cluster.add_store()
        assert new in cluster.store_addresses
        (region,) = cluster.regions()
        with_peer = cluster.add_peer(region.id, new)
        assert with_peer.conf_ver == region.conf_ver + 1
        cluster.transfer_leader(region.id, new)
        current = cluster.region(region.id)
        assert current is not None
        resp = stubs.tikv(new).RawPut(
            kvrpcpb_pb2.RawPutRequest(context=context_for(current), key=b"n", value=b"1")
        )
        assert not resp.HasField("region_error")
        cluster.remove_store(new)
        after = cluster.region(region.id)
        assert after is not None and after.peer_on(new) is None and after.leader_store_id != new
        h = stubs.header()
        all_stores = stubs.pd().GetAllStores(pdpb_pb2.GetAllStoresRequest(header=h))
        states = {s.id: s.state for s in all_stores.stores}
        assert states[new] == 2  # metapb.Tombstone
        live = stubs.pd().GetAllStores(
            pdpb_pb2.GetAllStoresRequest(header=h, exclude_tombstone_stores=True)
        )
        assert new not in {s.id for s in live.stores}
        with pytest.raises(ClusterError, match="tombstone"):
            cluster.restart_store(new)


def test_close_leaves_no_threads() -> None:
    cluster = MockCluster(stores=2)
    with Stubs(cluster) as stubs:
        stubs.pd().GetMembers(pdpb_pb2.GetMembersRequest())
    cluster.close()
    cluster.close()  # idempotent
    deadline = time.monotonic() + 10
    while _mock_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _mock_threads() == []
    with pytest.raises(RuntimeError, match="closed"):
        cluster.regions()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="stores"):
        MockCluster(stores=0)
    with pytest.raises(TypeError, match="split_raw"):
        MockCluster(split_raw=b"abc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="regions"):
        MockCluster(regions=1000)


def test_stopping_a_store_with_a_hanging_request() -> None:
    with MockCluster(stores=2) as cluster, Stubs(cluster) as stubs:
        fault = cluster.faults.add("RawGet", store=1, hang=True)
        stub, ctx = stubs.route(b"k")
        call = stub.RawGet.future(kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"k"))
        assert cluster.faults.wait_hanging(1, timeout=10)
        cluster.stop_store(1)  # must not wait for the hanging handler
        with pytest.raises(grpc.RpcError):
            call.result(timeout=10)
        fault.release()
        cluster.restart_store(1)


def test_stopping_the_pd_leader_elects_another() -> None:
    with MockCluster(stores=1, pd_members=3) as cluster, Stubs(cluster) as stubs:
        old_address = cluster.pd_address
        stopped = cluster.stop_pd()
        assert stopped.client_url == f"http://{old_address}"
        assert cluster.pd_address != old_address
        with pytest.raises(grpc.RpcError) as err:
            stubs.pd(old_address).GetMembers(pdpb_pb2.GetMembersRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        follower = next(
            a for a in cluster.pd_endpoints if a not in (old_address, cluster.pd_address)
        )
        members = stubs.pd(follower).GetMembers(pdpb_pb2.GetMembersRequest())
        assert members.leader.client_urls == [f"http://{cluster.pd_address}"]
        region = stubs.pd().GetRegion(
            pdpb_pb2.GetRegionRequest(header=stubs.header(), region_key=b"")
        )
        assert region.HasField("region")
        cluster.restart_pd(stopped.member_id)
        again = stubs.pd(old_address).GetMembers(
            pdpb_pb2.GetMembersRequest(), timeout=10, wait_for_ready=True
        )
        assert again.leader.member_id != stopped.member_id
        assert len(cluster.pd_members()) == 3


def _raw_get(
    stubs: Stubs, address: str, ctx: kvrpcpb_pb2.Context, key: bytes, *, ready: bool = True
) -> Any:
    """RawGet at ``address``; with ``ready`` it waits for a channel that failed before to
    reconnect (gRPC backs off after a refused connection) instead of failing at once."""
    stub = tikvpb_pb2_grpc.TikvStub(stubs.channel(address))
    request = kvrpcpb_pb2.RawGetRequest(context=ctx, key=key)
    return stub.RawGet(request, timeout=10, wait_for_ready=ready)


def test_move_store_serves_the_same_store_on_a_new_address() -> None:
    with MockCluster(stores=2) as cluster, Stubs(cluster) as stubs:
        (region,) = cluster.regions()
        assert region.leader_store_id == 1
        ctx = context_for(region)
        stubs.tikv(1).RawPut(kvrpcpb_pb2.RawPutRequest(context=ctx, key=b"k", value=b"v"))
        old = cluster.store_addresses[1]
        started = {s.id: s.start_timestamp for s in cluster.stores()}
        new = cluster.move_store(1)
        assert new != old and cluster.store_addresses[1] == new
        # The old address refuses connections; PD reports the new one.
        with pytest.raises(grpc.RpcError) as err:
            _raw_get(stubs, old, ctx, b"k", ready=False)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        pd_store = stubs.pd().GetStore(pdpb_pb2.GetStoreRequest(header=stubs.header(), store_id=1))
        assert pd_store.store.address == new
        assert pd_store.store.state == 0  # metapb.Up
        # Same store id, same data, still the leader: the region did not change.
        assert _raw_get(stubs, new, ctx, b"k").value == b"v"
        assert cluster.region(region.id) == region
        assert {s.id: s.start_timestamp for s in cluster.stores()}[1] >= started[1]
        # An explicit port, e.g. back to the old one.
        port = int(old.rsplit(":", 1)[1])
        assert cluster.move_store(1, port=port) == old
        assert _raw_get(stubs, old, ctx, b"k").value == b"v"


def test_swap_store_addresses_answers_store_not_match_at_the_old_address() -> None:
    with MockCluster(stores=2) as cluster, Stubs(cluster) as stubs:
        (region,) = cluster.regions()
        ctx = context_for(region)  # addressed to store 1, the leader
        stubs.tikv(1).RawPut(kvrpcpb_pb2.RawPutRequest(context=ctx, key=b"k", value=b"v"))
        before = dict(cluster.store_addresses)
        cluster.swap_store_addresses(1, 2)
        assert cluster.store_addresses == {1: before[2], 2: before[1]}
        # Store 1's old address now is store 2: it refuses a request meant for store 1.
        resp = _raw_get(stubs, before[1], ctx, b"k")
        mismatch = resp.region_error.store_not_match
        assert (mismatch.request_store_id, mismatch.actual_store_id) == (1, 2)
        assert _raw_get(stubs, before[2], ctx, b"k").value == b"v"
        h = stubs.header()
        stores = stubs.pd().GetAllStores(pdpb_pb2.GetAllStoresRequest(header=h)).stores
        assert {s.id: s.address for s in stores} == {1: before[2], 2: before[1]}


def test_new_store_takes_over_a_removed_stores_address() -> None:
    with MockCluster(stores=2) as cluster, Stubs(cluster) as stubs:
        (region,) = cluster.regions()
        old = cluster.store_addresses[2]
        port = int(old.rsplit(":", 1)[1])
        with pytest.raises(ClusterError, match="in use by store 2"):
            cluster.add_store(port=port)
        cluster.remove_store(2)
        new = cluster.add_store(port=port)
        assert cluster.store_addresses[new] == old
        cluster.add_peer(region.id, new)
        current = cluster.region(region.id)
        assert current is not None
        # A request for the removed store reaches the new one at its old address.
        stale = context_for(region, store_id=2)
        mismatch = _raw_get(stubs, old, stale, b"k").region_error.store_not_match
        assert (mismatch.request_store_id, mismatch.actual_store_id) == (2, new)
        follower = _raw_get(stubs, old, context_for(current, store_id=new), b"k")
        assert follower.region_error.not_leader.leader.store_id == 1


def test_move_store_refusals() -> None:
    with MockCluster(stores=2) as cluster:
        other = int(cluster.store_addresses[2].rsplit(":", 1)[1])
        with pytest.raises(ClusterError, match="in use by store 2"):
            cluster.move_store(1, port=other)
        with pytest.raises(ClusterError, match="does not exist"):
            cluster.move_store(9)
        with pytest.raises(ValueError, match="port"):
            cluster.move_store(1, port=70000)
        with pytest.raises(TypeError, match="port"):
            cluster.move_store(1, port="1")  # type: ignore[arg-type]
        with pytest.raises(ClusterError, match="two different"):
            cluster.swap_store_addresses(1, 1)
        cluster.stop_store(2)
        with pytest.raises(ClusterError, match="not running"):
            cluster.move_store(2)
        with pytest.raises(ClusterError, match="not running"):
            cluster.swap_store_addresses(1, 2)
        assert cluster.store_addresses[1] != cluster.store_addresses[2]


def test_move_store_in_a_child_process() -> None:
    with MockCluster(stores=1, process=True) as cluster, Stubs(cluster) as stubs:
        (region,) = cluster.regions()
        old = cluster.store_addresses[1]
        new = cluster.move_store(1)
        assert new != old and cluster.store_addresses[1] == new
        resp = _raw_get(stubs, new, context_for(region), b"k")
        assert not resp.HasField("region_error") and resp.not_found
