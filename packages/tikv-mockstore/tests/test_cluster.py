"""Cluster state: regions, epochs, leaders, TSO, GC safepoints, keyspaces (no network)."""

from __future__ import annotations

import itertools
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tikv_mockstore._codec import encode_bytes
from tikv_mockstore.clock import Clock
from tikv_mockstore.cluster import Cluster, ClusterError, StoreState


def make(stores: int = 3) -> Cluster:
    c = Cluster(clock=Clock(), cluster_id=42)
    for i in range(stores):
        c.add_store(f"127.0.0.1:{1000 + i}")
    c.bootstrap()
    return c


def test_bootstrap_one_region_with_a_peer_per_store() -> None:
    c = make(3)
    (region,) = c.regions()
    assert (region.start_key, region.end_key) == (b"", b"")
    assert sorted(p.store_id for p in region.peers) == [1, 2, 3]
    assert region.leader_store_id == 1
    assert (region.conf_ver, region.version) == (1, 1)
    assert len({p.id for p in region.peers}) == 3


def test_split_is_right_derived_and_bumps_version_by_key_count() -> None:
    c = make()
    (orig,) = c.regions()
    pieces = c.split([b"m", b"f"])
    assert [(r.start_key, r.end_key) for r in pieces] == [(b"", b"f"), (b"f", b"m"), (b"m", b"")]
    # The original id keeps the rightmost piece (raftstore right-derive-when-split).
    assert pieces[-1].id == orig.id
    assert {r.version for r in pieces} == {3}
    assert {r.conf_ver for r in pieces} == {1}
    assert c.region_by_key(b"g") == pieces[1]
    assert c.region_by_key(b"") == pieces[0]
    assert c.region_by_key(b"zzz") == pieces[2]


def test_split_txn_encodes_keys_and_skips_existing_boundaries() -> None:
    c = make()
    c.split([b"k"], txn=True)
    assert c.split([b"k"], txn=True) == []
    assert [r.start_key for r in c.regions()] == [b"", encode_bytes(b"k")]


def test_split_rejects_non_bytes() -> None:
    with pytest.raises(TypeError, match="bytes"):
        make().split(["a"])  # type: ignore[list-item]


def test_prev_region_and_scan() -> None:
    c = make()
    a, b, d = c.split([b"b", b"d"])
    assert c.prev_region(b"c") == a
    assert c.prev_region(b"a") is None
    assert c.scan_regions(b"a", b"", 0) == [a, b, d]
    assert c.scan_regions(b"c", b"d", 0) == [b]
    assert c.scan_regions(b"c", b"e", 0) == [b, d]
    assert c.scan_regions(b"", b"", 2) == [a, b]


def test_merge_keeps_target_with_max_version_plus_one() -> None:
    c = make()
    left, right = c.split([b"m"])
    left = c.split([b"c"])[0]  # bump the left side's version
    mid = c.region_by_key(b"d")
    assert mid is not None
    merged = c.merge(mid.id, right.id)
    assert merged.id == right.id
    assert (merged.start_key, merged.end_key) == (b"c", b"")
    assert merged.version == max(mid.version, right.version) + 1
    assert c.region_by_id(mid.id) is None
    with pytest.raises(ClusterError, match="not adjacent"):
        c.merge(left.id, c.split([b"x"])[-1].id)


def test_leader_transfer_keeps_epoch_conf_change_bumps_conf_ver() -> None:
    c = make()
    (r,) = c.regions()
    moved = c.transfer_leader(r.id, 2)
    assert moved.leader_store_id == 2
    assert (moved.conf_ver, moved.version) == (r.conf_ver, r.version)
    removed = c.remove_peer(r.id, 2)
    assert removed.conf_ver == r.conf_ver + 1
    assert removed.leader_store_id != 2
    assert removed.peer_on(2) is None
    added = c.add_peer(r.id, 2)
    assert added.conf_ver == r.conf_ver + 2
    with pytest.raises(ClusterError):
        c.transfer_leader(r.id, 99)


def test_epoch_siblings_walk_left() -> None:
    c = make()
    (orig,) = c.regions()
    c.split([b"m"])
    c.split([b"f"])  # splits the left piece; orig keeps [m, "")
    cur = c.region_by_id(orig.id)
    assert cur is not None
    sibs = c.siblings_for_epoch_error(cur, 1)
    # One version behind, but the left neighbour is newer still (it split again), so TiKV keeps
    # collecting: both pieces left of "m" come back, nearest first.
    assert [r.end_key for r in sibs] == [b"m", b"f"]
    assert c.siblings_for_epoch_error(cur, 0) == sibs
    assert c.siblings_for_epoch_error(cur, cur.version) == []


def test_remove_store_makes_tombstone() -> None:
    c = make()
    c.remove_store(3)
    store = c.store(3)
    assert store is not None
    assert store.state is StoreState.TOMBSTONE
    assert all(r.peer_on(3) is None for r in c.regions())
    with pytest.raises(ClusterError, match="tombstone"):
        c.set_store_state(3, StoreState.UP)


def test_tso_count_semantics_and_monotonic() -> None:
    c = make()
    c.clock.freeze()
    p1, l1 = c.tso(5)
    p2, l2 = c.tso(3)
    assert (p2, l2) == (p1, l1 + 3)
    c.clock.set(c.clock.now_ms() - 10_000)  # the clock going back never moves TSO back
    p3, l3 = c.tso(1)
    assert (p3, l3) > (p2, l2)
    with pytest.raises(ValueError, match="positive"):
        c.tso(0)


def test_tso_logical_overflow_moves_physical() -> None:
    c = make()
    c.clock.freeze()
    p1, _ = c.tso(200_000)
    p2, l2 = c.tso(100_000)
    assert p2 == p1 + 1
    assert l2 == 100_000


def test_tso_unique_across_threads() -> None:
    c = make()
    seen: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        got = []
        for _ in range(500):
            p, lg = c.tso(2)
            got += [p << 18 | lg, p << 18 | (lg - 1)]
        with lock:
            seen.extend(got)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == len(set(seen)) == 4000


def test_gc_safe_point_never_moves_back_and_is_bounded_by_services() -> None:
    c = make()
    assert c.update_gc_safe_point(100) == 100
    assert c.update_gc_safe_point(50) == 100
    smallest = c.update_service_safe_point("br", 60, 150)
    assert (smallest.service_id, smallest.safe_point) == ("br", 150)
    assert c.update_gc_safe_point(300) == 150
    # A safepoint below the current minimum is not accepted.
    assert c.update_service_safe_point("cdc", 60, 120).safe_point == 150
    # TTL expiry (by the cluster clock) lifts the bound.
    c.clock.advance(61_000)
    assert c.update_gc_safe_point(300) == 300
    assert c.update_service_safe_point("br", 0, 0).service_id == "gc_worker"


def test_keyspaces() -> None:
    c = make()
    default = c.keyspace("DEFAULT")
    assert default is not None
    assert default.id == 0
    ks = c.create_keyspace("app")
    assert ks.id == 1
    assert c.keyspace_by_id(1) == ks
    starts = {r.start_key for r in c.regions()}
    assert encode_bytes(b"r\x00\x00\x01") in starts
    assert encode_bytes(b"x\x00\x00\x02") in starts
    with pytest.raises(ClusterError, match="exists"):
        c.create_keyspace("app")
    with pytest.raises(ValueError, match="name"):
        c.create_keyspace("")


def test_alloc_id_returns_end_of_range() -> None:
    c = make()
    first = c.alloc_id()
    assert c.alloc_id(5) == first + 5


def test_bad_api_version() -> None:
    with pytest.raises(ValueError, match="api_version"):
        Cluster(api_version="V3")
    with pytest.raises(ValueError, match="cluster_id"):
        Cluster(cluster_id=0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("split"), st.lists(st.binary(min_size=1, max_size=3), max_size=4)),
            st.tuples(st.just("merge"), st.integers(min_value=0, max_value=20)),
        ),
        max_size=25,
    )
)
def test_regions_always_tile_the_key_space(ops: list[tuple[str, object]]) -> None:
    c = make(2)
    versions: dict[int, int] = {}
    for op, arg in ops:
        if op == "split":
            assert isinstance(arg, list)
            c.split(arg)
        else:
            assert isinstance(arg, int)
            regions = c.regions()
            if len(regions) >= 2:
                i = arg % (len(regions) - 1)
                c.merge(regions[i].id, regions[i + 1].id)
        regions = c.regions()
        assert regions[0].start_key == b""
        assert regions[-1].end_key == b""
        for a, b in itertools.pairwise(regions):
            assert a.end_key == b.start_key
            assert a.start_key < a.end_key
        for r in regions:
            assert r.version >= versions.get(r.id, 0)  # epochs never go back
            versions[r.id] = r.version
            assert c.region_by_key(r.start_key) == r
