"""Stale reads and per-store safe ts: served by followers up to their safe ts, as TiKV.

TiKV facts checked here: a follower refuses a stale read above its safe ts with
``DataIsNotReady{region_id, peer_id, safe_ts}`` (raftstore ``check_stale_read_safe``); a leader
falls back to a normal read instead (``LocalReader``, TiKV PR #15726); the resolved ts is
``min(tso, oldest prewrite lock start_ts)`` per region (``resolved_ts/src/resolver.rs``), never
decreases, and raising it first raises ``max_ts`` (``advance.rs``); a replica read (read index)
on a follower sees the latest committed data whatever the follower's safe ts.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tikv_mockstore import MockCluster
from tikv_mockstore.cluster import Region
from tikv_mockstore.testing import Stubs, context_for, encoded
from tikv_proto import kvrpcpb_pb2, metapb_pb2, pdpb_pb2

LOGICAL_BITS = 18


@pytest.fixture(scope="module")
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=3, split_txn=[b"m"]) as c:
        yield c


@pytest.fixture
def stubs(cluster: MockCluster) -> Iterator[Stubs]:
    cluster.clock.freeze()
    with Stubs(cluster) as s:
        yield s
    for store in cluster.stores():
        cluster.release_safe_ts(store.id)
        cluster.set_safe_ts_lag(store.id, 0)
    cluster.clock.unfreeze()


def region_of(cluster: MockCluster, key: bytes) -> Region:
    region = cluster.region_by_key(key, txn=True)
    assert region is not None
    return region


def follower_of(region: Region) -> int:
    return next(p.store_id for p in region.peers if p.store_id != region.leader_store_id)


def put(cluster: MockCluster, stubs: Stubs, key: bytes, value: bytes) -> int:
    """Commit ``key = value`` through the leader; returns the commit ts."""
    stub, ctx = stubs.route(key, txn=True)
    start = cluster.current_ts()
    pre = stub.KvPrewrite(
        kvrpcpb_pb2.PrewriteRequest(
            context=ctx,
            mutations=[kvrpcpb_pb2.Mutation(op=kvrpcpb_pb2.Put, key=key, value=value)],
            primary_lock=key,
            start_version=start,
            lock_ttl=3000,
        )
    )
    assert not pre.errors and not pre.HasField("region_error")
    commit = cluster.current_ts()
    resp = stub.KvCommit(
        kvrpcpb_pb2.CommitRequest(
            context=ctx, keys=[key], start_version=start, commit_version=commit
        )
    )
    assert not resp.HasField("error") and not resp.HasField("region_error")
    return commit


def prewrite(cluster: MockCluster, stubs: Stubs, key: bytes) -> int:
    stub, ctx = stubs.route(key, txn=True)
    start = cluster.current_ts()
    resp = stub.KvPrewrite(
        kvrpcpb_pb2.PrewriteRequest(
            context=ctx,
            mutations=[kvrpcpb_pb2.Mutation(op=kvrpcpb_pb2.Put, key=key, value=b"locked")],
            primary_lock=key,
            start_version=start,
            lock_ttl=3000,
        )
    )
    assert not resp.errors
    return start


def rollback(stubs: Stubs, key: bytes, start: int) -> None:
    stub, ctx = stubs.route(key, txn=True)
    stub.KvBatchRollback(
        kvrpcpb_pb2.BatchRollbackRequest(context=ctx, start_version=start, keys=[key])
    )


def stale_get(
    stubs: Stubs, region: Region, store_id: int, key: bytes, ts: int, *, stale: bool = True
) -> kvrpcpb_pb2.GetResponse:
    ctx = context_for(region, store_id=store_id)
    if stale:
        ctx.stale_read = True
    else:
        ctx.replica_read = True
    resp: kvrpcpb_pb2.GetResponse = stubs.tikv(store_id).KvGet(
        kvrpcpb_pb2.GetRequest(context=ctx, key=key, version=ts)
    )
    return resp


def test_follower_serves_stale_reads_as_of_the_read_ts(cluster: MockCluster, stubs: Stubs) -> None:
    c1 = put(cluster, stubs, b"a1", b"v1")
    cluster.clock.advance(1000)
    c2 = put(cluster, stubs, b"a1", b"v2")
    cluster.clock.advance(1000)
    region = region_of(cluster, b"a1")
    follower = follower_of(region)
    before = cluster.counters.count("KvGet", follower)
    assert stale_get(stubs, region, follower, b"a1", c1).value == b"v1"
    assert stale_get(stubs, region, follower, b"a1", c2).value == b"v2"
    assert stale_get(stubs, region, follower, b"a1", c1 - 1).not_found
    assert cluster.counters.count("KvGet", follower) == before + 3
    ctx = cluster.counters.last_context("KvGet", follower)
    assert ctx is not None and ctx.stale_read


def test_follower_behind_answers_data_is_not_ready(cluster: MockCluster, stubs: Stubs) -> None:
    put(cluster, stubs, b"a2", b"old")
    cluster.clock.advance(1000)
    region = region_of(cluster, b"a2")
    follower = follower_of(region)
    held = cluster.hold_safe_ts(follower)
    assert held == cluster.clock.now_ms() << LOGICAL_BITS
    cluster.clock.advance(1000)
    c2 = put(cluster, stubs, b"a2", b"new")
    assert c2 > held
    resp = stale_get(stubs, region, follower, b"a2", c2)
    assert resp.HasField("region_error")
    dnr = resp.region_error.data_is_not_ready
    assert resp.region_error.HasField("data_is_not_ready")
    assert dnr.region_id == region.id
    assert dnr.peer_id == region.peer_on(follower).id  # type: ignore[union-attr]
    assert dnr.safe_ts == held
    # At or below the safe ts the same follower serves.
    assert stale_get(stubs, region, follower, b"a2", held).value == b"old"
    # A replica read (read index) sees the latest data whatever the safe ts.
    assert stale_get(stubs, region, follower, b"a2", c2, stale=False).value == b"new"
    # Releasing lets it catch up with the clock.
    cluster.release_safe_ts(follower)
    cluster.clock.advance(1)
    assert stale_get(stubs, region, follower, b"a2", c2).value == b"new"


def test_leader_serves_stale_reads_above_its_safe_ts(cluster: MockCluster, stubs: Stubs) -> None:
    region = region_of(cluster, b"a3")
    leader = region.leader_store_id
    cluster.hold_safe_ts(leader)
    cluster.clock.advance(1000)
    commit = put(cluster, stubs, b"a3", b"fresh")
    resp = stale_get(stubs, region, leader, b"a3", commit)
    assert not resp.HasField("region_error")
    assert resp.value == b"fresh"


def test_lag_trails_the_clock(cluster: MockCluster, stubs: Stubs) -> None:
    store = cluster.stores()[0].id
    cluster.clock.advance(10)
    cluster.set_safe_ts_lag(store, 3000)
    assert cluster.safe_ts(store) <= (cluster.clock.now_ms() - 3000) << LOGICAL_BITS
    cluster.clock.advance(5000)
    assert cluster.safe_ts(store) == (cluster.clock.now_ms() - 3000) << LOGICAL_BITS
    other = cluster.stores()[1].id
    assert cluster.safe_ts(other) == cluster.clock.now_ms() << LOGICAL_BITS


def test_safe_ts_never_goes_back(cluster: MockCluster, stubs: Stubs) -> None:
    store = cluster.stores()[0].id
    cluster.clock.advance(10)
    published = cluster.safe_ts(store)
    cluster.set_safe_ts(store, published - (5000 << LOGICAL_BITS))
    assert cluster.safe_ts(store) == published
    cluster.clock.advance(1000)
    assert cluster.safe_ts(store) == published  # pinned: no longer advancing
    cluster.release_safe_ts(store)
    assert cluster.safe_ts(store) == cluster.clock.now_ms() << LOGICAL_BITS


def test_locks_hold_back_only_their_region(cluster: MockCluster, stubs: Stubs) -> None:
    left = region_of(cluster, b"a4")
    right = region_of(cluster, b"z4")
    assert left.id != right.id
    cluster.clock.advance(10)
    lock_ts = prewrite(cluster, stubs, b"a4")
    try:
        cluster.clock.advance(1000)
        now_ts = cluster.current_ts()
        follower = follower_of(left)
        resp = stale_get(stubs, left, follower, b"a4", now_ts)
        assert resp.region_error.data_is_not_ready.safe_ts == lock_ts
        # The other region is not held back by that lock.
        commit = put(cluster, stubs, b"z4", b"right")
        cluster.clock.advance(1)
        assert stale_get(stubs, right, follower_of(right), b"z4", commit).value == b"right"
        # GetStoreSafeTS: the minimum over the store's regions, or over a key range.
        tikv = stubs.tikv(follower)
        whole = tikv.GetStoreSafeTS(kvrpcpb_pb2.StoreSafeTSRequest()).safe_ts
        assert whole == lock_ts
        right_only = kvrpcpb_pb2.StoreSafeTSRequest(
            key_range=kvrpcpb_pb2.KeyRange(start_key=encoded(b"m"))
        )
        assert tikv.GetStoreSafeTS(right_only).safe_ts > lock_ts
    finally:
        rollback(stubs, b"a4", lock_ts)
    cluster.clock.advance(1)
    assert cluster.safe_ts(follower_of(left)) == cluster.clock.now_ms() << LOGICAL_BITS


def test_advancing_raises_max_ts(cluster: MockCluster, stubs: Stubs) -> None:
    # An async-commit / 1PC commit ts must land above any published safe ts.
    cluster.clock.advance(1000)
    safe = cluster.safe_ts(cluster.stores()[0].id)
    assert cluster.engine.max_ts >= safe


def test_raw_stale_reads_carry_no_ts(cluster: MockCluster, stubs: Stubs) -> None:
    region = cluster.region_by_key(b"raw-key")
    assert region is not None
    follower = follower_of(region)
    cluster.hold_safe_ts(follower)
    ctx = context_for(region, store_id=follower)
    ctx.stale_read = True
    resp = stubs.tikv(follower).RawGet(kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"raw-key"))
    assert not resp.HasField("region_error")


def test_writes_with_stale_read_still_need_the_leader(cluster: MockCluster, stubs: Stubs) -> None:
    region = region_of(cluster, b"a5")
    follower = follower_of(region)
    ctx = context_for(region, store_id=follower)
    ctx.stale_read = True
    resp = stubs.tikv(follower).KvPrewrite(
        kvrpcpb_pb2.PrewriteRequest(
            context=ctx,
            mutations=[kvrpcpb_pb2.Mutation(op=kvrpcpb_pb2.Put, key=b"a5", value=b"x")],
            primary_lock=b"a5",
            start_version=cluster.current_ts(),
        )
    )
    assert resp.region_error.HasField("not_leader")


def test_control_api_rejects_unknown_stores(cluster: MockCluster, stubs: Stubs) -> None:
    from tikv_mockstore.cluster import ClusterError

    with pytest.raises(ClusterError):
        cluster.hold_safe_ts(999)
    with pytest.raises(ValueError, match="lag_ms"):
        cluster.set_safe_ts_lag(cluster.stores()[0].id, -1)


def test_learner_peers_serve_reads_and_never_lead() -> None:
    from tikv_mockstore.cluster import ClusterError

    with MockCluster(stores=4) as mock, Stubs(mock) as stubs:
        region = mock.regions()[0]
        learner_store = next(
            p.store_id for p in region.peers if p.store_id != region.leader_store_id
        )
        mock.remove_peer(region.id, learner_store)
        region = mock.add_peer(region.id, learner_store, learner=True)
        learner = region.peer_on(learner_store)
        assert learner is not None and learner.learner
        # PD reports the role.
        resp = stubs.pd().GetRegionByID(
            pdpb_pb2.GetRegionByIDRequest(header=stubs.header(), region_id=region.id)
        )
        roles = {p.store_id: p.role for p in resp.region.peers}
        assert roles[learner_store] == metapb_pb2.Learner
        assert sum(1 for r in roles.values() if r == metapb_pb2.Voter) == 3
        # A learner never leads: not by transfer, not by election.
        with pytest.raises(ClusterError, match="learner"):
            mock.transfer_leader(region.id, learner_store)
        mock.stop_store(region.leader_store_id)
        moved = mock.region(region.id)
        assert moved is not None and moved.leader_store_id != learner_store
        # It keeps its role across a split.
        for piece in mock.split([b"k"]):
            p = piece.peer_on(learner_store)
            assert p is not None and p.learner
        # And serves replica reads.
        left = mock.region_by_key(b"a")
        assert left is not None
        ctx = context_for(left, store_id=learner_store)
        ctx.replica_read = True
        got = stubs.tikv(learner_store).RawGet(kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"a"))
        assert not got.HasField("region_error")


def test_store_labels_are_reported_by_pd(cluster: MockCluster, stubs: Stubs) -> None:
    store = cluster.stores()[0].id
    cluster.set_store_labels(store, {"zone": "z1", "host": "h1"})
    resp = stubs.pd().GetStore(pdpb_pb2.GetStoreRequest(header=stubs.header(), store_id=store))
    assert {(lb.key, lb.value) for lb in resp.store.labels} == {("zone", "z1"), ("host", "h1")}
    cluster.set_store_labels(store, {})
    resp = stubs.pd().GetStore(pdpb_pb2.GetStoreRequest(header=stubs.header(), store_id=store))
    assert not resp.store.labels
