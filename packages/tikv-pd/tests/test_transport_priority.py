"""The BatchCommands sender's priority queue against the mock store, observed server-side.

client-go queues batched requests by ``Context.resource_control_context.override_priority``
(``internal/client/priority_queue.go``, ``batchCommandsBuilder``): the highest go into the
next message first, requests of priority >= 10 do not count against the batch limit, and
requests whose caller gave up are never sent. Here the sender is held inside the write of a
message (a gate around the stream's ``write``) while requests queue up behind it; the mock
logs every BatchCommands message it receives, so the tests read which request travelled in
which message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc.aio
import pytest

mockstore = pytest.importorskip("tikv_mockstore")

from tikv_mockstore.testing import context_for  # noqa: E402
from tikv_pd.batch_queue import HIGH_TASK_PRIORITY  # noqa: E402
from tikv_pd.config import Config  # noqa: E402
from tikv_pd.transport import RPCTimeoutError, Transport, default_channel_factory  # noqa: E402
from tikv_proto import kvrpcpb_pb2, tikvpb_pb2  # noqa: E402

MockCluster = mockstore.MockCluster


class Gate:
    """Holds every stream write while closed; counts the writes waiting."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.opened.set()
        self.waiting = 0

    def close(self) -> None:
        self.opened.clear()

    def open(self) -> None:
        self.opened.set()


class GatedCall:
    """A BatchCommands call whose ``write`` waits for the gate."""

    def __init__(self, call: Any, gate: Gate) -> None:
        self._call = call
        self._gate = gate

    async def write(self, message: Any) -> None:
        gate = self._gate
        if not gate.opened.is_set():
            gate.waiting += 1
            try:
                await gate.opened.wait()
            finally:
                gate.waiting -= 1
        await self._call.write(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class GatedChannel:
    """A channel whose stream-stream calls are gated; everything else is the channel's."""

    def __init__(self, channel: grpc.aio.Channel, gate: Gate) -> None:
        self._channel = channel
        self._gate = gate

    def stream_stream(self, *args: Any, **kwargs: Any) -> Callable[..., GatedCall]:
        multicallable = self._channel.stream_stream(*args, **kwargs)
        gate = self._gate

        def call(*a: Any, **kw: Any) -> GatedCall:
            return GatedCall(multicallable(*a, **kw), gate)

        return call

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


@pytest.fixture
def cluster() -> Iterator[Any]:
    with MockCluster(stores=1) as c:
        yield c


async def _poll(cond: Callable[[], bool], what: str, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


class Rig:
    """A transport to the mock's one store, with a gate on its stream writes."""

    def __init__(self, cluster: Any, max_batch_size: int) -> None:
        self.cluster = cluster
        self.gate = Gate()
        config = Config(grpc_connection_count=1, max_batch_size=max_batch_size)
        factory = default_channel_factory(config)
        self.transport = Transport(
            config,
            channel_factory=lambda addr, i: GatedChannel(factory(addr, i), self.gate),  # type: ignore[arg-type]
        )
        (self.address,) = cluster.store_addresses.values()
        region = cluster.region_by_key(b"")
        self.ctx = context_for(region)

    def put(self, key: bytes, priority: int = 0) -> kvrpcpb_pb2.RawPutRequest:
        ctx = kvrpcpb_pb2.Context()
        ctx.CopyFrom(self.ctx)
        if priority:
            ctx.resource_control_context.override_priority = priority
        return kvrpcpb_pb2.RawPutRequest(context=ctx, key=key, value=b"v-" + key)

    async def send_put(self, key: bytes, priority: int = 0, rpc_timeout: float = 30.0) -> Any:
        resp = await self.transport.send(
            self.address, "RawPut", self.put(key, priority), rpc_timeout
        )
        assert not resp.HasField("region_error") and not resp.error
        return resp

    async def value(self, key: bytes) -> bytes | None:
        req = kvrpcpb_pb2.RawGetRequest(context=self.ctx, key=key)
        resp = await self.transport.send(self.address, "RawGet", req)
        assert not resp.HasField("region_error")
        return None if resp.not_found else bytes(resp.value)

    def queued(self) -> int:
        store = self.transport._stores.get(self.address)
        return 0 if store is None else len(store.queue)

    async def hold_sender(self) -> asyncio.Task[Any]:
        """Close the gate and send a blocker: the sender then waits inside its write."""
        self.gate.close()
        blocker = asyncio.create_task(self.send_put(b"blocker"))
        await _poll(lambda: self.gate.waiting == 1, "the sender to block in its write")
        return blocker


def _put_keys(messages: list[tuple[int, tikvpb_pb2.BatchCommandsRequest]]) -> list[list[bytes]]:
    """The RawPut keys of each logged message, in message order."""
    return [
        [r.RawPut.key for r in m.requests if r.WhichOneof("cmd") == "RawPut"] for _, m in messages
    ]


async def test_higher_priority_requests_leave_in_an_earlier_message(cluster: Any) -> None:
    rig = Rig(cluster, max_batch_size=2)
    async with rig.transport:
        await rig.send_put(b"warm")  # the stream is open before the sender is held
        cluster.counters.log_messages()
        try:
            blocker = await rig.hold_sender()
            lows = [asyncio.create_task(rig.send_put(b"low%d" % i)) for i in range(5)]
            mid = asyncio.create_task(rig.send_put(b"mid", 5))
            top = asyncio.create_task(rig.send_put(b"top", HIGH_TASK_PRIORITY + 2))
            await _poll(lambda: rig.queued() == 7, "seven requests queued behind the blocker")
            rig.gate.open()
            await asyncio.gather(blocker, *lows, mid, top)
            messages = cluster.counters.messages()
        finally:
            cluster.counters.log_messages(False)
        assert _put_keys(messages) == [
            [b"blocker"],
            # Queued last, sent first: the top one (not counted against the limit of 2),
            # then the mid one and the oldest low one.
            [b"top", b"mid", b"low0"],
            [b"low1", b"low2"],
            [b"low3", b"low4"],
        ]
        for key in (b"top", b"mid", b"low0", b"low4"):
            assert await rig.value(key) == b"v-" + key


async def test_requests_of_callers_that_gave_up_are_never_sent(cluster: Any) -> None:
    rig = Rig(cluster, max_batch_size=128)
    async with rig.transport:
        await rig.send_put(b"warm")
        cluster.counters.log_messages()
        try:
            blocker = await rig.hold_sender()
            kept = asyncio.create_task(rig.send_put(b"kept"))
            dropped = asyncio.create_task(rig.send_put(b"dropped"))
            dropped_high = asyncio.create_task(rig.send_put(b"dropped-high", HIGH_TASK_PRIORITY))
            expired = asyncio.create_task(rig.send_put(b"expired", rpc_timeout=0.05))
            kept_high = asyncio.create_task(rig.send_put(b"kept-high", HIGH_TASK_PRIORITY))
            await _poll(lambda: rig.queued() == 5, "five requests queued behind the blocker")
            dropped.cancel()
            dropped_high.cancel()
            # The expired one fails by its deadline while still queued: not sent.
            with pytest.raises(RPCTimeoutError) as timed_out:
                await expired
            assert timed_out.value.sent is False
            for task in (dropped, dropped_high):
                with pytest.raises(asyncio.CancelledError):
                    await task
            rig.gate.open()
            await asyncio.gather(blocker, kept, kept_high)
            messages = cluster.counters.messages()
        finally:
            cluster.counters.log_messages(False)
        assert _put_keys(messages) == [[b"blocker"], [b"kept-high", b"kept"]]
        assert cluster.counters.count("RawPut") == 4  # warm, blocker, kept, kept-high
        for key in (b"dropped", b"dropped-high", b"expired"):
            assert await rig.value(key) is None
        assert await rig.value(b"kept") == b"v-kept"
        assert rig.queued() == 0
