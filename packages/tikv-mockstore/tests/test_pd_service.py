"""The PD service over real gRPC: members, TSO, region and store lookups, GC, keyspaces."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import grpc
import pytest
from tikv_mockstore import MockCluster
from tikv_mockstore._codec import encode_bytes
from tikv_mockstore.testing import Stubs
from tikv_proto import keyspacepb_pb2, keyspacepb_pb2_grpc, pdpb_pb2


@pytest.fixture(scope="module")
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=3, pd_members=3) as c:
        yield c


@pytest.fixture
def stubs(cluster: MockCluster) -> Iterator[Stubs]:
    with Stubs(cluster) as s:
        yield s


def test_get_members(cluster: MockCluster, stubs: Stubs) -> None:
    for address in cluster.pd_endpoints:  # every member answers, without a header
        resp = stubs.pd(address).GetMembers(pdpb_pb2.GetMembersRequest())
        assert resp.header.cluster_id == cluster.cluster_id
        assert not resp.header.HasField("error")
        assert len(resp.members) == 3
        assert resp.leader.client_urls == [f"http://{cluster.pd_address}"]
        assert resp.leader.member_id in {m.member_id for m in resp.members}


def test_wrong_cluster_id_is_refused(cluster: MockCluster, stubs: Stubs) -> None:
    bad = pdpb_pb2.RequestHeader(cluster_id=cluster.cluster_id + 1)
    with pytest.raises(grpc.RpcError) as err:
        stubs.pd().GetRegion(pdpb_pb2.GetRegionRequest(header=bad, region_key=b"a"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "mismatch cluster id" in (err.value.details() or "")
    tso = stubs.pd().Tso(iter([pdpb_pb2.TsoRequest(header=bad, count=1)]))
    with pytest.raises(grpc.RpcError) as err2:
        next(iter(tso))
    assert err2.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def _tso_stream(
    stubs: Stubs,
) -> tuple[queue.Queue[pdpb_pb2.TsoRequest | None], Iterator[pdpb_pb2.TsoResponse]]:
    q: queue.Queue[pdpb_pb2.TsoRequest | None] = queue.Queue()

    def gen() -> Iterator[pdpb_pb2.TsoRequest]:
        while (item := q.get()) is not None:
            yield item

    return q, iter(stubs.pd().Tso(gen()))


def test_tso_count_and_monotonic_across_streams(stubs: Stubs) -> None:
    header = stubs.header()
    q1, s1 = _tso_stream(stubs)
    q2, s2 = _tso_stream(stubs)
    last = -1
    try:
        for count in (1, 4, 11, 1, 100):
            for q, s in ((q1, s1), (q2, s2)):
                q.put(pdpb_pb2.TsoRequest(header=header, count=count))
                resp = next(s)
                assert resp.count == count
                assert resp.header.cluster_id == header.cluster_id
                ts = resp.timestamp.physical << 18 | resp.timestamp.logical
                # The response is the largest of `count` consecutive timestamps, all new.
                assert resp.timestamp.logical >= count
                assert ts - count + 1 > last
                last = ts
    finally:
        q1.put(None)
        q2.put(None)


def test_tso_count_zero_fails(stubs: Stubs) -> None:
    stream = stubs.pd().Tso(iter([pdpb_pb2.TsoRequest(header=stubs.header(), count=0)]))
    with pytest.raises(grpc.RpcError) as err:
        next(iter(stream))
    assert err.value.code() == grpc.StatusCode.UNKNOWN


def test_tso_many_threads_unique(stubs: Stubs) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        reqs = [pdpb_pb2.TsoRequest(header=stubs.header(), count=3) for _ in range(30)]
        got = []
        for r in stubs.pd().Tso(iter(reqs)):
            top = r.timestamp.physical << 18 | r.timestamp.logical
            got += [top - 2, top - 1, top]
        with lock:
            results.extend(got)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == len(set(results)) == 360


def test_region_lookups_after_splits(cluster: MockCluster, stubs: Stubs) -> None:
    cluster.split([b"pd-m"])
    cluster.split([b"pd-t"], txn=True)
    pd, h = stubs.pd(), stubs.header()
    r = pd.GetRegion(pdpb_pb2.GetRegionRequest(header=h, region_key=b"pd-n"))
    assert r.region.start_key == b"pd-m"
    assert r.region.region_epoch.version >= 2
    assert r.leader.store_id in {p.store_id for p in r.region.peers}
    prev = pd.GetPrevRegion(pdpb_pb2.GetRegionRequest(header=h, region_key=b"pd-n"))
    assert prev.region.end_key == b"pd-m"
    by_id = pd.GetRegionByID(pdpb_pb2.GetRegionByIDRequest(header=h, region_id=r.region.id))
    assert by_id.region == r.region
    assert by_id.leader == r.leader
    missing = pd.GetRegionByID(pdpb_pb2.GetRegionByIDRequest(header=h, region_id=10**9))
    assert not missing.HasField("region")
    assert not missing.header.HasField("error")
    txn = pd.GetRegion(pdpb_pb2.GetRegionRequest(header=h, region_key=encode_bytes(b"pd-u")))
    assert txn.region.start_key == encode_bytes(b"pd-t")


def test_scan_regions_fills_new_and_deprecated_fields(cluster: MockCluster, stubs: Stubs) -> None:
    cluster.split([b"sc-a", b"sc-b", b"sc-c"])
    resp = stubs.pd().ScanRegions(
        pdpb_pb2.ScanRegionsRequest(header=stubs.header(), start_key=b"sc-a", end_key=b"sc-c")
    )
    assert [r.region.start_key for r in resp.regions] == [b"sc-a", b"sc-b"]
    assert list(resp.region_metas) == [r.region for r in resp.regions]
    assert list(resp.leaders) == [r.leader for r in resp.regions]
    limited = stubs.pd().ScanRegions(
        pdpb_pb2.ScanRegionsRequest(header=stubs.header(), start_key=b"sc-a", limit=1)
    )
    assert len(limited.regions) == 1
    batch = stubs.pd().BatchScanRegions(
        pdpb_pb2.BatchScanRegionsRequest(
            header=stubs.header(),
            ranges=[
                pdpb_pb2.KeyRange(start_key=b"sc-a", end_key=b"sc-a1"),
                pdpb_pb2.KeyRange(start_key=b"sc-b", end_key=b"sc-c"),
            ],
        )
    )
    assert [r.region.start_key for r in batch.regions] == [b"sc-a", b"sc-b"]
    overlapped = stubs.pd().BatchScanRegions(
        pdpb_pb2.BatchScanRegionsRequest(
            header=stubs.header(),
            ranges=[
                pdpb_pb2.KeyRange(start_key=b"b", end_key=b"d"),
                pdpb_pb2.KeyRange(start_key=b"c", end_key=b"e"),
            ],
        )
    )
    assert overlapped.header.error.type == pdpb_pb2.UNKNOWN


def test_stores(cluster: MockCluster, stubs: Stubs) -> None:
    pd, h = stubs.pd(), stubs.header()
    s = pd.GetStore(pdpb_pb2.GetStoreRequest(header=h, store_id=1))
    assert s.store.id == 1
    assert s.store.address == cluster.store_addresses[1]
    missing = pd.GetStore(pdpb_pb2.GetStoreRequest(header=h, store_id=999))
    assert missing.header.error.type == pdpb_pb2.UNKNOWN
    assert "not found" in missing.header.error.message
    all_stores = pd.GetAllStores(pdpb_pb2.GetAllStoresRequest(header=h))
    assert sorted(st.id for st in all_stores.stores) == [1, 2, 3]


def test_misc_cluster_calls(cluster: MockCluster, stubs: Stubs) -> None:
    pd, h = stubs.pd(), stubs.header()
    assert pd.IsBootstrapped(pdpb_pb2.IsBootstrappedRequest(header=h)).bootstrapped
    a = pd.AllocID(pdpb_pb2.AllocIDRequest(header=h)).id
    b = pd.AllocID(pdpb_pb2.AllocIDRequest(header=h))
    assert b.id == a + 1
    assert b.count == 0
    info = pd.GetClusterInfo(pdpb_pb2.GetClusterInfoRequest())
    assert list(info.serviceModes) == [pdpb_pb2.PD_SVC_MODE]
    m1 = pd.GetMinTS(pdpb_pb2.GetMinTSRequest(header=h)).timestamp
    m2 = pd.GetMinTS(pdpb_pb2.GetMinTSRequest(header=h)).timestamp
    assert (m2.physical, m2.logical) > (m1.physical, m1.logical)


def test_gc_safepoints(cluster: MockCluster, stubs: Stubs) -> None:
    pd, h = stubs.pd(), stubs.header()
    up = pd.UpdateGCSafePoint(pdpb_pb2.UpdateGCSafePointRequest(header=h, safe_point=1000))
    assert up.new_safe_point == 1000
    back = pd.UpdateGCSafePoint(pdpb_pb2.UpdateGCSafePointRequest(header=h, safe_point=10))
    assert back.new_safe_point == 1000
    assert pd.GetGCSafePoint(pdpb_pb2.GetGCSafePointRequest(header=h)).safe_point == 1000
    svc = pd.UpdateServiceGCSafePoint(
        pdpb_pb2.UpdateServiceGCSafePointRequest(
            header=h, service_id=b"backup", TTL=100, safe_point=2000
        )
    )
    assert (svc.service_id, svc.min_safe_point) == (b"backup", 2000)
    assert 0 < svc.TTL <= 100
    bounded = pd.UpdateGCSafePoint(pdpb_pb2.UpdateGCSafePointRequest(header=h, safe_point=5000))
    assert bounded.new_safe_point == 2000
    pd.UpdateServiceGCSafePoint(
        pdpb_pb2.UpdateServiceGCSafePointRequest(header=h, service_id=b"backup", TTL=0)
    )


def test_keyspaces(cluster: MockCluster, stubs: Stubs) -> None:
    ks = keyspacepb_pb2_grpc.KeyspaceStub(stubs.channel(cluster.pd_address))
    default = ks.LoadKeyspace(
        keyspacepb_pb2.LoadKeyspaceRequest(header=stubs.header(), name="DEFAULT")
    )
    assert default.keyspace.id == 0
    assert default.keyspace.name == "DEFAULT"
    created = cluster.create_keyspace("pd-test")
    got = ks.LoadKeyspace(keyspacepb_pb2.LoadKeyspaceRequest(header=stubs.header(), name="pd-test"))
    assert got.keyspace.id == created.id > 0
    assert got.keyspace.state == keyspacepb_pb2.ENABLED
    missing = ks.LoadKeyspace(
        keyspacepb_pb2.LoadKeyspaceRequest(header=stubs.header(), name="nope")
    )
    assert missing.header.error.type == pdpb_pb2.ENTRY_NOT_FOUND


def test_followers_refuse_and_leader_moves(cluster: MockCluster, stubs: Stubs) -> None:
    leader = cluster.pd_address
    followers = [a for a in cluster.pd_endpoints if a != leader]
    h = stubs.header()
    with pytest.raises(grpc.RpcError) as err:
        stubs.pd(followers[0]).GetRegion(pdpb_pb2.GetRegionRequest(header=h, region_key=b""))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert err.value.details() == "not leader"
    tso = stubs.pd(followers[0]).Tso(iter([pdpb_pb2.TsoRequest(header=h, count=1)]))
    with pytest.raises(grpc.RpcError) as err2:
        next(iter(tso))
    assert "not leader" in (err2.value.details() or "")
    new = cluster.move_pd_leader()
    assert cluster.pd_address != leader
    assert new.client_url == f"http://{cluster.pd_address}"
    members = stubs.pd(leader).GetMembers(pdpb_pb2.GetMembersRequest())
    assert members.leader.member_id == new.member_id
    with pytest.raises(grpc.RpcError):
        stubs.pd(leader).GetRegion(pdpb_pb2.GetRegionRequest(header=h, region_key=b""))
    ok = stubs.pd(cluster.pd_address).GetRegion(pdpb_pb2.GetRegionRequest(header=h, region_key=b""))
    assert ok.HasField("region")


def test_query_region_stream(cluster: MockCluster, stubs: Stubs) -> None:
    cluster.split([b"qr-m"])
    right = cluster.region_by_key(b"qr-z")
    left = cluster.region_by_key(b"qr-a")
    assert right is not None and left is not None
    req = pdpb_pb2.QueryRegionRequest(
        header=stubs.header(), keys=[b"qr-z"], prev_keys=[b"qr-m"], ids=[left.id, 10**9]
    )
    (resp,) = list(stubs.pd().QueryRegion(iter([req])))
    assert list(resp.key_id_map) == [right.id]
    assert list(resp.prev_key_id_map) == [left.id]
    assert set(resp.regions_by_id) == {left.id, right.id}
    assert resp.regions_by_id[right.id].region == right.to_pb()
    assert resp.regions_by_id[right.id].leader.store_id == right.leader_store_id


def test_tso_stream_sends_headers_before_any_request(stubs: Stubs) -> None:
    # client-rust waits for the response headers before it sends its first TsoRequest.
    q: queue.Queue[pdpb_pb2.TsoRequest | None] = queue.Queue()

    def gen() -> Iterator[pdpb_pb2.TsoRequest]:
        while (item := q.get()) is not None:
            yield item

    call = stubs.pd().Tso(gen())
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(call.initial_metadata()))
    waiter.start()
    waiter.join(10)
    try:
        assert not waiter.is_alive()
        assert got
    finally:
        q.put(None)
        list(call)


def test_keyspace_gc_safepoints(cluster: MockCluster, stubs: Stubs) -> None:
    ks = cluster.create_keyspace("gc-v2")
    pd, h = stubs.pd(), stubs.header()
    up = pd.UpdateGCSafePointV2(
        pdpb_pb2.UpdateGCSafePointV2Request(header=h, keyspace_id=ks.id, safe_point=500)
    )
    assert up.new_safe_point == 500
    back = pd.UpdateGCSafePointV2(
        pdpb_pb2.UpdateGCSafePointV2Request(header=h, keyspace_id=ks.id, safe_point=100)
    )
    assert back.new_safe_point == 500
    got = pd.GetGCSafePointV2(pdpb_pb2.GetGCSafePointV2Request(header=h, keyspace_id=ks.id))
    assert got.safe_point == 500
    # Keyspaces have their own GC state.
    other = pd.GetGCSafePointV2(pdpb_pb2.GetGCSafePointV2Request(header=h, keyspace_id=0))
    assert other.safe_point == 0
    svc = pd.UpdateServiceSafePointV2(
        pdpb_pb2.UpdateServiceSafePointV2Request(
            header=h, keyspace_id=ks.id, service_id=b"br", safe_point=800, ttl=30
        )
    )
    assert (svc.service_id, svc.min_safe_point) == (b"br", 800)
    with pytest.raises(grpc.RpcError) as err:
        pd.GetGCSafePointV2(pdpb_pb2.GetGCSafePointV2Request(header=h, keyspace_id=4242))
    assert err.value.code() == grpc.StatusCode.UNKNOWN


def test_external_timestamp(cluster: MockCluster, stubs: Stubs) -> None:
    pd, h = stubs.pd(), stubs.header()
    ts = cluster.current_ts()
    assert not pd.SetExternalTimestamp(
        pdpb_pb2.SetExternalTimestampRequest(header=h, timestamp=ts)
    ).header.HasField("error")
    got = pd.GetExternalTimestamp(pdpb_pb2.GetExternalTimestampRequest(header=h))
    assert got.timestamp == ts
    again = pd.SetExternalTimestamp(pdpb_pb2.SetExternalTimestampRequest(header=h, timestamp=ts))
    assert again.header.error.type == pdpb_pb2.INVALID_VALUE
    future = pd.SetExternalTimestamp(
        pdpb_pb2.SetExternalTimestampRequest(header=h, timestamp=ts + (10**6 << 18))
    )
    assert "larger than global ts" in future.header.error.message
