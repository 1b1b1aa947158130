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
        # (with a deadline) until that phase's span has ended.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            names = [s.name for s in exporter.get_finished_spans()]
            if "tikv.txn.commit_secondaries" in names:
                break
            await asyncio.sleep(0.01)
        found = list(exporter.get_finished_spans())
    finally:
        tracing.disable_tracing()
        provider.shutdown()
    by_name: dict[str, list[Any]] = {}
    for s in found:
        by_name.setdefault(s.name, []).append(s)

    def only(name: str) -> Any:
        assert len(by_name.get(name, [])) == 1, (name, sorted(by_name))
        return by_name[name][0]

    def parent_of(span: Any) -> int:
        assert span.parent is not None
        parent: int = span.parent.span_id
        return parent

    commit_id = only("tikv.txn.commit").context.span_id
    prewrite_phase = only("tikv.txn.prewrite")
    primary_phase = only("tikv.txn.commit_primary")
    secondaries_phase = only("tikv.txn.commit_secondaries")
    # Each phase is a child of the commit span ...
    for phase in (prewrite_phase, only("tikv.txn.get_commit_ts"), primary_phase, secondaries_phase):
        assert parent_of(phase) == commit_id
    # ... and each RPC a child of its phase: one prewrite and one commit per region.
    prewrites = by_name["tikvpb.Tikv/KvPrewrite"]
    commits = by_name["tikvpb.Tikv/KvCommit"]
    assert len(prewrites) == len(KEYS)
    assert len(commits) == len(KEYS)
    assert {parent_of(s) for s in prewrites} == {prewrite_phase.context.span_id}
    commit_parents = [parent_of(s) for s in commits]
    assert commit_parents.count(primary_phase.context.span_id) == 1
    assert commit_parents.count(secondaries_phase.context.span_id) == len(KEYS) - 1
    # The commit timestamp comes from PD inside the get_commit_ts phase.
    get_commit_ts_id = only("tikv.txn.get_commit_ts").context.span_id
    tso = [
        s
        for s in by_name["tikv.pd.get_timestamp"]
        if s.parent is not None and s.parent.span_id == get_commit_ts_id
    ]
    assert len(tso) == 1
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
        phases = {
            phase: registry.get_sample_value(
                "tikv_client_python_txn_commit_phase_seconds_count", {"phase": phase}
            )
            for phase in ("prewrite", "get_commit_ts", "commit_primary")
        }
        committed = registry.get_sample_value(
            "tikv_client_go_commit_txn_counter_total", {"type": "ok"}
        )
        written = registry.get_sample_value(
            "tikv_client_go_txn_write_kv_num_sum", {"scope": "general"}
        )
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
    assert phases == {"prewrite": 1, "get_commit_ts": 1, "commit_primary": 1}
    assert committed == 1
    assert written == 1
    assert timed["Prewrite"] == 1
    assert timed["Commit"] == 1


async def test_commit_protocol_counters(client: AsyncTransactionClient) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from tikv_pd.metrics import disable_metrics, enable_metrics

    registry = prometheus_client.CollectorRegistry()
    enable_metrics(registry)
    try:
        one_pc = await client.begin(TransactionOptions.optimistic(try_one_pc=True))
        one_pc.put(b"\x10one-pc", b"v")  # one region: committed by its prewrite
        await one_pc.commit()
        async_commit = await client.begin(TransactionOptions.optimistic(async_commit=True))
        for k in KEYS:
            async_commit.put(k + b"-ac", b"v")
        await async_commit.commit()
        counts = {
            name: registry.get_sample_value(f"tikv_client_go_{name}_total", {"type": "ok"})
            for name in ("one_pc_txn_counter", "async_commit_txn_counter", "commit_txn_counter")
        }
    finally:
        disable_metrics()
    assert counts == {
        "one_pc_txn_counter": 1,
        "async_commit_txn_counter": 1,
        "commit_txn_counter": None,  # no plain 2PC commit happened
    }


async def test_per_store_admin_requests_pass_the_client_interceptor(
    cluster: MockCluster, client: AsyncTransactionClient
) -> None:
    from tikv_txn.delete_range import unsafe_destroy_range

    seen: list[tuple[str, int, str]] = []

    class Stores(Interceptor):
        async def before_send(self, rpc: RPCRequest) -> None:
            seen.append((rpc.command, rpc.store_id, rpc.target))

    client.set_rpc_interceptor(Stores())
    assert await unsafe_destroy_range(client.runtime, client._pd, b"\x30", b"\xb0") == 3
    # Not routed by region, yet every store's request went through the interceptor.
    assert sorted(seen) == sorted(
        ("UnsafeDestroyRange", store_id, address)
        for store_id, address in cluster.store_addresses.items()
    )


async def test_interceptor_added_after_the_first_pessimistic_lock(
    cluster: MockCluster, client: AsyncTransactionClient
) -> None:
    log: list[str] = []
    txn = await client.begin(pessimistic=True)
    await txn.lock_keys([KEYS[0]])  # the transaction's committer exists from here on
    txn.add_rpc_interceptor(recorder("txn", log))
    await txn.lock_keys([KEYS[2]])
    txn.put(KEYS[2], b"v")
    await txn.commit()
    assert "txn:PessimisticLock" in log
    assert "txn:Prewrite" in log
    assert "txn:Commit" in log
