"""Peers PD reports down get no requests (client-go TestTiKVRecoveredFromDown).

client-go ``newRegion`` leaves a down peer out of the cached region and marks the region
to expire after one TTL (``needExpireAfterTTL``), so once PD stops reporting the peer
down, a reload brings it back and reads reach it again.
"""

from __future__ import annotations

import random
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tikv_pd.codec import CodecV1
from tikv_pd.locator import RegionLocator
from tikv_pd.pd_client import PDClient
from tikv_pd.region_cache import Peer, Region, RegionCache, RegionEpoch
from tikv_pd.request import RequestOptions, RequestSender
from tikv_proto import kvrpcpb_pb2

sys.path.insert(0, str(Path(__file__).parent))
from _pd_fake import FakePDCluster
from test_request_state_table import F2, F3, Cluster, Locator, Sleeps, Transport
from tikv_pd.backoff import Backoffer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def fake() -> AsyncIterator[FakePDCluster]:
    async with FakePDCluster(members=1) as cluster:
        for s in (1, 2, 3):
            cluster.add_store(s, f"127.0.0.1:{20160 + s}")
        yield cluster


async def test_the_locator_leaves_down_peers_out_until_pd_clears_them(
    fake: FakePDCluster,
) -> None:
    fake.set_regions([], stores=[1, 2, 3])
    fake.state.regions[0].down_stores = [2]
    clock = Clock()
    pd = await PDClient.connect(fake.endpoints)
    try:
        cache = RegionCache(ttl=600, ttl_jitter=0, clock=clock)
        locator = RegionLocator(pd, codec=CodecV1("raw"), cache=cache)
        region = await locator.locate_key(b"k")
        assert sorted(p.store_id for p in region.peers) == [1, 3]
        assert [p.store_id for p in region.down_peers] == [2]
        # Used continuously, it still expires after one TTL (no sliding) ...
        clock.now += 599
        assert (await locator.locate_key(b"k")) is region
        fake.state.regions[0].down_stores = []
        clock.now += 2
        # ... and the reload brings the recovered peer back.
        region = await locator.locate_key(b"k")
        assert sorted(p.store_id for p in region.peers) == [1, 2, 3]
        assert region.down_peers == ()
        # A region without down peers slides its TTL on every hit.
        clock.now += 599
        assert (await locator.locate_key(b"k")) is region
        clock.now += 599
        assert (await locator.locate_key(b"k")) is region
        await locator.close()
    finally:
        await pd.close()


async def test_reads_avoid_a_down_peer_and_reach_it_after_recovery() -> None:
    truth = Region(1, b"", b"", RegionEpoch(1, 1), (Peer(11, 1), F2, F3), Peer(11, 1))
    cluster = Cluster(truth)
    locator = Locator(cluster)
    clock = Clock()
    locator.cache = RegionCache(ttl=600, ttl_jitter=0, clock=clock)
    sender = RequestSender(locator, Transport(cluster))
    # PD reports the peer on store 3 down: the cached region leaves it out.
    cluster.region = Region(
        1, b"", b"", RegionEpoch(1, 1), (Peer(11, 1), F3), Peer(11, 1), down_peers=(F2,)
    )
    options = RequestOptions(replica_read="mixed")
    for seed in range(20):
        sender.rng = random.Random(seed)
        bo = Backoffer(2_000, sleep=Sleeps())
        await sender.call_key(
            "Get", b"k", kvrpcpb_pb2.GetRequest(key=b"k", version=1), bo=bo, options=options
        )
    assert 3 not in {store for store, _, _ in cluster.sent}
    # PD no longer reports it; after the TTL the region is reloaded with the peer.
    cluster.region = truth
    clock.now += 601
    served = set()
    for seed in range(20):
        sender.rng = random.Random(seed)
        bo = Backoffer(2_000, sleep=Sleeps())
        resp = await sender.call_key(
            "Get", b"k", kvrpcpb_pb2.GetRequest(key=b"k", version=1), bo=bo, options=options
        )
        served.add(resp.value.decode())
    assert "3-follower" in served
