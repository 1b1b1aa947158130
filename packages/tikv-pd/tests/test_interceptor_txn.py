"""Interceptors, spans and metrics of the transactional client on MockCluster.

MockCluster(regions=4) splits the transactional key space at first bytes 0x40 / 0x80 /
0xC0, so the keys below live in four regions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from tikv_mockstore import MockCluster
from tikv_pd.config import TransactionOptions
from tikv_pd.interceptor import Interceptor, RPCInvoker, RPCRequest, rpc_interceptor
from tikv_txn import AsyncTransactionClient

KEYS = [b"\x10k", b"\x50k", b"\x90k", b"\xd0k"]
TWO_PC = TransactionOptions.optimistic(async_commit=False, try_one_pc=False)


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=3, regions=4) as mock:
        yield mock


@pytest.fixture
async def client(cluster: MockCluster) -> AsyncIterator[AsyncTransactionClient]:
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as c:
        yield c


def recorder(name: str, log: list[str]) -> Any:
    def wrap(next: RPCInvoker) -> RPCInvoker:
        async def invoke(rpc: RPCRequest) -> Any:
            log.append(f"{name}:{rpc.command}")
            return await next(rpc)

        return invoke

    return rpc_interceptor(name, wrap)


class Tag(Interceptor):
    def __init__(self, name: str, tag: bytes) -> None:
        self.name = name
        self.tag = tag

    async def before_send(self, rpc: RPCRequest) -> None:
        rpc.context.resource_group_tag = self.tag


async def test_client_and_transaction_interceptors_nest_in_order(
    cluster: MockCluster, client: AsyncTransactionClient
) -> None:
    log: list[str] = []
    client.add_rpc_interceptor(recorder("client", log))
    txn = await client.begin(TWO_PC)
    txn.add_rpc_interceptor(recorder("txn", log))
    txn.add_rpc_interceptor(Tag("tag", b"txn-tag"))
    assert await txn.get(KEYS[0]) is None
    assert log == ["client:Get", "txn:Get"]
    ctx = cluster.counters.last_context("KvGet")
    assert ctx is not None
    assert ctx.resource_group_tag == b"txn-tag"
    log.clear()
    txn.put(KEYS[1], b"v")
    await txn.commit()
    # Prewrite and the primary's commit go through both chains, the client's first.
    assert log[:2] == ["client:Prewrite", "txn:Prewrite"]
    assert "txn:Commit" in log
    assert log.index("client:Commit") == log.index("txn:Commit") - 1
    ctx = cluster.counters.last_context("KvPrewrite")
    assert ctx is not None
    assert ctx.resource_group_tag == b"txn-tag"
    # Another transaction of the same client has only the client's interceptor.
    log.clear()
    other = await client.begin(TWO_PC)
    assert await other.get(KEYS[1]) == b"v"
    assert log == ["client:Get"]
    ctx = cluster.counters.last_context("KvGet")
    assert ctx is not None
    assert ctx.resource_group_tag == b""


async def test_snapshot_interceptor(cluster: MockCluster, client: AsyncTransactionClient) -> None:
    snap = client.snapshot(await client.current_timestamp())
    snap.set_rpc_interceptor(Tag("tag", b"snap"))
    await snap.batch_get(KEYS)
    ctx = cluster.counters.last_context("KvBatchGet")
    assert ctx is not None
    assert ctx.resource_group_tag == b"snap"
    snap.set_rpc_interceptor(None)
    await snap.get(b"\x20not-read-yet")  # not in the snapshot's read cache: sent
    ctx = cluster.counters.last_context("KvGet")
    assert ctx is not None
    assert ctx.resource_group_tag == b""


async def test_multi_region_commit_spans(
    cluster: MockCluster, client: AsyncTransactionClient
) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from tikv_pd import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable_tracing(provider)
    try:
        txn = await client.begin(TWO_PC)
        for k in KEYS:
            txn.put(k, b"v")
        await txn.commit()
        # Secondary keys are committed in the background after commit() returns; wait
        # (with a deadline) until every region's Commit RPC span has ended.
        deadline = time.monotonic() + 20
        while True:
            names = [s.name for s in exporter.get_finished_spans()]
            if names.count("tikvpb.Tikv/KvCommit") >= len(KEYS) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        found = list(exporter.get_finished_spans())
    finally:
        tracing.disable_tracing()
        provider.shutdown()
    commit = [s for s in found if s.name == "tikv.txn.commit"]
    assert len(commit) == 1
    assert commit[0].context is not None
    commit_id = commit[0].context.span_id
    prewrites = [s for s in found if s.name == "tikvpb.Tikv/KvPrewrite"]
    commits = [s for s in found if s.name == "tikvpb.Tikv/KvCommit"]
    # One prewrite and one commit per region, every one a child of the commit span.
    assert len(prewrites) == len(KEYS)
    assert len(commits) == len(KEYS)
    for s in prewrites + commits:
        assert s.parent is not None
        assert s.parent.span_id == commit_id
    regions = {s.attributes["tikv.region_id"] for s in prewrites if s.attributes}
    assert len(regions) == len(KEYS)
    # Every prewrite ended before the first commit started (two phases).
    assert max(s.end_time or 0 for s in prewrites) <= min(s.start_time or 0 for s in commits)


async def test_transaction_command_metrics(
    cluster: MockCluster, client: AsyncTransactionClient
) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from tikv_pd.metrics import disable_metrics, enable_metrics

    registry = prometheus_client.CollectorRegistry()
    enable_metrics(registry)
    try:
        txn = await client.begin(TWO_PC)
        await txn.get(KEYS[0])
        await txn.batch_get(KEYS)
        txn.put(KEYS[0], b"v")
        await txn.commit()
        rolled = await client.begin(TWO_PC)
        await rolled.rollback()
        name = "tikv_client_go_txn_cmd_duration_seconds_count"
        got = {
            command: registry.get_sample_value(name, {"type": command, "scope": "general"})
            for command in ("get", "batch_get", "commit", "rollback")
        }
        # The prewrite and commit RPCs were timed per command, labelled by store.
        timed: dict[str, float] = {}
        for family in registry.collect():
            for sample in family.samples:
                if sample.name == "tikv_client_go_request_seconds_count":
                    command = sample.labels["type"]
                    timed[command] = timed.get(command, 0) + sample.value
    finally:
        disable_metrics()
    assert got == {"get": 1, "batch_get": 1, "commit": 1, "rollback": 1}
    assert timed["Prewrite"] == 1
    assert timed["Commit"] == 1
