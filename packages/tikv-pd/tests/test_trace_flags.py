"""Per-category tracing and TiKV trace-control flags (client-go trace/flags_test.go).

client-go's flags test checks the TraceControlFlags bits; its categories gate which events
are recorded. Here: the same bits, the flags reaching TiKV (the mock store keeps each
request's Context), and spans created only for the categories switched on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tikv_mockstore import MockCluster
from tikv_pd import tracing
from tikv_pd.config import TransactionOptions
from tikv_pd.tracing import TraceCategory, TraceControlFlags, category_of
from tikv_raw import AsyncRawClient
from tikv_txn import AsyncTransactionClient

Cat = TraceCategory
Flag = TraceControlFlags


def test_trace_control_flags_bits_match_client_go() -> None:
    # TestTraceControlFlags_BitValues: the wire values kvproto documents.
    assert int(Flag.IMMEDIATE_LOG) == 1 << 0
    assert int(Flag.TIKV_CATEGORY_REQUEST) == 1 << 1
    assert int(Flag.TIKV_CATEGORY_WRITE_DETAILS) == 1 << 2
    assert int(Flag.TIKV_CATEGORY_READ_DETAILS) == 1 << 3
    every = (
        Flag.IMMEDIATE_LOG
        | Flag.TIKV_CATEGORY_REQUEST
        | Flag.TIKV_CATEGORY_WRITE_DETAILS
        | Flag.TIKV_CATEGORY_READ_DETAILS
    )
    assert int(every) == 0b1111


def test_trace_control_flags_has_and_with() -> None:
    # TestTraceControlFlags_Has / _With / _CombinedOperations.
    flags = Flag.IMMEDIATE_LOG | Flag.TIKV_CATEGORY_REQUEST
    assert Flag.IMMEDIATE_LOG in flags
    assert Flag.TIKV_CATEGORY_REQUEST in flags
    assert Flag.TIKV_CATEGORY_WRITE_DETAILS not in flags
    assert Flag.TIKV_CATEGORY_READ_DETAILS not in flags
    assert Flag.IMMEDIATE_LOG not in Flag(0)

    built = Flag(0) | Flag.IMMEDIATE_LOG
    assert Flag.IMMEDIATE_LOG in built and Flag.TIKV_CATEGORY_REQUEST not in built
    built |= Flag.TIKV_CATEGORY_REQUEST
    again = built | Flag.IMMEDIATE_LOG  # idempotent
    assert again == built == flags
    full = again | Flag.TIKV_CATEGORY_WRITE_DETAILS | Flag.TIKV_CATEGORY_READ_DETAILS
    assert all(f in full for f in Flag)


def test_categories_are_distinct_bits_and_names_map_to_them() -> None:
    singles = [c for c in Cat if c is not Cat.ALL]
    assert len({int(c) for c in singles}) == len(singles)
    assert all(int(c).bit_count() == 1 for c in singles)
    assert all(c in Cat.ALL for c in singles)
    assert category_of("tikv.backoff.regionMiss") is Cat.BACKOFF
    assert category_of("tikv.region_cache.load_region") is Cat.REGION_CACHE
    assert category_of("tikv.pd.get_timestamp") is Cat.PD
    assert category_of("tikv.txn.prewrite") is Cat.TXN_2PC
    assert category_of("tikv.lock_resolver.check_txn_status") is Cat.TXN_LOCK_RESOLVE
    assert category_of("tikvpb.Tikv/RawGet") is Cat.KV_REQUEST
    assert category_of("my.app.step") is Cat.OTHER


def test_no_category_is_enabled_while_tracing_is_off() -> None:
    tracing.disable_tracing()
    assert all(not tracing.is_category_enabled(c) for c in Cat)
    with pytest.raises(TypeError, match="categories must be a TraceCategory, got int"):
        tracing.is_category_enabled(2)  # type: ignore[arg-type]


@pytest.fixture
def exporter() -> Iterator[tuple[InMemorySpanExporter, TracerProvider]]:
    exp = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    yield exp, provider
    tracing.disable_tracing()
    provider.shutdown()


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=1, split_raw=[b"m"]) as c:
        yield c


@pytest.fixture
async def client(cluster: MockCluster) -> AsyncIterator[AsyncRawClient]:
    async with await AsyncRawClient.connect(cluster.pd_endpoints) as c:
        yield c


def names(exp: InMemorySpanExporter) -> list[str]:
    return [s.name for s in exp.get_finished_spans()]


def by_name(exp: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exp.get_finished_spans() if s.name == name]


def test_enable_tracing_validates_its_arguments(exporter: Any) -> None:
    _, provider = exporter
    with pytest.raises(TypeError, match="categories must be a TraceCategory, got int"):
        tracing.enable_tracing(provider, categories=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tikv_flags must be a TraceControlFlags, got str"):
        tracing.enable_tracing(provider, tikv_flags="request")  # type: ignore[arg-type]
    assert tracing.get_tracing() is None  # nothing was enabled by the failed calls
    t = tracing.enable_tracing(provider)
    assert t.categories == Cat.ALL
    assert t.tikv_flags == Flag.TIKV_CATEGORY_REQUEST  # client-go's default extractor
    with pytest.raises(TypeError, match="categories must be a TraceCategory"):
        t.enable_categories("KV_REQUEST")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tikv_flags must be a TraceControlFlags"):
        t.set_tikv_flags(1)  # type: ignore[arg-type]


async def test_only_the_enabled_categories_make_spans(
    exporter: Any, client: AsyncRawClient
) -> None:
    exp, provider = exporter
    t = tracing.enable_tracing(provider, categories=Cat.OPERATION)
    assert tracing.is_category_enabled(Cat.OPERATION)
    assert not tracing.is_category_enabled(Cat.KV_REQUEST)
    assert not tracing.is_category_enabled(Cat.OPERATION | Cat.KV_REQUEST)

    await client.put(b"a", b"1")  # cold cache: also loads a region from PD
    assert names(exp) == ["tikv.raw.put"]

    exp.clear()
    t.enable_categories(Cat.KV_REQUEST | Cat.REGION_CACHE)
    assert tracing.is_category_enabled(Cat.OPERATION | Cat.KV_REQUEST)
    assert await client.get(b"a") == b"1"
    (op,) = by_name(exp, "tikv.raw.get")
    (rpc,) = by_name(exp, "tikvpb.Tikv/RawGet")
    assert rpc.parent is not None and op.context is not None
    assert rpc.parent.span_id == op.context.span_id
    assert by_name(exp, "tikv.region_cache.load_region") == []  # cache hit: nothing to load

    exp.clear()
    t.disable_categories(Cat.OPERATION)
    assert not tracing.is_category_enabled(Cat.OPERATION)
    assert tracing.is_category_enabled(Cat.KV_REQUEST)
    await client.put(b"z", b"2")  # the other region: loaded now, traced under REGION_CACHE
    assert sorted(names(exp)) == ["tikv.region_cache.load_region", "tikvpb.Tikv/RawPut"]
    # Without an operation span the RPC span is a root: nothing in between was recorded.
    (rpc,) = by_name(exp, "tikvpb.Tikv/RawPut")
    assert rpc.parent is None


async def test_span_helper_follows_the_categories(exporter: Any) -> None:
    exp, provider = exporter
    t = tracing.enable_tracing(provider, categories=Cat.OTHER)
    # TXN_2PC (off) around OTHER (on).
    with tracing.span("tikv.txn.prewrite", keys=1), tracing.span("my.app.step", size=3):
        pass
    with tracing.span("tikv.txn.prewrite", category=Cat.OTHER):  # explicit category
        pass
    spans = exp.get_finished_spans()
    assert [s.name for s in spans] == ["my.app.step", "tikv.txn.prewrite"]
    assert spans[0].attributes is not None and spans[0].attributes["size"] == 3
    with pytest.raises(TypeError, match="categories must be a TraceCategory"):
        t.span("x", category=1)  # type: ignore[arg-type]


async def test_tikv_receives_the_trace_id_and_flags(
    cluster: MockCluster, exporter: Any, client: AsyncRawClient
) -> None:
    exp, provider = exporter
    t = tracing.enable_tracing(provider, categories=Cat.OPERATION)
    await client.get(b"a")
    (op,) = by_name(exp, "tikv.raw.get")
    ctx = cluster.counters.last_context("RawGet")
    assert ctx is not None and op.context is not None
    assert ctx.trace_control_flags == int(Flag.TIKV_CATEGORY_REQUEST)
    assert ctx.trace_id == op.context.trace_id.to_bytes(16, "big")

    # The RPC category off still tags requests; other flags reach TiKV as set.
    t.set_tikv_flags(Flag.IMMEDIATE_LOG | Flag.TIKV_CATEGORY_READ_DETAILS)
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("caller") as caller:
        t.disable_categories(Cat.ALL)
        await client.get(b"a")
    ctx = cluster.counters.last_context("RawGet")
    assert ctx is not None
    assert ctx.trace_control_flags == 0b1001
    assert ctx.trace_id == caller.get_span_context().trace_id.to_bytes(16, "big")

    # No current span: flags without a trace id.
    assert otel_trace.get_current_span().get_span_context().is_valid is False
    await client.get(b"a")
    ctx = cluster.counters.last_context("RawGet")
    assert ctx is not None and ctx.trace_control_flags == 0b1001 and ctx.trace_id == b""

    # Tracing off: requests carry neither.
    tracing.disable_tracing()
    await client.get(b"a")
    ctx = cluster.counters.last_context("RawGet")
    assert ctx is not None and ctx.trace_control_flags == 0 and ctx.trace_id == b""


async def test_commit_phases_alone(exporter: Any) -> None:
    exp, provider = exporter
    tracing.enable_tracing(provider, categories=Cat.TXN_2PC)
    with MockCluster(stores=1, regions=2) as mock:
        async with await AsyncTransactionClient.connect(mock.pd_endpoints) as c:
            txn = await c.begin(TransactionOptions.optimistic(async_commit=False, try_one_pc=False))
            txn.put(b"\x10k", b"v")
            txn.put(b"\x90k", b"v")
            await txn.commit()
    found = set(names(exp))
    assert {"tikv.txn.prewrite", "tikv.txn.get_commit_ts", "tikv.txn.commit_primary"} <= found
    assert all(n.startswith("tikv.txn.") for n in found), found
    assert "tikv.txn.commit" not in found  # the operation span: OPERATION is off
