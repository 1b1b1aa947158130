"""TiKV's region checks, in TiKV's order, as seen over gRPC (RawGet / RawScan) and in-process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tikv_mockstore import MockCluster
from tikv_mockstore._codec import encode_bytes
from tikv_mockstore.testing import Stubs, context_for
from tikv_mockstore.tikv_service import StoreScope
from tikv_proto import kvrpcpb_pb2, metapb_pb2


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=3) as c:
        yield c


@pytest.fixture
def stubs(cluster: MockCluster) -> Iterator[Stubs]:
    with Stubs(cluster) as s:
        yield s


def _get(
    stubs: Stubs, store: int, ctx: kvrpcpb_pb2.Context, key: bytes
) -> kvrpcpb_pb2.RawGetResponse:
    return stubs.tikv(store).RawGet(kvrpcpb_pb2.RawGetRequest(context=ctx, key=key))


def test_store_not_match(cluster: MockCluster, stubs: Stubs) -> None:
    (region,) = cluster.regions()
    ctx = context_for(region)  # addressed to store 1's peer
    resp = _get(stubs, 2, ctx, b"k")
    assert resp.region_error.store_not_match.request_store_id == 1
    assert resp.region_error.store_not_match.actual_store_id == 2


def test_region_not_found(cluster: MockCluster, stubs: Stubs) -> None:
    (region,) = cluster.regions()
    ctx = context_for(region)
    ctx.region_id = 987654
    resp = _get(stubs, 1, ctx, b"k")
    assert resp.region_error.region_not_found.region_id == 987654
    # A region without a peer on the store is not found there either.
    cluster.remove_peer(region.id, 3)
    resp = _get(stubs, 3, context_for(region, store_id=3), b"k")
    assert resp.region_error.HasField("region_not_found")


def test_not_leader_carries_the_leader(cluster: MockCluster, stubs: Stubs) -> None:
    (region,) = cluster.regions()
    resp = _get(stubs, 2, context_for(region, store_id=2), b"k")
    nl = resp.region_error.not_leader
    assert nl.region_id == region.id
    assert nl.leader == region.leader.to_pb()  # type: ignore[union-attr]
    # After a leader transfer the old leader answers NotLeader pointing at the new one.
    cluster.transfer_leader(region.id, 3)
    resp = _get(stubs, 1, context_for(region, store_id=1), b"k")
    assert resp.region_error.not_leader.leader.store_id == 3
    # Replica reads are served by followers.
    ctx = context_for(region, store_id=2)
    ctx.replica_read = True
    assert not _get(stubs, 2, ctx, b"k").HasField("region_error")


def test_epoch_not_match_returns_current_regions(cluster: MockCluster, stubs: Stubs) -> None:
    (old,) = cluster.regions()
    cluster.split([b"m"])
    resp = _get(stubs, 1, context_for(old), b"z")
    enm = resp.region_error.epoch_not_match
    assert resp.region_error.HasField("epoch_not_match")
    ids = [r.id for r in enm.current_regions]
    assert ids[0] == old.id
    assert len(ids) == 2  # the region and the piece split off its left
    for r in enm.current_regions:
        assert r.HasField("region_epoch")
        assert r.region_epoch.version == 2
    assert enm.current_regions[1].end_key == b"m"
    # conf_ver is not checked for reads and writes (NORMAL_REQ_CHECK_CONF_VER = false).
    current = cluster.region(old.id)
    assert current is not None
    ctx = context_for(current)
    ctx.region_epoch.conf_ver = 99
    assert not _get(stubs, 1, ctx, b"z").HasField("region_error")


def test_missing_epoch(cluster: MockCluster, stubs: Stubs) -> None:
    (region,) = cluster.regions()
    ctx = context_for(region)
    ctx.ClearField("region_epoch")
    resp = _get(stubs, 1, ctx, b"k")
    assert resp.region_error.message == "missing epoch!"


def test_key_not_in_region(cluster: MockCluster, stubs: Stubs) -> None:
    left, right = cluster.split([b"m"])
    resp = _get(stubs, 1, context_for(left), b"q")
    knr = resp.region_error.key_not_in_region
    assert (knr.key, knr.region_id, knr.start_key, knr.end_key) == (b"q", left.id, b"", b"m")
    # A forward scan must start inside the region; its end is clipped, not checked.
    scan = stubs.tikv(1).RawScan(
        kvrpcpb_pb2.RawScanRequest(context=context_for(right), start_key=b"a", limit=10)
    )
    assert scan.region_error.HasField("key_not_in_region")


def test_check_order_store_before_region(cluster: MockCluster, stubs: Stubs) -> None:
    (region,) = cluster.regions()
    ctx = context_for(region)
    ctx.region_id = 424242
    ctx.ClearField("region_epoch")
    assert _get(stubs, 2, ctx, b"k").region_error.HasField("store_not_match")
    assert _get(stubs, 1, ctx, b"k").region_error.HasField("region_not_found")


def test_txn_check_compares_encoded_keys(cluster: MockCluster) -> None:
    left, right = cluster.split([b"m"], txn=True)
    scope = StoreScope(1, cluster.state, None, None)
    assert scope.check(context_for(left), keys=[b"l"], txn=True) is None
    err = scope.check(context_for(left), keys=[b"m"], txn=True)
    assert err is not None
    assert err.key_not_in_region.key == encode_bytes(b"m")
    assert scope.check(context_for(right), keys=[b"m"], txn=True) is None
    assert scope.region_bounds(context_for(left), txn=True) == (b"", b"m")
    assert scope.region_bounds(context_for(right), txn=True) == (b"m", b"")
    # Reverse ranges may start at the region's (exclusive) end.
    assert scope.check(context_for(left), ranges=[(b"m", b"a")], txn=True, reverse=True) is None
    assert scope.check(context_for(left), ranges=[(b"n", b"a")], txn=True, reverse=True)


def test_region_pb_has_peers_and_epoch(cluster: MockCluster) -> None:
    (region,) = cluster.regions()
    pb = region.to_pb()
    assert pb.region_epoch == metapb_pb2.RegionEpoch(conf_ver=1, version=1)
    assert len(pb.peers) == 3


def test_mismatch_peer_id(cluster: MockCluster, stubs: Stubs) -> None:
    (region,) = cluster.regions()
    ctx = context_for(region)
    ctx.peer.id += 1000
    resp = _get(stubs, 1, ctx, b"k")
    mpi = resp.region_error.mismatch_peer_id
    assert resp.region_error.HasField("mismatch_peer_id")
    assert (mpi.request_peer_id, mpi.store_peer_id) == (ctx.peer.id, region.leader.id)  # type: ignore[union-attr]


def test_followers_serve_replica_reads_but_not_writes(cluster: MockCluster, stubs: Stubs) -> None:
    (region,) = cluster.regions()
    ctx = context_for(region, store_id=2)
    ctx.replica_read = True
    read = stubs.tikv(2).RawGet(kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"k"))
    assert not read.HasField("region_error")
    write = stubs.tikv(2).RawPut(kvrpcpb_pb2.RawPutRequest(context=ctx, key=b"k", value=b"v"))
    assert write.region_error.not_leader.leader.store_id == region.leader_store_id


def test_a_context_that_passed_is_checked_again_after_every_region_change(
    cluster: MockCluster, stubs: Stubs
) -> None:
    # The leader remembers Contexts that passed its routing checks; each region change must
    # still be seen by the very same Context bytes.
    (region,) = cluster.regions()
    ctx = context_for(region)
    assert not _get(stubs, 1, ctx, b"k").HasField("region_error")
    assert not _get(stubs, 1, ctx, b"k").HasField("region_error")  # remembered
    cluster.transfer_leader(region.id, 2)
    assert _get(stubs, 1, ctx, b"k").region_error.HasField("not_leader")
    cluster.transfer_leader(region.id, 1)
    assert not _get(stubs, 1, ctx, b"k").HasField("region_error")
    cluster.split([b"m"])
    assert _get(stubs, 1, ctx, b"k").region_error.HasField("epoch_not_match")
    (left, right) = cluster.regions()
    fresh = context_for(right if right.id == region.id else left)
    key = b"z" if right.id == region.id else b"a"
    assert not _get(stubs, 1, fresh, key).HasField("region_error")
    # Keys are checked on every request, remembered Context or not.
    other = b"a" if key == b"z" else b"z"
    assert _get(stubs, 1, fresh, other).region_error.HasField("key_not_in_region")
    cluster.remove_peer(region.id, 1)
    assert _get(stubs, 1, fresh, key).region_error.HasField("region_not_found")
