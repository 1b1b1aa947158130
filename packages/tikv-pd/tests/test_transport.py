"""The store transport against real gRPC servers on loopback (sync ThreadPool servicers)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
import tikv_pd.transport as transport_mod
from tikv_pd.config import Config
from tikv_pd.errors import ClientClosedError, StoreUnavailableError
from tikv_pd.transport import (
    BATCH_POLICIES,
    COMMANDS,
    RPCTimeoutError,
    Transport,
    TransportError,
    TurboBatchTrigger,
    store_channel_options,
)
from tikv_proto import kvrpcpb_pb2, tikvpb_pb2, tikvpb_pb2_grpc

# ---------------------------------------------------------------------------------------
# A small TiKV servicer: raw get / put / CAS over a dict, BatchCommands with fault knobs.
# ---------------------------------------------------------------------------------------


class KVServicer(tikvpb_pb2_grpc.TikvServicer):
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.lock = threading.Lock()
        self.batch_sizes: list[int] = []
        self.unary_calls = 0
        # Requests for this key are answered only after `release` is set.
        self.slow_key = b"slow"
        self.release = threading.Event()
        # When set, the next BatchCommands message breaks the stream unanswered.
        self.break_next = threading.Event()
        self.broken_messages: list[int] = []
        # The transport_layer_load the store reports (client-go waits when > 200).
        self.load = 1
        # tikv-forwarded-host of each unary call / stream ("" when absent).
        self.forwarded: list[str] = []

    # -- command bodies shared by unary and batch paths -------------------------------

    def _raw_get(self, req: kvrpcpb_pb2.RawGetRequest) -> kvrpcpb_pb2.RawGetResponse:
        if req.key == self.slow_key:
            self.release.wait(10)
        with self.lock:
            value = self.data.get(req.key)
        if value is None:
            return kvrpcpb_pb2.RawGetResponse(not_found=True)
        return kvrpcpb_pb2.RawGetResponse(value=value)

    def _raw_put(self, req: kvrpcpb_pb2.RawPutRequest) -> kvrpcpb_pb2.RawPutResponse:
        with self.lock:
            self.data[req.key] = req.value
        return kvrpcpb_pb2.RawPutResponse()

    # -- unary ------------------------------------------------------------------------

    def _record_forwarding(self, context: Any) -> None:
        meta = dict(context.invocation_metadata())
        self.forwarded.append(meta.get("tikv-forwarded-host", ""))

    def RawGet(self, request: Any, context: Any) -> Any:
        self.unary_calls += 1
        self._record_forwarding(context)
        return self._raw_get(request)

    def RawPut(self, request: Any, context: Any) -> Any:
        self.unary_calls += 1
        return self._raw_put(request)

    def RawCompareAndSwap(self, request: Any, context: Any) -> Any:
        self.unary_calls += 1
        with self.lock:
            prev = self.data.get(request.key)
            ok = (prev is None) if request.previous_not_exist else prev == request.previous_value
            if ok:
                self.data[request.key] = request.value
        return kvrpcpb_pb2.RawCASResponse(
            succeed=ok, previous_not_exist=prev is None, previous_value=prev or b""
        )


class BatchKVServicer(KVServicer):
    def BatchCommands(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        self._record_forwarding(context)
        for message in request_iterator:
            n = len(message.request_ids)
            if self.break_next.is_set():
                self.break_next.clear()
                self.broken_messages.append(n)
                context.abort(grpc.StatusCode.UNAVAILABLE, "injected stream failure")
            self.batch_sizes.append(n)
            out = tikvpb_pb2.BatchCommandsResponse(transport_layer_load=self.load)
            for rid, sub in zip(message.request_ids, message.requests, strict=True):
                kind = sub.WhichOneof("cmd")
                r = out.responses.add()
                if kind == "RawGet":
                    r.RawGet.CopyFrom(self._raw_get(sub.RawGet))
                elif kind == "RawPut":
                    r.RawPut.CopyFrom(self._raw_put(sub.RawPut))
                else:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected {kind}")
                out.request_ids.append(rid)
            yield out


class Server:
    def __init__(self, servicer: KVServicer) -> None:
        self.servicer = servicer
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        tikvpb_pb2_grpc.add_TikvServicer_to_server(servicer, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        self.server.start()

    def stop(self) -> None:
        self.servicer.release.set()
        self.server.stop(0).wait(5)


@pytest.fixture
def batch_server() -> Iterator[Server]:
    s = Server(BatchKVServicer())  # type: ignore[abstract]
    yield s
    s.stop()


@pytest.fixture
def unary_server() -> Iterator[Server]:
    s = Server(KVServicer())  # type: ignore[abstract]
    yield s
    s.stop()


def _config(**kw: Any) -> Config:
    kw.setdefault("grpc_connection_count", 1)
    kw.setdefault("dial_timeout", 2.0)
    return Config(**kw)


async def _poll(cond: Callable[[], bool], what: str, deadline_s: float = 5.0) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def _our_tasks() -> list[asyncio.Task[Any]]:
    return [x for x in asyncio.all_tasks() if x.get_name().startswith("tikv-") and not x.done()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _put(key: bytes, value: bytes) -> kvrpcpb_pb2.RawPutRequest:
    return kvrpcpb_pb2.RawPutRequest(key=key, value=value)


def _get(key: bytes) -> kvrpcpb_pb2.RawGetRequest:
    return kvrpcpb_pb2.RawGetRequest(key=key)


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------


def test_command_table_maps_batch_fields_to_unary_methods() -> None:
    assert COMMANDS["Get"].method == "/tikvpb.Tikv/KvGet"
    assert COMMANDS["Get"].batch_field == "Get"
    assert COMMANDS["RawPut"].method == "/tikvpb.Tikv/RawPut"
    assert COMMANDS["PessimisticRollback"].method == "/tikvpb.Tikv/KVPessimisticRollback"
    assert COMMANDS["RawCompareAndSwap"].batch_field is None
    assert COMMANDS["RawCompareAndSwap"].request_type is kvrpcpb_pb2.RawCASRequest
    assert COMMANDS["Prewrite"].response_type is kvrpcpb_pb2.PrewriteResponse
    assert "Empty" not in COMMANDS
    assert "BatchCommands" not in COMMANDS
    oneof = tikvpb_pb2.BatchCommandsRequest.Request.DESCRIPTOR.oneofs_by_name["cmd"]
    batchable = {f.name for f in oneof.fields} - {"Empty"}
    assert batchable == {c.name for c in COMMANDS.values() if c.batch_field}


def test_store_channel_options_follow_config() -> None:
    opts = dict(store_channel_options(Config(grpc_initial_window_size=1 << 20)))
    assert opts["grpc.http2.lookahead_bytes"] == 1 << 20
    assert opts["grpc.use_local_subchannel_pool"] == 1


# ---------------------------------------------------------------------------------------
# BatchCommands
# ---------------------------------------------------------------------------------------


async def test_batch_commands_round_trip_and_batches_under_concurrency(
    batch_server: Server,
) -> None:
    async with Transport(_config()) as t:
        addr = batch_server.address
        puts = [t.send(addr, "RawPut", _put(b"k%03d" % i, b"v%d" % i)) for i in range(300)]
        await asyncio.gather(*puts)
        gets = await asyncio.gather(
            *(t.send(addr, "RawGet", _get(b"k%03d" % i)) for i in range(300))
        )
        assert [g.value for g in gets] == [b"v%d" % i for i in range(300)]
        missing = await t.send(addr, "RawGet", _get(b"nope"))
        assert missing.not_found
        assert t.stats.max_batch > 1
        assert max(batch_server.servicer.batch_sizes) > 1
        assert max(batch_server.servicer.batch_sizes) <= 128
        assert sum(batch_server.servicer.batch_sizes) == 601
        assert t.stats.batched_requests == 601
        assert t.stats.batches < 601
        assert batch_server.servicer.unary_calls == 0
        assert t.stats.streams_opened == 1


async def test_max_batch_size_is_honoured(batch_server: Server) -> None:
    async with Transport(_config(max_batch_size=5)) as t:
        await asyncio.gather(
            *(t.send(batch_server.address, "RawPut", _put(b"a", b"b")) for _ in range(40))
        )
        assert max(batch_server.servicer.batch_sizes) <= 5
        assert t.stats.max_batch == 5


async def test_batched_and_unary_give_identical_results(batch_server: Server) -> None:
    batch_server.servicer.data.update({b"x": b"1", b"y": b"2"})
    keys = [b"x", b"y", b"z"]
    async with (
        Transport(_config()) as batched,
        Transport(_config(enable_batch_commands=False)) as unary,
    ):
        a = await asyncio.gather(
            *(batched.send(batch_server.address, "RawGet", _get(k)) for k in keys)
        )
        b = await asyncio.gather(
            *(unary.send(batch_server.address, "RawGet", _get(k)) for k in keys)
        )
        assert a == b
        assert unary.stats.unary_requests == 3
        assert unary.stats.batches == 0
        assert batched.stats.unary_requests == 0


async def test_unbatchable_command_goes_unary(batch_server: Server) -> None:
    async with Transport(_config()) as t:
        req = kvrpcpb_pb2.RawCASRequest(key=b"c", value=b"1", previous_not_exist=True)
        resp = await t.send(batch_server.address, "RawCompareAndSwap", req)
        assert resp.succeed
        assert t.stats.unary_requests == 1
        assert batch_server.servicer.data[b"c"] == b"1"


async def test_stream_broken_mid_batch_fails_each_inflight_request_once(
    batch_server: Server,
) -> None:
    async with Transport(_config()) as t:
        addr = batch_server.address
        await t.send(addr, "RawPut", _put(b"warm", b"up"))  # the stream is established
        batch_server.servicer.break_next.set()
        results = await asyncio.gather(
            *(t.send(addr, "RawPut", _put(b"p%d" % i, b"v")) for i in range(50)),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        succeeded = [r for r in results if not isinstance(r, BaseException)]
        # The first message carried some requests and broke the stream; every request in
        # it failed with a transport error that says it may have been sent.
        broken = batch_server.servicer.broken_messages
        assert len(broken) == 1
        assert len(failed) == broken[0]
        assert all(isinstance(r, TransportError) and r.sent for r in failed)
        assert all(isinstance(r, StoreUnavailableError) for r in failed)
        # Requests queued behind it went out on a re-established stream.
        assert len(succeeded) == 50 - len(failed)
        assert t.stats.stream_failures == 1
        # The next request re-establishes the stream.
        assert (await t.send(addr, "RawGet", _get(b"warm"))).value == b"up"
        assert t.stats.streams_opened >= 2
        # Only the live stream's receiver and the sender remain; close ends them too.
        ours = sorted(x.get_name().split("-")[2] for x in _our_tasks())
        assert ours == ["recv", "send"]
    assert _our_tasks() == []


async def test_store_down_fails_unsent(batch_server: Server) -> None:
    addr = f"127.0.0.1:{_free_port()}"
    async with Transport(_config()) as t:
        with pytest.raises(TransportError) as info:
            await t.send(addr, "RawGet", _get(b"k"), timeout=5)
        assert info.value.sent is False
        assert info.value.address == addr


async def test_unary_store_down_fails_unsent() -> None:
    addr = f"127.0.0.1:{_free_port()}"
    async with Transport(_config(enable_batch_commands=False)) as t:
        with pytest.raises(TransportError) as info:
            await t.send(addr, "RawGet", _get(b"k"), timeout=5)
        assert info.value.sent is False
        assert info.value.code == grpc.StatusCode.UNAVAILABLE


async def test_fallback_to_unary_when_batch_commands_unimplemented(unary_server: Server) -> None:
    unary_server.servicer.data[b"u"] = b"v"
    async with Transport(_config()) as t:
        addr = unary_server.address
        results = await asyncio.gather(*(t.send(addr, "RawGet", _get(b"u")) for _ in range(10)))
        assert [r.value for r in results] == [b"v"] * 10
        assert t.stats.unary_fallbacks == 1
        assert not t.uses_batch_commands(addr)
        assert unary_server.servicer.unary_calls == 10
        await t.send(addr, "RawPut", _put(b"w", b"x"))
        assert unary_server.servicer.data[b"w"] == b"x"


async def test_deadline_fails_request_and_drops_late_response(batch_server: Server) -> None:
    async with Transport(_config()) as t:
        addr = batch_server.address
        batch_server.servicer.data[b"slow"] = b"late"
        with pytest.raises(RPCTimeoutError) as info:
            await t.send(addr, "RawGet", _get(b"slow"), timeout=0.2)
        assert info.value.sent is True
        assert t.stats.timeouts == 1
        batch_server.servicer.release.set()
        await _poll(lambda: t.stats.late_responses == 1, "the late response")
        # The stream is still healthy.
        assert (await t.send(addr, "RawGet", _get(b"slow"))).value == b"late"
        assert t.stats.stream_failures == 0


async def test_deadlines_with_mixed_timeouts(batch_server: Server) -> None:
    async with Transport(_config()) as t:
        addr = batch_server.address
        batch_server.servicer.data[b"slow"] = b"late"
        patient = asyncio.ensure_future(t.send(addr, "RawGet", _get(b"slow"), timeout=30))
        hasty = [
            asyncio.ensure_future(t.send(addr, "RawGet", _get(b"slow"), timeout=0.1 * (i + 1)))
            for i in range(3)
        ]
        for h in hasty:
            with pytest.raises(RPCTimeoutError):
                await h
        assert t.stats.timeouts == 3
        assert not patient.done()
        batch_server.servicer.release.set()
        assert (await patient).value == b"late"
        assert (await t.send(addr, "RawGet", _get(b"x"), timeout=0.5)).not_found
        assert t.stats.timeouts == 3


async def test_unary_deadline(unary_server: Server) -> None:
    async with Transport(_config(enable_batch_commands=False)) as t:
        with pytest.raises(RPCTimeoutError) as info:
            await t.send(unary_server.address, "RawGet", _get(b"slow"), timeout=0.2)
        assert info.value.sent is True


async def test_cancelled_caller_leaves_no_inflight_entry(batch_server: Server) -> None:
    async with Transport(_config()) as t:
        addr = batch_server.address
        task = asyncio.ensure_future(t.send(addr, "RawGet", _get(b"slow")))
        await _poll(lambda: t.stats.batches == 1, "the request to be sent")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        batch_server.servicer.release.set()
        await _poll(lambda: t.stats.late_responses == 1, "the dropped response")


async def test_close_fails_waiters_and_cancels_tasks(batch_server: Server) -> None:
    t = Transport(_config(grpc_connection_count=2))
    addr = batch_server.address
    await t.send(addr, "RawPut", _put(b"a", b"b"))
    waiter = asyncio.ensure_future(t.send(addr, "RawGet", _get(b"slow")))
    await _poll(lambda: t.stats.batches == 2, "the slow request to be sent")
    await t.close()
    with pytest.raises(ClientClosedError):
        await waiter
    with pytest.raises(ClientClosedError):
        await t.send(addr, "RawGet", _get(b"a"))
    assert t.closed
    others = [x for x in asyncio.all_tasks() if x is not asyncio.current_task()]
    assert others == []
    await t.close()  # idempotent


async def test_close_address_reconnects(batch_server: Server) -> None:
    async with Transport(_config()) as t:
        addr = batch_server.address
        await t.send(addr, "RawPut", _put(b"a", b"b"))
        await t.close_address(addr)
        assert t.addresses() == []
        assert (await t.send(addr, "RawGet", _get(b"a"))).value == b"b"
        assert t.stats.streams_opened == 2


async def test_close_address_fails_every_tracked_request_and_refuses_new_ones(
    batch_server: Server,
) -> None:
    # A request tracked by a store but in none of its queues or streams when the store is
    # closed (a caller racing close_address after StoreNotMatch) must fail, not hang: the
    # store's deadline timers are cancelled by the close.
    async with Transport(_config()) as t:
        addr = batch_server.address
        await t.send(addr, "RawPut", _put(b"a", b"b"))
        store = t._stores[addr]
        loop = asyncio.get_running_loop()
        stranded: asyncio.Future[Any] = loop.create_future()
        store.track_deadline(
            loop, transport_mod._Entry(10**6, "RawGet", _get(b"a"), stranded, 30.0)
        )
        await t.close_address(addr)
        assert stranded.done()
        error = stranded.exception()
        assert isinstance(error, TransportError)
        assert error.sent is False
        # A caller still holding the closed store is refused at once, as not sent.
        with pytest.raises(TransportError) as refused:
            await store.batch("RawGet", _get(b"a"), 30.0)
        assert refused.value.sent is False
        # The transport itself opens a new store for the address.
        assert (await t.send(addr, "RawGet", _get(b"a"))).value == b"b"


async def test_connection_pool_spreads_batches(batch_server: Server) -> None:
    async with Transport(_config(grpc_connection_count=3)) as t:
        addr = batch_server.address
        for i in range(6):
            await t.send(addr, "RawPut", _put(b"k%d" % i, b"v"))
        # One stream per connection, each used in turn.
        assert t.stats.streams_opened == 3
        assert len(batch_server.servicer.data) == 6


async def test_unknown_command() -> None:
    async with Transport(_config()) as t:
        with pytest.raises(ValueError, match="unknown TiKV command"):
            await t.send("127.0.0.1:1", "Bogus", _get(b"k"))


async def test_sender_bug_is_delivered_to_its_requests(
    batch_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tikv_pd import transport as transport_module

    async def broken(self: Any, batch: Any) -> None:
        raise RuntimeError("bug in the sender")

    async with Transport(_config()) as t:
        addr = batch_server.address
        with monkeypatch.context() as m:
            m.setattr(transport_module._Store, "send_batch", broken)
            with pytest.raises(TransportError) as info:
                await t.send(addr, "RawPut", _put(b"a", b"b"))
            assert info.value.sent is False
            assert isinstance(info.value.cause, RuntimeError)
        # The sender survived and serves the next request.
        await t.send(addr, "RawPut", _put(b"a", b"b"))
        assert batch_server.servicer.data[b"a"] == b"b"


# ---------------------------------------------------------------------------------------
# Batch policies
# ---------------------------------------------------------------------------------------


def test_standard_policy_waits_only_for_dense_arrivals() -> None:
    t = TurboBatchTrigger("standard")
    assert t.wait == 0.0001
    # Sparse arrivals (1 ms apart, clipped to 5 * 100 µs) never trigger a wait.
    assert not any(t.need_fetch_more(0.001) for _ in range(20))
    # Dense arrivals pull the moving average below 80 µs after a few batches.
    decisions = [t.need_fetch_more(0.00001) for _ in range(20)]
    assert not decisions[0]
    assert decisions[-1]
    assert t.preferred_batch_wait_size(7.9, 8) == 8
    assert t.preferred_batch_wait_size(7.5, 8) == 7


def test_basic_positive_and_custom_policies() -> None:
    assert TurboBatchTrigger("basic").wait == 0
    positive = TurboBatchTrigger("positive")
    assert positive.need_fetch_more(10.0)
    assert positive.preferred_batch_wait_size(3.9, 8) == 8
    # Config carries no custom parameters: client-go falls back to the default.
    assert TurboBatchTrigger("custom").opts == BATCH_POLICIES["standard"]


async def test_overloaded_store_makes_the_sender_wait_for_a_fuller_batch(
    batch_server: Server,
) -> None:
    batch_server.servicer.load = 500
    config = _config(max_batch_wait_time=5.0, batch_wait_size=8, batch_policy="basic")
    async with Transport(config) as t:
        addr = batch_server.address
        await t.send(addr, "RawPut", _put(b"load", b"x"))  # learn the store's load
        tasks = []
        for i in range(8):
            tasks.append(asyncio.ensure_future(t.send(addr, "RawPut", _put(b"k%d" % i, b"v"))))
            await asyncio.sleep(0)  # let the sender run between requests
        await asyncio.gather(*tasks)
        assert batch_server.servicer.batch_sizes[-1] == 8


async def test_unloaded_store_does_not_wait(batch_server: Server) -> None:
    config = _config(max_batch_wait_time=5.0, batch_wait_size=8, batch_policy="basic")
    async with Transport(config) as t:
        addr = batch_server.address
        await t.send(addr, "RawPut", _put(b"load", b"x"))
        tasks = []
        for i in range(8):
            tasks.append(asyncio.ensure_future(t.send(addr, "RawPut", _put(b"k%d" % i, b"v"))))
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        assert batch_server.servicer.batch_sizes[1] < 8


async def test_close_while_connecting_fails_the_batch_in_hand() -> None:
    # A listener that never speaks HTTP/2: the stream waits for its connection.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        addr = f"127.0.0.1:{silent.getsockname()[1]}"
        t = Transport(_config(dial_timeout=60.0))
        waiter = asyncio.ensure_future(t.send(addr, "RawGet", _get(b"k"), timeout=60))
        await _poll(lambda: addr in t._stores, "the store")
        store = t._stores[addr]
        await _poll(lambda: not store.queue, "the sender to take the request")
        await t.close()
        with pytest.raises(ClientClosedError):
            await asyncio.wait_for(waiter, 5)


async def test_failed_dial_fails_the_requests_queued_behind_it() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        addr = f"127.0.0.1:{silent.getsockname()[1]}"
        async with Transport(_config(dial_timeout=0.5)) as t:
            first = asyncio.ensure_future(t.send(addr, "RawGet", _get(b"k"), timeout=30))
            await _poll(lambda: addr in t._stores and not t._stores[addr].queue, "the dial")
            later = [
                asyncio.ensure_future(t.send(addr, "RawGet", _get(b"k"), timeout=30))
                for _ in range(20)
            ]
            results = await asyncio.gather(first, *later, return_exceptions=True)
            assert all(isinstance(r, TransportError) and not r.sent for r in results)
            assert t.stats.stream_failures == 1


@pytest.mark.parametrize("batch", [True, False])
async def test_forwarded_requests_carry_the_forwarding_metadata(
    batch_server: Server, batch: bool
) -> None:
    batch_server.servicer.data[b"f"] = b"v"
    async with Transport(_config(enable_batch_commands=batch)) as t:
        addr = batch_server.address
        plain = await t.send(addr, "RawGet", _get(b"f"))
        forwarded = await t.send(addr, "RawGet", _get(b"f"), forwarded_host="10.0.0.9:20160")
        assert plain == forwarded
        assert batch_server.servicer.forwarded == ["", "10.0.0.9:20160"]
        # Forwarding shares the proxy's connections; closing the proxy closes both.
        await t.close_address(addr)
        assert _our_tasks() == []
        await t.send(addr, "RawGet", _get(b"f"), forwarded_host="10.0.0.9:20160")
        assert batch_server.servicer.forwarded[-1] == "10.0.0.9:20160"
