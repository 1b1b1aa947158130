"""The GC worker: versions below PD's GC safe point are collected without KvGC."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tikv_mockstore import MockCluster
from tikv_mockstore.mvcc import Mutation, MvccEngine, WriteType
from tikv_mockstore.testing import Stubs
from tikv_proto import pdpb_pb2


def _put(engine: MvccEngine, key: bytes, value: bytes, start: int, commit: int) -> None:
    assert engine.prewrite([Mutation.put(key, value)], key, start, 3000).locks == ()
    engine.commit([key], start, commit)


def _versions(engine: MvccEngine, key: bytes) -> list[tuple[int, WriteType]]:
    return [(ts, w.write_type) for ts, w in engine.mvcc_by_key(key).writes]


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=1) as c:
        yield c


def test_advancing_pd_safe_point_collects_old_versions(cluster: MockCluster) -> None:
    engine = cluster.engine
    for start, commit in ((10, 11), (20, 21), (30, 31)):
        _put(engine, b"k", b"v%d" % start, start, commit)
    engine.prewrite([Mutation.delete(b"gone")], b"gone", 12, 3000)
    engine.commit([b"gone"], 12, 13)
    with Stubs(cluster) as stubs:
        pd, header = stubs.pd(), stubs.header()
        resp = pd.UpdateGCSafePoint(pdpb_pb2.UpdateGCSafePointRequest(header=header, safe_point=25))
        assert resp.new_safe_point == 25
    assert cluster.wait_for_gc(25)
    # The newest version at or below the safe point stays; older ones and deletes go.
    assert _versions(engine, b"k") == [(31, WriteType.PUT), (21, WriteType.PUT)]
    assert _versions(engine, b"gone") == []
    assert engine.get(b"k", 25) == b"v20"


def test_service_safe_point_holds_the_collection_back(cluster: MockCluster) -> None:
    engine = cluster.engine
    for start, commit in ((10, 11), (20, 21), (30, 31)):
        _put(engine, b"k", b"v%d" % start, start, commit)
    cluster.state.update_service_safe_point("backup", 3600, 15)
    assert cluster.state.update_gc_safe_point(40) == 15
    assert cluster.wait_for_gc(15)
    assert _versions(engine, b"k") == [
        (31, WriteType.PUT),
        (21, WriteType.PUT),
        (11, WriteType.PUT),
    ]
    assert not cluster.wait_for_gc(40, timeout=0.05)  # PD never published 40


def test_keyspace_level_gc_keeps_to_its_range() -> None:
    with MockCluster(stores=1, api_version=2) as cluster:
        engine = cluster.engine
        ks = cluster.create_keyspace("gc-worker")
        own = b"x" + ks.id.to_bytes(3, "big") + b"k"
        other = b"x\x00\x00\x00k"  # the DEFAULT keyspace's range
        for key in (own, other):
            for start, commit in ((10, 11), (20, 21)):
                _put(engine, key, b"v", start, commit)
        cluster.state.update_gc_safe_point(30, ks.id)
        assert cluster.wait_for_gc(30, keyspace_id=ks.id)
        assert _versions(engine, own) == [(21, WriteType.PUT)]
        assert len(_versions(engine, other)) == 2
        # The cluster-wide safe point leaves a keyspace with its own GC alone.
        for start, commit in ((40, 41), (50, 51)):
            _put(engine, own, b"v", start, commit)
        cluster.state.update_gc_safe_point(60)
        assert cluster.wait_for_gc(60)
        assert _versions(engine, other) == [(21, WriteType.PUT)]
        assert len(_versions(engine, own)) == 3
