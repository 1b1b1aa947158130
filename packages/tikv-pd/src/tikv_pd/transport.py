"""The store transport: per-store gRPC channels, unary calls and the BatchCommands stream.

:class:`Transport` sends one kvproto request to one TiKV address and returns the
response message. By default every batchable command travels on the store's
``Tikv/BatchCommands`` bidirectional stream, as client-go does
(``internal/client/client_batch.go``):

* Requests are queued per store, highest ``Context.resource_control_context.
  override_priority`` first and in arrival order among equals (client-go's priority queue,
  :mod:`tikv_pd.batch_queue`). One *sender* task drains whatever is queued, up to
  ``Config.max_batch_size`` (128) requests, into one ``BatchCommandsRequest`` with fresh
  request ids, and writes it; requests of priority 10 or more (client-go
  ``highTaskPriority``) go along without counting against that limit, and requests whose
  caller gave up (cancelled, or past their deadline) are dropped, never sent. There is no
  timer: while one message is being written the queue fills, so batches grow with the load
  by themselves (see
  ``../shared/reference/grpc-limits.md``: the gRPC message, not the request, is the unit of
  cost). Extra waits follow client-go's batch policies (:class:`TurboBatchTrigger`): up to
  ``max_batch_wait_time`` when the store reports an overloaded transport layer, and with the
  default ``standard`` policy up to 100 µs when requests arrive less than 80 µs apart.
* Each connection's stream has a *receiver* task that resolves the waiting futures by
  request id. A response for an id nobody waits for (its request timed out) is dropped.
* Every request has a deadline; when it passes, the request fails with
  :class:`RPCTimeoutError` and its late response is dropped.
* When a stream breaks, each request written to it fails exactly once with a
  :class:`TransportError` (``sent=True``: it may have been executed); requests not yet
  written wait for the next stream, which the sender opens on demand. A stream that cannot
  be opened fails its batch with ``sent=False`` (it never left the client), so the request
  pipeline may safely retry even non-idempotent writes.
* TiKV's health feedback (``BatchCommandsResponse.health_feedback``: store id, sequence
  number, slow score) goes to the listeners of :meth:`Transport.add_health_listener`
  (the request pipeline's ``StoreHealth``), out-of-date ones dropped; a store whose last
  score was above 1 and that sent nothing for 15 s is asked for fresh feedback.
* A store that answers ``UNIMPLEMENTED`` to BatchCommands is switched to unary calls for
  good; the requests caught in that stream are resent as unary calls (the server did not
  execute them).

Connections: ``Config.grpc_connection_count`` channels per store (client-go's
``GrpcConnectionCount`` = 4, because TiKV binds each connection to one gRPC thread). The
sender picks a connection per *batch* (round robin), not per request, so spreading the
load over connections does not shrink the batches. Channels are built by
:mod:`tikv_pd.channels` (keepalive, unlimited message sizes, client-go's reconnect
backoff, TLS) plus :func:`store_channel_options`.

Commands are named by the ``BatchCommandsRequest.Request`` oneof field (``"Get"``,
``"RawPut"``, ``"Prewrite"``, ...); commands that cannot be batched use their unary method
name (``"RawCompareAndSwap"``, ``"RawChecksum"``, ``"SplitRegion"``, ...). See
:data:`COMMANDS`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from google.protobuf import message_factory
from google.protobuf.message import Message
from tikv_proto import kvrpcpb_pb2, tikvpb_pb2

from tikv_pd import observability as _obs
from tikv_pd.batch_queue import PriorityQueue, take_batch
from tikv_pd.channels import create_channel
from tikv_pd.config import Config
from tikv_pd.errors import ClientClosedError, StoreUnavailableError

__all__ = [
    "BATCH_POLICIES",
    "COMMANDS",
    "FATAL_STATUS_CODES",
    "GET_HEALTH_FEEDBACK_TIMEOUT",
    "HEALTH_FEEDBACK_REFRESH_SECONDS",
    "ChannelFactory",
    "Command",
    "HealthListener",
    "RPCTimeoutError",
    "Transport",
    "TransportError",
    "TransportStats",
    "TurboBatchOptions",
    "TurboBatchTrigger",
    "default_channel_factory",
    "store_channel_options",
]

_log = logging.getLogger("tikv.transport")

_BATCH_COMMANDS_METHOD = "/tikvpb.Tikv/BatchCommands"
_FORWARD_METADATA_KEY = "tikv-forwarded-host"


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


class TransportError(StoreUnavailableError):
    """A request could not be completed at the transport level.

    Attributes:
        address: The store address.
        sent: Whether the request may have reached the server (and may have been
            executed). ``False`` only when the client knows it never left: the stream or
            connection could not be established first. The request pipeline resends
            ``sent=False`` failures even for non-idempotent writes.
        code: The gRPC status code, when gRPC reported one.
        cause: The underlying exception.

    """

    def __init__(
        self,
        address: str,
        cause: BaseException | None = None,
        *,
        sent: bool,
        code: grpc.StatusCode | None = None,
        store_id: int = 0,
    ) -> None:
        super().__init__(store_id, address, cause)
        self.sent = sent
        self.code = code

    def _describe(self) -> str:
        text = super()._describe()
        if self.code is not None:
            text += f" [{self.code.name}]"
        return text + (" (request may have been sent)" if self.sent else " (not sent)")


class RPCTimeoutError(TransportError):
    """A request's deadline passed before its response arrived.

    Attributes:
        timeout: The deadline that passed, in seconds.

    """

    def __init__(self, address: str, timeout: float, *, sent: bool) -> None:
        super().__init__(address, None, sent=sent, code=grpc.StatusCode.DEADLINE_EXCEEDED)
        self.timeout = timeout

    def _describe(self) -> str:
        return f"request to {self.address} timed out after {self.timeout:g} s" + (
            " (request may have been sent)" if self.sent else " (not sent)"
        )


#: gRPC codes that no retry can fix: the request or the client is wrong, not the store
#: (tikv-python's classification, matching client-go treating them as non-retryable).
FATAL_STATUS_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)


class _FallBackToUnaryError(Exception):
    """Internal: the store does not implement BatchCommands; resend as a unary call."""


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """One kvproto command the transport can send.

    Attributes:
        name: The command name: the ``BatchCommandsRequest.Request`` oneof field for
            batchable commands, else the unary method name.
        method: The full gRPC path of the unary method (``/tikvpb.Tikv/KvGet``).
        request_type: The request message class.
        response_type: The response message class.
        batch_field: The oneof field in ``BatchCommandsRequest.Request`` /
            ``BatchCommandsResponse.Response``, or ``None`` if the command is unary only.
        has_context: Whether the request message has a ``kvrpcpb.Context`` ``context``
            field (where the transport reads the request's priority).

    """

    name: str
    method: str
    request_type: type[Message]
    response_type: type[Message]
    batch_field: str | None
    has_context: bool = False


def _build_commands() -> dict[str, Command]:
    # Derived from the schema: a batchable command is the oneof field whose message type
    # is the input of a unary Tikv method; every other unary method is its own command.
    service = tikvpb_pb2.DESCRIPTOR.services_by_name["Tikv"]
    by_input = {}
    for m in service.methods:
        if not m.client_streaming and not m.server_streaming:
            by_input[m.input_type.full_name] = m
    commands: dict[str, Command] = {}
    batched_methods = set()
    oneof = tikvpb_pb2.BatchCommandsRequest.Request.DESCRIPTOR.oneofs_by_name["cmd"]
    for field in oneof.fields:
        message_type = field.message_type
        assert message_type is not None  # every oneof member here is a message
        method = by_input.get(message_type.full_name)
        if method is None:  # "Empty": the stream's own test command
            continue
        batched_methods.add(method.name)
        commands[field.name] = Command(
            field.name,
            f"/{service.full_name}/{method.name}",
            message_factory.GetMessageClass(method.input_type),
            message_factory.GetMessageClass(method.output_type),
            field.name,
            _has_context(method.input_type),
        )
    for method in by_input.values():
        if method.name in batched_methods or method.name in commands:
            continue
        commands[method.name] = Command(
            method.name,
            f"/{service.full_name}/{method.name}",
            message_factory.GetMessageClass(method.input_type),
            message_factory.GetMessageClass(method.output_type),
            None,
            _has_context(method.input_type),
        )
    return commands


def _has_context(descriptor: Any) -> bool:
    context = descriptor.fields_by_name.get("context")
    return context is not None and context.message_type.full_name == "kvrpcpb.Context"


#: Every command by name (``"RawGet"``, ``"Prewrite"``, ``"RawCompareAndSwap"``, ...).
COMMANDS: Mapping[str, Command] = _build_commands()


# ---------------------------------------------------------------------------------------
# Channels
# ---------------------------------------------------------------------------------------

#: Builds the gRPC channel for one connection: ``(address, connection index)``.
ChannelFactory = Callable[[str, int], grpc.aio.Channel]

#: Told each ``kvrpcpb.HealthFeedback`` a store sends (see
#: :meth:`Transport.add_health_listener`).
HealthListener = Callable[[kvrpcpb_pb2.HealthFeedback], None]

#: A store whose last reported slow score was above 1 and that sent no feedback for this
#: long is asked for one (client-go ``tikvSlowScoreActiveUpdateInterval``, 15 s,
#: ``internal/locate/store_cache.go``).
HEALTH_FEEDBACK_REFRESH_SECONDS = 15.0

#: Timeout of that GetHealthFeedback request (client-go ``getHealthFeedbackTimeout``,
#: ``tikv/kv.go``).
GET_HEALTH_FEEDBACK_TIMEOUT = 2.0


def store_channel_options(config: Config) -> list[tuple[str, int | str]]:
    """The gRPC options a store connection adds to :func:`tikv_pd.channels.channel_options`.

    The shared options (keepalive, unlimited message sizes, client-go's 100 ms … 3 s
    reconnect backoff, no gRPC-level retries, TLS) come from :mod:`tikv_pd.channels`;
    a store connection adds:

    * the stream flow-control window as C-core's per-stream lookahead
      (``grpc_initial_window_size``, client-go's 128 MiB);
    * a local subchannel pool, so that each channel of a store's pool really is its own
      TCP connection (C-core would otherwise share one subchannel between channels with
      equal arguments, and TiKV would see one connection instead of
      ``grpc_connection_count``).
    """
    return [
        ("grpc.http2.lookahead_bytes", config.grpc_initial_window_size),
        ("grpc.use_local_subchannel_pool", 1),
    ]


def default_channel_factory(config: Config) -> ChannelFactory:
    """Return a factory of store channels built with :func:`tikv_pd.channels.create_channel`.

    TLS, compression and keepalive follow ``config``.
    """
    extra = store_channel_options(config)

    def factory(address: str, index: int) -> grpc.aio.Channel:
        del index  # every connection of the pool has the same arguments
        return create_channel(address, config=config, options=extra)

    return factory


# ---------------------------------------------------------------------------------------
# Batch policy
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TurboBatchOptions:
    """Parameters of a batch policy (client-go ``turboBatchOptions``, ``client_batch.go``).

    Attributes:
        strategy: ``"always"`` (always wait for more), ``"time"`` (wait when the smoothed
            request arrival interval is short) or ``"prob"`` (wait when the smoothed
            probability of a short interval is high).
        wait: The longest extra wait for more requests, seconds (0 = never wait).
        n: Arrival intervals are clipped at ``n * wait`` (time strategy).
        w: Weight of the newest sample in the moving averages.
        p: Threshold: wait when ``interval < p * wait`` (time) or ``prob > p`` (prob).
        q: Round the average batch size up when its fraction is at least ``q``.

    """

    strategy: str = "always"
    wait: float = 0.0
    n: int = 0
    w: float = 0.0
    p: float = 0.0
    q: float = 0.0


#: client-go's preset policies (``presetBatchPolicies``): ``basic`` never waits beyond
#: the overload rule; ``standard`` (the default) waits up to 100 µs when requests arrive
#: less than 80 µs apart on average; ``positive`` always waits up to 100 µs.
BATCH_POLICIES: Mapping[str, TurboBatchOptions] = {
    "basic": TurboBatchOptions(),
    "standard": TurboBatchOptions("time", 0.0001, 5, 0.2, 0.8, 0.8),
    "positive": TurboBatchOptions("always", 0.0001),
}


class TurboBatchTrigger:
    """Decides whether the sender waits for more requests before writing a batch (pure).

    client-go ``turboBatchTrigger``: fed the arrival interval of each batch's first
    request (the time since the previous batch's last request), it keeps a moving
    average and answers :meth:`need_fetch_more`; :meth:`preferred_batch_wait_size`
    turns the moving average of batch sizes into the number of requests to wait for.

    Args:
        policy: ``"basic"``, ``"standard"``, ``"positive"`` or ``"custom"``. ``Config``
            carries no parameters for ``"custom"``; like client-go given unparsable
            custom options, it falls back to ``"standard"``.

    """

    __slots__ = ("est_arrival_interval", "est_fetch_more_prob", "max_arrival_interval", "opts")

    def __init__(self, policy: str) -> None:
        self.opts = BATCH_POLICIES.get(policy, BATCH_POLICIES["standard"])
        self.est_fetch_more_prob = 0.0
        self.est_arrival_interval = 0.0
        self.max_arrival_interval = 0.0

    @property
    def wait(self) -> float:
        """The longest extra wait for more requests, seconds (0: never)."""
        return self.opts.wait

    def need_fetch_more(self, arrival_interval: float) -> bool:
        """Whether to wait for more requests, given the head request's arrival interval."""
        opts = self.opts
        if opts.strategy == "time":
            if self.max_arrival_interval == 0:
                self.max_arrival_interval = opts.wait * opts.n
            interval = min(arrival_interval, self.max_arrival_interval)
            if self.est_arrival_interval == 0:
                self.est_arrival_interval = interval
            else:
                self.est_arrival_interval = (
                    opts.w * interval + (1 - opts.w) * self.est_arrival_interval
                )
            return self.est_arrival_interval < opts.wait * opts.p
        if opts.strategy == "prob":
            this = 1.0 if arrival_interval < opts.wait else 0.0
            self.est_fetch_more_prob = opts.w * this + (1 - opts.w) * self.est_fetch_more_prob
            return self.est_fetch_more_prob > opts.p
        return True

    def preferred_batch_wait_size(self, avg_batch_size: float, default: int) -> int:
        """How many requests to wait for, from the moving average of batch sizes."""
        if self.opts.strategy == "always":
            return default
        whole = int(avg_batch_size)
        return whole + 1 if avg_batch_size - whole >= self.opts.q else whole


# ---------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class TransportStats:
    """Counters of one :class:`Transport` (for tests, benchmarks and diagnostics).

    Attributes:
        batches: BatchCommands messages written.
        batched_requests: Requests carried by those messages.
        max_batch: The largest batch written.
        unary_requests: Requests sent as unary calls.
        streams_opened: BatchCommands streams established.
        stream_failures: Streams that broke (or could not be opened).
        timeouts: Requests failed by their deadline.
        late_responses: Responses that arrived for requests nobody waited for any more.
        unary_fallbacks: Stores switched to unary because BatchCommands is unimplemented.
        health_feedbacks: Health feedbacks passed to the listeners.
        stale_feedbacks: Health feedbacks dropped: older than one already received.
        health_probes: GetHealthFeedback requests sent to refresh a store's slow score.

    """

    batches: int = 0
    batched_requests: int = 0
    max_batch: int = 0
    unary_requests: int = 0
    streams_opened: int = 0
    stream_failures: int = 0
    timeouts: int = 0
    late_responses: int = 0
    unary_fallbacks: int = 0
    health_feedbacks: int = 0
    stale_feedbacks: int = 0
    health_probes: int = 0


# ---------------------------------------------------------------------------------------
# The BatchCommands machinery
# ---------------------------------------------------------------------------------------


class _Entry:
    """One request waiting in the queue or on a stream."""

    __slots__ = ("deadline", "field", "future", "id", "request", "stream", "timeout")

    def __init__(
        self,
        rid: int,
        field: str,
        request: Message,
        future: asyncio.Future[Any],
        timeout: float,
    ) -> None:
        self.id = rid
        self.field = field
        self.request = request
        self.future = future
        self.timeout = timeout
        self.deadline = 0.0
        # The stream it was written to; None while queued (not sent).
        self.stream: _Stream | None = None

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


def _canceled(entry: _Entry) -> bool:
    """Whether nobody waits for ``entry`` any more (caller gone, deadline passed, failed)."""
    return entry.future.done()


class _Stream:
    """One BatchCommands stream and the requests written to it."""

    __slots__ = ("broken", "call", "feedback_seq", "inflight", "receiver")

    def __init__(self, call: Any) -> None:
        self.call = call
        self.inflight: dict[int, _Entry] = {}
        self.broken = False
        self.receiver: asyncio.Task[None] | None = None
        # The newest health feedback sequence number received on this stream.
        self.feedback_seq = 0

    def break_(self, make_error: Callable[[_Entry], BaseException]) -> int:
        """Mark broken and fail every in-flight request once; return how many failed."""
        self.broken = True
        entries = list(self.inflight.values())
        self.inflight.clear()
        for e in entries:
            e.fail(make_error(e))
        return len(entries)


class _Conn:
    """One channel of a store's pool: its unary callables and its current stream."""

    __slots__ = ("batch_callable", "channel", "stream", "unary")

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.unary: dict[str, Any] = {}
        self.stream: _Stream | None = None
        self.batch_callable: Any = channel.stream_stream(  # type: ignore[call-arg]
            _BATCH_COMMANDS_METHOD,
            tikvpb_pb2.BatchCommandsRequest.SerializeToString,
            tikvpb_pb2.BatchCommandsResponse.FromString,
            _registered_method=True,
        )

    def unary_callable(self, command: Command) -> Any:
        mc = self.unary.get(command.name)
        if mc is None:
            mc = self.channel.unary_unary(  # type: ignore[call-arg]
                command.method,
                command.request_type.SerializeToString,
                command.response_type.FromString,
                _registered_method=True,
            )
            self.unary[command.name] = mc
        return mc


class _Store:
    """Everything the transport keeps for one store address."""

    def __init__(
        self,
        transport: Transport,
        address: str,
        *,
        forwarded_host: str = "",
        channels: Sequence[grpc.aio.Channel] = (),
    ) -> None:
        self.transport = transport
        self.address = address
        config = transport.config
        # A forwarding store shares the proxy's channels (its own streams, opened with
        # the forwarding metadata); only the plain store owns and closes them.
        self.owns_channels = not channels
        if not channels:
            channels = [
                transport.channel_factory(address, i) for i in range(config.grpc_connection_count)
            ]
        self.conns = [_Conn(ch) for ch in channels]
        # client-go forwards through a follower's store with this gRPC metadata; TiKV
        # relays the call to the leader (``internal/client/client.go`` forwardMetadataKey).
        self.forwarded_host = forwarded_host
        self.metadata: tuple[tuple[str, str], ...] | None = (
            ((_FORWARD_METADATA_KEY, forwarded_host),) if forwarded_host else None
        )
        self.next_conn = 0
        # Requests waiting for the sender, highest override_priority first (client-go's
        # batchCommandsBuilder priority queue; see tikv_pd.batch_queue).
        self.queue: PriorityQueue[_Entry] = PriorityQueue(_canceled)
        # Callers that gave up while their request was still queued, since the last
        # clean of the queue.
        self.abandoned = 0
        self.wakeup: asyncio.Future[None] | None = None
        self.sender: asyncio.Task[None] | None = None
        self.unary_only = False
        self.next_id = 0
        # TiKV's ``transport_layer_load`` from the last response (0-100+; client-go
        # waits to fill batches only when it exceeds ``overload_threshold``).
        self.load = 0
        self.closed = False
        # Batch policy state (client-go batchSendLoop): the trigger, the moving average
        # of batch sizes, the arrival time of the last request sent, and the waiter of
        # fetch_more (a future and the queue length that resolves it).
        self.trigger = TurboBatchTrigger(config.batch_policy)
        self.avg_batch_size = float(config.batch_wait_size)
        self.latest_arrival = 0.0
        self.more_waiter: tuple[asyncio.Future[None], int] | None = None
        # How requests fail once close() started (set by close()).
        self.close_error: Callable[[_Entry], BaseException] | None = None
        # Deadline tracking: per distinct timeout, a FIFO of entries and one timer.
        self.deadlines: dict[float, collections.deque[_Entry]] = {}
        self.deadline_timers: dict[float, asyncio.TimerHandle] = {}

    # -- helpers ---------------------------------------------------------------------

    def pick_conn(self) -> _Conn:
        conns = self.conns
        if len(conns) == 1:
            return conns[0]
        i = self.next_conn
        self.next_conn = (i + 1) % len(conns)
        return conns[i]

    def lost(
        self, entry: _Entry, cause: BaseException | None, code: grpc.StatusCode | None
    ) -> TransportError:
        return TransportError(self.address, cause, sent=entry.stream is not None, code=code)

    def connection_closed(self, entry: _Entry) -> TransportError:
        """The error of a request caught by :meth:`Transport.close_address`."""
        return self.lost(entry, ConnectionError("connection closed"), None)

    # -- unary -----------------------------------------------------------------------

    async def unary(self, command: Command, request: Message, seconds: float) -> Any:
        if self.closed:  # see refuse_if_closed: closed under a caller holding this store
            raise TransportError(self.address, ConnectionError("connection closed"), sent=False)
        conn = self.pick_conn()
        mc = conn.unary_callable(command)
        self.transport.stats.unary_requests += 1
        try:
            return await mc(request, timeout=seconds, metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            raise self.transport._unary_error(self.address, exc, seconds) from exc

    # -- batch -----------------------------------------------------------------------

    def refuse_if_closed(self, entry: _Entry) -> None:
        """Fail a request that reaches a store already closed.

        A caller may hold this store while :meth:`Transport.close_address` (after
        StoreNotMatch, say) closes it: the queue was drained and the deadline timers were
        cancelled, so a request queued now would wait forever. It was not sent, so the
        pipeline may retry it on a fresh connection (client-go fails such requests too).
        """
        if self.closed:
            make_error = self.close_error or self.connection_closed
            raise make_error(entry)

    async def batch(self, field: str, request: Message, seconds: float, priority: int = 0) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.next_id += 1
        entry = _Entry(self.next_id, field, request, future, seconds)
        self.refuse_if_closed(entry)
        self.track_deadline(loop, entry)
        if priority:
            self.queue.push(entry, priority)
        else:
            self.queue.push_normal(entry)
        more = self.more_waiter
        if more is not None and len(self.queue) >= more[1] and not more[0].done():
            more[0].set_result(None)
        wakeup = self.wakeup
        if wakeup is not None:
            self.wakeup = None
            if not wakeup.done():
                wakeup.set_result(None)
        elif self.sender is None or self.sender.done():
            # First request, or the sender ended unexpectedly (its error was logged by
            # _sender_done): start one so queued requests are not stranded.
            self.sender = loop.create_task(self.send_loop(), name=f"tikv-batch-send-{self.address}")
            self.sender.add_done_callback(self._sender_done)
        try:
            return await future
        except asyncio.CancelledError:
            # The caller gave up: forget the request; a late response will be dropped.
            # Still queued, it will not be sent: the sender drops requests whose future
            # is done (client-go drops canceled entries when it builds a batch).
            if entry.stream is not None:
                entry.stream.inflight.pop(entry.id, None)
            else:
                self.abandoned += 1
            raise

    def _sender_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self.closed:
            return
        exc = task.exception()
        if exc is not None:
            _log.error("BatchCommands sender for %s stopped", self.address, exc_info=exc)
            # Requests still queued would wait for a sender; fail them (not sent).
            for entry in self.queue.clear():
                entry.fail(TransportError(self.address, exc, sent=False))

    def track_deadline(self, loop: asyncio.AbstractEventLoop, entry: _Entry) -> None:
        """Register ``entry``'s deadline.

        A timer per request costs a heap push and pop of Python-compared TimerHandles
        (several µs at 100k requests/s). Requests with the same timeout expire in the
        order they were queued, so each distinct timeout keeps a FIFO of its entries and
        one timer armed for the oldest; finished entries are dropped from the front as
        new ones arrive.
        """
        timeout = entry.timeout
        entry.deadline = deadline = loop.time() + timeout
        fifo = self.deadlines.get(timeout)
        if fifo is None:
            fifo = self.deadlines[timeout] = collections.deque()
        while fifo and fifo[0].future.done():
            fifo.popleft()
        fifo.append(entry)
        if timeout not in self.deadline_timers:
            self.deadline_timers[timeout] = loop.call_at(deadline, self.sweep_deadlines, timeout)

    def sweep_deadlines(self, timeout: float) -> None:
        """Fail the entries of one timeout class whose deadline passed; re-arm the timer."""
        self.deadline_timers.pop(timeout, None)
        fifo = self.deadlines.get(timeout)
        if not fifo:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        while fifo:
            head = fifo[0]
            if head.future.done():
                fifo.popleft()
            elif head.deadline <= now:
                fifo.popleft()
                self.expire(head)
            else:
                self.deadline_timers[timeout] = loop.call_at(
                    head.deadline, self.sweep_deadlines, timeout
                )
                return
        del self.deadlines[timeout]

    def expire(self, entry: _Entry) -> None:
        """Fail ``entry`` with a timeout; a late response for it will be dropped."""
        if entry.future.done():
            return
        if entry.stream is not None:
            entry.stream.inflight.pop(entry.id, None)
        self.transport.stats.timeouts += 1
        entry.future.set_exception(
            RPCTimeoutError(self.address, entry.timeout, sent=entry.stream is not None)
        )

    async def send_loop(self) -> None:
        """The sender task: drain the queue into batches until the store is closed."""
        queue = self.queue
        config = self.transport.config
        max_batch = config.max_batch_size
        loop = asyncio.get_running_loop()
        while not self.closed:
            if not queue:
                wakeup: asyncio.Future[None] = loop.create_future()
                self.wakeup = wakeup
                await wakeup
                continue
            if self.unary_only:
                for entry in queue.clear():
                    entry.fail(_FallBackToUnaryError())
                continue
            if self.abandoned and self.abandoned * 2 >= len(queue):
                # Many callers gave up on queued requests: drop them now rather than
                # keep their messages alive until they reach the front (client-go cleans
                # its queue before every batch; a clean here is O(queue), so it runs
                # only once they are a good part of it).
                self.abandoned = 0
                queue.clean()
            batch: list[_Entry] = []
            counted = take_batch(queue, max_batch, batch)
            if not batch:
                continue
            try:
                if counted < max_batch:
                    await self.maybe_fetch_more(batch, counted, max_batch)
                await self.send_batch(batch)
            except asyncio.CancelledError:
                # Closed while this batch was in the sender's hands (waiting for more
                # requests or for a connection): it is in no queue or stream, so fail it
                # here or its callers would wait forever.
                make_error = self.close_error or (lambda e: ClientClosedError("transport"))
                for entry in batch:
                    if entry.stream is None:
                        entry.fail(make_error(entry))
                raise
            except Exception as exc:  # a bug; deliver it to the requests it concerns
                _log.exception("BatchCommands sender for %s failed", self.address)
                for entry in batch:
                    if entry.stream is None:
                        entry.fail(TransportError(self.address, exc, sent=False))

    async def maybe_fetch_more(self, batch: list[_Entry], counted: int, max_batch: int) -> None:
        """Wait briefly for more requests when the batch policy says so (client-go).

        An overloaded store (``transport_layer_load`` above ``overload_threshold``) makes
        the sender wait up to ``max_batch_wait_time`` for ``batch_wait_size`` requests;
        otherwise the policy's trigger decides from the head request's arrival interval.
        With the defaults nothing waits unless requests arrive < 80 µs apart.
        """
        config = self.transport.config
        head_arrival = batch[0].deadline - batch[0].timeout
        latest = self.latest_arrival
        interval = head_arrival - latest if latest and head_arrival > latest else 0.0
        if config.max_batch_wait_time > 0 and self.load > config.overload_threshold:
            await self.fetch_more(
                batch, counted, max_batch, config.batch_wait_size, config.max_batch_wait_time
            )
        elif self.trigger.wait > 0 and interval > 0 and self.trigger.need_fetch_more(interval):
            size = self.trigger.preferred_batch_wait_size(
                self.avg_batch_size, config.batch_wait_size
            )
            await self.fetch_more(batch, counted, max_batch, size, self.trigger.wait)
        self.avg_batch_size = 0.2 * len(batch) + 0.8 * self.avg_batch_size
        last = batch[-1]
        self.latest_arrival = last.deadline - last.timeout

    async def fetch_more(
        self, batch: list[_Entry], counted: int, max_batch: int, wait_size: int, wait_s: float
    ) -> None:
        """Collect up to ``wait_size`` requests or wait ``wait_s``, then take what is queued.

        ``counted`` of the requests in ``batch`` count against ``max_batch`` (those below
        :data:`~tikv_pd.batch_queue.HIGH_TASK_PRIORITY`).
        """
        need = wait_size - len(batch)
        if need > len(self.queue):
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            self.more_waiter = (future, need)
            timer = loop.call_later(wait_s, _resolve, future)
            try:
                await future
            finally:
                timer.cancel()
                self.more_waiter = None
        take_batch(self.queue, max_batch - counted, batch)

    async def open_stream(self, conn: _Conn) -> _Stream | BaseException:
        """Open a stream on ``conn``; return it, or the error that prevented it."""
        transport = self.transport
        call = conn.batch_callable(metadata=self.metadata)
        try:
            await asyncio.wait_for(call.wait_for_connection(), transport.config.dial_timeout)
        except (TimeoutError, grpc.aio.AioRpcError) as exc:
            call.cancel()
            transport.stats.stream_failures += 1
            if (
                isinstance(exc, grpc.aio.AioRpcError)
                and exc.code() == grpc.StatusCode.UNIMPLEMENTED
            ):
                self.switch_to_unary()
            return exc
        stream = _Stream(call)
        stream.receiver = asyncio.get_running_loop().create_task(
            self.recv_loop(stream), name=f"tikv-batch-recv-{self.address}"
        )
        conn.stream = stream
        transport.stats.streams_opened += 1
        return stream

    def switch_to_unary(self) -> None:
        if not self.unary_only:
            self.unary_only = True
            self.transport.stats.unary_fallbacks += 1
            _log.info("store %s does not implement BatchCommands; using unary calls", self.address)

    async def send_batch(self, batch: list[_Entry]) -> None:
        conn = self.pick_conn()
        stream = conn.stream
        if stream is None or stream.broken:
            opened = await self.open_stream(conn)
            if not isinstance(opened, _Stream):
                # Nothing left the client: the batch fails unsent (safe to retry). So do
                # the requests queued behind it: they would only wait for another dial
                # to the same unreachable address, while the pipeline can re-locate
                # them (the region's leader may have moved off this store).
                code = opened.code() if isinstance(opened, grpc.aio.AioRpcError) else None
                batch.extend(self.queue.clear())
                for entry in batch:
                    if self.unary_only:
                        entry.fail(_FallBackToUnaryError())
                    else:
                        entry.fail(TransportError(self.address, opened, sent=False, code=code))
                return
            stream = opened
        message = tikvpb_pb2.BatchCommandsRequest()
        requests = message.requests
        ids = message.request_ids
        inflight = stream.inflight
        for entry in batch:
            if entry.future.done():  # expired or abandoned while the stream opened
                continue
            getattr(requests.add(), entry.field).CopyFrom(entry.request)
            ids.append(entry.id)
            inflight[entry.id] = entry
            entry.stream = stream
        n = len(ids)
        if n == 0:
            return
        stats = self.transport.stats
        stats.batches += 1
        stats.batched_requests += n
        if n > stats.max_batch:
            stats.max_batch = n
        if _obs.metrics is not None:  # observability hook: requests per message
            _obs.metrics.observe_batch(self.address, n)
        try:
            await stream.call.write(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
            self.fail_stream(stream, exc, code)

    def fail_stream(
        self, stream: _Stream, exc: BaseException | None, code: grpc.StatusCode | None
    ) -> None:
        if not stream.broken:
            self.transport.stats.stream_failures += 1
        if code == grpc.StatusCode.UNIMPLEMENTED:
            # The server rejected the method itself: nothing was executed.
            self.switch_to_unary()
            stream.break_(lambda e: _FallBackToUnaryError())
        else:
            stream.break_(lambda e: TransportError(self.address, exc, sent=True, code=code))
        stream.call.cancel()

    async def recv_loop(self, stream: _Stream) -> None:
        """The receiver task of one stream: resolve futures by request id."""
        call = stream.call
        inflight = stream.inflight
        stats = self.transport.stats
        response_type = tikvpb_pb2.BatchCommandsResponse
        try:
            while True:
                response = await call.read()
                if not isinstance(response, response_type):  # EOF: the server ended it
                    code = await call.code()
                    details = await call.details()
                    self.fail_stream(
                        stream,
                        ConnectionError(f"BatchCommands stream ended: {code} {details}"),
                        code if code != grpc.StatusCode.OK else None,
                    )
                    return
                self.load = response.transport_layer_load
                if response.HasField("health_feedback"):
                    self.on_health_feedback(stream, response.health_feedback)
                for rid, sub in zip(response.request_ids, response.responses, strict=False):
                    entry = inflight.pop(rid, None)
                    if entry is None:
                        stats.late_responses += 1
                        continue
                    future = entry.future
                    if not future.done():
                        future.set_result(getattr(sub, entry.field))
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            self.fail_stream(stream, exc, exc.code())
        except Exception as exc:  # a malformed response or a bug: fail what it concerns
            _log.exception("BatchCommands receiver for %s failed", self.address)
            self.fail_stream(stream, exc, None)

    def on_health_feedback(self, stream: _Stream, feedback: kvrpcpb_pb2.HealthFeedback) -> None:
        """Pass a store's health feedback to the listeners unless it is out of date.

        TiKV numbers its feedback from one counter per store process (seeded with the Unix
        time at start, ``HealthFeedbackAttacher``), whichever stream carries it. A feedback
        is dropped when this stream, or another live stream of the store, already
        delivered a newer one (client-go keeps the number for this purpose and does not
        check it yet). Only live streams are compared, so a restarted store, whose new
        numbering may start lower, is heard again on its new streams.
        """
        seq = feedback.feedback_seq_no
        stats = self.transport.stats
        newest = stream.feedback_seq
        for conn in self.conns:
            other = conn.stream
            if other is not None and other is not stream and not other.broken:
                newest = max(newest, other.feedback_seq)
        if seq > stream.feedback_seq:
            stream.feedback_seq = seq
        if seq <= newest:
            stats.stale_feedbacks += 1
            return
        stats.health_feedbacks += 1
        for listener in list(self.transport._health_listeners):
            try:
                listener(feedback)
            except Exception:  # a listener's bug must not stop the receiver
                _log.exception("health feedback listener %r failed", listener)
        if not self.forwarded_host:  # a relayed stream's feedback may be another store's
            self.transport._feedback_received(self.address, feedback)

    # -- lifecycle -------------------------------------------------------------------

    async def close(self, make_error: Callable[[_Entry], BaseException]) -> None:
        self.closed = True
        self.close_error = make_error
        for timer in self.deadline_timers.values():
            timer.cancel()
        self.deadline_timers.clear()
        tasks: list[asyncio.Task[None]] = []
        if self.sender is not None:
            tasks.append(self.sender)
        for conn in self.conns:
            stream = conn.stream
            if stream is not None:
                stream.break_(make_error)
                stream.call.cancel()
                if stream.receiver is not None:
                    tasks.append(stream.receiver)
        for entry in self.queue.clear():
            entry.fail(make_error(entry))
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.owns_channels:
            await asyncio.gather(*(conn.channel.close(None) for conn in self.conns))
        # Every batched request is tracked here until it finishes. One still waiting now
        # slipped past the queue, sender and stream paths above while they closed; its
        # deadline timer is gone, so fail it rather than leave its caller waiting forever.
        for fifo in self.deadlines.values():
            for entry in fifo:
                if not entry.future.done():
                    entry.fail(make_error(entry))
        self.deadlines.clear()


# ---------------------------------------------------------------------------------------
# The transport
# ---------------------------------------------------------------------------------------


def _log_health_task_error(task: asyncio.Task[None]) -> None:
    """Surface a failure of the health refresher (it catches its probes' errors itself)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        _log.error("health feedback refresher stopped", exc_info=exc)


class Transport:
    """Sends kvproto requests to TiKV stores, batched over BatchCommands by default.

    One instance serves every store of a cluster and must be used from one event loop.

    Args:
        config: Client configuration (connections per store, keepalive, batching,
            timeouts, TLS). Defaults to :class:`tikv_pd.config.Config`'s defaults.
        channel_factory: Builds the channel of one connection (tests, custom TLS);
            defaults to :func:`default_channel_factory` of ``config``.

    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        channel_factory: ChannelFactory | None = None,
    ) -> None:
        self.config = config if config is not None else Config()
        self.channel_factory = (
            channel_factory if channel_factory is not None else default_channel_factory(self.config)
        )
        self.stats = TransportStats()
        self._stores: dict[str, _Store] = {}
        # (proxy address, forwarded host) -> the streams forwarding through that proxy.
        self._forwarding: dict[tuple[str, str], _Store] = {}
        self._closed = False
        self._batch = self.config.enable_batch_commands
        self._health_listeners: list[HealthListener] = []
        #: Seconds without feedback after which a store whose last slow score was above 1
        #: is asked for a fresh one (client-go's 15 s; tests lower it).
        self.health_refresh_seconds = HEALTH_FEEDBACK_REFRESH_SECONDS
        # store id -> [address, last slow score, monotonic time of the last feedback or
        # probe] of the stores heard from directly.
        self._feedback_state: dict[int, list[Any]] = {}
        self._health_task: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def addresses(self) -> list[str]:
        """The store addresses this transport currently holds connections to."""
        return list(self._stores)

    def add_health_listener(self, listener: HealthListener) -> None:
        """Call ``listener`` with each health feedback a store sends over BatchCommands.

        TiKV attaches a ``kvrpcpb.HealthFeedback`` (store id, sequence number, slow score)
        to a ``BatchCommandsResponse`` at most once a second per stream, and to every
        response answering a ``GetHealthFeedback`` command (client-go's
        ``ClientEventListener.OnHealthFeedback``). A feedback older than one already
        received from the same store is not passed on. Listeners run on the receiver
        task: they must be quick and not block; an exception they raise is logged.

        Raises:
            TypeError: ``listener`` is not callable.

        """
        if not callable(listener):
            raise TypeError(f"listener must be callable, got {type(listener).__name__}")
        self._health_listeners.append(listener)

    def remove_health_listener(self, listener: HealthListener) -> None:
        """Stop calling ``listener`` (added by :meth:`add_health_listener`); no-op if absent."""
        with contextlib.suppress(ValueError):
            self._health_listeners.remove(listener)

    def _feedback_received(self, address: str, feedback: kvrpcpb_pb2.HealthFeedback) -> None:
        """Remember a store's latest feedback; start the refresher when a score is high.

        TiKV attaches feedback only to responses, so a store the replica selector avoids
        because it reported itself slow would never be heard from again: client-go's
        store health ticker asks such a store with a GetHealthFeedback request once its
        score has gone :data:`HEALTH_FEEDBACK_REFRESH_SECONDS` without news. The
        refresher task does that; it runs only while some store's last score is above 1
        (a healthy cluster reports 1) and is cancelled by :meth:`close`.
        """
        score = feedback.slow_score
        self._feedback_state[feedback.store_id] = [address, score, time.monotonic()]
        if score > 1 and not self._closed:
            task = self._health_task
            if task is None or task.done():
                self._health_task = asyncio.get_running_loop().create_task(
                    self._refresh_health(), name="tikv-health-feedback"
                )
                self._health_task.add_done_callback(_log_health_task_error)

    async def _refresh_health(self) -> None:
        """Ask stores with a high, stale slow score for fresh feedback, until none is left."""
        while True:
            # client-go ticks every 15 s; a finer tick asks a store close to 15 s after its
            # last feedback rather than up to 30 s, before StoreHealth starts decaying.
            await asyncio.sleep(self.health_refresh_seconds / 15)
            states = self._feedback_state
            if not any(state[1] > 1 for state in states.values()):
                self._health_task = None
                return
            now = time.monotonic()
            for store_id, state in list(states.items()):
                address, score, last = state
                if address not in self._stores or not self.uses_batch_commands(address):
                    # No connection to ask it over any more (closed after StoreNotMatch,
                    # or the store moved), or no feedback without batching: forget it, or
                    # this task would tick for it until close. Its next feedback brings
                    # it back; StoreHealth decays the old score meanwhile.
                    del states[store_id]
                    continue
                if score <= 1 or now - last < self.health_refresh_seconds:
                    continue
                # A failed probe waits a whole interval too; an answer updates the state
                # through the feedback it brings.
                state[2] = now
                self.stats.health_probes += 1
                try:
                    await self.send(
                        address,
                        "GetHealthFeedback",
                        kvrpcpb_pb2.GetHealthFeedbackRequest(),
                        GET_HEALTH_FEEDBACK_TIMEOUT,
                    )
                except Exception as exc:  # the store may be down: its score decays meanwhile
                    _log.debug("health feedback request to store %d failed: %s", store_id, exc)

    def uses_batch_commands(self, address: str) -> bool:
        """Whether requests to ``address`` go over BatchCommands (False after fallback)."""
        store = self._stores.get(address)
        return self._batch and (store is None or not store.unary_only)

    async def send(
        self,
        address: str,
        command: str,
        request: Message,
        timeout: float | None = None,  # noqa: ASYNC109 - the RPC's deadline, not ours
        *,
        forwarded_host: str | None = None,
    ) -> Any:
        """Send ``request`` to the store at ``address`` and return the response message.

        Args:
            address: The store's ``host:port``.
            command: The command name (a key of :data:`COMMANDS`, e.g. ``"RawGet"``).
            request: The request message, its ``context`` already filled.
            timeout: Seconds until the request fails with :class:`RPCTimeoutError`;
                ``None`` = ``Config.read_timeout_short``.
            forwarded_host: Ask the store at ``address`` (a proxy) to forward the request
                to the store at this address (client-go's ``EnableForwarding``: used when
                the leader's store is unreachable from the client but not from its
                peers). It travels as ``tikv-forwarded-host`` gRPC metadata, on separate
                streams of the proxy's connections.

        Returns:
            The response message (e.g. ``kvrpcpb.RawGetResponse``), region errors and
            key errors included: interpreting them is the request pipeline's job.

        Raises:
            TransportError: The request failed at the transport level (its ``sent`` tells
                whether it may have been executed); :class:`RPCTimeoutError` for a
                deadline.
            tikv_pd.errors.ClientClosedError: The transport is (or got) closed.
            ValueError: ``command`` is unknown.

        """
        if self._closed:
            raise ClientClosedError("transport")
        spec = COMMANDS.get(command)
        if spec is None:
            raise ValueError(f"unknown TiKV command {command!r}")
        if timeout is None:
            timeout = self.config.read_timeout_short
        store = self._stores.get(address)
        if store is None:
            store = self._stores[address] = _Store(self, address)
        if forwarded_host:
            store = self._forwarding_store(store, forwarded_host)
        field = spec.batch_field
        if field is None or not self._batch or store.unary_only:
            return await store.unary(spec, request, timeout)
        # client-go queues each batched request with the resource-control priority of
        # its context (client.go: GetResourceControlContext().GetOverridePriority()).
        # Most requests carry no ResourceControlContext: test for it before reading into
        # it (reading an unset sub-message builds a default one, ~3x the cost).
        priority = 0
        if spec.has_context:
            ctx = request.context  # type: ignore[attr-defined]
            if ctx.HasField("resource_control_context"):
                priority = ctx.resource_control_context.override_priority
        try:
            return await store.batch(field, request, timeout, priority)
        except _FallBackToUnaryError:
            return await store.unary(spec, request, timeout)

    def _forwarding_store(self, proxy: _Store, forwarded_host: str) -> _Store:
        key = (proxy.address, forwarded_host)
        store = self._forwarding.get(key)
        if store is None:
            store = self._forwarding[key] = _Store(
                self,
                proxy.address,
                forwarded_host=forwarded_host,
                channels=[c.channel for c in proxy.conns],
            )
        return store

    def _unary_error(
        self, address: str, exc: grpc.aio.AioRpcError, timeout: float
    ) -> BaseException:
        """Translate a failed unary call into the transport's error (used internally)."""
        code = exc.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            self.stats.timeouts += 1
            error: TransportError = RPCTimeoutError(address, timeout, sent=True)
            error.cause = exc
            return error
        if code == grpc.StatusCode.CANCELLED and self._closed:
            return ClientClosedError("transport")
        return TransportError(address, exc, sent=_may_have_been_sent(exc), code=code)

    async def close_address(self, address: str) -> None:
        """Close the connections to ``address`` (client-go ``CloseAddr``).

        Used when the address now serves another store (``StoreNotMatch``) or the
        connection is suspect. Requests in flight there fail with :class:`TransportError`;
        the next request to the address opens new connections.
        """
        closing = [self._forwarding.pop(k) for k in list(self._forwarding) if k[0] == address]
        store = self._stores.pop(address, None)
        if store is not None:
            closing.append(store)  # last: it owns the channels the others share
        for victim in closing:
            await victim.close(victim.connection_closed)

    async def close(self) -> None:
        """Close every connection; waiting requests fail with ``ClientClosedError``.

        Cancels the sender and receiver tasks and waits for them. Idempotent.
        """
        self._closed = True
        task, self._health_task = self._health_task, None
        if task is not None:
            task.cancel()
            # Its failure, if it failed, was logged by its done callback; close goes on
            # to close the stores either way.
            await asyncio.wait([task])
        stores = [*self._forwarding.values(), *self._stores.values()]
        self._forwarding.clear()
        self._stores.clear()
        for store in stores:
            await store.close(lambda e: ClientClosedError("transport"))

    async def __aenter__(self) -> Transport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# Texts gRPC core puts in UNAVAILABLE when it never connected (so nothing was sent).
_NOT_CONNECTED_MARKERS: Sequence[str] = (
    "failed to connect",
    "Failed to connect",
    "Connection refused",
    "connection refused",
    "DNS resolution failed",
    "Name resolution failure",
)


def _may_have_been_sent(exc: grpc.aio.AioRpcError) -> bool:
    """Whether a failed unary call may have reached the server.

    Only an ``UNAVAILABLE`` whose details say the connection was never established is
    known not to have been sent; everything else may have been executed.
    """
    code = exc.code()
    if code in FATAL_STATUS_CODES:
        # The server (or the client library) refused the call before executing it.
        return False
    if code != grpc.StatusCode.UNAVAILABLE:
        return True
    details = exc.details() or ""
    return not any(marker in details for marker in _NOT_CONNECTED_MARKERS)
