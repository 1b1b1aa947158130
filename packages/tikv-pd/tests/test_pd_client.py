"""PDClient against an in-process fake PD cluster: discovery, lookups, failover, validation."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from tikv_pd.channels import ChannelCache, parse_endpoint
from tikv_pd.config import Config
from tikv_pd.errors import ClientClosedError, PDError
from tikv_pd.pd_client import PDClient
from tikv_pd.region_cache import Store, StoreState
from tikv_proto import keyspacepb_pb2

sys.path.insert(0, str(Path(__file__).parent))
from _pd_fake import FakePDCluster

FAST = Config(pd_timeout=1.0)


@pytest.fixture
async def pd3() -> AsyncIterator[FakePDCluster]:
    async with FakePDCluster(members=3) as cluster:
        cluster.set_regions([b"g", b"p"], stores=[1, 2, 3])
        for s in (1, 2, 3):
            cluster.add_store(s, f"127.0.0.1:{20160 + s}")
        yield cluster


async def wait_until(cond: Callable[[], bool], limit: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


# -- endpoints ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("127.0.0.1:2379", "127.0.0.1:2379"),
        ("http://127.0.0.1:2379", "127.0.0.1:2379"),
        ("https://pd.example:2379/", "pd.example:2379"),
        ("[::1]:2379", "[::1]:2379"),
        ("http://[::1]:2379", "[::1]:2379"),
    ],
)
def test_parse_endpoint_accepts(given: str, expected: str) -> None:
    assert parse_endpoint(given) == expected


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ("", "empty"),
        ("127.0.0.1", "no port"),
        ("grpc://h:1", "scheme"),
        ("http://h:1/path", "path"),
        ("h:99999", "port"),
        (":2379", "no host"),
    ],
)
def test_parse_endpoint_rejects(given: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_endpoint(given)


def test_parse_endpoint_type() -> None:
    with pytest.raises(TypeError):
        parse_endpoint(b"h:1")  # type: ignore[arg-type]


async def test_connect_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="not a str"):
        await PDClient.connect("127.0.0.1:1")
    with pytest.raises(ValueError, match="at least one"):
        await PDClient.connect([])
    with pytest.raises(TypeError, match="Config"):
        await PDClient.connect(["127.0.0.1:1"], config=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="connect_timeout"):
        await PDClient.connect(["127.0.0.1:1"], connect_timeout=0)


async def test_connect_to_nothing_fails_with_pd_error() -> None:
    with pytest.raises(PDError, match="no PD endpoint answered"):
        await PDClient.connect(["127.0.0.1:1"], config=FAST, connect_timeout=0.3)


async def test_channel_cache_closed() -> None:
    cache = ChannelCache()
    cache.get("127.0.0.1:1")
    assert cache.targets() == ["127.0.0.1:1"]
    await cache.close()
    with pytest.raises(ClientClosedError):
        cache.get("127.0.0.1:1")


# -- discovery ---------------------------------------------------------------------


async def test_discovers_cluster_and_leader_from_a_follower(pd3: FakePDCluster) -> None:
    pd3.move_leader(2)
    # Only a follower's address is given: discovery must find the leader.
    async with await PDClient.connect([pd3.endpoints[0]], config=FAST) as client:
        assert client.cluster_id == 7001
        assert client.leader == pd3.endpoints[2]
        assert set(client.targets) == set(pd3.endpoints)
        assert [m.name for m in client.members] == ["pd0", "pd1", "pd2"]
        region = await client.get_region(b"a")
        assert region is not None and region.id == 10
        # Every request after discovery carries the cluster id.
        assert pd3.state.headers_seen and set(pd3.state.headers_seen) == {7001}


async def test_connect_accepts_urls_and_skips_dead_seeds(pd3: FakePDCluster) -> None:
    endpoints = ["127.0.0.1:1", "http://" + pd3.endpoints[1]]
    async with await PDClient.connect(endpoints, config=FAST) as client:
        assert client.leader == pd3.endpoints[0]


async def test_cluster_id_mismatch_between_seeds_is_refused() -> None:
    async with FakePDCluster(1) as a, FakePDCluster(1) as b:
        b.state.cluster_id = 9999
        with pytest.raises(PDError, match="different clusters"):
            await PDClient.connect([a.endpoints[0], b.endpoints[0]], config=FAST)


# -- lookups -----------------------------------------------------------------------


async def test_region_lookups(pd3: FakePDCluster) -> None:
    async with await PDClient.connect(pd3.endpoints, config=FAST) as client:
        r = await client.get_region(b"h")
        assert r is not None
        assert (r.id, r.start_key, r.end_key) == (11, b"g", b"p")
        assert r.leader is not None and r.leader.store_id == 2
        assert len(r.meta.peers) == 3
        prev = await client.get_prev_region(b"h")
        assert prev is not None and prev.id == 10
        assert await client.get_prev_region(b"a") is None
        by_id = await client.get_region_by_id(12)
        assert by_id is not None and by_id.start_key == b"p" and by_id.end_key == b""
        assert await client.get_region_by_id(999) is None
        scanned = await client.scan_regions(b"b", b"", 10)
        assert [x.id for x in scanned] == [10, 11, 12]
        assert [x.id for x in await client.scan_regions(b"h", b"q", 1)] == [11]
        batch = await client.batch_scan_regions([(b"a", b"b"), (b"q", b"")], 10)
        assert [x.id for x in batch] == [10, 12]


async def test_lookup_argument_validation(pd3: FakePDCluster) -> None:
    async with await PDClient.connect(pd3.endpoints, config=FAST) as client:
        with pytest.raises(TypeError, match="bytes"):
            await client.get_region("a")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="region_id"):
            await client.get_region_by_id(0)
        with pytest.raises(ValueError, match="limit"):
            await client.scan_regions(b"a", b"b", 0)
        with pytest.raises(ValueError, match="start_key must be < end_key"):
            await client.scan_regions(b"b", b"a", 1)
        with pytest.raises(ValueError, match="overlaps"):
            await client.batch_scan_regions([(b"a", b"c"), (b"b", b"d")], 5)
        with pytest.raises(ValueError, match="overlaps"):
            await client.batch_scan_regions([(b"a", b""), (b"b", b"d")], 5)
        with pytest.raises(TypeError):
            await client.batch_scan_regions(b"ab", 5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="service_id"):
            await client.update_service_gc_safe_point("", 10, 1)
        with pytest.raises(ValueError, match="safe_point"):
            await client.update_gc_safe_point(-1)
        with pytest.raises(ValueError, match="keyspace name"):
            await client.load_keyspace("")


async def test_stores_safepoints_ids_and_keyspaces(pd3: FakePDCluster) -> None:
    pd3.state.keyspaces["ks1"] = keyspacepb_pb2.KeyspaceMeta(
        id=42, name="ks1", state=keyspacepb_pb2.ENABLED, config={"k": "v"}
    )
    async with await PDClient.connect(pd3.endpoints, config=FAST) as client:
        store = await client.get_store(2)
        assert isinstance(store, Store)
        assert (store.id, store.address, store.state) == (2, "127.0.0.1:20162", StoreState.UP)
        assert sorted(s.id for s in await client.get_all_stores()) == [1, 2, 3]
        with pytest.raises(PDError) as info:
            await client.get_store(77)
        assert info.value.error_type == "UNKNOWN"
        assert "not found" in str(info.value)

        assert await client.get_gc_safe_point() == 0
        assert await client.update_gc_safe_point(100) == 100
        assert await client.update_gc_safe_point(50) == 100  # never moves back
        sp = await client.update_service_gc_safe_point("br", 60, 80)
        assert (sp.service_id, sp.ttl, sp.min_safe_point) == (b"br", 60, 80)

        first, second = await client.alloc_id(), await client.alloc_id()
        assert second > first > 0
        min_ts = await client.get_min_ts()
        assert min_ts >> 18 > 0
        info_ = await client.get_cluster_info()
        assert info_.service_modes == ("PD_SVC_MODE",)

        ks = await client.load_keyspace("ks1")
        assert (ks.id, ks.name, ks.state, ks.config) == (42, "ks1", "ENABLED", {"k": "v"})
        with pytest.raises(PDError) as missing:
            await client.load_keyspace("nope")
        assert missing.value.error_type == "ENTRY_NOT_FOUND"


# -- failover and errors ------------------------------------------------------------


async def test_follows_leader_move_on_not_leader(pd3: FakePDCluster) -> None:
    async with await PDClient.connect(pd3.endpoints, config=FAST) as client:
        assert client.leader == pd3.endpoints[0]
        pd3.move_leader(1)
        region = await client.get_region(b"z")
        assert region is not None and region.id == 12
        assert client.leader == pd3.endpoints[1]


async def test_fails_over_when_leader_dies(pd3: FakePDCluster) -> None:
    async with await PDClient.connect(pd3.endpoints, config=FAST) as client:
        await pd3.stop_member(0)
        pd3.move_leader(2)
        assert await client.alloc_id() > 0
        assert client.leader == pd3.endpoints[2]


async def test_transient_unavailable_is_retried_with_backoff(pd3: FakePDCluster) -> None:
    async with await PDClient.connect(pd3.endpoints, config=FAST) as client:
        pd3.state.fail["GetGCSafePoint"] = [grpc.StatusCode.UNAVAILABLE]
        assert await client.get_gc_safe_point() == 0
        assert pd3.state.calls["GetGCSafePoint"] == 2


async def test_non_retryable_status_becomes_pd_error(pd3: FakePDCluster) -> None:
    async with await PDClient.connect(pd3.endpoints, config=FAST) as client:
        pd3.state.fail["AllocID"] = [grpc.StatusCode.INVALID_ARGUMENT]
        with pytest.raises(PDError, match="INVALID_ARGUMENT") as info:
            await client.alloc_id()
        assert isinstance(info.value.cause, grpc.aio.AioRpcError)
        assert pd3.state.calls["AllocID"] == 1


async def test_header_error_and_missing_fields_become_pd_errors(pd3: FakePDCluster) -> None:
    async with await PDClient.connect(pd3.endpoints, config=FAST) as client:
        # A response without a header is refused with a message naming the method.
        pd3.state.strip_header.add("GetGCSafePoint")
        with pytest.raises(PDError, match="GetGCSafePoint: PD response has no header"):
            await client.get_gc_safe_point()
        # A region without an epoch is refused, never half-used.
        pd3.state.regions[0].drop_epoch = True
        with pytest.raises(PDError, match="no region_epoch"):
            await client.get_region(b"a")
        # A header error carries PD's error type and message.
        pd3.state.stores.clear()
        with pytest.raises(PDError) as info:
            await client.get_store(1)
        assert info.value.error_type == "UNKNOWN"
        assert "invalid store ID 1" in str(info.value)


async def test_closed_client_refuses_calls(pd3: FakePDCluster) -> None:
    client = await PDClient.connect(pd3.endpoints, config=FAST)
    await client.close()
    await client.close()  # idempotent
    with pytest.raises(ClientClosedError):
        await client.get_region(b"a")
    with pytest.raises(ClientClosedError):
        await client.get_timestamp()


async def test_background_member_refresh_notices_leader_move(pd3: FakePDCluster) -> None:
    config = Config(pd_timeout=1.0, pd_update_member_interval=0.05)
    async with await PDClient.connect(pd3.endpoints, config=config) as client:
        before = client.member_updates
        pd3.move_leader(2)
        await wait_until(lambda: client.leader == pd3.endpoints[2])
        assert client.member_updates > before


async def test_keyspace_safepoints_and_external_timestamp(pd3: FakePDCluster) -> None:
    async with await PDClient.connect(pd3.endpoints, config=FAST) as client:
        assert await client.get_gc_safe_point_v2(7) == 0
        assert await client.update_gc_safe_point_v2(7, 90) == 90
        assert await client.update_gc_safe_point_v2(7, 10) == 90
        assert await client.get_gc_safe_point_v2(7) == 90
        assert await client.get_gc_safe_point_v2(8) == 0
        sp = await client.update_service_safe_point_v2(7, b"cdc", 30, 85)
        assert (sp.service_id, sp.ttl, sp.min_safe_point) == (b"cdc", 30, 85)
        with pytest.raises(ValueError, match="keyspace_id"):
            await client.get_gc_safe_point_v2(1 << 24)
        assert await client.get_external_timestamp() == 0
        await client.set_external_timestamp(500)
        assert await client.get_external_timestamp() == 500
        with pytest.raises(PDError, match="less than"):
            await client.set_external_timestamp(100)
