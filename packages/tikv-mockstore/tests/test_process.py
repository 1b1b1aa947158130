"""``MockCluster(process=True)``: the cluster in a child process, with the control API proxied."""

from __future__ import annotations

import grpc
import pytest
from tikv_mockstore import MockCluster
from tikv_mockstore.testing import Stubs
from tikv_proto import kvrpcpb_pb2, pdpb_pb2


def test_process_mode_smoke() -> None:
    cluster = MockCluster(stores=2, process=True, split_raw=[b"m"])
    try:
        assert not cluster.in_process
        with Stubs(cluster) as stubs:
            members = stubs.pd(cluster.pd_endpoints[0]).GetMembers(pdpb_pb2.GetMembersRequest())
            assert members.header.cluster_id == cluster.cluster_id
            stub, ctx = stubs.route(b"k")
            ctx.request_source = "proc"
            assert not stub.RawPut(
                kvrpcpb_pb2.RawPutRequest(context=ctx, key=b"k", value=b"v")
            ).HasField("region_error")
            assert stub.RawGet(kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"k")).value == b"v"
            assert cluster.counters.count("RawPut") == 1
            last = cluster.counters.last_context("RawPut")
            assert last is not None and last.request_source == "proc"

            cluster.split([b"f"])
            pd_region = stubs.pd().GetRegion(
                pdpb_pb2.GetRegionRequest(header=stubs.header(), region_key=b"g")
            )
            assert pd_region.region.start_key == b"f"
            region = cluster.region_by_key(b"g")
            assert region is not None
            cluster.transfer_leader(region.id, 2)
            region2 = cluster.region(region.id)
            assert region2 is not None and region2.leader_store_id == 2

            fault = cluster.faults.add("RawGet", region_error="server_is_busy", times=1)
            stub, ctx = stubs.route(b"k")
            busy = stub.RawGet(kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"k"))
            assert busy.region_error.HasField("server_is_busy")
            assert fault.hits == 0  # fired its only time and was removed
            hang = cluster.faults.add("RawGet", hang=True)
            call = stub.RawGet.future(kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"k"))
            assert cluster.faults.wait_hanging(1, 10)
            hang.release()
            assert call.result(timeout=10).value == b"v"
            cluster.faults.clear()

            before = cluster.clock.now_ms()
            assert cluster.clock.advance(60_000) >= before + 60_000

            # The child's GC worker follows PD's safepoint; waiting for it is proxied.
            safe_point = cluster.current_ts()
            updated = stubs.pd().UpdateGCSafePoint(
                pdpb_pb2.UpdateGCSafePointRequest(header=stubs.header(), safe_point=safe_point)
            )
            assert updated.new_safe_point == safe_point
            assert cluster.wait_for_gc(safe_point, 10)

            cluster.stop_store(1)
            with pytest.raises(grpc.RpcError):
                stubs.tikv(1).RawGet(kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"k"), timeout=5)
            cluster.restart_store(1)
            assert 1 in cluster.store_addresses
        with pytest.raises(RuntimeError, match="process=True"):
            _ = cluster.engine
    finally:
        cluster.close()
    assert cluster._remote is not None
    assert not cluster._remote._proc.is_alive()


def test_process_mode_reports_errors() -> None:
    with MockCluster(stores=1, process=True) as cluster, pytest.raises(Exception, match="9999"):
        cluster.transfer_leader(9999, 1)
