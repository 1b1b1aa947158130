"""RegionLocator against the fake PD: key spaces, single-flight, batches, stores, errors."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from tikv_pd.codec import CodecV1, KeyspaceCodec, encode_bytes
from tikv_pd.errors import ClientClosedError, RegionError, StoreUnavailableError
from tikv_pd.locator import RegionLocator
from tikv_pd.pd_client import PDClient
from tikv_pd.region_cache import Region, RegionCache, RegionEpoch
from tikv_pd.request import Locator
from tikv_proto import metapb_pb2

sys.path.insert(0, str(Path(__file__).parent))
from _pd_fake import FakePDCluster

NO_HANG = 60.0


@pytest.fixture
async def fake() -> AsyncIterator[FakePDCluster]:
    async with FakePDCluster(members=1) as cluster:
        for s in (1, 2, 3):
            cluster.add_store(s, f"127.0.0.1:{20160 + s}")
        yield cluster


@pytest.fixture
async def client(fake: FakePDCluster) -> AsyncIterator[PDClient]:
    pd = await PDClient.connect(fake.endpoints)
    try:
        yield pd
    finally:
        await pd.close()


async def poll(cond: Callable[[], bool]) -> None:
    deadline = asyncio.get_running_loop().time() + NO_HANG
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def spans(parts: list[tuple[Region, bytes, bytes]]) -> list[tuple[int, bytes, bytes]]:
    return [(r.id, s, e) for r, s, e in parts]


# -- key spaces -------------------------------------------------------------------------


async def test_raw_v1_keys_are_plain(fake: FakePDCluster, client: PDClient) -> None:
    fake.set_regions([b"g", b"p"], stores=[1, 2, 3])
    locator = RegionLocator(client, codec=CodecV1("raw"))
    a = await locator.locate_key(b"a")
    h = await locator.locate_key(b"h")
    assert (a.id, a.start_key, a.end_key) == (10, b"", b"g")
    assert (h.id, h.start_key, h.end_key) == (11, b"g", b"p")
    assert h.leader is not None and h.leader.store_id == 2
    assert fake.state.region_keys_seen == [b"a", b"h"]
    # Cached now: no more PD calls.
    assert (await locator.locate_key(b"b")).id == 10
    assert fake.state.calls["GetRegion"] == 2


async def test_txn_v1_keys_are_memcomparable_toward_pd(
    fake: FakePDCluster, client: PDClient
) -> None:
    fake.set_regions([encode_bytes(b"g"), encode_bytes(b"p")], stores=[1, 2, 3])
    locator = RegionLocator(client, codec=CodecV1("txn"))
    region = await locator.locate_key(b"h")
    assert (region.id, region.start_key, region.end_key) == (11, b"g", b"p")
    assert fake.state.region_keys_seen == [encode_bytes(b"h")]
    last = await locator.locate_key(b"zzz")
    assert (last.start_key, last.end_key) == (b"p", b"")


async def test_api_v2_keys_carry_the_keyspace_prefix(fake: FakePDCluster, client: PDClient) -> None:
    codec = KeyspaceCodec("raw", 5)
    prefix = codec.prefix
    fake.set_regions(
        [encode_bytes(prefix), encode_bytes(prefix + b"m"), encode_bytes(codec.end_key)],
        stores=[1, 2, 3],
    )
    locator = RegionLocator(client, codec=codec)
    key = codec.encode_key(b"k")
    region = await locator.locate_key(key)
    assert (region.start_key, region.end_key) == (prefix, prefix + b"m")
    assert fake.state.region_keys_seen == [encode_bytes(key)]
    parts = await locator.split_range(*codec.encode_range(b"a", b""))
    assert [(s, e) for _, s, e in parts] == [
        (prefix + b"a", prefix + b"m"),
        (prefix + b"m", codec.end_key),
    ]


# -- lookups ------------------------------------------------------------------------------


async def test_concurrent_misses_share_one_get_region(
    fake: FakePDCluster, client: PDClient
) -> None:
    fake.set_regions([b"g", b"p"], stores=[1])
    locator = RegionLocator(client, codec=CodecV1("raw"))
    regions = await asyncio.gather(*(locator.locate_key(b"x") for _ in range(50)))
    assert {r.id for r in regions} == {12}
    assert fake.state.calls["GetRegion"] == 1


async def test_locate_key_hits_skip_pd_and_expired_entries_reload(
    fake: FakePDCluster, client: PDClient
) -> None:
    fake.set_regions([b"g", b"p"], stores=[1])
    now = [0.0]
    cache = RegionCache(ttl=10.0, ttl_jitter=0.0, clock=lambda: now[0])
    locator = RegionLocator(client, codec=CodecV1("raw"), cache=cache)
    with pytest.raises(TypeError, match="bytes"):
        await locator.locate_key("a")  # type: ignore[arg-type]
    first = await locator.locate_key(b"h")
    # Hits (the fast path) return the cached object and never ask PD again.
    for key in (b"g", b"h", b"o\xff"):
        assert await locator.locate_key(key) is first
    assert fake.state.calls["GetRegion"] == 1
    with pytest.raises(TypeError, match="bytes"):
        await locator.locate_key(bytearray(b"h"))  # type: ignore[arg-type]
    # Past its TTL the entry is a miss again: the slow path reloads it from PD.
    now[0] = 100.0
    again = await locator.locate_key(b"h")
    assert again.id == first.id and again is not first
    assert fake.state.calls["GetRegion"] == 2


async def test_end_key_lookups(fake: FakePDCluster, client: PDClient) -> None:
    fake.set_regions([b"g", b"p"], stores=[1])
    locator = RegionLocator(client, codec=CodecV1("raw"))
    # b"g" starts region 11, so as an exclusive end it belongs to region 10.
    assert (await locator.locate_end_key(b"g")).id == 10
    assert fake.state.calls["GetPrevRegion"] == 1
    assert (await locator.locate_end_key(b"h")).id == 11
    # The empty end key is +infinity: the last region.
    assert (await locator.locate_end_key(b"")).id == 12
    with pytest.raises(TypeError):
        await locator.locate_end_key("g")  # type: ignore[arg-type]


async def test_missing_region_is_retried_until_pd_has_it(
    fake: FakePDCluster, client: PDClient
) -> None:
    fake.state.regions = []
    locator = RegionLocator(client, codec=CodecV1("raw"))
    task = asyncio.ensure_future(locator.locate_key(b"k"))
    await poll(lambda: fake.state.calls["GetRegion"] >= 2)
    assert not task.done()
    fake.set_regions([b"g"], stores=[1])
    region = await asyncio.wait_for(task, NO_HANG)
    assert region.id == 11


async def test_locate_region_by_id(fake: FakePDCluster, client: PDClient) -> None:
    fake.set_regions([b"g", b"p"], stores=[1])
    locator = RegionLocator(client, codec=CodecV1("raw"))
    first, second = await asyncio.gather(
        locator.locate_region_by_id(11), locator.locate_region_by_id(11)
    )
    assert first.id == second.id == 11
    assert fake.state.calls["GetRegionByID"] == 1
    assert (await locator.locate_key(b"h")).id == 11  # inserted into the cache
    assert fake.state.calls["GetRegion"] == 0
    with pytest.raises(RegionError) as info:
        await locator.locate_region_by_id(999)
    assert info.value.kind == "region_not_found" and info.value.region_id == 999
    with pytest.raises(ValueError, match="region_id"):
        await locator.locate_region_by_id(0)


async def test_group_keys_by_region_uses_one_batch_request(
    fake: FakePDCluster, client: PDClient
) -> None:
    fake.set_regions([b"g", b"p"], stores=[1, 2, 3])
    locator = RegionLocator(client, codec=CodecV1("raw"))
    keys = [b"q", b"a", b"h", b"b", b"z", b"i"]
    groups = await locator.group_keys_by_region(keys)
    assert {r.id: ks for r, ks in groups.items()} == {
        12: [b"q", b"z"],
        10: [b"a", b"b"],
        11: [b"h", b"i"],
    }
    assert [r.id for r in groups] == [12, 10, 11]  # order of first appearance
    assert fake.state.calls["BatchScanRegions"] == 1
    assert fake.state.calls["GetRegion"] == 0
    # Everything is cached now.
    again = await locator.group_keys_by_region([b"c", b"r"])
    assert sorted(r.id for r in again) == [10, 12]
    assert fake.state.calls["BatchScanRegions"] == 1


async def test_group_keys_falls_back_when_batch_scan_is_unimplemented(
    fake: FakePDCluster, client: PDClient
) -> None:
    fake.set_regions([b"g", b"p"], stores=[1])
    fake.state.fail["BatchScanRegions"] = [grpc.StatusCode.UNIMPLEMENTED]
    locator = RegionLocator(client, codec=CodecV1("raw"))
    groups = await locator.group_keys_by_region([b"a", b"h", b"z"])
    assert sorted((r.id, tuple(ks)) for r, ks in groups.items()) == [
        (10, (b"a",)),
        (11, (b"h",)),
        (12, (b"z",)),
    ]
    assert fake.state.calls["ScanRegions"] >= 1
    assert locator.pd_requests.get("BatchScanRegions") == 1
    locator.cache.clear()
    await locator.group_keys_by_region([b"b"])
    assert locator.pd_requests.get("BatchScanRegions") == 1  # not tried again


async def test_split_range_loads_with_scan_regions(fake: FakePDCluster, client: PDClient) -> None:
    fake.set_regions([b"g", b"p"], stores=[1])
    locator = RegionLocator(client, codec=CodecV1("raw"))
    parts = await locator.split_range(b"b", b"q")
    assert spans(parts) == [(10, b"b", b"g"), (11, b"g", b"p"), (12, b"p", b"q")]
    assert fake.state.calls["ScanRegions"] == 1
    assert spans(await locator.split_range(b"", b"")) == [
        (10, b"", b"g"),
        (11, b"g", b"p"),
        (12, b"p", b""),
    ]
    assert fake.state.calls["ScanRegions"] == 1
    with pytest.raises(ValueError, match="greater than"):
        await locator.split_range(b"q", b"b")


async def test_locate_regions_hands_out_windows_loaded_with_scan_regions(
    fake: FakePDCluster, client: PDClient
) -> None:
    splits = [bytes([c]) for c in range(ord("b"), ord("k"))]  # 9 splits: regions 10..19
    fake.set_regions([encode_bytes(k) for k in splits], stores=[1])
    locator = RegionLocator(client, codec=CodecV1("txn"))  # boundaries decoded from PD
    first = await locator.locate_regions(b"", limit=4)
    assert [(r.id, r.start_key, r.end_key) for r in first] == [
        (10, b"", b"b"),
        (11, b"b", b"c"),
        (12, b"c", b"d"),
        (13, b"d", b"e"),
    ]
    assert fake.state.calls["ScanRegions"] == 1
    assert fake.state.calls["GetRegion"] == 0
    # The next window starts where this one ended; a range end stops it early.
    nxt = await locator.locate_regions(first[-1].end_key, b"f5", limit=4)
    assert [r.id for r in nxt] == [14, 15]
    assert fake.state.calls["ScanRegions"] == 2
    # Cached now: the same windows again cost PD nothing.
    again = await locator.locate_regions(b"a", limit=6)
    assert [r.id for r in again] == [10, 11, 12, 13, 14, 15]
    assert fake.state.calls["ScanRegions"] == 2
    # A gap in the cache is filled by one more scan; the last region ends every walk.
    tail = await locator.locate_regions(b"e5", limit=100)
    assert [r.id for r in tail] == [14, 15, 16, 17, 18, 19]
    assert tail[-1].end_key == b""
    assert fake.state.calls["ScanRegions"] == 3
    with pytest.raises(ValueError, match="limit"):
        await locator.locate_regions(b"a", limit=0)
    with pytest.raises(ValueError, match="greater than"):
        await locator.locate_regions(b"q", b"b")
    with pytest.raises(TypeError, match="start"):
        await locator.locate_regions("a")  # type: ignore[arg-type]


# -- stores -------------------------------------------------------------------------------


async def test_store_addresses_are_cached_and_reloaded(
    fake: FakePDCluster, client: PDClient
) -> None:
    locator = RegionLocator(client, codec=CodecV1("raw"))
    assert await locator.store_address(2) == "127.0.0.1:20162"
    assert await locator.store_address(2) == "127.0.0.1:20162"
    assert fake.state.calls["GetStore"] == 1
    # The store moved: the pipeline invalidates it after StoreNotMatch.
    fake.add_store(2, "127.0.0.1:30000")
    store, changed = await locator.reload_store(2)
    assert changed and store.address == "127.0.0.1:30000"
    assert await locator.store_address(2) == "127.0.0.1:30000"
    fake.add_store(2, "127.0.0.1:30001")
    locator.invalidate_store(2)
    assert await locator.store_address(2) == "127.0.0.1:30001"
    # A tombstone is not an address to send to.
    fake.set_store_state(3, metapb_pb2.Tombstone)
    with pytest.raises(StoreUnavailableError) as info:
        await locator.store_address(3)
    assert info.value.store_id == 3


# -- corrections from region errors -------------------------------------------------------


async def test_not_leader_switches_without_reloading(fake: FakePDCluster, client: PDClient) -> None:
    fake.set_regions([b"g"], stores=[1, 2, 3])
    locator = RegionLocator(client, codec=CodecV1("raw"))
    region = await locator.locate_key(b"a")
    assert region.leader is not None and region.leader.store_id == 1
    new_leader = metapb_pb2.Peer(id=10 * 100 + 3, store_id=3)
    assert locator.on_not_leader(region, new_leader)
    moved = await locator.locate_key(b"a")
    assert moved.leader is not None and moved.leader.store_id == 3
    assert fake.state.calls["GetRegion"] == 1
    # No hint: back off (False), the cache is left alone.
    assert not locator.on_not_leader(moved, metapb_pb2.Peer())


async def test_epoch_not_match_inserts_current_regions(
    fake: FakePDCluster, client: PDClient
) -> None:
    fake.set_regions([b"m"], stores=[1])
    locator = RegionLocator(client, codec=CodecV1("raw"))
    region = await locator.locate_key(b"a")  # region 10: ["", "m")
    # TiKV split it at "f": region 10 keeps the right part, a new region 20 the left.
    epoch = metapb_pb2.RegionEpoch(conf_ver=1, version=2)
    left = metapb_pb2.Region(
        id=20,
        start_key=b"",
        end_key=b"f",
        region_epoch=epoch,
        peers=[metapb_pb2.Peer(id=2001, store_id=1)],
    )
    right = metapb_pb2.Region(
        id=10,
        start_key=b"f",
        end_key=b"m",
        region_epoch=epoch,
        peers=[metapb_pb2.Peer(id=1001, store_id=1)],
    )
    assert locator.on_epoch_not_match(region, [left, right], store_id=1)
    a, g = await locator.locate_key(b"a"), await locator.locate_key(b"g")
    assert (a.id, a.end_key, a.epoch) == (20, b"f", RegionEpoch(1, 2))
    assert (g.id, g.start_key) == (10, b"f")
    assert a.leader is not None and a.leader.store_id == 1
    assert fake.state.calls["GetRegion"] == 1


async def test_invalidate_and_send_fail_force_a_reload(
    fake: FakePDCluster, client: PDClient
) -> None:
    fake.set_regions([b"m"], stores=[1])
    locator = RegionLocator(client, codec=CodecV1("raw"))
    region = await locator.locate_key(b"a")
    locator.on_send_fail(region, 1)
    await locator.locate_key(b"a")
    locator.invalidate(region.id)
    await locator.locate_key(b"a")
    assert fake.state.calls["GetRegion"] == 3


# -- lifecycle --------------------------------------------------------------------------


async def test_sweeper_drops_expired_regions_and_close_stops_it(
    fake: FakePDCluster, client: PDClient
) -> None:
    fake.set_regions([b"g", b"p"], stores=[1])
    cache = RegionCache(ttl=0.01, ttl_jitter=0.0)
    locator = RegionLocator(client, codec=CodecV1("raw"), cache=cache, sweep_interval=0.01)
    await locator.split_range(b"", b"")
    assert len(cache) == 3
    locator.start()
    await poll(lambda: len(cache) == 0)
    await locator.close()
    with pytest.raises(ClientClosedError):
        await locator.locate_key(b"a")


async def test_satisfies_the_request_pipeline_locator_protocol(client: PDClient) -> None:
    # Checked by mypy: RegionLocator must be usable wherever request.Locator is expected.
    locator: Locator = RegionLocator(client, codec=CodecV1("raw"))
    assert callable(locator.locate_key)


def test_constructor_validation() -> None:
    with pytest.raises(TypeError, match="PDClient"):
        RegionLocator(object(), codec=CodecV1("raw"))  # type: ignore[arg-type]
