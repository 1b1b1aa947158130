"""Health feedback in the transport: listeners, out-of-date feedback dropped (mock store)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

mockstore = pytest.importorskip("tikv_mockstore")

import tikv_pd.transport as transport_mod  # noqa: E402
from tikv_pd.config import Config  # noqa: E402
from tikv_pd.transport import Transport  # noqa: E402
from tikv_proto import kvrpcpb_pb2  # noqa: E402

MockCluster = mockstore.MockCluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with MockCluster(stores=1) as c:
        yield c


def _address(cluster: Any) -> str:
    (address,) = cluster.store_addresses.values()
    return str(address)


async def _ask(transport: Transport, address: str) -> kvrpcpb_pb2.HealthFeedback:
    resp = await transport.send(
        address, "GetHealthFeedback", kvrpcpb_pb2.GetHealthFeedbackRequest(), 5.0
    )
    return resp.health_feedback  # type: ignore[no-any-return]


def _feedback(seq: int, score: int = 1) -> kvrpcpb_pb2.HealthFeedback:
    return kvrpcpb_pb2.HealthFeedback(store_id=1, feedback_seq_no=seq, slow_score=score)


async def test_listeners_get_each_feedback_the_store_sends(cluster: Any) -> None:
    address = _address(cluster)
    got: list[kvrpcpb_pb2.HealthFeedback] = []
    async with Transport(Config(grpc_connection_count=2)) as transport:
        transport.add_health_listener(got.append)
        cluster.set_slow_score(1, 88)
        try:
            answers = [await _ask(transport, address) for _ in range(4)]
        finally:
            cluster.set_slow_score(1, 1)
        # Every GetHealthFeedback answer also came as the message's feedback, in order.
        assert [f.feedback_seq_no for f in got] == [f.feedback_seq_no for f in answers]
        assert all(f.store_id == 1 and f.slow_score == 88 for f in got)
        assert transport.stats.health_feedbacks == 4
        transport.remove_health_listener(got.append)
        transport.remove_health_listener(got.append)  # absent: no-op
        await _ask(transport, address)
        assert len(got) == 4
        with pytest.raises(TypeError, match="listener must be callable"):
            transport.add_health_listener(42)  # type: ignore[arg-type]


async def test_out_of_date_feedback_is_dropped(cluster: Any) -> None:
    address = _address(cluster)
    seqs: list[int] = []
    async with Transport(Config(grpc_connection_count=2)) as transport:
        transport.add_health_listener(lambda f: seqs.append(f.feedback_seq_no))
        await _ask(transport, address)
        await _ask(transport, address)  # the second connection's stream (round robin)
        store = transport._stores[address]
        one, two = (conn.stream for conn in store.conns)
        assert one is not None and two is not None and one is not two
        seqs.clear()
        base = max(one.feedback_seq, two.feedback_seq)
        deliver = store.on_health_feedback
        deliver(one, _feedback(base + 10))
        deliver(two, _feedback(base + 9))  # older than what the other stream delivered
        deliver(two, _feedback(base + 11))
        deliver(one, _feedback(base + 11))  # not newer
        deliver(one, _feedback(base + 5))  # older than this stream's own
        assert seqs == [base + 10, base + 11]
        stale = transport.stats.stale_feedbacks
        assert stale == 3
        # A restarted store numbers from a lower value: once the old streams are gone,
        # its new stream is heard.
        one.broken = two.broken = True
        fresh = transport_mod._Stream(call=None)
        deliver(fresh, _feedback(7))
        assert seqs[-1] == 7


async def test_a_failing_listener_does_not_stop_the_receiver(
    cluster: Any, caplog: pytest.LogCaptureFixture
) -> None:
    address = _address(cluster)
    got: list[int] = []

    def broken(feedback: kvrpcpb_pb2.HealthFeedback) -> None:
        raise RuntimeError("listener bug")

    async with Transport(Config(grpc_connection_count=1)) as transport:
        transport.add_health_listener(broken)
        transport.add_health_listener(lambda f: got.append(f.feedback_seq_no))
        with caplog.at_level(logging.ERROR, logger="tikv.transport"):
            first = await _ask(transport, address)
            second = await _ask(transport, address)  # the same stream still answers
        assert got == [first.feedback_seq_no, second.feedback_seq_no]
        assert any("health feedback listener" in r.getMessage() for r in caplog.records)


async def _poll(cond: Any, what: str, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_a_store_with_a_high_score_and_no_news_is_asked_again(cluster: Any) -> None:
    # client-go's store health ticker: a store whose score stayed above 1 for 15 s
    # without feedback gets a GetHealthFeedback request (here every 0.15 s for the test).
    address = _address(cluster)
    got: list[int] = []
    transport = Transport(Config(grpc_connection_count=1))
    transport.health_refresh_seconds = 0.15
    transport.add_health_listener(lambda f: got.append(f.slow_score))
    try:
        cluster.set_slow_score(1, 60)
        before = cluster.counters.count("GetHealthFeedback", 1)
        await _ask(transport, address)
        assert transport._health_task is not None  # a score above 1: the refresher runs
        await _poll(lambda: transport.stats.health_probes >= 2, "two refresh requests")
        assert cluster.counters.count("GetHealthFeedback", 1) >= before + 3
        assert got[:3] == [60, 60, 60]
        # The store recovers: the next refresh brings score 1 and the refresher stops.
        cluster.set_slow_score(1, 1)
        await _poll(lambda: transport._health_task is None, "the refresher to stop")
        assert got[-1] == 1
        probes = transport.stats.health_probes
        # It starts again with the next high score, and close() cancels it.
        cluster.set_slow_score(1, 70)
        await _ask(transport, address)
        task = transport._health_task
        assert task is not None and not task.done()
        await transport.close()
        assert task.done() and transport._health_task is None
        assert transport.stats.health_probes >= probes
    finally:
        cluster.set_slow_score(1, 1)
        await transport.close()


async def test_the_refresher_forgets_a_store_whose_connection_was_closed(cluster: Any) -> None:
    # A store last heard with a high score whose connections are closed (StoreNotMatch, a
    # moved store) cannot be asked any more: the refresher stops instead of ticking for
    # it until the transport closes; the store's next feedback starts it again.
    address = _address(cluster)
    transport = Transport(Config(grpc_connection_count=1))
    transport.health_refresh_seconds = 0.15
    try:
        cluster.set_slow_score(1, 60)
        await _ask(transport, address)
        task = transport._health_task
        assert task is not None and not task.done()
        await transport.close_address(address)
        await _poll(lambda: transport._health_task is None, "the refresher to stop")
        assert task.done() and not task.cancelled()
        assert task.exception() is None
        await _ask(transport, address)  # reconnects; the high score is heard again
        assert transport._health_task is not None
    finally:
        cluster.set_slow_score(1, 1)
        await transport.close()


async def test_a_failing_refresher_is_logged(
    cluster: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # The refresher is a background task: a bug in it must be reported, not lost.
    address = _address(cluster)
    transport = Transport(Config(grpc_connection_count=1))
    transport.health_refresh_seconds = "soon"  # type: ignore[assignment]
    try:
        cluster.set_slow_score(1, 60)
        with caplog.at_level(logging.ERROR, logger="tikv.transport"):
            await _ask(transport, address)
            task = transport._health_task
            assert task is not None
            await asyncio.wait([task], timeout=10)
            assert task.done()
            await asyncio.sleep(0)  # the done callbacks run
        assert any(
            "health feedback refresher stopped" in r.getMessage() and r.exc_info
            for r in caplog.records
        )
        # close() still closes the connections (it used to re-raise the task's error
        # before reaching them).
        await transport.close()
        assert transport.closed and transport.addresses() == []
    finally:
        cluster.set_slow_score(1, 1)
        await transport.close()
