"""The asyncio PD client: members and leader failover, the batching TSO stream, lookups.

:class:`PDClient` speaks ``pdpb.PD`` (and ``keyspacepb.Keyspace``) to the PD leader:

* **Members.** :meth:`PDClient.connect` asks every given endpoint for ``GetMembers``;
  they must agree on the cluster id, which then goes into the header of every request.
  The leader's first client URL is where requests go. Members are refreshed every
  ``Config.pd_update_member_interval`` (1 min, tikv/pd
  ``client/servicediscovery/service_discovery.go`` MemberUpdateInterval) and whenever a
  call fails; a refresh asks each known member in turn with a 1 s timeout
  (UpdateMemberTimeout), retrying with a 20 → 100 ms backoff for at most 1 s
  (UpdateMemberBackOffBaseTime / UpdateMemberMaxBackoffTime).
* **Failover.** A unary call that fails at the transport level, or that a follower
  answers with "not leader" (PD's ``ErrNotLeader`` is ``Unavailable: not leader``), first
  refreshes the members; if the leader moved it is retried at once on the new leader,
  otherwise after a ``pdRPC`` backoff (500 ms → 3 s, client-go ``config/retry``), within
  the caller's :class:`~tikv_pd.backoff.Backoffer` budget.
* **TSO.** One bidirectional ``Tso`` stream per client. A dispatcher task collects every
  pending :meth:`PDClient.get_timestamp` call into one ``TsoRequest{count=N}`` (no timer:
  it drains what is queued, at most ``Config.tso_max_batch_size`` = 10000, tikv/pd
  ``client/clients/tso/client.go``), with one request in flight at a time (PD's default
  TSO RPC concurrency of 1, ``client/opt/option.go``): callers that arrive while a
  request is in flight form the next batch. PD answers with the *largest* timestamp of
  the range, so the batch receives ``logical-N+1 .. logical`` in FIFO order
  (``client/clients/tso/dispatcher.go``). A response whose count differs from the
  request breaks the stream (``ErrTSOLength``). A failed batch is retried once after
  reconnecting (a timestamp fetched later is still a valid timestamp); a second failure
  fails its callers with :class:`~tikv_pd.errors.PDError`. Every request has a deadline
  of ``Config.pd_timeout``, so no caller waits forever. Timestamps handed out never go
  backwards; a PD answer that would (``timestamp fallback`` in the Go client) fails the
  batch.
* **Validation.** A response header error becomes a :class:`~tikv_pd.errors.PDError`
  carrying PD's error type name and message; a response missing a required field
  becomes a PDError that says which, never an ``AttributeError``.

Region answers are returned as :class:`PDRegion` (PD's view, keys exactly as PD stores
them, like the Go client's ``router.Region``); the region locator decodes keys and turns
them into region-cache entries.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import grpc
import grpc.aio
from tikv_proto import keyspacepb_pb2, keyspacepb_pb2_grpc, metapb_pb2, pdpb_pb2, pdpb_pb2_grpc

from tikv_pd import observability as _obs
from tikv_pd.backoff import PD_RPC, Backoffer
from tikv_pd.channels import ChannelCache, parse_endpoint
from tikv_pd.config import Config
from tikv_pd.errors import ClientClosedError, PDError
from tikv_pd.oracle import LOGICAL_BITS
from tikv_pd.region_cache import Store, StoreState

if TYPE_CHECKING:
    from tikv_proto.keyspacepb_pb2_grpc import KeyspaceAsyncStub
    from tikv_proto.pdpb_pb2_grpc import PDAsyncStub

__all__ = [
    "DEFAULT_PD_RETRY_BUDGET_MS",
    "MAX_TSO_RETRIES",
    "UPDATE_MEMBER_BACKOFF_BASE",
    "UPDATE_MEMBER_BACKOFF_MAX",
    "UPDATE_MEMBER_TIMEOUT",
    "ClusterInfo",
    "KeyspaceMeta",
    "PDClient",
    "PDMember",
    "PDRegion",
    "ServiceSafePoint",
    "store_from_meta",
]

logger = logging.getLogger("tikv.pd")

_MAX_LOGICAL = 1 << LOGICAL_BITS

#: Timeout of one GetMembers call during a refresh (tikv/pd UpdateMemberTimeout, 1 s);
#: short so that an isolated member is skipped quickly.
UPDATE_MEMBER_TIMEOUT = 1.0
#: First backoff between member refresh attempts (UpdateMemberBackOffBaseTime, 20 ms).
UPDATE_MEMBER_BACKOFF_BASE = 0.02
#: Largest backoff between member refresh attempts (UpdateMemberMaxBackoffTime, 100 ms).
UPDATE_MEMBER_BACKOFF_MAX = 0.1
#: How often connect() retries the initial discovery (tikv/pd ``initRetry`` ticks 1 s).
_INIT_RETRY_INTERVAL = 1.0
#: Pause before the TSO dispatcher reconnects after a stream failure that was not a
#: leader change (tikv/pd ``client/constants`` RetryInterval, 500 ms).
_TSO_RETRY_INTERVAL = 0.5
#: How many times a TSO caller's batch is re-sent after its stream broke.
MAX_TSO_RETRIES = 1
#: Budget (ms, before client-go's BackOffWeight of 2) of the pdRPC retries of one PD call
#: made without a caller Backoffer. 5 s weighted to 10 s covers a PD leader election.
DEFAULT_PD_RETRY_BUDGET_MS = 5_000

# Substrings of PD errors that mean "ask another member" (tikv/pd ``client/errs``
# IsLeaderChange: NotLeaderErr, NoLeaderErr, MismatchLeaderErr, NotServedErr,
# NotPrimaryErr).
_LEADER_CHANGE_MARKERS = (
    "not leader",
    "no leader",
    "mismatch leader id",
    "is not served",
    "not primary",
)
# Transport codes after which the same call may be sent again (to the same or a new
# leader): the request either never reached PD or PD could not serve it.
_RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


# ---------------------------------------------------------------------------------------
# Result types
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PDRegion:
    """One region as PD reports it (GetRegion / ScanRegions / BatchScanRegions).

    Keys are exactly as PD stores them: memcomparable-encoded for API v1 transactional
    data and keyspace-prefixed under API v2. The region locator decodes them.

    Attributes:
        meta: The region: id, start / end key, epoch, peers.
        leader: The leader peer PD knows of, or ``None`` when PD has none (election in
            progress, or a region just created by a split).
        down_peers: Peers PD reports as down.
        pending_peers: Peers PD reports as pending (catching up on the log).
        buckets: The region's buckets when requested and known, else ``None``.

    """

    meta: metapb_pb2.Region
    leader: metapb_pb2.Peer | None
    down_peers: tuple[metapb_pb2.Peer, ...] = ()
    pending_peers: tuple[metapb_pb2.Peer, ...] = ()
    buckets: metapb_pb2.Buckets | None = None

    @property
    def id(self) -> int:
        """The region id."""
        return self.meta.id

    @property
    def start_key(self) -> bytes:
        """The region's start key, as PD stores it."""
        return self.meta.start_key

    @property
    def end_key(self) -> bytes:
        """The region's end key, as PD stores it (``b""`` = unbounded)."""
        return self.meta.end_key


@dataclass(frozen=True, slots=True)
class PDMember:
    """A PD member from GetMembers.

    Attributes:
        name: The member's name.
        member_id: Its etcd member id.
        client_urls: The URLs clients reach it at (``http(s)://host:port``).

    """

    name: str
    member_id: int
    client_urls: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """GetClusterInfo: how the cluster serves TSO.

    Attributes:
        service_modes: ``pdpb.ServiceMode`` names (``"PD_SVC_MODE"`` = PD serves TSO
            itself, ``"API_SVC_MODE"`` = separate TSO microservices).
        tso_urls: URLs of the TSO microservices in API service mode.

    """

    service_modes: tuple[str, ...]
    tso_urls: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class KeyspaceMeta:
    """A keyspace's metadata (``keyspacepb.KeyspaceMeta``).

    Attributes:
        id: The keyspace id (24 bits under API v2; it forms the key prefix).
        name: The keyspace name.
        state: ``keyspacepb.KeyspaceState`` name (``"ENABLED"``, ``"DISABLED"``, ...).
        created_at: Creation time, Unix seconds.
        state_changed_at: Time of the last state change, Unix seconds.
        config: The keyspace's configuration map.

    """

    id: int
    name: str
    state: str
    created_at: int
    state_changed_at: int
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ServiceSafePoint:
    """UpdateServiceGCSafePoint's answer.

    Attributes:
        service_id: The service whose safepoint was set.
        ttl: The TTL PD recorded, seconds.
        min_safe_point: The smallest service safepoint now registered: GC will not
            advance past it. When it exceeds the requested safepoint, the request was
            too old and PD ignored it.

    """

    service_id: bytes
    ttl: int
    min_safe_point: int


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def store_from_meta(meta: metapb_pb2.Store) -> Store:
    """Convert a ``metapb.Store`` to the region cache's :class:`~tikv_pd.region_cache.Store`.

    Raises:
        PDError: The store has no id.

    """
    if meta.id == 0:
        raise PDError("PD returned a store without an id")
    try:
        state = StoreState(meta.state)
    except ValueError:
        # A state this client does not know (newer PD): treat it as serving; the
        # transport's liveness checks decide reachability.
        state = StoreState.UP
    return Store(
        id=meta.id,
        address=meta.address,
        state=state,
        labels=tuple((label.key, label.value) for label in meta.labels),
        version=meta.version,
        peer_address=meta.peer_address,
        status_address=meta.status_address,
    )


def _rpc_text(exc: grpc.aio.AioRpcError) -> str:
    details = exc.details() or ""
    return f"{exc.code().name}: {details}" if details else exc.code().name


def _is_leader_change(exc: BaseException) -> bool:
    """Whether a failure means PD's leadership moved (tikv/pd ``errs.IsLeaderChange``)."""
    if isinstance(exc, grpc.aio.AioRpcError):
        text = (exc.details() or "").lower()
    else:
        text = str(exc).lower()
    return any(marker in text for marker in _LEADER_CHANGE_MARKERS)


def _is_retryable(exc: grpc.aio.AioRpcError) -> bool:
    # CANCELLED reaches here only while the client is open: the call's channel was
    # closed because its member left the cluster, so the request may go elsewhere.
    return (
        exc.code() in _RETRYABLE_CODES
        or exc.code() == grpc.StatusCode.CANCELLED
        or _is_leader_change(exc)
    )


def _header_error(method: str, response: object) -> PDError | None:
    """Return PD's header error as a PDError, or None when the header says success."""
    header = getattr(response, "header", None)
    if header is None or not response.HasField("header"):  # type: ignore[attr-defined]
        return PDError(f"{method}: PD response has no header")
    if header.HasField("error"):
        err = header.error
        try:
            type_name = pdpb_pb2.ErrorType.Name(err.type)
        except ValueError:
            type_name = f"ErrorType({err.type})"
        return PDError(f"{method}: {err.message or type_name}", error_type=type_name)
    return None


def _check_key(name: str, key: object) -> bytes:
    if not isinstance(key, bytes):
        raise TypeError(f"{name} must be bytes, got {type(key).__name__}")
    return key


def _check_uint(name: str, value: object, *, minimum: int = 0, bits: int = 64) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum or value >= 1 << bits:
        raise ValueError(f"{name} must be in [{minimum}, 2**{bits}), got {value}")
    return value


def _service_id(service_id: object) -> bytes:
    if isinstance(service_id, str):
        service_id = service_id.encode()
    if not isinstance(service_id, bytes):
        raise TypeError(f"service_id must be str or bytes, got {type(service_id).__name__}")
    if not service_id:
        raise ValueError("service_id must not be empty")
    return service_id


def _region_from(
    method: str,
    meta: metapb_pb2.Region,
    leader: metapb_pb2.Peer | None,
    down: Iterable[pdpb_pb2.PeerStats],
    pending: Iterable[metapb_pb2.Peer],
    buckets: metapb_pb2.Buckets | None,
) -> PDRegion:
    if meta.id == 0:
        raise PDError(f"{method}: PD returned a region without an id")
    if not meta.HasField("region_epoch"):
        raise PDError(f"{method}: region {meta.id} has no region_epoch")
    if meta.end_key and meta.start_key >= meta.end_key:
        raise PDError(
            f"{method}: region {meta.id} has start_key >= end_key "
            f"({meta.start_key!r} >= {meta.end_key!r})"
        )
    if leader is not None and leader.id == 0:
        leader = None
    return PDRegion(
        meta=meta,
        leader=leader,
        down_peers=tuple(ps.peer for ps in down if ps.HasField("peer")),
        pending_peers=tuple(pending),
        buckets=buckets,
    )


def _region_of(method: str, item: pdpb_pb2.GetRegionResponse | pdpb_pb2.Region) -> PDRegion:
    """:func:`_region_from` for a message with ``region``, ``leader``, peers and buckets.

    ``GetRegion``-style responses and the items of ``ScanRegions`` / ``BatchScanRegions``
    share these fields.
    """
    return _region_from(
        method,
        item.region,
        item.leader if item.HasField("leader") else None,
        item.down_peers,
        item.pending_peers,
        item.buckets if item.HasField("buckets") else None,
    )


# ---------------------------------------------------------------------------------------
# TSO
# ---------------------------------------------------------------------------------------


class _TsoWaiter:
    """One get_timestamp() caller: its future and how often its batch was re-sent."""

    __slots__ = ("future", "retries")

    def __init__(self, future: asyncio.Future[int]) -> None:
        self.future = future
        self.retries = 0


class _TsoStream:
    """One open ``Tso`` call to one PD member; one request in flight at a time."""

    def __init__(
        self,
        target: str,
        call: grpc.aio.StreamStreamCall[pdpb_pb2.TsoRequest, pdpb_pb2.TsoResponse],
    ) -> None:
        self.target = target
        self._call = call

    async def round_trip(self, request: pdpb_pb2.TsoRequest) -> pdpb_pb2.TsoResponse:
        await self._call.write(request)
        response = await self._call.read()
        if not isinstance(response, pdpb_pb2.TsoResponse):
            # grpc.aio.EOF: PD ended the stream without an error status.
            raise PDError(f"TSO stream to {self.target} was closed by PD")
        return response

    def done(self) -> bool:
        """Whether the call has ended (PD closed it, or the connection went away)."""
        return self._call.done()

    def cancel(self) -> None:
        self._call.cancel()


class _TsoDispatcher:
    """Collects concurrent timestamp requests into batches on one stream (see module)."""

    def __init__(self, client: PDClient) -> None:
        self._client = client
        self._queue: collections.deque[_TsoWaiter] = collections.deque()
        self._wake = asyncio.Event()
        self._stream: _TsoStream | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._dead: PDError | None = None
        self._last_ts = 0
        #: TsoRequests sent (each carries a whole batch).
        self.requests_sent = 0
        #: Timestamps handed out.
        self.timestamps_served = 0
        #: The error of the last failed batch, for diagnostics.
        self.last_error: BaseException | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="tikv-pd-tso-dispatcher"
        )
        self._task.add_done_callback(self._on_task_done)

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # Unreachable by design (_run catches per batch); if it happens anyway,
            # nobody may wait forever: fail the queue and refuse new requests.
            logger.error("TSO dispatcher stopped: %r", exc)
            self._dead = PDError("the TSO dispatcher stopped unexpectedly", cause=exc)
            self._fail_all(self._dead)

    def submit(self) -> asyncio.Future[int]:
        if self._closed:
            raise ClientClosedError("PD client")
        if self._dead is not None:
            raise self._dead
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append(_TsoWaiter(future))
        self._wake.set()
        return future

    async def close(self) -> None:
        self._closed = True
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._drop_stream()
        self._fail_all(ClientClosedError("PD client", when="while requests were pending"))

    # -- the loop ------------------------------------------------------------------

    def _fail_all(self, exc: BaseException) -> None:
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(exc)

    def _drop_stream(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None

    def _take_batch(self) -> list[_TsoWaiter]:
        limit = self._client.config.tso_max_batch_size
        batch: list[_TsoWaiter] = []
        queue = self._queue
        while queue and len(batch) < limit:
            waiter = queue.popleft()
            # A caller that gave up (cancelled) takes no timestamp.
            if not waiter.future.done():
                batch.append(waiter)
        return batch

    async def _run(self) -> None:
        try:
            while True:
                if not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                max_wait = self._client.config.tso_max_batch_wait
                if max_wait > 0:
                    # Config.tso_max_batch_wait: let more callers join (0 by default).
                    await asyncio.sleep(max_wait)
                batch = self._take_batch()
                if not batch:
                    continue
                try:
                    await self._serve(batch)
                except asyncio.CancelledError:
                    self._requeue_front(batch)
                    raise
                except Exception as exc:
                    # A bug here must not leave callers hanging: fail them loudly.
                    logger.exception("TSO dispatcher: unexpected error")
                    err = PDError("TSO dispatcher failed unexpectedly", cause=exc)
                    self.last_error = err
                    for waiter in batch:
                        if not waiter.future.done():
                            waiter.future.set_exception(err)
                    self._drop_stream()
        except asyncio.CancelledError:
            self._fail_all(ClientClosedError("PD client", when="while requests were pending"))
            raise

    def _requeue_front(self, batch: Sequence[_TsoWaiter]) -> None:
        for waiter in reversed(batch):
            if not waiter.future.done():
                self._queue.appendleft(waiter)

    def _current_stream(self) -> _TsoStream:
        leader = self._client.leader
        stream = self._stream
        if stream is not None and stream.target == leader and not stream.done():
            return stream
        if stream is not None and stream.done():
            # The stream ended while idle (e.g. the server sent GOAWAY): nothing was in
            # flight, so this is no failure of the next batch; just open a new one.
            logger.debug("TSO stream to %s ended while idle; reopening", stream.target)
        # No stream yet, or the leader moved: open one to the current leader. The call
        # connects lazily; a dead leader shows up as an error of the first round trip.
        self._drop_stream()
        stub = self._client._pd_stub(leader)
        stream = _TsoStream(leader, stub.Tso(None))
        self._stream = stream
        return stream

    async def _serve(self, batch: list[_TsoWaiter]) -> None:
        client = self._client
        stream = self._current_stream()
        count = len(batch)
        metrics = _obs.metrics
        if metrics is not None:
            metrics.observe_tso_batch(count)
        request = pdpb_pb2.TsoRequest(header=client._header(), count=count)
        self.requests_sent += 1
        try:
            response = await asyncio.wait_for(stream.round_trip(request), client.config.pd_timeout)
            first, step = self._check_response(stream.target, response, count)
        except (
            grpc.aio.AioRpcError,
            grpc.aio.UsageError,
            asyncio.InvalidStateError,
            PDError,
            TimeoutError,
        ) as exc:
            # A stream failure (including writing to a call that already ended).
            await self._on_failure(stream, batch, exc)
            return
        ts = first
        last = first
        for waiter in batch:
            last = ts
            if not waiter.future.done():
                waiter.future.set_result(ts)
            ts += step
        self._last_ts = last
        self.timestamps_served += count

    def _check_response(
        self, target: str, response: pdpb_pb2.TsoResponse, count: int
    ) -> tuple[int, int]:
        """Validate a TsoResponse; return the first timestamp and the step between."""
        error = _header_error("Tso", response)
        if error is not None:
            raise error
        if response.count != count:
            # tikv/pd ErrTSOLength: the stream is out of step and must be rebuilt.
            raise PDError(
                f"Tso: PD at {target} returned {response.count} timestamps for a request of {count}"
            )
        if not response.HasField("timestamp"):
            raise PDError(f"Tso: response from {target} has no timestamp")
        tso = response.timestamp
        step = 1 << tso.suffix_bits
        first_logical = tso.logical - (count - 1) * step
        if tso.physical <= 0 or first_logical < 0 or tso.logical >= _MAX_LOGICAL:
            raise PDError(
                f"Tso: invalid timestamp from {target}: physical={tso.physical} "
                f"logical={tso.logical} count={count}"
            )
        first = (tso.physical << LOGICAL_BITS) | first_logical
        if first <= self._last_ts:
            # tikv/pd checkMonotonicity panics on a fallback; refusing the batch keeps
            # every timestamp this client hands out strictly increasing.
            raise PDError(f"Tso: timestamp fallback from {target}: {first} <= last {self._last_ts}")
        return first, step

    async def _on_failure(
        self, stream: _TsoStream, batch: list[_TsoWaiter], exc: BaseException
    ) -> None:
        client = self._client
        if isinstance(exc, grpc.aio.AioRpcError):
            err = PDError(f"Tso stream to {stream.target} failed: {_rpc_text(exc)}", cause=exc)
        elif isinstance(exc, TimeoutError):
            err = PDError(
                f"Tso request to {stream.target} timed out after {client.config.pd_timeout} s",
                cause=exc,
            )
        elif isinstance(exc, PDError):
            err = exc
        else:
            err = PDError(f"Tso stream to {stream.target} failed: {exc!r}", cause=exc)
        self.last_error = err
        logger.warning("TSO batch of %d failed: %s", len(batch), err)
        if self._stream is stream:
            self._drop_stream()
        retry: list[_TsoWaiter] = []
        for waiter in batch:
            if waiter.future.done():
                continue
            if waiter.retries < MAX_TSO_RETRIES:
                waiter.retries += 1
                retry.append(waiter)
            else:
                waiter.future.set_exception(err)
        self._requeue_front(retry)
        if self._closed:
            return
        # tikv/pd handleProcessRequestError: after a leader change refresh the members
        # right away so the next batch goes to the new leader; otherwise schedule a
        # refresh. We also refresh right away when the leader is unreachable: a dead
        # leader usually means an election, and the re-sent batch should go to the
        # winner. Unless the leader did move, pause before reconnecting (RetryInterval)
        # so that a failing PD is not hammered.
        old_leader = client.leader
        unreachable = (
            isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE
        )
        if _is_leader_change(exc) or unreachable:
            with contextlib.suppress(PDError, ClientClosedError):
                await client.check_members()
        else:
            client.schedule_member_check()
        if client.leader == old_leader:
            await asyncio.sleep(_TSO_RETRY_INTERVAL)


# ---------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------


class PDClient:
    """Asyncio client of a PD cluster. Create it with :meth:`connect`; close it.

    All methods must be called from the event loop the client was connected on. Every
    method that reaches PD accepts an optional ``backoffer``: its budget bounds the
    retries (pdRPC backoff) across leader changes and unreachable members; without one,
    a Backoffer with :data:`DEFAULT_PD_RETRY_BUDGET_MS` is used.
    """

    def __init__(
        self,
        *,
        config: Config,
        seeds: Sequence[str],
        channels: ChannelCache,
        caller_id: str,
    ) -> None:
        """Use :meth:`connect`; the constructor does no I/O and is not public API."""
        self._config = config
        self._seeds = tuple(seeds)
        self._channels = channels
        self._caller_id = caller_id
        self._cluster_id = 0
        self._leader = ""
        self._targets: tuple[str, ...] = self._seeds
        self._members: tuple[PDMember, ...] = ()
        self._pd_stubs: dict[str, PDAsyncStub] = {}
        self._keyspace_stubs: dict[str, KeyspaceAsyncStub] = {}
        self._member_check: asyncio.Task[None] | None = None
        self._member_wake = asyncio.Event()
        self._member_task: asyncio.Task[None] | None = None
        self._tso = _TsoDispatcher(self)
        self._closed = False
        #: The error of the last failed background member refresh (None after success).
        self.last_member_error: PDError | None = None
        #: How many member refreshes succeeded (diagnostics).
        self.member_updates = 0

    # -- construction ----------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        endpoints: Sequence[str],
        *,
        config: Config | None = None,
        connect_timeout: float = 10.0,
        caller_id: str = "tikv-python",
    ) -> PDClient:
        """Discover the PD cluster behind ``endpoints`` and return a connected client.

        Args:
            endpoints: PD addresses, ``host:port`` or ``http(s)://host:port``; one
                reachable member is enough, all reachable ones must agree on the
                cluster id.
            config: Client configuration (timeouts, TSO batching, TLS); defaults to
                ``Config()``.
            connect_timeout: Seconds to keep retrying discovery (every 1 s, as the Go
                client's ``initRetry``) while no member answers or none knows a leader.
            caller_id: Sent as ``RequestHeader.caller_id`` (PD uses it in its logs and
                rate limits).

        Raises:
            TypeError: ``endpoints`` is a str or holds non-str items; ``config`` is not
                a Config.
            ValueError: No endpoint given, or one is malformed.
            PDError: Endpoints disagree on the cluster id, or no member answered with
                a leader within ``connect_timeout``.

        """
        if isinstance(endpoints, str | bytes):
            raise TypeError("endpoints must be a sequence of 'host:port' strings, not a str")
        seeds: list[str] = []
        for endpoint in endpoints:
            target = parse_endpoint(endpoint)
            if target not in seeds:
                seeds.append(target)
        if not seeds:
            raise ValueError("at least one PD endpoint is required")
        if config is None:
            config = Config()
        elif not isinstance(config, Config):
            raise TypeError(f"config must be a tikv_pd.config.Config, got {type(config).__name__}")
        if (
            isinstance(connect_timeout, bool)
            or not isinstance(connect_timeout, int | float)
            or not math.isfinite(connect_timeout)
            or connect_timeout <= 0
        ):
            raise ValueError(f"connect_timeout must be a positive number, got {connect_timeout!r}")
        if not isinstance(caller_id, str):
            raise TypeError("caller_id must be a str")
        channels = ChannelCache(config=config)
        client = cls(config=config, seeds=seeds, channels=channels, caller_id=caller_id)
        try:
            await client._initialize(connect_timeout)
        except BaseException:
            await client.close()
            raise
        return client

    async def _initialize(self, connect_timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + connect_timeout
        while True:
            try:
                await self._discover()
                break
            except PDError as exc:
                if exc.error_type == "CLUSTER_ID_MISMATCH":
                    raise
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise
                logger.info("PD discovery failed, retrying: %s", exc)
                await asyncio.sleep(min(_INIT_RETRY_INTERVAL, remaining))
        self._member_task = loop.create_task(self._member_loop(), name="tikv-pd-members")
        self._tso.start()

    async def _discover(self) -> None:
        """Ask every seed for its members; all must agree on one cluster id."""
        timeout = self._config.pd_timeout

        async def ask(target: str) -> pdpb_pb2.GetMembersResponse:
            return await self._pd_stub(target).GetMembers(
                pdpb_pb2.GetMembersRequest(), timeout=timeout
            )

        results = await asyncio.gather(*(ask(t) for t in self._seeds), return_exceptions=True)
        problems: list[str] = []
        answers: list[tuple[str, pdpb_pb2.GetMembersResponse]] = []
        for target, result in zip(self._seeds, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, BaseException):
                text = _rpc_text(result) if isinstance(result, grpc.aio.AioRpcError) else result
                problems.append(f"{target}: {text}")
                continue
            error = _header_error("GetMembers", result)
            if error is not None:
                problems.append(f"{target}: {error}")
                continue
            answers.append((target, result))
        cluster_ids = {resp.header.cluster_id for _, resp in answers}
        if len(cluster_ids) > 1:
            detail = ", ".join(f"{t}={r.header.cluster_id}" for t, r in answers)
            raise PDError(
                f"PD endpoints belong to different clusters ({detail})",
                error_type="CLUSTER_ID_MISMATCH",
            )
        if not answers:
            raise PDError("no PD endpoint answered GetMembers: " + "; ".join(problems))
        cluster_id = cluster_ids.pop()
        if cluster_id == 0:
            raise PDError("PD answered GetMembers with cluster id 0")
        for target, resp in answers:
            if resp.HasField("leader") and resp.leader.client_urls:
                self._cluster_id = cluster_id
                self._apply_members(resp)
                return
            problems.append(f"{target}: no leader")
        raise PDError("PD has no leader yet: " + "; ".join(problems))

    # -- properties ------------------------------------------------------------------

    @property
    def config(self) -> Config:
        """The client configuration."""
        return self._config

    @property
    def cluster_id(self) -> int:
        """The cluster id every request carries."""
        return self._cluster_id

    @property
    def leader(self) -> str:
        """The current leader's gRPC target (``host:port``)."""
        return self._leader

    @property
    def members(self) -> tuple[PDMember, ...]:
        """The members of the last successful discovery."""
        return self._members

    @property
    def targets(self) -> tuple[str, ...]:
        """Every member's gRPC target, sorted (where member refreshes ask)."""
        return self._targets

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def tso_requests_sent(self) -> int:
        """How many TsoRequests this client sent (each serves a batch of callers)."""
        return self._tso.requests_sent

    @property
    def timestamps_served(self) -> int:
        """How many timestamps this client handed out."""
        return self._tso.timestamps_served

    @property
    def channels(self) -> ChannelCache:
        """The client's channel cache (one channel per PD member)."""
        return self._channels

    # -- members ---------------------------------------------------------------------

    def _header(self) -> pdpb_pb2.RequestHeader:
        return pdpb_pb2.RequestHeader(cluster_id=self._cluster_id, caller_id=self._caller_id)

    def _pd_stub(self, target: str) -> PDAsyncStub:
        stub = self._pd_stubs.get(target)
        if stub is None:
            stub = pdpb_pb2_grpc.PDStub(self._channels.get(target))
            self._pd_stubs[target] = stub
        return stub

    def _keyspace_stub(self, target: str) -> KeyspaceAsyncStub:
        stub = self._keyspace_stubs.get(target)
        if stub is None:
            stub = keyspacepb_pb2_grpc.KeyspaceStub(self._channels.get(target))
            self._keyspace_stubs[target] = stub
        return stub

    def _apply_members(self, resp: pdpb_pb2.GetMembersResponse) -> None:
        members = tuple(PDMember(m.name, m.member_id, tuple(m.client_urls)) for m in resp.members)
        targets: set[str] = set()
        for member in members:
            for url in member.client_urls:
                try:
                    targets.add(parse_endpoint(url))
                except ValueError:
                    logger.warning("ignoring malformed PD client URL %r", url)
        leader = parse_endpoint(resp.leader.client_urls[0])
        targets.add(leader)
        old_targets = set(self._targets) | set(self._seeds)
        self._members = members
        self._targets = tuple(sorted(targets))
        if leader != self._leader:
            if self._leader:
                logger.info("PD leader switched from %s to %s", self._leader, leader)
            self._leader = leader
        # Close channels of members that left (the seeds stay: they were given to us).
        for gone in old_targets - targets - set(self._seeds):
            self._pd_stubs.pop(gone, None)
            self._keyspace_stubs.pop(gone, None)
            self._channels.discard(gone)
        self.member_updates += 1

    async def _update_members_once(self) -> None:
        problems: list[str] = []
        request = pdpb_pb2.GetMembersRequest(header=self._header())
        candidates = list(self._targets) + [s for s in self._seeds if s not in self._targets]
        for target in candidates:
            if self._closed:
                raise ClientClosedError("PD client")
            try:
                resp = await self._pd_stub(target).GetMembers(
                    request, timeout=UPDATE_MEMBER_TIMEOUT
                )
            except grpc.aio.AioRpcError as exc:
                problems.append(f"{target}: {_rpc_text(exc)}")
                continue
            error = _header_error("GetMembers", resp)
            if error is not None:
                problems.append(f"{target}: {error}")
                continue
            if resp.header.cluster_id != self._cluster_id:
                problems.append(
                    f"{target}: cluster id {resp.header.cluster_id} != {self._cluster_id}"
                )
                continue
            if not resp.HasField("leader") or not resp.leader.client_urls:
                problems.append(f"{target}: no leader")
                continue
            self._apply_members(resp)
            return
        raise PDError("cannot update PD members: " + "; ".join(problems))

    async def _update_members(self) -> None:
        """Refresh members, retrying 20 → 100 ms for at most 1 s (tikv/pd updateMember)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + UPDATE_MEMBER_TIMEOUT
        delay = UPDATE_MEMBER_BACKOFF_BASE
        while True:
            try:
                await self._update_members_once()
                self.last_member_error = None
                return
            except PDError as exc:
                self.last_member_error = exc
                if loop.time() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, UPDATE_MEMBER_BACKOFF_MAX)

    async def check_members(self) -> None:
        """Refresh the member list and leader now (single-flight: joins a running one).

        Raises:
            PDError: No member answered with a leader within the refresh budget.
            ClientClosedError: The client is closed.

        """
        if self._closed:
            raise ClientClosedError("PD client")
        task = self._member_check
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(
                self._update_members(), name="tikv-pd-member-check"
            )
            self._member_check = task
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self.closed and task.cancelled() and (current is None or not current.cancelling()):
                # close() cancelled the shared refresh, not our caller.
                raise ClientClosedError("PD client", when="during a member refresh") from None
            raise

    def schedule_member_check(self) -> None:
        """Ask the background loop to refresh the members soon (never blocks)."""
        self._member_wake.set()

    async def _member_loop(self) -> None:
        interval = self._config.pd_update_member_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._member_wake.wait(), interval)
            self._member_wake.clear()
            try:
                await self.check_members()
            except PDError as exc:
                # Surfaces as last_member_error and in the log; the next call that needs
                # PD retries the refresh itself.
                logger.warning("PD member refresh failed: %s", exc)
            except ClientClosedError:
                return
            except Exception as exc:
                # A bug must not end the refresh loop silently.
                logger.exception("PD member refresh crashed")
                self.last_member_error = PDError("member refresh crashed", cause=exc)

    # -- unary calls -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("PD client")

    async def _call(
        self,
        method: str,
        invoke: Callable[[str], Awaitable[_Resp]],
        backoffer: Backoffer | None,
    ) -> _Resp:
        """Send one PD request to the leader, failing over and backing off as needed.

        ``invoke(target)`` performs the gRPC call against ``target``; the response's
        header is checked here.
        """
        self._check_open()
        bo = backoffer
        immediate_retries = 0
        while True:
            target = self._leader
            try:
                response = await invoke(target)
            except grpc.aio.AioRpcError as exc:
                if self._closed:
                    raise ClientClosedError("PD client", when=f"during {method}") from exc
                err = PDError(f"{method} to {target} failed: {_rpc_text(exc)}", cause=exc)
                if not _is_retryable(exc):
                    raise err from exc
                leader_change = _is_leader_change(exc)
                try:
                    await self.check_members()
                except PDError as member_exc:
                    logger.info("PD member refresh after %s failure: %s", method, member_exc)
                if self._leader != target and immediate_retries < len(self._targets):
                    # The leader moved: try the new one at once (client-go does not back
                    # off on a known new leader either).
                    immediate_retries += 1
                    continue
                if bo is None:
                    bo = Backoffer(DEFAULT_PD_RETRY_BUDGET_MS, operation=f"pd.{method}")
                kind = "leader change" if leader_change else "unreachable"
                logger.debug("PD %s: %s (%s), backing off", method, err, kind)
                await bo.backoff(PD_RPC, err)
                continue
            error = _header_error(method, response)
            if error is not None:
                raise error
            return response

    async def _pd_unary(
        self,
        method: str,
        select: Callable[[PDAsyncStub], grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp]],
        request: _Req,
        backoffer: Backoffer | None,
    ) -> _Resp:
        """One unary ``pdpb.PD`` call through :meth:`_call`; ``select`` picks the method."""
        timeout = self._config.pd_timeout
        return await self._call(
            method, lambda t: select(self._pd_stub(t))(request, timeout=timeout), backoffer
        )

    async def get_region(
        self, key: bytes, *, need_buckets: bool = False, backoffer: Backoffer | None = None
    ) -> PDRegion | None:
        """Return the region containing ``key`` (as PD stores keys), or None if PD has none.

        Raises:
            TypeError: ``key`` is not bytes.
            PDError: PD failed or answered with an error.

        """
        return await self._region_by_key(
            "GetRegion", lambda s: s.GetRegion, key, need_buckets, backoffer
        )

    async def get_prev_region(
        self, key: bytes, *, need_buckets: bool = False, backoffer: Backoffer | None = None
    ) -> PDRegion | None:
        """Return the region just before the one containing ``key`` (None if none).

        Raises:
            TypeError: ``key`` is not bytes.
            PDError: PD failed or answered with an error.

        """
        return await self._region_by_key(
            "GetPrevRegion", lambda s: s.GetPrevRegion, key, need_buckets, backoffer
        )

    async def _region_by_key(
        self,
        method: str,
        select: Callable[
            [PDAsyncStub],
            grpc.aio.UnaryUnaryMultiCallable[pdpb_pb2.GetRegionRequest, pdpb_pb2.GetRegionResponse],
        ],
        key: bytes,
        need_buckets: bool,
        backoffer: Backoffer | None,
    ) -> PDRegion | None:
        """``GetRegion`` / ``GetPrevRegion``: one request shape, one answer shape."""
        _check_key("key", key)
        request = pdpb_pb2.GetRegionRequest(
            header=self._header(), region_key=key, need_buckets=need_buckets
        )
        resp = await self._pd_unary(method, select, request, backoffer)
        return self._region_response(method, resp)

    async def get_region_by_id(
        self, region_id: int, *, need_buckets: bool = False, backoffer: Backoffer | None = None
    ) -> PDRegion | None:
        """Return the region with ``region_id``, or None when PD does not know it.

        Raises:
            TypeError / ValueError: ``region_id`` is not a positive int.
            PDError: PD failed or answered with an error.

        """
        _check_uint("region_id", region_id, minimum=1)
        request = pdpb_pb2.GetRegionByIDRequest(
            header=self._header(), region_id=region_id, need_buckets=need_buckets
        )
        resp = await self._pd_unary("GetRegionByID", lambda s: s.GetRegionByID, request, backoffer)
        return self._region_response("GetRegionByID", resp)

    @staticmethod
    def _region_response(method: str, resp: pdpb_pb2.GetRegionResponse) -> PDRegion | None:
        return _region_of(method, resp) if resp.HasField("region") else None

    async def scan_regions(
        self,
        start_key: bytes,
        end_key: bytes,
        limit: int,
        *,
        backoffer: Backoffer | None = None,
    ) -> list[PDRegion]:
        """Return up to ``limit`` regions overlapping ``[start_key, end_key)`` in key order.

        ``end_key=b""`` means unbounded. Keys are as PD stores them.

        Raises:
            TypeError / ValueError: Bad keys, ``start_key >= end_key``, or ``limit < 1``.
            PDError: PD failed or answered with an error.

        """
        _check_key("start_key", start_key)
        _check_key("end_key", end_key)
        _check_uint("limit", limit, minimum=1, bits=31)
        if end_key and start_key >= end_key:
            raise ValueError(
                f"scan_regions: start_key must be < end_key, got {start_key!r} >= {end_key!r}"
            )
        request = pdpb_pb2.ScanRegionsRequest(
            header=self._header(), start_key=start_key, end_key=end_key, limit=limit
        )
        resp = await self._pd_unary("ScanRegions", lambda s: s.ScanRegions, request, backoffer)
        regions: list[PDRegion]
        if resp.regions:
            regions = [_region_of("ScanRegions", r) for r in resp.regions if r.HasField("region")]
        else:
            # PD before v6 only fills region_metas and the parallel list of leaders.
            leaders = list(resp.leaders)
            regions = [
                _region_from(
                    "ScanRegions",
                    meta,
                    leaders[i] if i < len(leaders) else None,
                    (),
                    (),
                    None,
                )
                for i, meta in enumerate(resp.region_metas)
            ]
        return regions

    async def batch_scan_regions(
        self,
        ranges: Sequence[tuple[bytes, bytes]],
        limit: int,
        *,
        contain_all_key_range: bool = False,
        need_buckets: bool = False,
        backoffer: Backoffer | None = None,
    ) -> list[PDRegion]:
        """Return up to ``limit`` regions overlapping any of ``ranges``, in key order.

        Args:
            ranges: Sorted, non-overlapping ``(start, end)`` pairs; ``end=b""`` means
                unbounded and is only allowed for the last range.
            limit: Max regions returned in total.
            contain_all_key_range: Ask PD to fail (``REGIONS_NOT_CONTAIN_ALL_KEY_RANGE``)
                when the regions do not cover every range without holes.
            need_buckets: Include bucket information.
            backoffer: Retry budget.

        Raises:
            TypeError / ValueError: Malformed, unsorted or overlapping ranges; bad limit.
            PDError: PD failed or answered with an error.

        """
        given: object = ranges
        if isinstance(given, bytes | str) or not isinstance(given, Sequence):
            raise TypeError("ranges must be a sequence of (start, end) byte pairs")
        if not ranges:
            raise ValueError("batch_scan_regions needs at least one range")
        _check_uint("limit", limit, minimum=1, bits=31)
        prev_end: bytes | None = None
        key_ranges = []
        for i, item in enumerate(ranges):
            if not isinstance(item, tuple) or len(item) != 2:
                raise TypeError(f"ranges[{i}] must be a (start, end) tuple")
            start, end = (
                _check_key(f"ranges[{i}][0]", item[0]),
                _check_key(f"ranges[{i}][1]", item[1]),
            )
            if end and start >= end:
                raise ValueError(f"ranges[{i}]: start must be < end, got {start!r} >= {end!r}")
            if prev_end is not None and (prev_end == b"" or start < prev_end):
                raise ValueError(f"ranges[{i}] overlaps or precedes the range before it")
            prev_end = end
            key_ranges.append(pdpb_pb2.KeyRange(start_key=start, end_key=end))
        request = pdpb_pb2.BatchScanRegionsRequest(
            header=self._header(),
            ranges=key_ranges,
            limit=limit,
            contain_all_key_range=contain_all_key_range,
            need_buckets=need_buckets,
        )
        resp = await self._pd_unary(
            "BatchScanRegions", lambda s: s.BatchScanRegions, request, backoffer
        )
        return [_region_of("BatchScanRegions", r) for r in resp.regions if r.HasField("region")]

    async def get_store(self, store_id: int, *, backoffer: Backoffer | None = None) -> Store:
        """Return store ``store_id`` (address, state, labels, version, ...).

        Raises:
            TypeError / ValueError: ``store_id`` is not a positive int.
            PDError: PD failed, or does not know the store (PD answers with a header
                error, kept in ``error_type`` / the message).

        """
        _check_uint("store_id", store_id, minimum=1)
        request = pdpb_pb2.GetStoreRequest(header=self._header(), store_id=store_id)
        resp = await self._pd_unary("GetStore", lambda s: s.GetStore, request, backoffer)
        if not resp.HasField("store") or resp.store.id == 0:
            raise PDError(f"GetStore: PD returned no store for id {store_id}")
        if resp.store.id != store_id:
            raise PDError(f"GetStore: asked for store {store_id}, PD returned {resp.store.id}")
        return store_from_meta(resp.store)

    async def get_all_stores(
        self, *, exclude_tombstone: bool = True, backoffer: Backoffer | None = None
    ) -> list[Store]:
        """Return every store PD knows (without tombstones unless asked).

        Raises:
            PDError: PD failed or answered with an error.

        """
        request = pdpb_pb2.GetAllStoresRequest(
            header=self._header(), exclude_tombstone_stores=exclude_tombstone
        )
        resp = await self._pd_unary("GetAllStores", lambda s: s.GetAllStores, request, backoffer)
        return [store_from_meta(m) for m in resp.stores if m.id]

    async def get_gc_safe_point(self, *, backoffer: Backoffer | None = None) -> int:
        """Return the cluster's GC safepoint.

        Raises:
            PDError: PD failed or answered with an error.

        """
        request = pdpb_pb2.GetGCSafePointRequest(header=self._header())
        resp = await self._pd_unary(
            "GetGCSafePoint", lambda s: s.GetGCSafePoint, request, backoffer
        )
        return resp.safe_point

    async def update_gc_safe_point(
        self, safe_point: int, *, backoffer: Backoffer | None = None
    ) -> int:
        """Advance the cluster's GC safepoint; return the safepoint PD now holds.

        PD never moves it backwards: a smaller value leaves it unchanged and the
        current (larger) safepoint is returned.

        Raises:
            TypeError / ValueError: ``safe_point`` is not a uint64.
            PDError: PD failed or answered with an error.

        """
        _check_uint("safe_point", safe_point)
        request = pdpb_pb2.UpdateGCSafePointRequest(header=self._header(), safe_point=safe_point)
        resp = await self._pd_unary(
            "UpdateGCSafePoint", lambda s: s.UpdateGCSafePoint, request, backoffer
        )
        return resp.new_safe_point

    async def update_service_gc_safe_point(
        self,
        service_id: str | bytes,
        ttl: int,
        safe_point: int,
        *,
        backoffer: Backoffer | None = None,
    ) -> ServiceSafePoint:
        """Register (or refresh, or with ``ttl <= 0`` remove) a service GC safepoint.

        GC does not advance past the smallest registered service safepoint until its
        TTL (seconds) expires — the barrier BR and CDC use.

        Raises:
            TypeError / ValueError: Empty service id, non-int ttl, bad safepoint.
            PDError: PD failed or answered with an error.

        """
        service_id = _service_id(service_id)
        if isinstance(ttl, bool) or not isinstance(ttl, int):
            raise TypeError(f"ttl must be an int (seconds), got {type(ttl).__name__}")
        _check_uint("safe_point", safe_point)
        request = pdpb_pb2.UpdateServiceGCSafePointRequest(
            header=self._header(), service_id=service_id, TTL=ttl, safe_point=safe_point
        )
        resp = await self._pd_unary(
            "UpdateServiceGCSafePoint", lambda s: s.UpdateServiceGCSafePoint, request, backoffer
        )
        return ServiceSafePoint(resp.service_id, resp.TTL, resp.min_safe_point)

    async def get_gc_safe_point_v2(
        self, keyspace_id: int, *, backoffer: Backoffer | None = None
    ) -> int:
        """Return the GC safepoint of one keyspace (API v2 keyspace-level GC).

        Raises:
            TypeError / ValueError: ``keyspace_id`` is not a 24-bit id.
            PDError: PD failed or answered with an error.

        """
        _check_uint("keyspace_id", keyspace_id, bits=24)
        request = pdpb_pb2.GetGCSafePointV2Request(header=self._header(), keyspace_id=keyspace_id)
        resp = await self._pd_unary(
            "GetGCSafePointV2", lambda s: s.GetGCSafePointV2, request, backoffer
        )
        return resp.safe_point

    async def update_gc_safe_point_v2(
        self, keyspace_id: int, safe_point: int, *, backoffer: Backoffer | None = None
    ) -> int:
        """Advance one keyspace's GC safepoint; return the safepoint PD now holds.

        Raises:
            TypeError / ValueError: Bad keyspace id or safepoint.
            PDError: PD failed or answered with an error.

        """
        _check_uint("keyspace_id", keyspace_id, bits=24)
        _check_uint("safe_point", safe_point)
        request = pdpb_pb2.UpdateGCSafePointV2Request(
            header=self._header(), keyspace_id=keyspace_id, safe_point=safe_point
        )
        resp = await self._pd_unary(
            "UpdateGCSafePointV2", lambda s: s.UpdateGCSafePointV2, request, backoffer
        )
        return resp.new_safe_point

    async def update_service_safe_point_v2(
        self,
        keyspace_id: int,
        service_id: str | bytes,
        ttl: int,
        safe_point: int,
        *,
        backoffer: Backoffer | None = None,
    ) -> ServiceSafePoint:
        """Register a service safepoint on one keyspace (see update_service_gc_safe_point).

        Raises:
            TypeError / ValueError: Bad keyspace id, service id, ttl or safepoint.
            PDError: PD failed or answered with an error.

        """
        _check_uint("keyspace_id", keyspace_id, bits=24)
        sid = _service_id(service_id)
        if isinstance(ttl, bool) or not isinstance(ttl, int):
            raise TypeError(f"ttl must be an int (seconds), got {type(ttl).__name__}")
        _check_uint("safe_point", safe_point)
        request = pdpb_pb2.UpdateServiceSafePointV2Request(
            header=self._header(),
            keyspace_id=keyspace_id,
            service_id=sid,
            ttl=ttl,
            safe_point=safe_point,
        )
        resp = await self._pd_unary(
            "UpdateServiceSafePointV2", lambda s: s.UpdateServiceSafePointV2, request, backoffer
        )
        return ServiceSafePoint(resp.service_id, resp.ttl, resp.min_safe_point)

    async def get_external_timestamp(self, *, backoffer: Backoffer | None = None) -> int:
        """Return the cluster's external timestamp (0 when never set).

        Raises:
            PDError: PD failed or answered with an error.

        """
        request = pdpb_pb2.GetExternalTimestampRequest(header=self._header())
        resp = await self._pd_unary(
            "GetExternalTimestamp", lambda s: s.GetExternalTimestamp, request, backoffer
        )
        return resp.timestamp

    async def set_external_timestamp(
        self, timestamp: int, *, backoffer: Backoffer | None = None
    ) -> None:
        """Set the cluster's external timestamp.

        PD refuses values it considers invalid (for example one beyond its current
        TSO); the refusal is a PDError carrying PD's message.

        Raises:
            TypeError / ValueError: ``timestamp`` is not a uint64.
            PDError: PD failed or refused the timestamp.

        """
        _check_uint("timestamp", timestamp)
        request = pdpb_pb2.SetExternalTimestampRequest(header=self._header(), timestamp=timestamp)
        await self._pd_unary(
            "SetExternalTimestamp", lambda s: s.SetExternalTimestamp, request, backoffer
        )

    async def get_min_ts(self, *, backoffer: Backoffer | None = None) -> int:
        """Return the minimum timestamp across TSO keyspace groups (``GetMinTS``).

        Raises:
            PDError: PD failed, answered with an error, or sent no timestamp.

        """
        request = pdpb_pb2.GetMinTSRequest(header=self._header())
        resp = await self._pd_unary("GetMinTS", lambda s: s.GetMinTS, request, backoffer)
        if not resp.HasField("timestamp"):
            raise PDError("GetMinTS: response has no timestamp")
        tso = resp.timestamp
        if tso.physical < 0 or not 0 <= tso.logical < _MAX_LOGICAL:
            raise PDError(f"GetMinTS: invalid timestamp {tso.physical}/{tso.logical}")
        return (tso.physical << LOGICAL_BITS) | tso.logical

    async def alloc_id(self, *, backoffer: Backoffer | None = None) -> int:
        """Allocate a cluster-unique id from PD.

        Raises:
            PDError: PD failed, answered with an error, or returned id 0.

        """
        request = pdpb_pb2.AllocIDRequest(header=self._header())
        resp = await self._pd_unary("AllocID", lambda s: s.AllocID, request, backoffer)
        if resp.id == 0:
            raise PDError("AllocID: PD returned id 0")
        return resp.id

    async def scatter_regions(
        self, region_ids: Sequence[int], *, backoffer: Backoffer | None = None
    ) -> list[int]:
        """Ask PD to scatter regions over the stores (client-go ``pdClient.ScatterRegions``).

        PD starts a "scatter-region" operator per region (see :meth:`get_operator`).

        Returns:
            The ids PD could not scatter (``failed_regions_id``).

        Raises:
            TypeError / ValueError: ``region_ids`` is empty or holds a bad id.
            PDError: PD failed or answered with an error.

        """
        ids = [_check_uint("region id", rid, minimum=1) for rid in region_ids]
        if not ids:
            raise ValueError("region_ids must not be empty")
        request = pdpb_pb2.ScatterRegionRequest(header=self._header(), regions_id=ids)
        resp = await self._pd_unary("ScatterRegion", lambda s: s.ScatterRegion, request, backoffer)
        return list(resp.failed_regions_id)

    async def get_operator(
        self, region_id: int, *, backoffer: Backoffer | None = None
    ) -> tuple[bytes, int] | None:
        """The operator PD runs (or last ran) on a region: ``(desc, pdpb.OperatorStatus)``.

        ``None`` when PD has none for it (PD answers ``REGION_NOT_FOUND`` "Not Found").

        Raises:
            PDError: PD failed or answered with another error.

        """
        rid = _check_uint("region_id", region_id, minimum=1)
        request = pdpb_pb2.GetOperatorRequest(header=self._header(), region_id=rid)
        try:
            resp = await self._pd_unary("GetOperator", lambda s: s.GetOperator, request, backoffer)
        except PDError as exc:
            if exc.error_type == "REGION_NOT_FOUND":
                return None
            raise
        return bytes(resp.desc), int(resp.status)

    async def get_cluster_info(self, *, backoffer: Backoffer | None = None) -> ClusterInfo:
        """Return how the cluster serves TSO (``GetClusterInfo``).

        Raises:
            PDError: PD failed or answered with an error.

        """
        # kvproto declares this request's header as a ResponseHeader; fill its cluster id
        # so that a PD validating it sees ours.
        request = pdpb_pb2.GetClusterInfoRequest(
            header=pdpb_pb2.ResponseHeader(cluster_id=self._cluster_id)
        )
        resp = await self._pd_unary(
            "GetClusterInfo", lambda s: s.GetClusterInfo, request, backoffer
        )
        modes = []
        for mode in resp.serviceModes:
            try:
                modes.append(pdpb_pb2.ServiceMode.Name(mode))
            except ValueError:
                modes.append(f"ServiceMode({mode})")
        return ClusterInfo(tuple(modes), tuple(resp.tso_urls))

    async def load_keyspace(self, name: str, *, backoffer: Backoffer | None = None) -> KeyspaceMeta:
        """Return the metadata of keyspace ``name`` (``keyspacepb.Keyspace/LoadKeyspace``).

        Raises:
            TypeError / ValueError: ``name`` is not a non-empty str.
            PDError: PD failed, or the keyspace does not exist (PD's header error).

        """
        if not isinstance(name, str):
            raise TypeError(f"keyspace name must be a str, got {type(name).__name__}")
        if not name:
            raise ValueError("keyspace name must not be empty")
        request = keyspacepb_pb2.LoadKeyspaceRequest(header=self._header(), name=name)
        resp = await self._call(
            "LoadKeyspace",
            lambda t: self._keyspace_stub(t).LoadKeyspace(request, timeout=self._config.pd_timeout),
            backoffer,
        )
        if not resp.HasField("keyspace"):
            raise PDError(f"LoadKeyspace: response for {name!r} has no keyspace")
        meta = resp.keyspace
        if meta.name and meta.name != name:
            raise PDError(f"LoadKeyspace: asked for {name!r}, PD returned {meta.name!r}")
        try:
            state = keyspacepb_pb2.KeyspaceState.Name(meta.state)
        except ValueError:
            state = f"KeyspaceState({meta.state})"
        return KeyspaceMeta(
            id=meta.id,
            name=meta.name or name,
            state=state,
            created_at=meta.created_at,
            state_changed_at=meta.state_changed_at,
            config=dict(meta.config),
        )

    # -- TSO -------------------------------------------------------------------------

    def request_timestamp(self) -> asyncio.Future[int]:
        """Queue a timestamp request; return the future it will be delivered to.

        Lets a caller overlap the TSO round trip with other work (client-go's
        ``GetTimestampAsync``). Cancelling the future withdraws the request.

        Raises:
            ClientClosedError: The client is closed.

        """
        return self._tso.submit()

    async def get_timestamp(self) -> int:
        """Return a fresh timestamp from PD (``physical_ms << 18 | logical``).

        Concurrent callers share one TsoRequest. Each returned timestamp is unique and
        larger than every timestamp this client returned before the call started.

        Raises:
            PDError: The TSO request failed twice (the batch is re-sent once after a
                stream failure) or PD's answer was invalid.
            ClientClosedError: The client was closed before the timestamp arrived.

        """
        metrics = _obs.metrics
        tracing = _obs.tracing
        if metrics is None and tracing is None:
            return await self._tso.submit()
        # client-go observes ts_future_wait_seconds around every timestamp wait and
        # traces it (TiKVStore.getTimestampWithRetry).
        start = time.perf_counter()
        try:
            if tracing is None:
                return await self._tso.submit()
            with tracing.span("tikv.pd.get_timestamp"):
                return await self._tso.submit()
        finally:
            if metrics is not None:
                metrics.observe_tso_wait(time.perf_counter() - start)

    # -- lifecycle -------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the background tasks, fail pending timestamp callers, close channels.

        Pending :meth:`get_timestamp` callers get :class:`ClientClosedError`. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        tasks = [t for t in (self._member_task, self._member_check) if t is not None]
        for task in tasks:
            task.cancel()
        await self._tso.close()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, PDError, ClientClosedError):
                await task
        await self._channels.close()

    async def __aenter__(self) -> PDClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"leader={self._leader}"
        return f"PDClient(cluster_id={self._cluster_id}, {state})"
