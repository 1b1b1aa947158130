"""Store life cycle (stop / restart / add / remove), PD leader moves, clean shutdown."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from tikv_mockstore import MockCluster
from tikv_mockstore.cluster import ClusterError, StoreState
from tikv_mockstore.testing import Stubs, context_for
from tikv_proto import kvrpcpb_pb2, pdpb_pb2


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
