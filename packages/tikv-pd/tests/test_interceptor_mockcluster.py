"""Interceptors and request control end to end: the raw client against MockCluster.

What an interceptor or a request context puts in ``kvrpcpb.Context`` is checked on the
server side, with ``counters.last_context``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from tikv_mockstore import MockCluster
from tikv_pd.interceptor import Interceptor, RPCInvoker, RPCRequest, rpc_interceptor
from tikv_pd.request_context import (
    RequestContext,
    RequestInfo,
    RequestSource,
    RequestWaitResult,
    ResponseInfo,
    set_resource_controller,
)
from tikv_proto import kvrpcpb_pb2
from tikv_raw import AsyncRawClient, RawClient

SPLITS = [b"b", b"d", b"f"]


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=3, split_raw=SPLITS) as c:
        yield c


@pytest.fixture
async def client(cluster: MockCluster) -> AsyncIterator[AsyncRawClient]:
    async with await AsyncRawClient.connect(cluster.pd_endpoints) as c:
        yield c


@pytest.fixture(autouse=True)
def _no_controller() -> Iterator[None]:
    yield
    set_resource_controller(None)


def recorder(name: str, log: list[str]) -> Any:
    def wrap(next: RPCInvoker) -> RPCInvoker:
        async def invoke(rpc: RPCRequest) -> Any:
            log.append(f"{name}>{rpc.command}")
            response = await next(rpc)
            log.append(f"<{name}")
            return response

        return invoke

    return rpc_interceptor(name, wrap)


class SetTag(Interceptor):
    """Overwrites the resource group tag (so the last one to run wins)."""

    def __init__(self, name: str, tag: bytes) -> None:
        self.name = name
        self.tag = tag

    async def before_send(self, rpc: RPCRequest) -> None:
        rpc.context.resource_group_tag = self.tag


async def test_interceptors_run_in_order_and_change_what_tikv_receives(
    cluster: MockCluster, client: AsyncRawClient
) -> None:
    log: list[str] = []
    client.add_rpc_interceptor(recorder("outer", log))
    client.add_rpc_interceptor(SetTag("first-tag", b"first"))
    client.add_rpc_interceptor(SetTag("second-tag", b"second"))
    client.add_rpc_interceptor(recorder("inner", log))
    await client.put(b"a1", b"v1")
    assert log == ["outer>RawPut", "inner>RawPut", "<inner", "<outer"]
    ctx = cluster.counters.last_context("RawPut")
    assert ctx is not None
    # Both taggers ran, in link order: the second overwrote the first.
    assert ctx.resource_group_tag == b"second"
    assert await client.get(b"a1") == b"v1"
    # Re-linking a name moves it to the end of the chain: now "first-tag" runs last.
    client.add_rpc_interceptor(SetTag("first-tag", b"first-again"))
    await client.put(b"a2", b"v2")
    ctx = cluster.counters.last_context("RawPut")
    assert ctx is not None
    assert ctx.resource_group_tag == b"first-again"
    # Removing the interceptors: the default (empty) tag is sent again.
    client.set_rpc_interceptor(None)
    await client.put(b"a3", b"v3")
    ctx = cluster.counters.last_context("RawPut")
    assert ctx is not None
    assert ctx.resource_group_tag == b""


async def test_retried_attempts_pass_through_the_interceptors_again(
    cluster: MockCluster, client: AsyncRawClient
) -> None:
    attempts: list[tuple[int, bool]] = []

    class Attempts(Interceptor):
        async def before_send(self, rpc: RPCRequest) -> None:
            attempts.append((rpc.attempt, rpc.context.is_retry_request))

    client.set_rpc_interceptor(Attempts())
    region = cluster.region_by_key(b"c")
    assert region is not None
    cluster.faults.add("RawGet", region=region.id, region_error="region_not_found", times=1)
    assert await client.get(b"c") is None
    assert attempts == [(0, False), (1, True)]


async def test_request_context_is_visible_server_side(cluster: MockCluster) -> None:
    context = RequestContext(
        request_source=RequestSource(internal=True, source_type="gc", explicit_type="br"),
        resource_group_name="analytics",
        resource_group_tag=b"top-sql",
        priority="low",
        txn_source=42,
    )
    async with await AsyncRawClient.connect(
        cluster.pd_endpoints, request_context=context
    ) as client:
        await client.batch_put({b"a": b"1", b"c": b"2", b"e": b"3", b"g": b"4"})
        assert await client.batch_get([b"a", b"g"]) == {b"a": b"1", b"g": b"4"}
        for method in ("RawBatchPut", "RawBatchGet"):
            ctx = cluster.counters.last_context(method)
            assert ctx is not None
            assert ctx.request_source == "internal_gc_br"
            assert ctx.resource_control_context.resource_group_name == "analytics"
            assert ctx.resource_group_tag == b"top-sql"
            assert ctx.priority == kvrpcpb_pb2.Low
            assert ctx.txn_source == 42
        # Column-family views share the client's request control.
        await client.with_cf("write").put(b"k", b"v")
        ctx = cluster.counters.last_context("RawPut")
        assert ctx is not None
        assert ctx.resource_control_context.resource_group_name == "analytics"
        # A new context replaces the old one; None restores the defaults.
        client.set_request_context(RequestContext(resource_group_name="oltp"))
        await client.put(b"k", b"v")
        ctx = cluster.counters.last_context("RawPut")
        assert ctx is not None
        assert ctx.resource_control_context.resource_group_name == "oltp"
        assert ctx.request_source == ""
        client.set_request_context(None)
        await client.put(b"k", b"v")
        ctx = cluster.counters.last_context("RawPut")
        assert ctx is not None
        assert ctx.resource_control_context.resource_group_name == ""
        assert ctx.priority == kvrpcpb_pb2.Normal


class Tokens:
    """A resource controller recording what it is told, adding a penalty."""

    def __init__(self) -> None:
        self.requests: list[RequestInfo] = []
        self.responses: list[ResponseInfo] = []

    def is_background_request(self, resource_group: str, request_source: str) -> bool:
        return False

    async def on_request_wait(self, resource_group: str, info: RequestInfo) -> RequestWaitResult:
        self.requests.append(info)
        return RequestWaitResult(priority=16)

    async def on_response_wait(
        self, resource_group: str, request: RequestInfo, response: ResponseInfo
    ) -> None:
        self.responses.append(response)


async def test_resource_controller_sees_each_request_of_a_group(cluster: MockCluster) -> None:
    tokens = Tokens()
    set_resource_controller(tokens)
    async with await AsyncRawClient.connect(
        cluster.pd_endpoints, request_context=RequestContext(resource_group_name="rg")
    ) as client:
        await client.batch_put({b"a": b"1", b"c": b"2"})  # two regions: two requests
        await client.get(b"a")
    assert [(r.command, r.is_write) for r in tokens.requests] == [
        ("RawBatchPut", True),
        ("RawBatchPut", True),
        ("RawGet", False),
    ]
    assert {r.store_id for r in tokens.requests} <= {s.id for s in cluster.stores()}
    assert len(tokens.responses) == 3
    ctx = cluster.counters.last_context("RawGet")
    assert ctx is not None
    assert ctx.resource_control_context.override_priority == 16


def test_sync_client_request_control(cluster: MockCluster) -> None:
    seen: list[str] = []

    class Names(Interceptor):
        def after_response(self, rpc: RPCRequest, response: Any) -> None:
            seen.append(rpc.command)

    with RawClient.connect(
        cluster.pd_endpoints,
        request_context=RequestContext(request_source=RequestSource(source_type="sync")),
    ) as client:
        client.add_rpc_interceptor(Names())
        client.put(b"x", b"y")
        assert client.get(b"x") == b"y"
        assert client.request_context is not None
        assert client.rpc_interceptor is not None
    assert seen == ["RawPut", "RawGet"]
    ctx = cluster.counters.last_context("RawGet")
    assert ctx is not None
    assert ctx.request_source == "external_sync"


async def test_bad_arguments_are_refused(cluster: MockCluster, client: AsyncRawClient) -> None:
    with pytest.raises(TypeError, match="RequestContext"):
        await AsyncRawClient.connect(cluster.pd_endpoints, request_context="rg")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="RequestContext"):
        client.set_request_context({"resource_group_name": "x"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="wrap"):
        client.set_rpc_interceptor(lambda n: n)  # type: ignore[arg-type]
