"""Raw commands through the whole stack against the embedded mock cluster.

PDClient → RegionLocator → RequestSender → Transport (BatchCommands or unary) → MockCluster,
with injected region errors, splits, leader transfers, dropped streams and stopped stores.
Every test checks that nothing is lost or duplicated.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

mockstore = pytest.importorskip("tikv_mockstore")

from tikv_pd.backoff import RAWKV_MAX_BACKOFF, Backoffer  # noqa: E402
from tikv_pd.codec import CodecV1  # noqa: E402
from tikv_pd.config import Config  # noqa: E402
from tikv_pd.errors import UndeterminedError  # noqa: E402
from tikv_pd.locator import RegionLocator  # noqa: E402
from tikv_pd.pd_client import PDClient  # noqa: E402
from tikv_pd.region_cache import Region  # noqa: E402
from tikv_pd.request import (  # noqa: E402
    Ambiguity,
    KeysSharder,
    Locator,
    Plan,
    RequestSender,
)
from tikv_pd.transport import Transport  # noqa: E402
from tikv_proto import kvrpcpb_pb2  # noqa: E402

MockCluster = mockstore.MockCluster

# -- plans of the raw commands used here ------------------------------------------------


def _batch_put(
    region: Region, pairs: Sequence[tuple[bytes, bytes]]
) -> kvrpcpb_pb2.RawBatchPutRequest:
    return kvrpcpb_pb2.RawBatchPutRequest(
        pairs=[kvrpcpb_pb2.KvPair(key=k, value=v) for k, v in pairs]
    )


def _check_raw_error(resp: Any) -> Any:
    if "error" in resp.DESCRIPTOR.fields_by_name and resp.error:
        raise AssertionError(f"raw error: {resp.error}")
    return resp


RAW_BATCH_PUT: Plan[Sequence[tuple[bytes, bytes]], int, int] = Plan(
    "RawBatchPut",
    KeysSharder[tuple[bytes, bytes]](
        lambda kv: kv[0], size_of=lambda kv: len(kv[0]) + len(kv[1]), max_bytes=16 * 1024
    ),
    _batch_put,
    lambda region, pairs, resp: len(pairs) if _check_raw_error(resp) else 0,
    sum,
)

RAW_BATCH_GET: Plan[Sequence[bytes], dict[bytes, bytes], dict[bytes, bytes]] = Plan(
    "RawBatchGet",
    KeysSharder[bytes](max_count=512),
    lambda region, keys: kvrpcpb_pb2.RawBatchGetRequest(keys=list(keys)),
    lambda region, keys, resp: {p.key: p.value for p in _check_raw_error(resp).pairs},
    lambda parts: {k: v for part in parts for k, v in part.items()},
)


@dataclass
class Stack:
    cluster: Any
    pd: PDClient
    locator: RegionLocator
    transport: Transport
    sender: RequestSender

    async def get(self, key: bytes) -> bytes | None:
        resp = await self.sender.call_key("RawGet", key, kvrpcpb_pb2.RawGetRequest(key=key))
        _check_raw_error(resp)
        return None if resp.not_found else bytes(resp.value)

    async def put(self, key: bytes, value: bytes) -> None:
        req = kvrpcpb_pb2.RawPutRequest(key=key, value=value)
        _check_raw_error(await self.sender.call_key("RawPut", key, req))

    async def scan_all(self) -> list[tuple[bytes, bytes]]:
        parts = await self.sender.call_range(
            "RawScan",
            b"",
            b"",
            lambda s, e: kvrpcpb_pb2.RawScanRequest(start_key=s, end_key=e, limit=10240),
        )
        return [(kv.key, kv.value) for p in parts for kv in p.kvs]


async def _stack(cluster: Any, config: Config) -> Stack:
    pd = await PDClient.connect(cluster.pd_endpoints, config=config)
    locator = RegionLocator(pd, codec=CodecV1("raw"))
    transport = Transport(config)
    as_protocol: Locator = locator  # the locator satisfies the pipeline's contract
    return Stack(cluster, pd, locator, transport, RequestSender(as_protocol, transport))


async def _close(stack: Stack) -> None:
    await stack.transport.close()
    await stack.locator.close()
    await stack.pd.close()


FAST = Config(pd_timeout=2.0, dial_timeout=2.0, grpc_connection_count=2)


@pytest.fixture(params=["batch", "unary"])
async def stack(request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    config = (
        FAST
        if request.param == "batch"
        else Config(pd_timeout=2.0, dial_timeout=2.0, enable_batch_commands=False)
    )
    with MockCluster(stores=3, regions=4) as cluster:
        s = await _stack(cluster, config)
        try:
            yield s
        finally:
            await _close(s)


def _pairs(n: int, tag: bytes = b"v") -> list[tuple[bytes, bytes]]:
    # Keys spread over the whole first-byte range, so they span every region.
    return [(bytes([i * 251 % 256]) + b"key%04d" % i, tag + b"%d" % i) for i in range(n)]


# -- tests ------------------------------------------------------------------------------


async def test_batch_put_get_scan_across_regions(stack: Stack) -> None:
    pairs = _pairs(300)
    assert await RAW_BATCH_PUT.run(stack.sender, pairs) == 300
    got = await RAW_BATCH_GET.run(stack.sender, [k for k, _ in pairs])
    assert got == dict(pairs)
    assert await stack.scan_all() == sorted(pairs)
    assert await stack.get(b"\x00missing") is None
    counters = stack.cluster.counters
    sent = sum(counters.count("RawBatchPut", store=s.id) for s in stack.cluster.stores())
    assert sent >= 4  # at least one request per region
    if stack.transport.config.enable_batch_commands:
        assert stack.transport.stats.batched_requests > 0
        assert stack.transport.stats.unary_requests == 0
    else:
        assert stack.transport.stats.batches == 0


@pytest.mark.parametrize(
    "kind",
    [
        "not_leader",
        "epoch_not_match",
        "server_is_busy",
        "region_not_found",
        "stale_command",
        "key_not_in_region",
        "max_timestamp_not_synced",
        "read_index_not_ready",
    ],
)
async def test_injected_region_errors_are_retried(stack: Stack, kind: str) -> None:
    pairs = _pairs(40, kind.encode())
    await RAW_BATCH_PUT.run(stack.sender, pairs)
    fault = stack.cluster.faults.add("RawBatchGet", region_error=kind, times=2)
    bo = Backoffer(RAWKV_MAX_BACKOFF)
    got = await RAW_BATCH_GET.run(stack.sender, [k for k, _ in pairs], bo=bo)
    assert got == dict(pairs)
    assert fault.hits == 2
    assert stack.sender.stats.region_errors == {kind: 2}


async def test_split_and_leader_transfer_lose_and_duplicate_nothing(stack: Stack) -> None:
    cluster = stack.cluster
    pairs = _pairs(200)
    await RAW_BATCH_PUT.run(stack.sender, pairs)
    before = len(cluster.regions())
    # The client caches the old layout; split every region and move leaders around.
    cluster.split([b"\x20", b"\x60", b"\xa0", b"\xe0"])
    for i, region in enumerate(cluster.regions()):
        cluster.transfer_leader(region.id, cluster.stores()[i % 3].id)
    assert len(cluster.regions()) == before + 4
    got = await RAW_BATCH_GET.run(stack.sender, [k for k, _ in pairs])
    assert got == dict(pairs)
    # Writes after the change land once each.
    more = _pairs(200, b"w")
    await RAW_BATCH_PUT.run(stack.sender, more)
    assert await stack.scan_all() == sorted(more)


async def test_concurrent_writes_during_splits_and_transfers(stack: Stack) -> None:
    cluster = stack.cluster
    pairs = _pairs(400, b"c")
    done = asyncio.Event()

    async def churn() -> None:
        split_points = [bytes([b]) for b in range(8, 256, 16)]
        i = 0
        while not done.is_set() and i < len(split_points):
            await asyncio.to_thread(cluster.split, [split_points[i]])
            for j, region in enumerate(cluster.regions()):
                await asyncio.to_thread(
                    cluster.transfer_leader, region.id, cluster.stores()[(i + j) % 3].id
                )
            i += 1
            await asyncio.sleep(0)

    churner = asyncio.ensure_future(churn())
    try:
        await asyncio.gather(*(stack.put(k, v) for k, v in pairs))
    finally:
        done.set()
        await churner
    assert await stack.scan_all() == sorted(pairs)
    got = await asyncio.gather(*(stack.get(k) for k, _ in pairs))
    assert got == [v for _, v in pairs]


async def test_dropped_stream_retries_reads_and_reports_undetermined_writes() -> None:
    with MockCluster(stores=1) as cluster:
        s = await _stack(cluster, Config(pd_timeout=2.0, dial_timeout=2.0, grpc_connection_count=1))
        try:
            await s.put(b"k", b"v")
            fault = cluster.faults.add("RawGet", drop_stream=True, times=1)
            assert await s.get(b"k") == b"v"
            assert fault.hits == 1
            assert s.transport.stats.stream_failures >= 1
            # A non-idempotent write caught in a dropped stream is never resent.
            cluster.faults.add("RawCompareAndSwap", drop_stream=True, times=1)
            cas = kvrpcpb_pb2.RawCASRequest(key=b"k", value=b"new", previous_value=b"v")
            with pytest.raises(UndeterminedError):
                await s.sender.call_key("RawCompareAndSwap", b"k", cas, ambiguity=Ambiguity.RAISE)
            assert cluster.counters.count("RawCompareAndSwap") <= 1
        finally:
            await _close(s)


async def test_stopped_store_fails_over_to_new_leaders() -> None:
    with MockCluster(stores=3, regions=3) as cluster:
        s = await _stack(cluster, FAST)
        try:
            pairs = _pairs(60)
            await RAW_BATCH_PUT.run(s.sender, pairs)
            victim = cluster.regions()[0].leader.store_id
            cluster.stop_store(victim, move_leaders=True)
            got = await RAW_BATCH_GET.run(s.sender, [k for k, _ in pairs])
            assert got == dict(pairs)
            assert all(r.leader.store_id != victim for r in cluster.regions())
        finally:
            await _close(s)


async def test_cas_increments_under_churn_are_applied_exactly_once(stack: Stack) -> None:
    # Non-idempotent writes retried across NotLeader / EpochNotMatch / splits: every
    # increment that reported success is applied once, none is applied twice.
    cluster = stack.cluster
    counters = [bytes([b]) + b"counter" for b in (0x10, 0x50, 0x90, 0xD0)]
    successes = dict.fromkeys(counters, 0)
    undetermined = 0

    async def increment(key: bytes) -> None:
        nonlocal undetermined
        for _ in range(15):
            while True:
                current = await stack.get(key)
                new = b"%d" % (int(current or b"0") + 1)
                cas = kvrpcpb_pb2.RawCASRequest(key=key, value=new)
                if current is None:
                    cas.previous_not_exist = True
                else:
                    cas.previous_value = current
                try:
                    resp = await stack.sender.call_key(
                        "RawCompareAndSwap", key, cas, ambiguity=Ambiguity.RAISE
                    )
                except UndeterminedError:
                    undetermined += 1
                    break
                if resp.succeed:
                    successes[key] += 1
                    break

    async def churn() -> None:
        for b in range(0x18, 0xFF, 0x20):
            await asyncio.to_thread(cluster.split, [bytes([b])])
            for j, region in enumerate(cluster.regions()):
                await asyncio.to_thread(
                    cluster.transfer_leader, region.id, cluster.stores()[(b + j) % 3].id
                )
            await asyncio.sleep(0)

    await asyncio.gather(churn(), *(increment(k) for k in counters for _ in range(3)))
    assert undetermined == 0  # region errors are never ambiguous for CAS
    for key in counters:
        assert await stack.get(key) == b"%d" % successes[key]
        assert successes[key] == 45
    assert stack.sender.stats.region_errors  # the churn was seen


async def test_store_restart_is_survived_by_retrying_until_it_is_back() -> None:
    # The leader's store stops without handing its leaders over: requests fail unsent
    # (connection refused), back off tikvRPC and re-locate; once the store is back on
    # the same port, the transport dials it again and the requests complete.
    with MockCluster(stores=1) as cluster:
        s = await _stack(cluster, Config(pd_timeout=2.0, dial_timeout=2.0))
        try:
            await s.put(b"k", b"v")
            store_id = cluster.stores()[0].id
            cluster.stop_store(store_id, move_leaders=False)
            pending = asyncio.ensure_future(s.get(b"k"))
            deadline = asyncio.get_running_loop().time() + 20
            while s.sender.stats.send_failures < 2:  # poll: it is failing and retrying
                assert not pending.done(), pending
                assert asyncio.get_running_loop().time() < deadline, "no retries seen"
                await asyncio.sleep(0.01)
            await asyncio.to_thread(cluster.restart_store, store_id)
            assert await asyncio.wait_for(pending, 30) == b"v"
            assert s.sender.stats.backoffs >= 2
        finally:
            await _close(s)
