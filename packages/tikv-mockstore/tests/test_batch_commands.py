"""BatchCommands: one pass per message, same answers as unary, Empty, deferred responses."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from tikv_mockstore import MockCluster, tikv_service
from tikv_mockstore.handlers import HANDLERS, StoreScope
from tikv_mockstore.testing import Stubs, context_for
from tikv_proto import kvrpcpb_pb2, tikvpb_pb2


@pytest.fixture(scope="module")
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=2, split_raw=[b"m"]) as c:
        yield c


@pytest.fixture
def stubs(cluster: MockCluster) -> Iterator[Stubs]:
    with Stubs(cluster) as s:
        yield s


class Stream:
    """A BatchCommands stream driven one message at a time."""

    def __init__(self, stubs: Stubs, store_id: int) -> None:
        self._q: queue.Queue[tikvpb_pb2.BatchCommandsRequest | None] = queue.Queue()
        self._call = stubs.tikv(store_id).BatchCommands(self._gen())
        self._it = iter(self._call)

    def _gen(self) -> Iterator[tikvpb_pb2.BatchCommandsRequest]:
        while (item := self._q.get()) is not None:
            yield item

    def send(self, items: list[tuple[int, str, Any]]) -> None:
        req = tikvpb_pb2.BatchCommandsRequest()
        for rid, name, sub in items:
            req.requests.add(**{name: sub})
            req.request_ids.append(rid)
        self._q.put(req)

    def recv(self) -> dict[int, Any]:
        resp = next(self._it)
        return {
            rid: getattr(r, r.WhichOneof("cmd") or "")
            for rid, r in zip(resp.request_ids, resp.responses, strict=True)
        }

    def close(self) -> list[tikvpb_pb2.BatchCommandsResponse]:
        self._q.put(None)
        return list(self._it)


def test_same_results_as_unary(cluster: MockCluster, stubs: Stubs) -> None:
    left = cluster.region_by_key(b"a")
    right = cluster.region_by_key(b"z")
    assert left is not None and right is not None
    store = left.leader_store_id
    lctx = context_for(left)
    stale = context_for(left)
    stale.region_epoch.version = 1  # before the split at b"m"
    for k in (b"a", b"b", b"c"):
        stubs.tikv(store).RawPut(kvrpcpb_pb2.RawPutRequest(context=lctx, key=k, value=k * 2))
    requests: list[tuple[str, Any, str]] = [
        ("RawGet", kvrpcpb_pb2.RawGetRequest(context=lctx, key=b"a"), "RawGet"),
        ("RawGet", kvrpcpb_pb2.RawGetRequest(context=lctx, key=b"zz"), "RawGet"),
        ("RawScan", kvrpcpb_pb2.RawScanRequest(context=lctx, start_key=b"a", limit=5), "RawScan"),
        (
            "RawBatchGet",
            kvrpcpb_pb2.RawBatchGetRequest(context=lctx, keys=[b"b", b"q"]),
            "RawBatchGet",
        ),
        ("RawGet", kvrpcpb_pb2.RawGetRequest(context=stale, key=b"a"), "RawGet"),
        ("RawGet", kvrpcpb_pb2.RawGetRequest(context=context_for(right), key=b"z"), "RawGet"),
    ]
    unary = [getattr(stubs.tikv(store), method)(req) for _, req, method in requests]
    stream = Stream(stubs, store)
    stream.send([(100 + i, name, req) for i, (name, req, _) in enumerate(requests)])
    got: dict[int, Any] = {}
    while len(got) < len(requests):
        got.update(stream.recv())
    for i, want in enumerate(unary):
        assert got[100 + i] == want
    assert got[104].region_error.HasField("epoch_not_match")
    assert got[105].not_found
    stream.close()


def test_empty_is_answered_with_its_test_id(stubs: Stubs) -> None:
    stream = Stream(stubs, 1)
    stream.send([(1, "Empty", tikvpb_pb2.BatchCommandsEmptyRequest(test_id=77))])
    assert stream.recv() == {1: tikvpb_pb2.BatchCommandsEmptyResponse(test_id=77)}
    assert stream.close() == []


def test_counts_sub_requests_under_the_method(cluster: MockCluster, stubs: Stubs) -> None:
    region = cluster.region_by_key(b"a")
    assert region is not None
    before = cluster.counters.count("RawGet", store=region.leader_store_id)
    ctx = context_for(region)
    ctx.request_source = "batch-test"
    stream = Stream(stubs, region.leader_store_id)
    stream.send([(i, "RawGet", kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"a")) for i in range(3)])
    assert len(stream.recv()) == 3
    stream.close()
    assert cluster.counters.count("RawGet", store=region.leader_store_id) == before + 3
    last = cluster.counters.last_context("RawGet")
    assert last is not None and last.request_source == "batch-test"


def test_large_answers_leave_in_parts(cluster: MockCluster, stubs: Stubs) -> None:
    """A message of many large sub-requests is answered in parts, not in one message.

    TiKV answers each sub-request as it completes; one response holding every answer would
    make the client wait for the last of them (client and mock taking turns: the
    raw_batch_get benchmark at concurrency 128 ran slower than at 16, both processes idle).
    """
    region = cluster.region_by_key(b"big")
    assert region is not None
    store = region.leader_store_id
    ctx = context_for(region)
    keys = [b"big%03d" % i for i in range(20)]
    value = b"v" * 1000
    for k in keys:
        stubs.tikv(store).RawPut(kvrpcpb_pb2.RawPutRequest(context=ctx, key=k, value=value))
    sub = kvrpcpb_pb2.RawBatchGetRequest(context=ctx, keys=keys)
    answer_size = stubs.tikv(store).RawBatchGet(sub).ByteSize()
    per_message = -(-tikv_service.RESPONSE_FLUSH_BYTES // answer_size)  # ceil
    n = 4 * per_message
    before = cluster.counters.count("RawBatchGet", store=store)
    stream = Stream(stubs, store)
    stream.send([(i, "RawBatchGet", sub) for i in range(n)])
    first = stream.recv()
    assert cluster.counters.count("RawBatchGet", store=store) >= before + per_message
    rest = stream.close()
    # The first answers leave as soon as they reach RESPONSE_FLUSH_BYTES (counted by then);
    # the other sub-requests follow in further messages, each answered once.
    assert sorted(first) == list(range(per_message))
    assert all(len(r.pairs) == len(keys) for r in first.values())
    ids = [rid for message in rest for rid in message.request_ids]
    assert len(rest) == 3
    assert sorted(ids) == list(range(per_message, n))
    assert cluster.counters.count("RawBatchGet", store=store) == before + n


@pytest.fixture
def deferred_handler() -> Iterator[tuple[list[futures.Future[Any]], threading.Event]]:
    """A test-only handler for RawCoprocessor that answers through a Future."""
    if "RawCoprocessor" in HANDLERS:
        pytest.skip("RawCoprocessor has a real handler")
    pending: list[futures.Future[Any]] = []
    called = threading.Event()

    def handle(scope: StoreScope, req: Any) -> futures.Future[Any]:
        fut: futures.Future[Any] = futures.Future()
        pending.append(fut)
        called.set()
        return fut

    HANDLERS["RawCoprocessor"] = handle
    try:
        yield pending, called
    finally:
        del HANDLERS["RawCoprocessor"]
        for fut in pending:
            if not fut.done():
                fut.set_result(kvrpcpb_pb2.RawCoprocessorResponse())


def test_deferred_response_does_not_hold_up_others(
    cluster: MockCluster,
    stubs: Stubs,
    deferred_handler: tuple[list[futures.Future[Any]], threading.Event],
) -> None:
    pending, _ = deferred_handler
    region = cluster.region_by_key(b"a")
    assert region is not None
    ctx = context_for(region)
    stream = Stream(stubs, region.leader_store_id)
    stream.send(
        [
            (1, "RawCoprocessor", kvrpcpb_pb2.RawCoprocessorRequest(context=ctx, data=b"q")),
            (2, "RawGet", kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"a")),
        ]
    )
    first = stream.recv()
    assert list(first) == [2]
    (fut,) = pending
    fut.set_result(kvrpcpb_pb2.RawCoprocessorResponse(data=b"done"))
    second = stream.recv()
    assert second == {1: kvrpcpb_pb2.RawCoprocessorResponse(data=b"done")}
    assert stream.close() == []


def test_half_close_waits_for_deferred(
    cluster: MockCluster,
    stubs: Stubs,
    deferred_handler: tuple[list[futures.Future[Any]], threading.Event],
) -> None:
    pending, called = deferred_handler
    region = cluster.region_by_key(b"a")
    assert region is not None
    stream = Stream(stubs, region.leader_store_id)
    stream.send(
        [(5, "RawCoprocessor", kvrpcpb_pb2.RawCoprocessorRequest(context=context_for(region)))]
    )
    assert called.wait(10)
    result: list[list[tikvpb_pb2.BatchCommandsResponse]] = []
    closer = threading.Thread(target=lambda: result.append(stream.close()))
    closer.start()
    pending[0].set_result(kvrpcpb_pb2.RawCoprocessorResponse(data=b"late"))
    closer.join(10)
    assert not closer.is_alive()
    (msgs,) = result
    assert [list(m.request_ids) for m in msgs] == [[5]]


def test_unary_waits_for_a_deferred_result(
    cluster: MockCluster,
    stubs: Stubs,
    deferred_handler: tuple[list[futures.Future[Any]], threading.Event],
) -> None:
    pending, called = deferred_handler
    region = cluster.region_by_key(b"a")
    assert region is not None
    call = stubs.tikv(region.leader_store_id).RawCoprocessor.future(
        kvrpcpb_pb2.RawCoprocessorRequest(context=context_for(region))
    )
    assert called.wait(10)
    assert not call.done()
    pending[0].set_result(kvrpcpb_pb2.RawCoprocessorResponse(data=b"u"))
    assert call.result(timeout=10).data == b"u"


def test_unimplemented_method(cluster: MockCluster, stubs: Stubs) -> None:
    candidates = ["RegisterLockObserver", "CheckLockObserver", "RemoveLockObserver"]
    name = next((n for n in candidates if n not in HANDLERS), None)
    if name is None:
        pytest.skip("every candidate method has a handler")
    request_type = type(getattr(kvrpcpb_pb2, f"{name}Request")())
    with pytest.raises(grpc.RpcError) as err:
        getattr(stubs.tikv(1), name)(request_type())
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_lock_wait_history_is_unimplemented_as_in_tikv(stubs: Stubs) -> None:
    # TiKV's kv.rs serves GetLockWaitInfo (the waiter table) but has no GetLockWaitHistory.
    assert not stubs.tikv(1).GetLockWaitInfo(kvrpcpb_pb2.GetLockWaitInfoRequest()).entries
    with pytest.raises(grpc.RpcError) as err:
        stubs.tikv(1).GetLockWaitHistory(kvrpcpb_pb2.GetLockWaitHistoryRequest())
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_health_feedback(cluster: MockCluster, stubs: Stubs) -> None:
    one = stubs.tikv(1).GetHealthFeedback(kvrpcpb_pb2.GetHealthFeedbackRequest())
    two = stubs.tikv(1).GetHealthFeedback(kvrpcpb_pb2.GetHealthFeedbackRequest())
    assert one.health_feedback.store_id == 1
    assert one.health_feedback.slow_score == 1
    assert two.health_feedback.feedback_seq_no > one.health_feedback.feedback_seq_no
    stream = tikvpb_pb2.BatchCommandsRequest(request_ids=[1])
    stream.requests.add(GetHealthFeedback=kvrpcpb_pb2.GetHealthFeedbackRequest())
    (resp,) = list(stubs.tikv(2).BatchCommands(iter([stream])))
    assert resp.health_feedback.store_id == 2
    assert resp.responses[0].GetHealthFeedback.health_feedback == resp.health_feedback


def test_slow_score_is_reported_in_health_feedback(cluster: MockCluster, stubs: Stubs) -> None:
    try:
        cluster.set_slow_score(1, 95)
        unary = stubs.tikv(1).GetHealthFeedback(kvrpcpb_pb2.GetHealthFeedbackRequest())
        assert unary.health_feedback.slow_score == 95
        stream = tikvpb_pb2.BatchCommandsRequest(request_ids=[1])
        stream.requests.add(GetHealthFeedback=kvrpcpb_pb2.GetHealthFeedbackRequest())
        (resp,) = list(stubs.tikv(1).BatchCommands(iter([stream])))
        assert resp.health_feedback.slow_score == 95
        # Other stores are not affected.
        other = stubs.tikv(2).GetHealthFeedback(kvrpcpb_pb2.GetHealthFeedbackRequest())
        assert other.health_feedback.slow_score == 1
    finally:
        cluster.set_slow_score(1, 1)
    after = stubs.tikv(1).GetHealthFeedback(kvrpcpb_pb2.GetHealthFeedbackRequest())
    assert after.health_feedback.slow_score == 1
    with pytest.raises(ValueError, match=r"score must be in \[1, 100\], got 0"):
        cluster.set_slow_score(1, 0)
    with pytest.raises(TypeError, match="score must be an int"):
        cluster.set_slow_score(1, 50.0)  # type: ignore[arg-type]


def test_message_log_keeps_each_batch_commands_message_in_order(
    cluster: MockCluster, stubs: Stubs
) -> None:
    first = tikvpb_pb2.BatchCommandsRequest(request_ids=[1, 2])
    first.requests.add(Empty=tikvpb_pb2.BatchCommandsEmptyRequest(test_id=11))
    first.requests.add(Empty=tikvpb_pb2.BatchCommandsEmptyRequest(test_id=12))
    second = tikvpb_pb2.BatchCommandsRequest(request_ids=[3])
    second.requests.add(Empty=tikvpb_pb2.BatchCommandsEmptyRequest(test_id=13))
    list(stubs.tikv(2).BatchCommands(iter([first])))  # not logged: logging is off
    cluster.counters.log_messages()
    try:
        list(stubs.tikv(2).BatchCommands(iter([first, second])))
        logged = cluster.counters.messages()
    finally:
        cluster.counters.log_messages(False)
    assert logged == [(2, first), (2, second)]
    list(stubs.tikv(2).BatchCommands(iter([second])))
    assert cluster.counters.messages() == logged  # stopped: nothing more


def test_store_safe_ts_follows_the_clock(cluster: MockCluster, stubs: Stubs) -> None:
    first = stubs.tikv(1).GetStoreSafeTS(kvrpcpb_pb2.StoreSafeTSRequest()).safe_ts
    cluster.clock.advance(5_000)
    second = stubs.tikv(1).GetStoreSafeTS(kvrpcpb_pb2.StoreSafeTSRequest()).safe_ts
    assert (second >> 18) - (first >> 18) >= 5_000


def test_store_safe_ts_stays_below_prewrite_locks(cluster: MockCluster, stubs: Stubs) -> None:
    if "Prewrite" not in HANDLERS:
        pytest.skip("no transactional handlers")
    start_ts = cluster.current_ts()
    stub, ctx = stubs.route(b"safe-ts", txn=True)
    resp = stub.KvPrewrite(
        kvrpcpb_pb2.PrewriteRequest(
            context=ctx,
            mutations=[kvrpcpb_pb2.Mutation(op=kvrpcpb_pb2.Put, key=b"safe-ts", value=b"v")],
            primary_lock=b"safe-ts",
            start_version=start_ts,
            lock_ttl=3000,
        )
    )
    assert not resp.errors and not resp.HasField("region_error")
    cluster.clock.advance(1_000)
    safe = stubs.tikv(1).GetStoreSafeTS(kvrpcpb_pb2.StoreSafeTSRequest()).safe_ts
    assert safe == start_ts  # TiKV resolver: min(tso, oldest lock start_ts)
    stub.KvBatchRollback(
        kvrpcpb_pb2.BatchRollbackRequest(context=ctx, start_version=start_ts, keys=[b"safe-ts"])
    )
    assert stubs.tikv(1).GetStoreSafeTS(kvrpcpb_pb2.StoreSafeTSRequest()).safe_ts > start_ts


def test_cancelled_stream_releases_its_threads(cluster: MockCluster, stubs: Stubs) -> None:
    import time

    def readers() -> int:
        return sum(1 for t in threading.enumerate() if t.name.endswith("-batch"))

    before = readers()
    stream = Stream(stubs, 1)
    stream.send([(1, "Empty", tikvpb_pb2.BatchCommandsEmptyRequest(test_id=1))])
    assert stream.recv() == {1: tikvpb_pb2.BatchCommandsEmptyResponse(test_id=1)}
    assert readers() == before + 1
    stream._call.cancel()  # type: ignore[no-untyped-call]
    deadline = time.monotonic() + 10
    while readers() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert readers() == before
    stream._q.put(None)
