"""The range-task runner on the embedded cluster: real regions, splits, store faults.

Handlers here send straight to the region the runner gave them (raising the server's
region error, as a handler that does not use the pipeline does), or through the
pipeline. Every test checks what was covered: each key exactly once, nothing lost.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

mockstore = pytest.importorskip("tikv_mockstore")

from tikv_pd.backoff import Backoffer  # noqa: E402
from tikv_pd.codec import CodecV1  # noqa: E402
from tikv_pd.config import Config  # noqa: E402
from tikv_pd.errors import TiKVError  # noqa: E402
from tikv_pd.locator import RegionLocator  # noqa: E402
from tikv_pd.pd_client import PDClient  # noqa: E402
from tikv_pd.rangetask import RangeTaskProgress, RangeTaskRunner, TaskStat  # noqa: E402
from tikv_pd.region_cache import Region  # noqa: E402
from tikv_pd.region_errors import to_exception  # noqa: E402
from tikv_pd.request import DEFAULT_OPTIONS, RequestSender, build_context  # noqa: E402
from tikv_pd.transport import Transport  # noqa: E402
from tikv_proto import kvrpcpb_pb2  # noqa: E402

MockCluster = mockstore.MockCluster
CONFIG = Config(pd_timeout=2.0, dial_timeout=2.0)
KEYS = [bytes([i]) + b"k%03d" % i for i in range(0, 256, 3)]


@dataclass
class Stack:
    cluster: Any
    pd: PDClient
    locator: RegionLocator
    transport: Transport
    sender: RequestSender
    scanned: list[tuple[bytes, bytes, list[bytes]]] = field(default_factory=list)

    async def scan_region(self, region: Region, start: bytes, end: bytes) -> TaskStat:
        """RawScan sent to ``region`` as cached: a stale region fails with its error."""
        assert region.leader is not None
        address = await self.locator.store_address(region.leader.store_id)
        req = kvrpcpb_pb2.RawScanRequest(start_key=start, end_key=end, limit=10_000)
        req.context.CopyFrom(build_context(region, region.leader, DEFAULT_OPTIONS))
        resp = await self.transport.send(address, "RawScan", req)
        if resp.HasField("region_error"):
            raise to_exception(resp.region_error, region.id)
        self.scanned.append((start, end, [kv.key for kv in resp.kvs]))
        return TaskStat(completed_regions=1)

    def keys_seen(self) -> list[bytes]:
        return sorted(k for _, _, keys in self.scanned for k in keys)


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    with MockCluster(stores=3, regions=4) as cluster:
        pd = await PDClient.connect(cluster.pd_endpoints, config=CONFIG)
        locator = RegionLocator(pd, codec=CodecV1("raw"))
        transport = Transport(CONFIG)
        s = Stack(cluster, pd, locator, transport, RequestSender(locator, transport))
        for key in KEYS:
            req = kvrpcpb_pb2.RawPutRequest(key=key, value=b"v")
            await s.sender.call_key("RawPut", key, req)
        try:
            yield s
        finally:
            await transport.close()
            await locator.close()
            await pd.close()


async def test_every_region_once_with_progress(stack: Stack) -> None:
    seen: list[RangeTaskProgress] = []
    runner = RangeTaskRunner("scan", stack.locator, stack.scan_region, on_progress=seen.append)
    assert await runner.run(b"", b"") == TaskStat(completed_regions=4)
    assert stack.keys_seen() == KEYS
    assert len(seen) == 4 and seen[-1].finished
    starts = sorted(s for s, _, _ in stack.scanned)
    assert starts == sorted(r.start_key for r in stack.cluster.regions())


async def test_regions_split_behind_the_cache_are_resharded(stack: Stack) -> None:
    for key in (b"\x00", b"\x50", b"\x90", b"\xd0"):
        await stack.locator.locate_key(key)  # the cache knows the four regions
    stack.cluster.split([b"\x20", b"\x30", b"\xa0"])
    runner = RangeTaskRunner("scan", stack.locator, stack.scan_region, concurrency=3)
    stat = await runner.run(b"", b"")
    assert stat.completed_regions == 7
    assert runner.relocations == 2  # the two regions that split
    assert stack.keys_seen() == KEYS  # every key exactly once


async def test_store_failure_stops_then_resume_finishes(stack: Stack) -> None:
    third = stack.cluster.region_by_key(b"\x90")
    fault = stack.cluster.faults.add("RawScan", region=third.id, status="INVALID_ARGUMENT", times=1)
    runner = RangeTaskRunner("scan", stack.locator, stack.scan_region, concurrency=1)
    with pytest.raises(TiKVError):
        await runner.run(b"", b"")
    assert fault.hits == 1
    assert runner.resume_key == third.start_key
    assert runner.completed_regions == 2
    await runner.run(third.start_key, b"")
    assert runner.completed_regions == 2
    assert stack.keys_seen() == KEYS


async def test_pipeline_handler_with_transient_store_errors(stack: Stack) -> None:
    stack.cluster.faults.add("RawDeleteRange", status="UNAVAILABLE", times=3)

    async def delete(region: Region, start: bytes, end: bytes) -> TaskStat:
        responses = await stack.sender.call_range(
            "RawDeleteRange",
            start,
            end,
            lambda s, e: kvrpcpb_pb2.RawDeleteRangeRequest(start_key=s, end_key=e),
            bo=Backoffer(20_000),
        )
        assert not any(r.error for r in responses)
        return TaskStat(completed_regions=len(responses))

    runner = RangeTaskRunner("delete", stack.locator, delete)
    assert (await runner.run(b"\x30", b"\xa0")).completed_regions == 3
    runner2 = RangeTaskRunner("scan", stack.locator, stack.scan_region)
    await runner2.run(b"", b"")
    assert stack.keys_seen() == [k for k in KEYS if not (b"\x30" <= k < b"\xa0")]


async def test_cold_cache_is_loaded_a_window_at_a_time(stack: Stack) -> None:
    # 40 regions, and a locator that has never seen any: the runner asks PD one
    # ScanRegions per window of regions, never one GetRegion per region.
    stack.cluster.split([bytes([i]) for i in range(6, 256, 7)])
    regions = stack.cluster.regions()
    assert len(regions) == 40
    cold = RegionLocator(stack.pd, codec=CodecV1("raw"))
    try:
        stack.locator = cold  # scan_region resolves stores through it too
        runner = RangeTaskRunner("scan", cold, stack.scan_region, regions_per_batch=16)
        assert await runner.run(b"", b"") == TaskStat(completed_regions=40)
        assert stack.keys_seen() == KEYS
        assert cold.pd_requests.get("ScanRegions") == 3  # 16 + 16 + 8
        assert "GetRegion" not in cold.pd_requests
    finally:
        await cold.close()
