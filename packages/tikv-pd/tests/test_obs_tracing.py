"""OpenTelemetry tracing (the ``tracing`` extra installed): spans and their nesting.

Spans go to an in-memory exporter of a private ``TracerProvider``; the raw client runs
against MockCluster.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode
from tikv_mockstore import MockCluster
from tikv_pd import tracing
from tikv_pd.config import TransactionOptions
from tikv_raw import AsyncRawClient, RawClient
from tikv_txn import AsyncTransactionClient

SPLITS = [b"b", b"d", b"f", b"h"]


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=3, split_raw=SPLITS) as c:
        yield c


@pytest.fixture
def exporter() -> Iterator[tuple[InMemorySpanExporter, TracerProvider]]:
    exp = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    tracing.enable_tracing(provider)
    yield exp, provider
    tracing.disable_tracing()
    provider.shutdown()


@pytest.fixture
async def client(cluster: MockCluster, exporter: Any) -> AsyncIterator[AsyncRawClient]:
    async with await AsyncRawClient.connect(cluster.pd_endpoints) as c:
        yield c


def spans(exp: InMemorySpanExporter) -> list[ReadableSpan]:
    return list(exp.get_finished_spans())


def one(found: list[ReadableSpan], name: str) -> ReadableSpan:
    named = [s for s in found if s.name == name]
    assert len(named) == 1, [s.name for s in found]
    return named[0]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    sid: int = span.context.span_id
    return sid


async def test_multi_region_batch_nests_one_rpc_span_per_region(
    cluster: MockCluster, exporter: Any, client: AsyncRawClient
) -> None:
    exp, _ = exporter
    keys = [b"a", b"c", b"e", b"g", b"i"]  # five regions
    await client.batch_put(dict.fromkeys(keys, b"v"))
    exp.clear()
    assert await client.batch_get(keys) == dict.fromkeys(keys, b"v")
    found = spans(exp)
    op = one(found, "tikv.raw.batch_get")
    assert op.attributes is not None
    assert op.attributes["db.operation.name"] == "batch_get"
    rpcs = [s for s in found if s.name == "tikvpb.Tikv/RawBatchGet"]
    assert len(rpcs) == len(keys)
    assert {parent_id(s) for s in rpcs} == {span_id(op)}
    assert op.context is not None
    assert {s.context.trace_id for s in rpcs if s.context} == {op.context.trace_id}
    regions = {cluster.region_by_key(k).id for k in keys}  # type: ignore[union-attr]
    assert {s.attributes["tikv.region_id"] for s in rpcs if s.attributes} == regions
    for s in rpcs:
        assert s.attributes is not None
        assert s.attributes["rpc.method"] == "RawBatchGet"
        assert s.attributes["tikv.attempt"] == 0
        # Each RPC lies inside the operation's time span.
        assert op.start_time is not None and op.end_time is not None
        assert s.start_time is not None and s.end_time is not None
        assert op.start_time <= s.start_time <= s.end_time <= op.end_time


async def test_backoff_sleep_is_a_child_span_between_the_attempts(
    cluster: MockCluster, exporter: Any, client: AsyncRawClient
) -> None:
    exp, _ = exporter
    region = cluster.region_by_key(b"c")
    assert region is not None
    cluster.faults.add("RawGet", region=region.id, region_error="region_not_found", times=1)
    assert await client.get(b"c") is None
    found = spans(exp)
    op = one(found, "tikv.raw.get")
    backoff = one(found, "tikv.backoff.regionMiss")
    rpcs = sorted(
        (s for s in found if s.name == "tikvpb.Tikv/RawGet"),
        key=lambda s: s.start_time or 0,
    )
    assert len(rpcs) == 2
    assert parent_id(backoff) == span_id(op)
    assert {parent_id(s) for s in rpcs} == {span_id(op)}
    assert [s.attributes["tikv.attempt"] for s in rpcs if s.attributes] == [0, 1]
    assert rpcs[0].attributes is not None
    assert rpcs[0].attributes["tikv.region_error"] == "region_not_found"
    assert backoff.attributes is not None
    sleep_ms = backoff.attributes["tikv.backoff.sleep_ms"]
    assert isinstance(sleep_ms, int)
    assert sleep_ms >= 2  # regionMiss starts at 2 ms
    # Order in time: failed attempt, sleep, successful attempt.
    assert rpcs[0].end_time is not None and backoff.start_time is not None
    assert backoff.end_time is not None and rpcs[1].start_time is not None
    assert rpcs[0].end_time <= backoff.start_time
    assert backoff.end_time <= rpcs[1].start_time


async def test_failed_operation_span_records_the_error(
    exporter: Any, client: AsyncRawClient
) -> None:
    exp, _ = exporter
    with pytest.raises(TypeError):
        await client.get("not bytes")  # type: ignore[arg-type]
    op = one(spans(exp), "tikv.raw.get")
    assert op.status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" for e in op.events)


def test_sync_client_spans_are_children_of_the_callers_span(
    cluster: MockCluster, exporter: Any
) -> None:
    exp, provider = exporter
    tracer = provider.get_tracer("app")
    with RawClient.connect(cluster.pd_endpoints) as client, tracer.start_as_current_span("app"):
        client.put(b"k", b"v")
    found = spans(exp)
    app = one(found, "app")
    put = one(found, "tikv.raw.put")
    assert parent_id(put) == span_id(app)
    assert parent_id(one(found, "tikvpb.Tikv/RawPut")) == span_id(put)


async def test_span_helper_nests_and_disable_stops_spans(
    exporter: Any, client: AsyncRawClient
) -> None:
    exp, _ = exporter
    with tracing.span("tikv.txn.prewrite", keys=2):
        await client.get(b"a")
    found = spans(exp)
    outer = one(found, "tikv.txn.prewrite")
    assert outer.attributes is not None
    assert outer.attributes["keys"] == 2
    assert parent_id(one(found, "tikv.raw.get")) == span_id(outer)
    instrumented = AsyncRawClient.__dict__["get"]
    assert getattr(instrumented, "__tikv_instrumented__", False)
    tracing.disable_tracing()
    assert tracing.get_tracing() is None
    exp.clear()
    await client.get(b"a")
    with tracing.span("ignored"):
        pass
    assert spans(exp) == []
    # The plain method is back: no wrapper runs while observability is off.
    assert AsyncRawClient.__dict__["get"] is not instrumented
    assert not getattr(AsyncRawClient.__dict__["get"], "__tikv_instrumented__", False)


async def test_region_load_on_a_cache_miss_is_a_child_span(
    exporter: Any, client: AsyncRawClient
) -> None:
    exp, _ = exporter
    await client.get(b"c1")  # cold cache: the region is loaded from PD
    await client.get(b"c2")  # same region: a cache hit, no load
    found = spans(exp)
    gets = sorted((s for s in found if s.name == "tikv.raw.get"), key=lambda s: s.start_time or 0)
    loads = [s for s in found if s.name == "tikv.region_cache.load_region"]
    assert len(gets) == 2
    assert len(loads) == 1
    assert parent_id(loads[0]) == span_id(gets[0])


# -- transactions ------------------------------------------------------------------------

# MockCluster(regions=4) splits the transactional key space at 0x40 / 0x80 / 0xC0.
KEYS = [b"\x10k", b"\x50k", b"\x90k", b"\xd0k"]
TWO_PC = TransactionOptions.optimistic(async_commit=False, try_one_pc=False)


@pytest.fixture
async def txn_client(exporter: Any) -> AsyncIterator[AsyncTransactionClient]:
    with MockCluster(stores=3, regions=4) as mock:
        async with await AsyncTransactionClient.connect(mock.pd_endpoints) as c:
            yield c


async def test_multi_region_commit_spans(exporter: Any, txn_client: AsyncTransactionClient) -> None:
    exp, _ = exporter
    txn = await txn_client.begin(TWO_PC)
    for k in KEYS:
        txn.put(k, b"v")
    await txn.commit()
    # Secondary keys are committed in the background after commit() returns; wait
    # (with a deadline) until that phase's span has ended.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        names = [s.name for s in exp.get_finished_spans()]
        if "tikv.txn.commit_secondaries" in names:
            break
        await asyncio.sleep(0.01)
    found = list(exp.get_finished_spans())
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
