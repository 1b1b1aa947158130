"""RPC interceptor chains, request sources and resource control, without a network."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tikv_pd import interceptor as interceptor_mod
from tikv_pd.interceptor import (
    Interceptor,
    RPCInterceptorChain,
    RPCInvoker,
    RPCRequest,
    build_invoker,
    chain_interceptors,
    rpc_interceptor,
)
from tikv_pd.request import RequestOptions
from tikv_pd.request_context import (
    WRITE_COMMANDS,
    RequestContext,
    RequestInfo,
    RequestSource,
    RequestWaitResult,
    ResponseInfo,
    build_request_source,
    get_resource_controller,
    is_internal_source,
    request_info,
    response_info,
    set_resource_controller,
)
from tikv_proto import kvrpcpb_pb2, resource_manager_pb2


@pytest.fixture(autouse=True)
def _no_controller() -> Iterator[None]:
    yield
    set_resource_controller(None)


def recorder(name: str, log: list[str]) -> Any:
    def wrap(next: RPCInvoker) -> RPCInvoker:
        async def invoke(rpc: RPCRequest) -> Any:
            log.append(f"{name}>")
            response = await next(rpc)
            log.append(f"<{name}")
            return response

        return invoke

    return rpc_interceptor(name, wrap)


def rpc(command: str = "RawGet", request: Any = None) -> RPCRequest:
    if request is None:
        request = kvrpcpb_pb2.RawGetRequest(key=b"k")
    return RPCRequest("store-1:20160", command, request, 1, 7, 0, None)


class FakeSend:
    """The transport's send: records each call (and its context as sent), answers or fails."""

    def __init__(self, response: Any = None, *, error: BaseException | None = None) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.contexts: list[kvrpcpb_pb2.Context] = []
        self.forwarded: list[str | None] = []
        self.response = response if response is not None else kvrpcpb_pb2.RawGetResponse()
        self.error = error

    async def __call__(
        self,
        address: str,
        command: str,
        request: Any,
        deadline: Any,
        /,
        *,
        forwarded_host: str | None = None,
    ) -> Any:
        self.calls.append((address, command, request))
        self.contexts.append(kvrpcpb_pb2.Context.FromString(request.context.SerializeToString()))
        self.forwarded.append(forwarded_host)
        if self.error is not None:
            raise self.error
        return self.response


# -- chains ----------------------------------------------------------------------------


async def test_chain_runs_in_link_order_first_outermost() -> None:
    log: list[str] = []
    chain = chain_interceptors(recorder("a", log), recorder("b", log), recorder("c", log))
    send = FakeSend()
    invoke = build_invoker(send, chain)
    assert invoke is not None
    await invoke(rpc())
    assert log == ["a>", "b>", "c>", "<c", "<b", "<a"]
    assert len(send.calls) == 1


async def test_link_replaces_same_name_and_flattens_chains() -> None:
    log: list[str] = []
    chain = RPCInterceptorChain([recorder("a", log), recorder("b", log)])
    chain.link(RPCInterceptorChain([recorder("c", log), recorder("a", log)]))
    # "a" linked again: the old one is removed, the new one runs last (client-go Link).
    assert chain.names == ["b", "c", "a"]
    assert len(chain) == 3
    invoke = chain.wrap(lambda r: FakeSend()(r.target, r.command, r.request, r.timeout))
    await invoke(rpc())
    assert log == ["b>", "c>", "a>", "<a", "<c", "<b"]


async def test_one_invoker_sends_direct_and_relayed_attempts() -> None:
    seen: list[tuple[str, str]] = []

    class Watch(Interceptor):
        async def before_send(self, rpc: RPCRequest) -> None:
            seen.append((rpc.target, rpc.forwarded_host))

    send = FakeSend()
    invoke = build_invoker(send, Watch())
    assert invoke is not None
    await invoke(rpc())
    relayed = rpc()
    relayed.target, relayed.forwarded_host = "store-2:20160", "store-1:20160"
    await invoke(relayed)
    # Interceptors see which store relays; the transport gets the forwarded host.
    assert seen == [("store-1:20160", ""), ("store-2:20160", "store-1:20160")]
    assert [c[0] for c in send.calls] == ["store-1:20160", "store-2:20160"]
    assert send.forwarded == [None, "store-1:20160"]


def test_chain_interceptors_builds_a_new_chain() -> None:
    log: list[str] = []
    base = chain_interceptors(recorder("a", log))
    extended = chain_interceptors(base, recorder("b", log))
    assert base.names == ["a"]
    assert extended.names == ["a", "b"]


def test_rejects_non_interceptors() -> None:
    with pytest.raises(TypeError, match=r"\.name and \.wrap"):
        RPCInterceptorChain().link(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty name"):
        rpc_interceptor("", lambda n: n)
    with pytest.raises(TypeError, match="interceptor"):
        RequestOptions(interceptor=object())  # type: ignore[arg-type]


async def test_interceptor_base_class_hooks_and_patching() -> None:
    seen: list[tuple[str, Any]] = []

    class Tagger(Interceptor):
        async def before_send(self, rpc: RPCRequest) -> None:
            rpc.context.resource_group_tag = b"tagged"
            rpc.context.priority = kvrpcpb_pb2.High

        def after_response(self, rpc: RPCRequest, response: Any) -> None:
            seen.append(("response", response))

        def on_error(self, rpc: RPCRequest, error: BaseException) -> None:
            seen.append(("error", error))

    assert Tagger.name == "Tagger"
    send = FakeSend("ok")
    invoke = build_invoker(send, Tagger())
    assert invoke is not None
    assert await invoke(rpc()) == "ok"
    assert send.contexts[0].resource_group_tag == b"tagged"
    assert send.contexts[0].priority == kvrpcpb_pb2.High
    assert seen == [("response", "ok")]

    failing = FakeSend(error=ConnectionError("boom"))
    invoke = build_invoker(failing, Tagger())
    assert invoke is not None
    with pytest.raises(ConnectionError):
        await invoke(rpc())
    assert seen[-1][0] == "error"
    assert isinstance(seen[-1][1], ConnectionError)


def test_no_hooks_means_no_invoker() -> None:
    # The hot path: no interceptor, nothing enabled -> the pipeline sends directly.
    assert interceptor_mod.process_chain is None
    assert interceptor_mod.process_inner_chain is None
    assert build_invoker(FakeSend(), None) is None


def test_options_with_interceptors_share_value_and_hash() -> None:
    it = rpc_interceptor("x", lambda n: n)
    a = RequestOptions(request_source="external_a")
    b = RequestOptions(request_source="external_a", interceptor=it)
    # The interceptor is not part of the options' value: the context cache is shared.
    assert a == b
    assert hash(a) == hash(b)
    assert b.interceptor is it


# -- request sources and contexts --------------------------------------------------------


@pytest.mark.parametrize(
    ("internal", "source", "explicit", "want"),
    [
        (False, "", "", "unknown"),
        (True, "", "", "unknown"),
        (False, "txn", "", "external_txn"),
        (True, "gc", "", "internal_gc"),
        (True, "stats", "br", "internal_stats_br"),
        (False, "ddl", "ddl", "external_ddl"),
        (False, "", "lightning", "external_unknown_lightning"),
    ],
)
def test_request_source_format_matches_client_go(
    internal: bool, source: str, explicit: str, want: str
) -> None:
    assert build_request_source(internal, source, explicit) == want
    rs = RequestSource(internal=internal, source_type=source, explicit_type=explicit)
    assert str(rs) == rs.label == want


def test_is_internal_source() -> None:
    assert is_internal_source("internal_gc")
    assert not is_internal_source("external_txn")
    assert not is_internal_source("unknown")


def test_request_context_apply_and_merge() -> None:
    base = RequestOptions(api_version=2, keyspace_id=3)
    ctx = RequestContext(
        request_source=RequestSource(source_type="etl"),
        resource_group_name="rg1",
        resource_group_tag=b"t",
        priority="low",
        txn_source=5,
    )
    out = ctx.apply(base)
    assert (out.request_source, out.resource_group_name, out.resource_group_tag) == (
        "external_etl",
        "rg1",
        b"t",
    )
    assert (out.priority, out.txn_source, out.api_version, out.keyspace_id) == ("low", 5, 2, 3)
    assert RequestContext().apply(base) is base
    merged = ctx.merge(RequestContext(priority="high"))
    assert merged.priority == "high"
    assert merged.resource_group_name == "rg1"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"priority": "urgent"}, ValueError),
        ({"txn_source": -1}, ValueError),
        ({"txn_source": True}, ValueError),
        ({"resource_group_tag": "str"}, TypeError),
        ({"resource_group_name": 3}, TypeError),
        ({"request_source": 3}, TypeError),
    ],
)
def test_request_context_validates(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        RequestContext(**kwargs)


# -- resource control --------------------------------------------------------------------


def test_request_info_counts_write_bytes_as_client_go() -> None:
    prewrite = kvrpcpb_pb2.PrewriteRequest(
        mutations=[
            kvrpcpb_pb2.Mutation(key=b"k1", value=b"vvv"),
            kvrpcpb_pb2.Mutation(key=b"k22", value=b""),
        ],
        primary_lock=b"k1",
        secondaries=[b"k22"],
    )
    info = request_info("Prewrite", prewrite, 4)
    assert info.is_write
    assert info.write_bytes == (2 + 3) + (3 + 0) + 2 + 3
    assert info.store_id == 4
    assert info.request_size == prewrite.ByteSize()
    commit = kvrpcpb_pb2.CommitRequest(keys=[b"a", b"bcd"])
    assert request_info("Commit", commit, 1).write_bytes == 4
    put = kvrpcpb_pb2.RawPutRequest(key=b"k", value=b"value")
    raw_put = request_info("RawPut", put, 1)
    assert raw_put.is_write
    assert raw_put.write_bytes == 0  # client-go counts only prewrite and commit bytes
    assert not request_info("RawGet", kvrpcpb_pb2.RawGetRequest(key=b"k"), 1).is_write
    # client-go's IsRawWriteRequest lists only RawPut, RawBatchPut and RawDelete.
    assert "RawDeleteRange" not in WRITE_COMMANDS
    assert "CheckTxnStatus" in WRITE_COMMANDS


def test_response_info_reads_exec_details() -> None:
    resp = kvrpcpb_pb2.GetResponse(value=b"x" * 10)
    resp.exec_details_v2.scan_detail_v2.processed_versions_size = 123
    resp.exec_details_v2.time_detail_v2.process_wall_time_ns = 2_500_000
    info = response_info("Get", resp)
    assert info.read_bytes == 123
    assert info.kv_cpu_ms == pytest.approx(2.5)
    assert info.response_size == resp.ByteSize()
    scan = kvrpcpb_pb2.ScanResponse(pairs=[kvrpcpb_pb2.KvPair(key=b"a", value=b"b")])
    assert response_info("Scan", scan).read_bytes == scan.ByteSize()
    raw = kvrpcpb_pb2.RawGetResponse(value=b"v")
    assert response_info("RawGet", raw) == ResponseInfo(0, 0.0, raw.ByteSize())


class RecordingController:
    def __init__(self, *, background: bool = False) -> None:
        self.background = background
        self.requests: list[tuple[str, RequestInfo]] = []
        self.responses: list[tuple[str, ResponseInfo]] = []

    def is_background_request(self, resource_group: str, request_source: str) -> bool:
        return self.background

    async def on_request_wait(self, resource_group: str, info: RequestInfo) -> RequestWaitResult:
        self.requests.append((resource_group, info))
        return RequestWaitResult(
            penalty=resource_manager_pb2.Consumption(r_r_u=1.5, write_bytes=7), priority=8
        )

    async def on_response_wait(
        self, resource_group: str, request: RequestInfo, response: ResponseInfo
    ) -> None:
        self.responses.append((resource_group, response))


def grouped_rpc(group: str, source: str = "external_app") -> RPCRequest:
    req = kvrpcpb_pb2.RawPutRequest(key=b"k", value=b"v")
    req.context.resource_control_context.resource_group_name = group
    req.context.request_source = source
    return RPCRequest("s:1", "RawPut", req, 2, 9, 0, None)


async def test_resource_controller_called_around_send_and_patches_context() -> None:
    ctrl = RecordingController()
    set_resource_controller(ctrl)
    assert get_resource_controller() is ctrl
    send = FakeSend(kvrpcpb_pb2.RawPutResponse())
    invoke = build_invoker(send, None)
    assert invoke is not None
    await invoke(grouped_rpc("rg"))
    assert [(g, i.command, i.is_write, i.store_id) for g, i in ctrl.requests] == [
        ("rg", "RawPut", True, 2)
    ]
    assert [g for g, _ in ctrl.responses] == ["rg"]
    rcc = send.contexts[0].resource_control_context
    assert rcc.penalty.r_r_u == 1.5
    assert rcc.penalty.write_bytes == 7
    assert rcc.override_priority == 8


@pytest.mark.parametrize(
    ("group", "source", "background"),
    [
        ("", "external_app", False),  # default group: no resource control
        ("rg", "internal_others", False),  # client-go bypasses internal "others" work
        ("rg", "external_app", True),  # background work is accounted by TiKV
    ],
)
async def test_resource_controller_bypass(group: str, source: str, background: bool) -> None:
    ctrl = RecordingController(background=background)
    set_resource_controller(ctrl)
    send = FakeSend(kvrpcpb_pb2.RawPutResponse())
    invoke = build_invoker(send, None)
    assert invoke is not None
    await invoke(grouped_rpc(group, source))
    assert ctrl.requests == []
    assert ctrl.responses == []
    assert len(send.calls) == 1


async def test_override_priority_already_set_is_kept() -> None:
    set_resource_controller(RecordingController())
    rpc_ = grouped_rpc("rg")
    rpc_.context.resource_control_context.override_priority = 3

    invoke = build_invoker(FakeSend(kvrpcpb_pb2.RawPutResponse()), None)
    assert invoke is not None
    await invoke(rpc_)
    assert rpc_.context.resource_control_context.override_priority == 3


def test_set_resource_controller_validates_and_clears() -> None:
    with pytest.raises(TypeError, match="on_request_wait"):
        set_resource_controller(object())  # type: ignore[arg-type]
    set_resource_controller(RecordingController())
    assert interceptor_mod.process_chain is not None
    set_resource_controller(None)
    assert interceptor_mod.process_chain is None
