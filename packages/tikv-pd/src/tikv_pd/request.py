"""The one request pipeline shared by the raw and transactional clients.

Every KV request goes through :class:`RequestSender`:

1. **shard** — a :class:`Sharder` splits the request's payload (a key, keys, a key range)
   into per-region parts using the region :class:`Locator` (and, for batches, the size
   limits the caller gives per command);
2. **fill the context** — ``kvrpcpb.Context`` gets the region id, epoch and target peer
   plus the per-request :class:`RequestOptions` (API version, keyspace, request source,
   resource group, priority, isolation, replica / stale read, disk-full option, ...).
   Contexts are cached per (region, peer, options): building one costs ~2 µs, copying a
   cached one well under 1 µs (``../shared/reference/grpc-limits.md``);
3. **dispatch** — parts go to the store transport (:mod:`tikv_pd.transport`), several
   regions at a time (bounded concurrency);
4. **classify** — a transport failure, a region error (decided by
   :mod:`tikv_pd.region_errors`), or a response for the caller's handler (key errors
   included: the transactional layer resolves locks, this layer does not);
5. **retry** — back off with the named kind on the part's :class:`~tikv_pd.backoff.Backoffer`
   (forked per part), update the region cache, and *re-shard*: the part's payload is
   located again, so a request that spanned one region may now span two;
6. **merge** — per-region results come back in key order; a :class:`Plan` folds them with
   the caller's merge function.

Writes whose outcome becomes unknown are never resent blindly: the caller marks each
request with an :class:`Ambiguity`. A non-idempotent request (``Ambiguity.RAISE``, e.g. a
raw CAS) that fails after it may have reached the store raises
:class:`~tikv_pd.errors.UndeterminedError`; ``Ambiguity.RETRY_THEN_RAISE`` (a
server-side idempotent write whose loss matters, like committing a primary key) is
resent, but if it ultimately fails after such an ambiguous failure the error is an
UndeterminedError too — client-go's ``setUndeterminedErr`` in ``txnkv/transaction/commit.go``.
When the backoff budget runs out, :class:`tikv_pd.errors.TimeoutError` lists the causes.

The retry loop exists once, here; commands differ only in their sharder, request builder,
response handler and merge function.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import functools
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Generic, Protocol, TypeVar

import grpc
from google.protobuf.message import Message
from tikv_proto import errorpb_pb2, kvrpcpb_pb2, metapb_pb2

from tikv_pd import interceptor as _interceptor
from tikv_pd import observability as _obs
from tikv_pd.backoff import (
    RAWKV_MAX_BACKOFF,
    REGION_MISS,
    REGION_SCHEDULING,
    TIKV_RPC,
    Backoffer,
    BackoffKind,
)
from tikv_pd.config import (
    COMMAND_PRIORITIES,
    DISK_FULL_OPTS,
    ISOLATION_LEVELS,
    REPLICA_READ_TYPES,
    CommandPriority,
    DiskFullOpt,
    IsolationLevel,
    ReplicaReadType,
)
from tikv_pd.errors import (
    RegionError,
    StoreUnavailableError,
    TokenLimitError,
    UndeterminedError,
)
from tikv_pd.errors import TimeoutError as BackoffTimeoutError
from tikv_pd.execdetails import format_duration
from tikv_pd.interceptor import RPCInterceptor, RPCInvoker, RPCRequest
from tikv_pd.logs import SLOW_REQUEST_SECONDS, log_request_outcome
from tikv_pd.region_cache import InvalidReason, Liveness, Peer, PeerRole, Region, RegionCache
from tikv_pd.region_errors import Action, decide, to_exception
from tikv_pd.replica_selector import ReplicaSelector, StoreHealth
from tikv_pd.transport import FATAL_STATUS_CODES, RPCTimeoutError, TransportError

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_OPTIONS",
    "MAX_ACCESS_RECORDS",
    "MAX_ERROR_KINDS",
    "MAX_RETRIES_WITHOUT_BACKOFF",
    "READ_TS_FIELDS",
    "REPLICA_READ_COMMANDS",
    "SOURCE_PATCHED_COMMANDS",
    "Ambiguity",
    "ContextCache",
    "ErrorStats",
    "KeySharder",
    "KeysSharder",
    "Locator",
    "Plan",
    "RPCRuntimeStats",
    "RangeSharder",
    "ReplicaAccess",
    "RequestOptions",
    "RequestSender",
    "RequestStats",
    "RetryShard",
    "Sender",
    "Shard",
    "Sharder",
    "TrafficDetails",
    "build_context",
    "collect_rpc_stats",
    "collect_traffic",
    "patch_request_source",
    "select_peer",
]

_log = logging.getLogger("tikv.request")

P = TypeVar("P")
T = TypeVar("T")
R = TypeVar("R")
Item = TypeVar("Item")

#: Regions dispatched at the same time by one request (client-go's 2PC
#: ``CommitterConcurrency``; every part shares the per-store BatchCommands streams, so
#: more concurrency means bigger batches, not more messages).
DEFAULT_CONCURRENCY = 128

#: Resends without any sleep (leader switches, EpochNotMatch updates) allowed in a row
#: before the pipeline forces a ``regionMiss`` backoff, so that a store that keeps
#: answering with a hint that leads nowhere cannot spin the client (client-go bounds
#: replica attempts at 10 in ``region_request.go``).
MAX_RETRIES_WITHOUT_BACKOFF = 10


# ---------------------------------------------------------------------------------------
# Contracts
# ---------------------------------------------------------------------------------------


class Locator(Protocol):
    """What the pipeline needs from the region locator (region cache + PD).

    Keys are in the request key space (keyspace-prefixed under API v2): the locator is
    responsible for any encoding toward PD.
    """

    async def locate_key(self, key: bytes) -> Region:
        """The region containing ``key`` (loading it from PD on a miss)."""
        ...

    async def locate_end_key(self, key: bytes) -> Region:
        """The region containing ``key`` as an exclusive end (``b""``: the last region)."""
        ...

    async def store_address(self, store_id: int) -> str:
        """The gRPC address of ``store_id`` (loading it from PD when unknown)."""
        ...

    def invalidate_region(self, region_id: int, reason: InvalidReason) -> None:
        """Drop ``region_id`` from the cache; the next lookup reloads it."""
        ...

    def invalidate_store(self, store_id: int) -> None:
        """Forget ``store_id``'s address; the next lookup re-resolves it from PD."""
        ...

    def on_not_leader(self, region: Region, leader: metapb_pb2.Peer) -> bool:
        """Switch ``region``'s cached leader to ``leader``; False when that is impossible."""
        ...

    def on_epoch_not_match(
        self, region: Region, current_regions: Sequence[metapb_pb2.Region], store_id: int
    ) -> bool:
        """Insert TiKV's current regions; True when they cover ``region``'s range."""
        ...

    def on_send_fail(self, region: Region, store_id: int) -> None:
        """Record a transport failure sending ``region``'s request to ``store_id``."""
        ...


class Sender(Protocol):
    """What the pipeline needs from the transport (:class:`tikv_pd.transport.Transport`)."""

    async def send(
        self,
        address: str,
        command: str,
        request: Message,
        timeout: float | None = None,  # noqa: ASYNC109 - the RPC's deadline
        *,
        forwarded_host: str | None = None,
    ) -> Any:
        """Send one request to one store and return the response message.

        With ``forwarded_host`` the store at ``address`` relays it to that store.
        """
        ...

    async def close_address(self, address: str) -> None:
        """Close the connections to ``address``."""
        ...


#: One part of a request: the region it goes to and the payload it carries there.
Shard = tuple[Region, P]


class Sharder(Protocol[P]):
    """Splits a payload into per-region parts (called again to re-shard after a change)."""

    async def shard(self, locator: Locator, payload: P) -> list[tuple[Region, P]]:
        """Return ``payload``'s parts, one or more per region, in key order."""
        ...


class Ambiguity(enum.Enum):
    """How a request may be resent after a failure that leaves its outcome unknown.

    An outcome is unknown after a transport failure once the request may have left
    the client (``TransportError.sent``), after ``StaleCommand`` and after
    ``UndeterminedResult``.

    Attributes:
        IDEMPOTENT: Resending is harmless (reads, blind writes of the same value).
        RAISE: Not idempotent (raw CAS, ...): raise UndeterminedError at once.
        RETRY_THEN_RAISE: Idempotent on the server but the outcome matters (committing
            the primary key): resend, and if the request finally fails after such a
            failure, raise UndeterminedError with the final error as its cause.

    """

    IDEMPOTENT = "idempotent"
    RAISE = "raise"
    RETRY_THEN_RAISE = "retry_then_raise"


class RetryShard(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by a response handler to resend (part of) its shard.

    For example, the transactional layer resolves the locks a batch get met and asks
    for the locked keys again. The pipeline runs ``before_retry`` (if any), backs off
    with ``backoff`` (if any), re-shards ``payload`` and sends it; its results replace
    the handler's result for this shard.

    Args:
        payload: What to resend (same type as the shard's payload).
        backoff: The backoff kind to sleep before resending, or ``None``.
        reason: Why (recorded in the Backoffer's causes).
        before_retry: A coroutine function run first (e.g. resolving locks).

    """

    def __init__(
        self,
        payload: object,
        *,
        backoff: BackoffKind | None = None,
        reason: str = "retry requested by handler",
        before_retry: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        super().__init__(reason)
        self.payload = payload
        self.backoff = backoff
        self.reason = reason
        self.before_retry = before_retry


# ---------------------------------------------------------------------------------------
# Options and the context
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestOptions:
    """Per-request settings that go into ``kvrpcpb.Context`` (client-go ``tikvrpc``).

    Create one per client / transaction / snapshot and reuse it: contexts are cached per
    options object.

    Attributes:
        api_version: ``kvrpcpb.APIVersion`` value (0 = V1, 1 = V1TTL, 2 = V2).
        keyspace_id: The keyspace id under API v2 (``None`` = not set).
        keyspace_name: The keyspace name (informational for TiKV).
        request_source: The request source label (client-go ``util/request_source.go``).
        resource_group_name: Resource control group ("" = default group).
        resource_group_tag: Opaque tag (Top SQL).
        priority: ``"normal"``, ``"low"`` or ``"high"``.
        isolation: ``"SI"``, ``"RC"`` or ``"RCCheckTS"``.
        not_fill_cache: Ask TiKV not to fill its block cache.
        replica_read: Which replica serves reads: ``"leader"``, ``"follower"``,
            ``"mixed"``, ``"learner"`` or ``"prefer-leader"`` (reads only).
        stale_read: Read at a timestamp from any replica whose safe-ts allows it; a
            ``DataIsNotReady`` answer is retried on the leader as a normal read.
        match_labels: Store labels that replica and stale reads prefer, as ``(key,
            value)`` pairs (client-go ``WithMatchLabels``, e.g. ``(("zone", "z1"),)`` to
            read the local replica).
        disk_full_opt: Whether writes may proceed on an (almost) full disk.
        txn_source: ``Context.txn_source`` (CDC origin marker).
        max_execution_duration_ms: Server-side execution deadline (0 = none).
        busy_threshold_ms: Load-based replica read threshold (0 = off).
        sync_log: Ask TiKV to sync the Raft log before answering (writes).
        resolved_locks: Start ts of transactions whose locks reads skip
            (``Context.resolved_locks``; client-go ``KVSnapshot.resolvedLocks``: a
            pipelined transaction reads past its own flushed locks this way).
        committed_locks: Start ts of transactions known to have committed at or before
            the read ts whose locks may still be there: TiKV reads through them, taking
            the value the lock carries (``Context.committed_locks``; client-go
            ``KVSnapshot.committedLocks``, while the lock is resolved in the background).
        timeout: Seconds per RPC attempt (``None``: the transport default,
            ``Config.read_timeout_short`` = 30 s).
        concurrency: Regions dispatched at once (``None``: :data:`DEFAULT_CONCURRENCY`).
        interceptor: RPC interceptor (chain) run around every attempt of these requests
            (:mod:`tikv_pd.interceptor`); not part of the options' value (equal options
            with different interceptors share cached contexts).
        rpc_stats: Record every attempt of these requests into these stats (client-go's
            per-sender ``RegionRequestSender.Stats``), besides any
            :func:`collect_rpc_stats` block; not part of the options' value either.

    """

    api_version: int = 0
    keyspace_id: int | None = None
    keyspace_name: str = ""
    request_source: str = ""
    resource_group_name: str = ""
    resource_group_tag: bytes = b""
    priority: CommandPriority = "normal"
    isolation: IsolationLevel = "SI"
    not_fill_cache: bool = False
    replica_read: ReplicaReadType = "leader"
    stale_read: bool = False
    match_labels: tuple[tuple[str, str], ...] = ()
    disk_full_opt: DiskFullOpt = "NotAllowedOnFull"
    txn_source: int = 0
    max_execution_duration_ms: int = 0
    busy_threshold_ms: int = 0
    sync_log: bool = False
    resolved_locks: tuple[int, ...] = ()
    committed_locks: tuple[int, ...] = ()
    timeout: float | None = None
    concurrency: int | None = None
    interceptor: RPCInterceptor | None = field(default=None, compare=False)
    rpc_stats: RPCRuntimeStats | None = field(default=None, compare=False)
    # The hash, computed once: options are hashed on every request (context cache key).
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __hash__(self) -> int:
        return self._hash

    def __post_init__(self) -> None:
        own = "RequestOptions"
        if self.api_version not in (0, 1, 2):
            raise ValueError(f"{own}.api_version must be 0, 1 or 2, got {self.api_version!r}")
        if self.keyspace_id is not None and not 0 <= self.keyspace_id < 2**32:
            raise ValueError(f"{own}.keyspace_id must fit in uint32, got {self.keyspace_id}")
        for name, choices in (
            ("priority", COMMAND_PRIORITIES),
            ("isolation", ISOLATION_LEVELS),
            ("disk_full_opt", DISK_FULL_OPTS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"{own}.{name} must be one of {list(choices)}, got {getattr(self, name)!r}"
                )
        if self.replica_read not in REPLICA_READ_TYPES:
            raise ValueError(
                f"{own}.replica_read must be one of {list(REPLICA_READ_TYPES)}, "
                f"got {self.replica_read!r}"
            )
        if not isinstance(self.resource_group_tag, bytes):
            raise TypeError(f"{own}.resource_group_tag must be bytes")
        labels: object = self.match_labels
        if not isinstance(labels, tuple) or not all(
            isinstance(p, tuple) and len(p) == 2 and all(isinstance(x, str) for x in p)
            for p in labels
        ):
            raise TypeError(f"{own}.match_labels must be a tuple of (key, value) str pairs")
        if self.interceptor is not None and not isinstance(self.interceptor, RPCInterceptor):
            raise TypeError(f"{own}.interceptor must have .name and .wrap(next)")
        if self.rpc_stats is not None and not isinstance(self.rpc_stats, RPCRuntimeStats):
            raise TypeError(f"{own}.rpc_stats must be RPCRuntimeStats")
        for name in ("txn_source", "max_execution_duration_ms", "busy_threshold_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{own}.{name} must be a non-negative int, got {value!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"{own}.timeout must be > 0 seconds, got {self.timeout!r}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"{own}.concurrency must be >= 1, got {self.concurrency!r}")
        values = tuple(getattr(self, f.name) for f in fields(self) if f.compare)
        object.__setattr__(self, "_hash", hash(values))


#: Options with every default (API v1, leader reads, normal priority, SI).
DEFAULT_OPTIONS = RequestOptions()


def build_context(
    region: Region,
    peer: Peer,
    options: RequestOptions,
    *,
    replica_read: bool = False,
    stale_read: bool = False,
    cluster_id: int = 0,
) -> kvrpcpb_pb2.Context:
    """Build the ``kvrpcpb.Context`` of a request to ``peer`` of ``region`` (pure).

    Args:
        region: The target region (id and epoch).
        peer: The peer the request goes to.
        options: The request's options.
        replica_read: Set ``Context.replica_read`` (a read served by a non-leader).
        stale_read: Set ``Context.stale_read``.
        cluster_id: The cluster id PD gave (0: not sent). TiKV refuses a request naming
            another cluster with ``INVALID_ARGUMENT`` (client-go sets ``req.ClusterId``
            on every request), so a store address reused by another cluster cannot
            serve this client by mistake.

    """
    ctx = kvrpcpb_pb2.Context(
        region_id=region.id,
        region_epoch=metapb_pb2.RegionEpoch(
            conf_ver=region.epoch.conf_ver, version=region.epoch.version
        ),
        peer=metapb_pb2.Peer(
            id=peer.id,
            store_id=peer.store_id,
            role=int(peer.role),  # type: ignore[arg-type]
            is_witness=peer.is_witness,
        ),
        priority=COMMAND_PRIORITIES[options.priority],  # type: ignore[arg-type]
        isolation_level=ISOLATION_LEVELS[options.isolation],  # type: ignore[arg-type]
        not_fill_cache=options.not_fill_cache,
        sync_log=options.sync_log,
        replica_read=replica_read,
        stale_read=stale_read,
        max_execution_duration_ms=options.max_execution_duration_ms,
        resource_group_tag=options.resource_group_tag,
        disk_full_opt=DISK_FULL_OPTS[options.disk_full_opt],  # type: ignore[arg-type]
        api_version=options.api_version,  # type: ignore[arg-type]
        request_source=options.request_source,
        txn_source=options.txn_source,
        busy_threshold_ms=options.busy_threshold_ms,
        keyspace_name=options.keyspace_name,
        cluster_id=cluster_id,
    )
    if options.keyspace_id is not None:
        ctx.keyspace_id = options.keyspace_id
    if options.resource_group_name:
        ctx.resource_control_context.resource_group_name = options.resource_group_name
    if options.resolved_locks:
        ctx.resolved_locks.extend(options.resolved_locks)
    if options.committed_locks:
        ctx.committed_locks.extend(options.committed_locks)
    return ctx


#: The read timestamp of each read command, by its request field (client-go
#: ``validateReadTS``: get, scan, batch get, buffer batch get, coprocessor, scan lock).
READ_TS_FIELDS: dict[str, str] = {
    "Get": "version",
    "Scan": "version",
    "BatchGet": "version",
    "BufferBatchGet": "version",
    "Coprocessor": "start_ts",
    "ScanLock": "max_version",
}


@dataclass(slots=True)
class TrafficDetails:
    """Bytes a piece of work sent to and received from TiKV (client-go ``util.ExecDetails``).

    client-go's network collector adds every attempt's request and response sizes to the
    statement's ``UnpackedBytes{Sent,Received}KV{Total,CrossZone}`` (TiDB shows them in its
    runtime stats). Collect them with :func:`collect_traffic`. Sizes are the encoded
    messages (before gRPC compression); an attempt that failed to send still counts its
    request. Cross-zone: the client's ``Config.zone_label`` and the store's ``zone`` label
    are both known and differ.

    Attributes:
        bytes_sent: Request bytes, all attempts.
        bytes_received: Response bytes.
        bytes_sent_cross_zone: The part of ``bytes_sent`` that left the client's zone.
        bytes_received_cross_zone: The part of ``bytes_received`` from another zone.
        requests: Attempts counted.

    """

    bytes_sent: int = 0
    bytes_received: int = 0
    bytes_sent_cross_zone: int = 0
    bytes_received_cross_zone: int = 0
    requests: int = 0

    def add(self, sent: int, received: int, *, cross_zone: bool) -> None:
        """Count one attempt of ``sent`` request and ``received`` response bytes."""
        self.requests += 1
        self.bytes_sent += sent
        self.bytes_received += received
        if cross_zone:
            self.bytes_sent_cross_zone += sent
            self.bytes_received_cross_zone += received


_Target = TypeVar("_Target")


class _BlockTarget(Generic[_Target]):
    """What the open ``with`` blocks of one kind (traffic, RPC stats) collect into.

    The target travels in a context variable, so tasks created inside a block and calls
    through the sync facades (which carry the caller's context) are counted too; the
    process-wide count of open blocks is what the hot path checks first, so a request
    costs one int check when nobody collects.
    """

    __slots__ = ("_kind", "_open_lock", "_var", "open")

    def __init__(self, name: str, kind: type[_Target]) -> None:
        self._var: contextvars.ContextVar[_Target | None] = contextvars.ContextVar(
            name, default=None
        )
        self._kind = kind
        # Blocks open in any thread (the sync facades' callers open them in their own
        # threads): a cheap "is anyone collecting" test for the hot path. Updated under a
        # lock, since ``+=`` on an attribute is not atomic across threads.
        self.open = 0
        self._open_lock = threading.Lock()

    def current(self) -> _Target | None:
        """The innermost block's target in this context, or ``None``."""
        return self._var.get() if self.open else None

    def collect(
        self, target: _Target | None, arg: str
    ) -> contextlib.AbstractContextManager[_Target]:
        """A block in which ``target`` (default: a new, empty one) is the current one.

        Raises:
            TypeError: ``target`` (the caller's argument ``arg``) is of another type.

        """
        if target is None:
            target = self._kind()
        elif not isinstance(target, self._kind):
            raise TypeError(f"{arg} must be {self._kind.__name__}, got {type(target).__name__}")
        return self._block(target)

    @contextlib.contextmanager
    def _block(self, target: _Target) -> Iterator[_Target]:
        token = self._var.set(target)
        with self._open_lock:
            self.open += 1
        try:
            yield target
        finally:
            with self._open_lock:
                self.open -= 1
            self._var.reset(token)


_TRAFFIC = _BlockTarget("tikv_traffic_details", TrafficDetails)


def collect_traffic(
    details: TrafficDetails | None = None,
) -> contextlib.AbstractContextManager[TrafficDetails]:
    """Count the TiKV traffic of the requests made inside the block (and its tasks).

    client-go passes ``util.ExecDetails`` in the request's context; here the details
    travel in a context variable, so tasks created inside the block and calls through
    the sync facades (which carry the caller's context) are counted too.

    Example:
        >>> with collect_traffic() as traffic:  # doctest: +SKIP
        ...     await snapshot.batch_get(keys)
        >>> traffic.bytes_received  # doctest: +SKIP

    Args:
        details: Add to these (default: new, zeroed details).

    Returns:
        A context manager whose block fills the details (``as`` gives them).

    """
    return _TRAFFIC.collect(details, "details")


#: client-go ``RequestErrorStats``: distinct error labels kept before the rest are only
#: counted as ``other_error``.
MAX_ERROR_KINDS = 16
#: client-go ``ReplicaAccessStats``: attempts kept in order before the rest are only
#: counted per peer.
MAX_ACCESS_RECORDS = 5


@dataclass(slots=True)
class ErrorStats:
    """Error labels and their counts, the first :data:`MAX_ERROR_KINDS` kinds kept.

    client-go ``RequestErrorStats``; ``str()`` prints ``{label:n, ..., other_error:n}``.
    """

    counts: dict[str, int] = field(default_factory=dict)
    other: int = 0

    def record(self, label: str) -> None:
        """Count one error of ``label``."""
        if label in self.counts or len(self.counts) < MAX_ERROR_KINDS:
            self.counts[label] = self.counts.get(label, 0) + 1
        else:
            self.other += 1

    def merge(self, other: ErrorStats) -> None:
        """Add ``other``'s counts (kept kinds are not capped again, as client-go's Merge)."""
        for label, n in other.counts.items():
            self.counts[label] = self.counts.get(label, 0) + n
        self.other += other.other

    def __str__(self) -> str:
        if not self.counts:
            return ""
        parts = [f"{label}:{n}" for label, n in self.counts.items()]
        if self.other:
            parts.append(f"other_error:{self.other}")
        return "{" + ", ".join(parts) + "}"


@dataclass(slots=True)
class ReplicaAccess:
    """One failed attempt of a request: where it went, how, and what came back."""

    peer: int
    store: int
    stale_read: bool
    replica_read: bool
    error: str

    def __str__(self) -> str:
        kind = "replica_read, " if self.replica_read else "stale_read, " if self.stale_read else ""
        return f"{{{kind}peer:{self.peer}, store:{self.store}, err:{self.error}}}"


@dataclass(slots=True)
class RPCRuntimeStats:
    """The RPCs a piece of work made: count and time per command, errors, access path.

    client-go ``RegionRequestRuntimeStats`` and ``ReplicaAccessStats`` (what TiDB prints
    in ``EXPLAIN ANALYZE``): ``str()`` reads
    ``Get:{num_rpc:2, total_time:1s}, rpc_errors:{not_leader:1}``. The pipeline fills
    them in two ways: for everything inside a :func:`collect_rpc_stats` block, and for
    the requests sent with :attr:`RequestOptions.rpc_stats` (client-go's per-sender
    ``Stats``; a snapshot's :class:`~tikv_txn.SnapshotRuntimeStats` is fed this way).

    Attributes:
        rpcs: Per command, in first-sent order: ``[attempts, total nanoseconds]``.
        errors: Region error kinds and send failures, by label.
        access: The first :data:`MAX_ACCESS_RECORDS` failed attempts, in order.
        access_overflow: Later failed attempts' errors, per peer.

    """

    rpcs: dict[str, list[int]] = field(default_factory=dict)
    errors: ErrorStats = field(default_factory=ErrorStats)
    access: list[ReplicaAccess] = field(default_factory=list)
    access_overflow: dict[int, ErrorStats] = field(default_factory=dict)

    def record_rpc(self, command: str, duration_ns: int) -> None:
        """One attempt of ``command`` took ``duration_ns`` nanoseconds."""
        entry = self.rpcs.get(command)
        if entry is None:
            self.rpcs[command] = [1, duration_ns]
        else:
            entry[0] += 1
            entry[1] += duration_ns

    def rpc_count(self, command: str) -> int:
        """Attempts of ``command`` recorded (client-go ``GetCmdRPCCount``)."""
        entry = self.rpcs.get(command)
        return entry[0] if entry is not None else 0

    def record_error(self, label: str) -> None:
        """One region error or send failure of ``label``."""
        self.errors.record(label)

    def record_access(
        self, *, peer: int, store: int, stale_read: bool, replica_read: bool, error: str
    ) -> None:
        """One failed attempt's access path (client-go ``recordReplicaAccessInfo``)."""
        if len(self.access) < MAX_ACCESS_RECORDS:
            self.access.append(ReplicaAccess(peer, store, stale_read, replica_read, error))
            return
        self.access_overflow.setdefault(peer, ErrorStats()).record(error)

    def merge(self, other: RPCRuntimeStats) -> None:
        """Add ``other``'s RPCs and errors (client-go ``Merge``)."""
        for command, (count, ns) in other.rpcs.items():
            entry = self.rpcs.setdefault(command, [0, 0])
            entry[0] += count
            entry[1] += ns
        self.errors.merge(other.errors)

    def copy(self) -> RPCRuntimeStats:
        """An independent copy of the RPC and error counts (client-go ``Clone``)."""
        out = RPCRuntimeStats()
        out.merge(self)
        return out

    def access_path(self) -> str:
        """The failed attempts, as client-go's ``ReplicaAccessStats.String``."""
        parts = [str(a) for a in self.access]
        text = ", ".join(parts)
        if self.access_overflow:
            overflow = ", ".join(
                f"{{peer:{peer}, error_stats:{stats}}}"
                for peer, stats in self.access_overflow.items()
            )
            text += f", overflow_count:{{{overflow}}}"
        return text

    def __str__(self) -> str:
        text = ",".join(
            f"{command}:{{num_rpc:{count}, total_time:{format_duration(ns)}}}"
            for command, (count, ns) in self.rpcs.items()
        )
        errors = str(self.errors)
        if errors:
            text += f", rpc_errors:{errors}"
        return text


_RPC_STATS = _BlockTarget("tikv_rpc_runtime_stats", RPCRuntimeStats)


def collect_rpc_stats(
    stats: RPCRuntimeStats | None = None,
) -> contextlib.AbstractContextManager[RPCRuntimeStats]:
    """Record the RPCs made inside the block (and its tasks): client-go's runtime stats.

    Args:
        stats: Add to these (default: new, empty stats).

    Returns:
        A context manager whose block fills the stats (``as`` gives them).

    """
    return _RPC_STATS.collect(stats, "stats")


def _stats_sinks(own: RPCRuntimeStats | None) -> tuple[RPCRuntimeStats, ...]:
    """Where an attempt's RPC facts go: the request's own stats and the open block's.

    Both are filled when both exist (a snapshot collecting its runtime stats inside a
    caller's :func:`collect_rpc_stats` block), once when they are the same object.
    """
    current = _RPC_STATS.current()
    if current is None or current is own:
        return () if own is None else (own,)
    return (current,) if own is None else (own, current)


def _record_failure(
    sinks: tuple[RPCRuntimeStats, ...], label: str, peer: Peer, request: Message
) -> None:
    """Count a failed attempt's error and its access path (peer, replica kind) in ``sinks``."""
    ctx = request.context  # type: ignore[attr-defined]
    for stats in sinks:
        stats.record_error(label)
        stats.record_access(
            peer=peer.id,
            store=peer.store_id,
            stale_read=ctx.stale_read,
            replica_read=ctx.replica_read,
            error=label,
        )


def _transport_error_label(exc: TransportError) -> str:
    if isinstance(exc, RPCTimeoutError):
        return "deadline_exceeded"
    return exc.code.name.lower() if exc.code is not None else "send_fail"


#: Commands whose ``Context.request_source`` names the replica that serves them and
#: whether the request is a retry: client-go sets ``InputRequestSource`` only on the
#: snapshot's point get, batch get (buffer tier included) and scan requests
#: (``txnkv/txnsnapshot/snapshot.go``, ``scan.go``); every other request, raw ones
#: included, sends its source unchanged.
SOURCE_PATCHED_COMMANDS: frozenset[str] = frozenset({"Get", "BatchGet", "BufferBatchGet", "Scan"})


def patch_request_source(source: str, read_type: str, replica: str, *, retry: bool) -> str:
    """The request source a snapshot read sends (client-go ``patchRequestSource``).

    TiKV's metrics and resource control look at the last ``_``-separated part, so the
    caller's source stays last; what the client did is put in front of it.

    Args:
        source: The caller's request source (``"external_txn"``, ...).
        read_type: The first attempt's kind: ``"leader"`` or ``"follower"`` (a learner
            counts as a follower), prefixed ``"stale_"`` when it was a stale read.
        replica: This attempt's target: ``"leader"`` or ``"follower"``.
        retry: Whether this is a resend of the request.

    Returns:
        ``"<read_type>_<source>"`` for the first attempt (``read_type`` is this attempt's
        kind then), ``"retry_<read_type>_<replica>_<source>"`` for every resend.

    Example:
        >>> patch_request_source("external_txn", "stale_follower", "leader", retry=True)
        'retry_stale_follower_leader_external_txn'

    """
    if retry:
        return f"retry_{read_type}_{replica}_{source}"
    return f"{read_type}_{source}"


class ContextCache:
    """Built contexts per (region, peer, options, read mode), reused across requests.

    Entries are keyed by region id, peer id, the options' *value* (equal options built
    separately share entries) and the read mode, and checked by identity of the cached
    :class:`Region` object (a new epoch or leader is a new object), so a stale entry is
    never used. The cache is cleared when it exceeds ``max_entries``.

    Args:
        max_entries: Entries kept before the cache is cleared.
        cluster_id: Returns the cluster id to put in new contexts (0: none yet); asked
            only when a context is built.

    """

    __slots__ = ("_cluster_id", "_entries", "max_entries")

    def __init__(
        self, max_entries: int = 65536, *, cluster_id: Callable[[], int] | None = None
    ) -> None:
        self._entries: dict[
            tuple[int, int, RequestOptions, int], tuple[Region, kvrpcpb_pb2.Context]
        ] = {}
        self.max_entries = max_entries
        self._cluster_id = cluster_id

    def __len__(self) -> int:
        return len(self._entries)

    def get(
        self, region: Region, peer: Peer, options: RequestOptions, mode: int
    ) -> kvrpcpb_pb2.Context:
        """Return the cached context (``mode``: 0 leader, 1 replica read, 2 stale read)."""
        key = (region.id, peer.id, options, mode)
        hit = self._entries.get(key)
        if hit is not None and hit[0] is region:
            return hit[1]
        ctx = build_context(
            region,
            peer,
            options,
            replica_read=mode == 1,
            stale_read=mode == 2,
            cluster_id=self._cluster_id() if self._cluster_id is not None else 0,
        )
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (region, ctx)
        return ctx


def _serving_peers(region: Region) -> list[Peer]:
    return [p for p in region.peers if not p.is_witness]


def select_peer(
    region: Region,
    options: RequestOptions,
    attempt: int,
    leader_only: bool,
    unreachable: frozenset[int] | set[int] = frozenset(),
) -> tuple[Peer | None, int]:
    """Choose the peer for one attempt and the context mode (pure, stateless).

    The pipeline uses it for leader reads and writes; replica and stale reads go through
    the stateful :class:`tikv_pd.replica_selector.ReplicaSelector`, which follows
    client-go's per-type policies and remembers what each replica answered.

    Leader reads (and every write) go to the cached leader — or, while the leader is
    unknown or its store just failed a send, to another voter, which answers NotLeader
    with the current leader as soon as one is elected (client-go's replica selector
    tries the next peer after a send failure instead of waiting for PD to learn the new
    leader). Replica reads rotate through the eligible peers with ``attempt`` (so a busy
    peer is not asked twice in a row), as the replica selector does per read type.

    Args:
        region: The target region.
        options: Its ``replica_read`` / ``stale_read`` choose the policy.
        attempt: How many peers were already tried for this part.
        leader_only: Force a leader read (writes, and reads after ``DataIsNotReady``).
        unreachable: Stores that failed a send for this part; avoided while another
            peer remains.

    Returns:
        ``(peer, mode)``: mode 0 = leader read, 1 = replica read, 2 = stale read; the
        peer is ``None`` when the region has no usable peer.

    """
    leader = region.leader
    if leader_only or (options.replica_read == "leader" and not options.stale_read):
        if leader is not None and leader.store_id not in unreachable:
            return leader, 0
        voters = [p for p in _serving_peers(region) if p.role != PeerRole.LEARNER]
        reachable = [p for p in voters if p.store_id not in unreachable]
        if reachable:
            # A failed peer joins ``unreachable``, so the next voter comes next.
            return reachable[0], 0
        if leader is not None:
            return leader, 0
        return (voters[0] if voters else None), 0
    peers = _serving_peers(region)
    if not peers:
        return None, 0
    if unreachable:
        reachable = [p for p in peers if p.store_id not in unreachable]
        if reachable:
            peers = reachable
    if options.stale_read:
        peer = peers[attempt % len(peers)]
        return peer, 2
    kind = options.replica_read
    if kind == "prefer-leader" and leader in peers and attempt == 0:
        return leader, 0
    if kind == "learner":
        candidates = [p for p in peers if p.role == PeerRole.LEARNER]
    elif kind == "mixed":
        candidates = peers
    else:  # follower, or prefer-leader after the leader failed
        candidates = [p for p in peers if p != leader and p.role != PeerRole.LEARNER]
    if not candidates:
        if leader is not None:
            return leader, 0
        candidates = peers
    peer = candidates[attempt % len(candidates)]
    return peer, (0 if peer == leader else 1)


# ---------------------------------------------------------------------------------------
# Sharders
# ---------------------------------------------------------------------------------------


class KeySharder:
    """A payload routed by one key: the region containing it.

    Args:
        key_of: Extracts the routing key from the payload (default: the payload is the
            key).
        reverse: Route by the key as an exclusive end (reverse scans: the region holding
            the keys just below it).

    """

    __slots__ = ("key_of", "reverse")

    def __init__(
        self, key_of: Callable[[Any], bytes] | None = None, *, reverse: bool = False
    ) -> None:
        self.key_of = key_of
        self.reverse = reverse

    async def shard(self, locator: Locator, payload: Any) -> list[tuple[Region, Any]]:
        """Return the one region of the payload's key."""
        key = payload if self.key_of is None else self.key_of(payload)
        if self.reverse:
            region = await locator.locate_end_key(key)
        else:
            region = await locator.locate_key(key)
        return [(region, payload)]


class KeysSharder(Generic[Item]):
    """A batch of items (keys, pairs, mutations) grouped by region, then cut by size.

    Items are sorted by key and grouped by the region containing each; each region's
    group is cut into batches of at most ``max_count`` items and ``max_bytes`` bytes
    (a single larger item still travels alone), as client-go's raw batch and 2PC
    batching do (16 KiB / 512 keys for raw, ``txn_commit_batch_size`` for 2PC).

    Args:
        key_of: The routing key of an item (default: the item is the key).
        size_of: The byte size of an item (default: ``len`` of its key).
        max_count: Max items per batch (``None``: unlimited).
        max_bytes: Max bytes per batch (``None``: unlimited).
        first: When set, the batches of the region containing this key come first
            (2PC sends the primary key's batch before the others).

    """

    __slots__ = ("first", "key_of", "max_bytes", "max_count", "size_of")

    def __init__(
        self,
        key_of: Callable[[Item], bytes] | None = None,
        *,
        size_of: Callable[[Item], int] | None = None,
        max_count: int | None = None,
        max_bytes: int | None = None,
        first: bytes | None = None,
    ) -> None:
        if max_count is not None and max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {max_count}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.key_of = key_of
        self.size_of = size_of
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.first = first

    def _key(self, item: Item) -> bytes:
        return item if self.key_of is None else self.key_of(item)  # type: ignore[return-value]

    def _size(self, item: Item) -> int:
        return len(self._key(item)) if self.size_of is None else self.size_of(item)

    async def shard(
        self, locator: Locator, payload: Sequence[Item]
    ) -> list[tuple[Region, Sequence[Item]]]:
        """Group ``payload`` by region and cut each group into batches."""
        key = self._key
        items = sorted(payload, key=key)
        groups: list[tuple[Region, list[Item]]] = []
        region: Region | None = None
        for item in items:
            k = key(item)
            if region is None or not region.contains(k):
                region = await locator.locate_key(k)
                groups.append((region, []))
            groups[-1][1].append(item)
        if self.first is not None:
            first = self.first
            groups.sort(key=lambda g: not g[0].contains(first))
        if self.max_count is None and self.max_bytes is None:
            return [(r, g) for r, g in groups]
        out: list[tuple[Region, Sequence[Item]]] = []
        max_count = self.max_count or len(items) or 1
        max_bytes = self.max_bytes
        for r, group in groups:
            batch: list[Item] = []
            size = 0
            for item in group:
                n = self._size(item) if max_bytes is not None else 0
                if batch and (
                    len(batch) >= max_count or (max_bytes is not None and size + n > max_bytes)
                ):
                    out.append((r, batch))
                    batch, size = [], 0
                batch.append(item)
                size += n
            if batch:
                out.append((r, batch))
        return out


class RangeSharder:
    """A key range ``(start, end)`` cut at region boundaries (empty end = +inf)."""

    __slots__ = ()

    async def shard(
        self, locator: Locator, payload: tuple[bytes, bytes]
    ) -> list[tuple[Region, tuple[bytes, bytes]]]:
        """Return one part per region overlapping the range, clipped to the region."""
        start, end = payload
        out: list[tuple[Region, tuple[bytes, bytes]]] = []
        cursor = start
        while True:
            region = await locator.locate_key(cursor)
            r_end = region.end_key
            if not r_end or (end and r_end >= end):
                out.append((region, (cursor, end)))
                return out
            out.append((region, (cursor, r_end)))
            cursor = r_end


# ---------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Call(Generic[P, T]):
    """One execution's fixed parameters and shared state."""

    command: str
    sharder: Sharder[P]
    build: Callable[[Region, P], Message]
    handle: Callable[[Region, P, Any], T] | None
    options: RequestOptions
    ambiguity: Ambiguity
    budget_ms: int
    concurrency: int
    timeout: float | None
    # Observability / request control (tikv_pd.interceptor, tikv_pd.logs):
    invoke: RPCInvoker | None = None  # the hooked send; None = transport.send directly
    # The request source gets the replica kind and retry facts (patch_request_source).
    patch_source: bool = False
    # A read with its own short RPC timeout: a timeout moves on to another replica at
    # once (client-go's configurable read timeout).
    fast_timeout: bool = False
    attempts: int = 0  # attempts sent, all parts
    retries: int = 0  # attempts that met a send failure or a region error
    backoff_ms: int = 0  # milliseconds slept in backoffs, all parts
    last_error: BaseException | None = None


@dataclass(slots=True)
class RequestStats:
    """Counters of one :class:`RequestSender` (tests, benchmarks, diagnostics).

    Attributes:
        attempts: Requests handed to the transport (every retry included).
        send_failures: Attempts that failed at the transport level.
        region_errors: Region errors received, by kind (``"not_leader"``, ...).
        backoffs: Backoffs taken.
        reshards: Times a part had to be split over several regions.

    """

    attempts: int = 0
    send_failures: int = 0
    region_errors: dict[str, int] = field(default_factory=dict)
    backoffs: int = 0
    reshards: int = 0


class RequestSender:
    """Executes requests: shard, fill context, send, classify, retry, merge.

    Args:
        locator: The region locator (region cache + PD).
        transport: The store transport.
        budget_ms: The backoff budget of operations that bring no Backoffer (client-go's
            raw budget, 20 s, before ``BackOffWeight``).
        forwarding: When the leader's store cannot be reached, send leader requests
            through another peer's store, which relays them (client-go
            ``EnableForwarding``). ``None``: the transport's ``Config.enable_forwarding``.

    """

    def __init__(
        self,
        locator: Locator,
        transport: Sender,
        *,
        budget_ms: int = RAWKV_MAX_BACKOFF,
        forwarding: bool | None = None,
    ) -> None:
        self.locator = locator
        self.transport = transport
        self.budget_ms = budget_ms
        config = getattr(transport, "config", None)
        if forwarding is None:
            forwarding = bool(getattr(config, "enable_forwarding", False))
        self.forwarding = forwarding
        #: Checks a read's ts before the first attempt of each part is sent (client-go
        #: ``validateReadTS``): called as ``validator(read_ts, stale_read=...)``; the
        #: clients set ``PDOracle.validate_read_ts`` when ``Config.validate_read_ts``.
        self.read_ts_validator: Callable[..., Awaitable[None]] | None = None
        #: ``Config.store_limit``: max requests in flight per store (0: no limit).
        self.store_limit = int(getattr(config, "store_limit", 0) or 0)
        self._tokens: dict[int, int] = {}
        #: ``Config.read_timeout_short``: a read whose own RPC timeout is shorter has a
        #: "configurable read timeout" (client-go ``isReadReqConfigurableTimeout``).
        self.read_timeout_short = float(getattr(config, "read_timeout_short", 30.0))
        #: The client's zone (``Config.zone_label``): a stale read to a store whose
        #: "zone" label differs is cross-zone traffic in the metrics.
        self.zone_label: str = getattr(config, "zone_label", "") or ""
        # The cluster id goes in every context (client-go req.ClusterId); it is read from
        # the locator's PD client when a context is built (known once PD answered).
        pd = getattr(locator, "pd", None)
        self.contexts = ContextCache(
            cluster_id=(lambda: int(getattr(pd, "cluster_id", 0) or 0)) if pd is not None else None
        )
        self.stats = RequestStats()
        #: Random source of the replica selectors (ties between equally good replicas).
        self.rng = random.Random()
        #: Stores that just refused connections, and stores TiKV reports slow: replica
        #: reads avoid them. The transport feeds it the stores' health feedback.
        self.health = StoreHealth()
        add_health_listener = getattr(transport, "add_health_listener", None)
        if add_health_listener is not None:
            add_health_listener(self.health.record_feedback)
        cache = getattr(locator, "cache", None)
        # Store facts for the replica selector when the locator keeps a region cache.
        self._cache_liveness: Callable[[int], Liveness] | None = (
            cache.store_liveness if isinstance(cache, RegionCache) else None
        )
        self._is_tiflash: Callable[[int], bool] | None = (
            functools.partial(_is_tiflash, cache) if isinstance(cache, RegionCache) else None
        )
        self._store_labels: Callable[[int], tuple[tuple[str, str], ...] | None] | None = (
            functools.partial(_store_labels, cache) if isinstance(cache, RegionCache) else None
        )
        # Old addresses of stores PD reports moved: their connections are closed by the
        # next request (client-go closes the old address when it re-resolves a store),
        # else the channel would keep dialling a dead address until the client closes.
        self._moved_addresses: set[str] = set()
        if isinstance(cache, RegionCache):
            cache.store_moved_listeners.append(
                lambda _store_id, old: self._moved_addresses.add(old)
            )

    async def _close_moved_addresses(self) -> None:
        """Close the transport's connections to addresses stores moved away from."""
        while self._moved_addresses:
            await self.transport.close_address(self._moved_addresses.pop())

    async def _load_stores(self, region: Region) -> None:
        """Make sure the stores of ``region``'s peers are cached (their labels matter)."""
        get_store = getattr(self.locator, "get_store", None)
        labels_of = self._store_labels
        if get_store is None or labels_of is None:
            return
        for peer in region.peers:
            if labels_of(peer.store_id) is None:
                with contextlib.suppress(Exception):
                    await get_store(peer.store_id)

    def _take_token(self, store_id: int) -> None:
        count = self._tokens.get(store_id, 0)
        if count >= self.store_limit:
            raise TokenLimitError(store_id, self.store_limit)
        self._tokens[store_id] = count + 1

    def _give_token(self, store_id: int) -> None:
        count = self._tokens.get(store_id, 0)
        if count <= 1:
            self._tokens.pop(store_id, None)
        else:
            self._tokens[store_id] = count - 1

    def _cross_zone(self, store_id: int) -> bool | None:
        """Whether a request to ``store_id`` leaves the client's zone (``None``: unknown).

        client-go ``setReqAccessLocation``: known only when both the client's zone label
        and the store's ``zone`` label are set.
        """
        if not self.zone_label or self._store_labels is None:
            return None
        labels = self._store_labels(store_id)
        zone = next((v for k, v in labels if k == "zone"), "") if labels else ""
        if not zone:
            return None
        return zone != self.zone_label

    def _observe_traffic(
        self,
        command: str,
        stale_read: bool,
        store_id: int,
        request: Message,
        response: Message | None,
    ) -> None:
        """client-go's network collector for one attempt (metrics on, or traffic collected).

        The bytes go to the caller's :class:`TrafficDetails` when it collects them; stale
        reads count every attempt's bytes (an unknown zone counts as local); read commands
        to a store of known zone feed ``read_request_bytes``.
        """
        cross = self._cross_zone(store_id)
        out_bytes = request.ByteSize()
        in_bytes = response.ByteSize() if response is not None else None
        details = _TRAFFIC.current()
        if details is not None:
            details.add(out_bytes, in_bytes or 0, cross_zone=bool(cross))
        metrics = _obs.metrics
        if metrics is None:
            return
        if stale_read:
            metrics.observe_stale_read_attempt(out_bytes, in_bytes, cross_zone=bool(cross))
        if in_bytes and cross is not None and command in _READ_BYTES_COMMANDS:
            metrics.observe_read_bytes(
                out_bytes + in_bytes,
                replica_read=request.context.replica_read,  # type: ignore[attr-defined]
                cross_zone=cross,
            )

    def _liveness(self, store_id: int) -> Liveness:
        """A store's liveness for the replica selector: recent connection failures first."""
        live = self.health.liveness(store_id)
        if live is Liveness.UNKNOWN and self._cache_liveness is not None:
            return self._cache_liveness(store_id)
        return live

    # -- the generic entry point -----------------------------------------------------

    async def execute(
        self,
        command: str,
        sharder: Sharder[P],
        payload: P,
        build: Callable[[Region, P], Message],
        handle: Callable[[Region, P, Any], T] | None = None,
        *,
        bo: Backoffer | None = None,
        options: RequestOptions = DEFAULT_OPTIONS,
        ambiguity: Ambiguity = Ambiguity.IDEMPOTENT,
    ) -> list[T]:
        """Send ``payload`` as ``command`` to every region it covers; return the results.

        Args:
            command: The transport command (``"RawGet"``, ``"Prewrite"``, ...).
            sharder: Splits the payload by region.
            payload: What to send (a key, a list of keys / items, a range, ...).
            build: Builds the request message for one part (without its context).
            handle: Turns one part's response into a result; may raise
                :class:`RetryShard`, or a :class:`~tikv_pd.errors.TiKVError` to stop the
                whole request. Default: the response itself.
            bo: The operation's Backoffer (forked per part); ``None`` creates one with
                this sender's budget when the first backoff is needed.
            options: Context settings, per-RPC timeout and concurrency.
            ambiguity: How the request may be resent when its outcome becomes unknown.

        Returns:
            One result per part, in shard (key) order; a part re-sharded into several
            contributes one result per new part, at its place.

        Raises:
            tikv_pd.errors.TimeoutError: The backoff budget ran out (lists the causes).
            tikv_pd.errors.UndeterminedError: See :class:`Ambiguity`.
            tikv_pd.errors.RegionError: A region error that cannot be retried.
            TransportError: A transport failure that cannot be retried (bad request,
                unimplemented method).

        """
        call: _Call[P, T] = _Call(
            command,
            sharder,
            build,
            handle,
            options,
            ambiguity,
            self.budget_ms,
            options.concurrency or DEFAULT_CONCURRENCY,
            options.timeout,
        )
        if options.request_source and command in SOURCE_PATCHED_COMMANDS:
            call.patch_source = True
        if (
            call.timeout is not None
            and call.timeout < self.read_timeout_short
            and command in _READ_BYTES_COMMANDS
        ):
            call.fast_timeout = True
        if (
            options.interceptor is not None
            or _interceptor.process_chain is not None
            or _interceptor.process_inner_chain is not None
        ):
            call.invoke = _interceptor.build_invoker(self.transport.send, options.interceptor)
        started = time.monotonic()
        try:
            shards = await sharder.shard(self.locator, payload)
            if len(shards) == 1:  # the common case, one coroutine layer less
                region, part = shards[0]
                results = await self._run(call, region, part, bo, None)
            else:
                results = await self._dispatch(call, shards, bo, None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # Only the pipeline's own failures count as "send request failed" (client-go
            # logs RPC-level errors, not the key errors a handler raises).
            self._outcome(call, started, exc if isinstance(exc, _PIPELINE_ERRORS) else None)
            raise
        if call.retries or time.monotonic() - started > SLOW_REQUEST_SECONDS:
            self._outcome(call, started, None)
        return results

    def _outcome(self, call: _Call[Any, Any], started: float, failed: BaseException | None) -> None:
        """Slow / troubled request log (client-go region_request.go) and retry metrics."""
        log_request_outcome(
            command=call.command,
            elapsed_s=time.monotonic() - started,
            attempts=call.attempts,
            retries=call.retries,
            backoff_ms=call.backoff_ms,
            regions=max(1, call.attempts - call.retries),
            last_error=call.last_error,
            failed=failed,
            logger=_log,
        )
        metrics = _obs.metrics
        if metrics is not None:
            metrics.observe_retry_times(call.retries)

    # -- dispatch --------------------------------------------------------------------

    async def _dispatch(
        self,
        call: _Call[P, T],
        shards: list[tuple[Region, P]],
        bo: Backoffer | None,
        ambiguous: BaseException | None,
        read_type: str | None = None,
    ) -> list[T]:
        if len(shards) == 1:
            region, payload = shards[0]
            return await self._run(call, region, payload, bo, ambiguous, read_type)
        if not shards:
            return []
        results: list[list[T] | None] = [None] * len(shards)
        indexes = iter(range(len(shards)))

        async def worker() -> None:
            for i in indexes:
                region, payload = shards[i]
                results[i] = await self._run(
                    call,
                    region,
                    payload,
                    bo.fork() if bo is not None else None,
                    ambiguous,
                    read_type,
                )

        workers = [
            asyncio.ensure_future(worker()) for _ in range(min(call.concurrency, len(shards)))
        ]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            # One part failed: stop the others (client-go cancels the forked Backoffers).
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        out: list[T] = []
        for part in results:
            assert part is not None
            out.extend(part)
        return out

    async def _backoff(
        self,
        call: _Call[P, T],
        bo: Backoffer | None,
        kind: BackoffKind,
        error: BaseException,
        ambiguous: BaseException | None,
    ) -> Backoffer:
        if bo is None:
            bo = Backoffer(call.budget_ms, operation=call.command)
        self.stats.backoffs += 1
        # Error path only; the message is formatted only when DEBUG is enabled.
        _log.debug("%s: backing off %s after %r", call.command, kind.name, error)
        try:
            call.backoff_ms += await bo.backoff(kind, error)
        except BackoffTimeoutError as exc:
            raise _final(call, exc, ambiguous) from exc.last_error
        return bo

    # -- one part --------------------------------------------------------------------

    async def _run(
        self,
        call: _Call[P, T],
        region: Region,
        payload: P,
        bo: Backoffer | None,
        ambiguous: BaseException | None,
        read_type: str | None = None,
    ) -> list[T]:
        """Send one part until it succeeds, fails for good, or is re-sharded.

        ``ambiguous`` is the failure after which this part's outcome became unknown
        (``Ambiguity.RETRY_THEN_RAISE``); a response clears it, and a final failure while
        it is set becomes an UndeterminedError. Parts re-sharded from this one inherit it.

        ``read_type`` (requests whose source is patched, see :func:`patch_request_source`)
        is the replica kind of the first attempt of the part this one comes from: set, it
        makes every send of this part a retry.
        """
        locator = self.locator
        transport = self.transport
        command = call.command
        options = call.options
        attempt = 0  # how many sends this part made (peer rotation, is_retry_request)
        free_retries = 0  # resends in a row without sleeping
        # Only reads may go to a replica; everything else is served by the leader.
        leader_only = command not in REPLICA_READ_COMMANDS
        # Stores that failed a send for this part (client-go's failStoreIDs).
        unreachable: set[int] = set()
        # Replica / stale reads choose their peers with client-go's replica selector
        # (tikv_pd.replica_selector); leader reads and writes use select_peer.
        selector: ReplicaSelector | None = None
        while True:
            if not leader_only and (options.stale_read or options.replica_read != "leader"):
                if selector is None or not selector.same_region(region):
                    if options.match_labels:
                        await self._load_stores(region)
                    selector = ReplicaSelector(
                        region,
                        options.replica_read,
                        stale_read=options.stale_read,
                        liveness=self._liveness,
                        is_tiflash=self._is_tiflash,
                        rng=self.rng,
                        labels=options.match_labels,
                        store_labels=self._store_labels,
                        is_slow=self.health.is_slow,
                    )
                else:
                    selector.update_region(region)
                target = selector.next(unreachable)
                if target is None:
                    # Every replica was tried (client-go invalidates the region and backs
                    # off regionMiss); the next round starts a fresh selector.
                    selector = None
                    peer: Peer | None = None
                else:
                    peer, mode = target.peer, target.mode
            else:
                leader = region.leader
                if (
                    attempt == 0
                    and leader is not None
                    and self.health.has_unreachable()
                    and self.health.liveness(leader.store_id) is Liveness.UNREACHABLE
                ):
                    # client-go isLeaderCandidate: a leader whose store refused
                    # connections within the re-check interval is not asked first; another
                    # voter is (it answers NotLeader with the leader it knows, or relays
                    # the request when forwarding is on). Only on the first send: a hint
                    # back to this leader is then followed, so the two cannot ping-pong.
                    unreachable.add(leader.store_id)
                peer, mode = select_peer(region, options, attempt, leader_only, unreachable)
            if peer is None:
                locator.invalidate_region(region.id, InvalidReason.NO_LEADER)
                bo = await self._backoff(
                    call,
                    bo,
                    REGION_MISS,
                    RegionError("no_peer", region.id, "no usable peer"),
                    ambiguous,
                )
                region, payload, more = await self._reshard(call, payload)
                if more is not None:
                    return await self._dispatch(call, more, bo, ambiguous, read_type)
                continue
            # Forwarding (client-go EnableForwarding): the leader's store failed a send
            # and select_peer fell back to another voter; keep the leader as the target
            # and let that voter's store relay the request to it.
            proxy: Peer | None = None
            if (
                self.forwarding
                and mode == 0
                and region.leader is not None
                and peer != region.leader
                and region.leader.store_id in unreachable
            ):
                proxy, peer = peer, region.leader
            try:
                address = await locator.store_address(peer.store_id)
                if self._moved_addresses:
                    await self._close_moved_addresses()
                forwarded_host = ""
                if proxy is not None:
                    forwarded_host = address
                    address = await locator.store_address(proxy.store_id)
            except TransportError:
                raise
            except StoreUnavailableError as exc:
                # The peer's store is gone (tombstone, no address): the cached peers are
                # outdated. client-go answers with a fake region error here, invalidates
                # the region and relocates after a regionMiss backoff.
                locator.invalidate_region(region.id, InvalidReason.STORE_NOT_FOUND)
                bo = await self._backoff(call, bo, REGION_MISS, exc, ambiguous)
                region, payload, more = await self._reshard(call, payload)
                if more is not None:
                    return await self._dispatch(call, more, bo, ambiguous, read_type)
                continue
            request = call.build(region, payload)
            if not attempt and self.read_ts_validator is not None:
                ts_field = READ_TS_FIELDS.get(command)
                if ts_field is not None:
                    # client-go validateReadTS, before the request leaves.
                    await self.read_ts_validator(
                        getattr(request, ts_field), stale_read=options.stale_read
                    )
            request.context.CopyFrom(self.contexts.get(region, peer, options, mode))  # type: ignore[attr-defined]
            if call.patch_source:
                leader = region.leader
                replica = "leader" if leader is not None and peer.id == leader.id else "follower"
                ctx = request.context  # type: ignore[attr-defined]
                if read_type is None:
                    read_type = f"stale_{replica}" if mode == 2 else replica
                    ctx.request_source = patch_request_source(
                        options.request_source, read_type, replica, retry=False
                    )
                else:
                    ctx.request_source = patch_request_source(
                        options.request_source, read_type, replica, retry=True
                    )
                    ctx.is_retry_request = True
            if attempt:
                request.context.is_retry_request = True  # type: ignore[attr-defined]
            attempt += 1
            slept = False
            self.stats.attempts += 1
            call.attempts += 1
            rpc_stats = (
                _stats_sinks(options.rpc_stats)
                if _RPC_STATS.open or options.rpc_stats is not None
                else ()
            )
            sent_at = time.perf_counter_ns() if rpc_stats else 0
            limited = self.store_limit > 0
            if limited:
                # client-go getStoreToken: refused before sending when the target store
                # already has store_limit requests of this client in flight. Nothing is
                # sent, but an earlier lost attempt keeps the outcome unknown.
                try:
                    self._take_token(peer.store_id)
                except TokenLimitError as exc:
                    raise _final(call, exc, ambiguous) from None
            try:
                try:
                    invoke = call.invoke
                    if invoke is not None:
                        # The request's one invoker serves relayed attempts too: the
                        # forwarded host travels in the RPCRequest.
                        response = await invoke(
                            RPCRequest(
                                address,
                                command,
                                request,
                                peer.store_id,
                                region.id,
                                attempt - 1,
                                call.timeout,
                                forwarded_host,
                            )
                        )
                    elif forwarded_host:
                        response = await transport.send(
                            address,
                            command,
                            request,
                            call.timeout,
                            forwarded_host=forwarded_host,
                        )
                    else:
                        response = await transport.send(address, command, request, call.timeout)
                finally:
                    if limited:
                        self._give_token(peer.store_id)
                    if rpc_stats:
                        elapsed_ns = time.perf_counter_ns() - sent_at
                        for sink in rpc_stats:
                            sink.record_rpc(command, elapsed_ns)
            except TransportError as exc:
                if rpc_stats:
                    _record_failure(rpc_stats, _transport_error_label(exc), peer, request)
                if _TRAFFIC.open or (options.stale_read and _obs.metrics is not None):
                    self._observe_traffic(command, options.stale_read, peer.store_id, request, None)
                self.stats.send_failures += 1
                call.retries += 1
                call.last_error = exc
                if exc.code in FATAL_STATUS_CODES:
                    raise _final(call, exc, ambiguous) from exc
                if exc.sent:
                    if call.ambiguity is Ambiguity.RAISE:
                        raise UndeterminedError(command, exc) from exc
                    if call.ambiguity is Ambiguity.RETRY_THEN_RAISE and ambiguous is None:
                        ambiguous = exc
                # client-go onSendFail: the peer may be down; reload the region (its
                # leader may have moved), try another peer next, and back off tikvRPC.
                # When every peer failed, start over (client-go NeedReloadRegion).
                failed_store = proxy.store_id if proxy is not None else peer.store_id
                if call.fast_timeout and proxy is None and isinstance(exc, RPCTimeoutError):
                    # client-go onReadReqConfigurableTimeout: a read with its own short
                    # timeout that ran out asks another replica at once, without a
                    # backoff, without blaming the store or dropping the region; a leader
                    # read goes on as a replica read of a follower.
                    unreachable.add(failed_store)
                    if selector is not None:
                        selector.on_deadline_exceeded()
                    elif mode == 0:
                        options = _load_based_read(options)
                    if unreachable.issuperset(p.store_id for p in region.peers):
                        # Every replica timed out: start over after a regionMiss sleep.
                        unreachable.clear()
                        selector = None
                        bo = await self._backoff(call, bo, REGION_MISS, exc, ambiguous)
                    continue
                if exc.code == grpc.StatusCode.UNAVAILABLE or not exc.sent:
                    # The connection failed: the store is likely down (client-go's liveness
                    # probe would say unreachable); replica reads skip it for a while.
                    self.health.mark_unreachable(failed_store)
                # A gRPC CANCELLED status here is not our caller's cancellation (that
                # arrives as asyncio.CancelledError and is never caught: client-go
                # onSendFail returns context.Canceled without touching anything) but
                # keepalive or a store shutting down: retried like any send failure.
                # client-go also closes the connection then; grpc channels reconnect
                # by themselves and the transport reopens a broken stream, so we don't.
                locator.on_send_fail(region, failed_store)
                unreachable.add(failed_store)
                if unreachable.issuperset(p.store_id for p in region.peers):
                    unreachable.clear()
                bo = await self._backoff(call, bo, TIKV_RPC, exc, ambiguous)
                region, payload, more = await self._reshard(call, payload)
                if more is not None:
                    return await self._dispatch(call, more, bo, ambiguous, read_type)
                free_retries = 0
                continue

            if _TRAFFIC.open or (
                _obs.metrics is not None
                and (options.stale_read or (self.zone_label and command in _READ_BYTES_COMMANDS))
            ):
                # client-go's network collector: every attempt of a request that started
                # as a stale read counts, the leader's fallback read included.
                self._observe_traffic(command, options.stale_read, peer.store_id, request, response)
            if self.health.has_unreachable():
                # The store answered: it is reachable again.
                self.health.mark_reachable(peer.store_id if proxy is None else proxy.store_id)
            if response.HasField("region_error"):
                err: errorpb_pb2.Error = response.region_error
                d = decide(
                    err,
                    region_id=region.id,
                    conf_ver=region.epoch.conf_ver,
                    version=region.epoch.version,
                    peer_id=peer.id,
                )
                errors = self.stats.region_errors
                errors[d.kind] = errors.get(d.kind, 0) + 1
                if rpc_stats:
                    _record_failure(rpc_stats, d.kind, peer, request)
                call.retries += 1
                call.last_error = to_exception(err, region.id)
                if (
                    d.kind == "FlashbackInProgress"
                    and selector is not None
                    and selector.on_flashback_in_progress(mode == 1)
                ):
                    # client-go onFlashbackInProgress: a replica read retries on the leader.
                    continue
                if (
                    d.kind == "region_not_found"
                    and selector is not None
                    and selector.on_region_not_found(mode == 2)
                ):
                    # client-go onRegionNotFound: the leader was not tried yet, so the
                    # same request goes there at once (the peer asked may not exist yet
                    # after a split, or was moved); the cached region is dropped for
                    # everyone else meanwhile.
                    locator.invalidate_region(region.id, InvalidReason.REGION_NOT_FOUND)
                    continue
                if d.action is Action.FAIL:
                    raise _final(call, to_exception(err, region.id), ambiguous)
                if d.action is Action.UNDETERMINED or d.ambiguous:
                    if call.ambiguity is Ambiguity.RAISE:
                        raise UndeterminedError(command, to_exception(err, region.id))
                    if call.ambiguity is Ambiguity.RETRY_THEN_RAISE and ambiguous is None:
                        ambiguous = to_exception(err, region.id)
                kind = d.backoff
                if d.action is Action.UNDETERMINED and kind is None:
                    kind = REGION_MISS
                if selector is not None and d.kind == "not_leader":
                    hint = err.not_leader.leader
                    selector.on_not_leader(
                        Peer(hint.id, hint.store_id) if d.switch_leader else None
                    )
                if d.switch_leader:
                    hinted = err.not_leader.leader.store_id
                    if not locator.on_not_leader(region, err.not_leader.leader):
                        kind = REGION_SCHEDULING
                    # A live peer names this leader: that is fresher than our own failed
                    # send to its store, so try it again (it may have been a blip).
                    unreachable.discard(hinted)
                if d.update_regions and not locator.on_epoch_not_match(
                    region, err.epoch_not_match.current_regions, peer.store_id
                ):
                    kind = REGION_MISS
                if d.invalidate_region:
                    locator.invalidate_region(region.id, _INVALID_REASONS.get(d.kind, _OTHER))
                if d.invalidate_store:
                    locator.invalidate_store(peer.store_id)
                    # A relayed request: the mismatch is at the forwarded host.
                    await transport.close_address(forwarded_host or address)
                if d.leader_read:
                    # DataIsNotReady: retried at once (client-go ErrorRetryImmediately); the
                    # selector sends the next attempt to the leader as a normal read.
                    if selector is not None:
                        selector.on_data_is_not_ready()
                    else:
                        leader_only = True
                if d.kind == "server_is_busy" and selector is not None:
                    selector.on_server_is_busy()
                    if selector.can_fast_retry() and not options.busy_threshold_ms:
                        # client-go canFastRetry: another replica serves at once.
                        kind = None
                if (
                    d.kind == "server_is_busy"
                    and options.busy_threshold_ms
                    and not leader_only
                    and err.server_is_busy.estimated_wait_ms
                ):
                    # Load-based replica read (client-go replicaSelector.onServerIsBusy
                    # with a busy threshold): the leader's queue is longer than the
                    # caller accepts, so read from a follower at once instead of waiting.
                    options = _load_based_read(options)
                    kind = None
                if kind is None and free_retries >= MAX_RETRIES_WITHOUT_BACKOFF:
                    kind = REGION_MISS
                if kind is not None:
                    bo = await self._backoff(
                        call, bo, kind, to_exception(err, region.id), ambiguous
                    )
                    slept = True
                free_retries = 0 if slept else free_retries + 1
                region, payload, more = await self._reshard(call, payload)
                if more is not None:
                    return await self._dispatch(call, more, bo, ambiguous, read_type)
                continue

            # TiKV executed this attempt: whatever an earlier lost attempt did, this
            # answer is authoritative (client-go clears the undetermined error here).
            ambiguous = None
            if options.stale_read and _obs.metrics is not None:
                # client-go counts a hit when the sender needed one send (sendTimes == 1).
                _obs.metrics.count_stale_read(hit=attempt == 1)
            if call.handle is None:
                return [response]
            try:
                return [call.handle(region, payload, response)]
            except RetryShard as retry:
                if retry.before_retry is not None:
                    await retry.before_retry()
                if retry.backoff is not None:
                    bo = await self._backoff(call, bo, retry.backoff, retry, None)
                new_shards = await call.sharder.shard(locator, retry.payload)  # type: ignore[arg-type]
                # client-go's snapshot BatchGet and Scan loops keep the read type across
                # a lock resolution: the resent request is labelled a retry.
                return await self._dispatch(call, new_shards, bo, None, read_type)

    async def _reshard(
        self, call: _Call[P, T], payload: P
    ) -> tuple[Region, P, list[tuple[Region, P]] | None]:
        """Locate ``payload`` again: one part continues the loop, several are dispatched."""
        shards = await call.sharder.shard(self.locator, payload)
        if len(shards) == 1:
            region, payload = shards[0]
            return region, payload, None
        self.stats.reshards += 1
        return shards[0][0], payload, shards

    # -- conveniences over execute() ---------------------------------------------------

    async def call_key(
        self,
        command: str,
        key: bytes,
        request: Message,
        *,
        ambiguity: Ambiguity = Ambiguity.IDEMPOTENT,
        bo: Backoffer | None = None,
        options: RequestOptions = DEFAULT_OPTIONS,
        reverse: bool = False,
    ) -> Any:
        """Send a prebuilt ``request`` to the region of ``key`` and return its response.

        ``reverse`` routes by ``key`` as an exclusive end (reverse scans).
        """
        results: list[Any] = await self.execute(
            command,
            _REVERSE_KEY if reverse else _SINGLE_KEY,
            key,
            lambda region, k: request,
            bo=bo,
            options=options,
            ambiguity=ambiguity,
        )
        if len(results) != 1:  # a single key always lives in one region
            raise AssertionError(f"{command} for one key produced {len(results)} responses")
        return results[0]

    async def call_keys(
        self,
        command: str,
        keys: Sequence[bytes],
        build: Callable[[Sequence[bytes]], Sequence[tuple[Sequence[bytes], Message]]],
        *,
        bo: Backoffer | None = None,
        options: RequestOptions = DEFAULT_OPTIONS,
        ambiguity: Ambiguity = Ambiguity.IDEMPOTENT,
    ) -> list[Any]:
        """Group ``keys`` by region; ``build`` turns one region's keys into requests.

        ``build(keys)`` returns ``[(keys of the request, request), ...]`` so that the
        caller applies its own size limits; after a region change the keys of a failed
        request are grouped and built again. Returns the responses in key order.
        """
        payload: Sequence[tuple[Sequence[bytes], Message | None]] = [(tuple(keys), None)]
        return await self.execute(
            command,
            _BuiltKeysSharder(build),
            payload,
            _prebuilt,
            bo=bo,
            options=options,
            ambiguity=ambiguity,
        )

    async def call_range(
        self,
        command: str,
        start: bytes,
        end: bytes,
        build: Callable[[bytes, bytes], Message],
        *,
        bo: Backoffer | None = None,
        options: RequestOptions = DEFAULT_OPTIONS,
        ambiguity: Ambiguity = Ambiguity.IDEMPOTENT,
    ) -> list[Any]:
        """One request per region overlapping ``[start, end)`` (clipped); key order."""
        return await self.execute(
            command,
            _RANGE,
            (start, end),
            lambda region, part: build(part[0], part[1]),
            bo=bo,
            options=options,
            ambiguity=ambiguity,
        )

    async def call_first_region(
        self,
        command: str,
        start: bytes,
        end: bytes,
        build: Callable[[bytes, bytes], Message],
        *,
        reverse: bool,
        bo: Backoffer | None = None,
        options: RequestOptions = DEFAULT_OPTIONS,
    ) -> tuple[list[Any], tuple[bytes, bytes]]:
        """Send one request for the first region of ``[start, end)`` in scan direction.

        Forward: the region containing ``start``; reverse: the region holding the keys
        just below ``end``. The request covers the range clipped to that region; if the
        region changed meanwhile, the part is re-sharded and one response per new region
        comes back, in scan order.

        Returns:
            The responses and the ``(start, end)`` part of the range they covered.

        """
        if reverse:
            region = await self.locator.locate_end_key(end)
            part = (max(start, region.start_key), end)
        else:
            region = await self.locator.locate_key(start)
            r_end = region.end_key
            part = (start, r_end if r_end and (not end or r_end < end) else end)
        results: list[Any] = await self.execute(
            command,
            _RANGE,
            part,
            lambda region, p: build(p[0], p[1]),
            bo=bo,
            options=options,
        )
        if reverse:
            results.reverse()
        return results, part


_LOAD_BASED: dict[RequestOptions, RequestOptions] = {}


def _load_based_read(options: RequestOptions) -> RequestOptions:
    """The options of the follower read that replaces a busy leader read (cached)."""
    derived = _LOAD_BASED.get(options)
    if derived is None:
        replica: ReplicaReadType = (
            "follower" if options.replica_read == "leader" else options.replica_read
        )
        derived = replace(options, replica_read=replica, busy_threshold_ms=0)
        if len(_LOAD_BASED) > 1024:
            _LOAD_BASED.clear()
        _LOAD_BASED[options] = derived
    return derived


#: Failures of the pipeline itself (as opposed to a handler's key errors), for the log.
_PIPELINE_ERRORS = (BackoffTimeoutError, StoreUnavailableError, RegionError, UndeterminedError)


def _store_labels(cache: RegionCache, store_id: int) -> tuple[tuple[str, str], ...] | None:
    store = cache.get_store(store_id)
    return store.labels if store is not None else None


def _is_tiflash(cache: RegionCache, store_id: int) -> bool:
    store = cache.get_store(store_id)
    return store is not None and store.is_tiflash


def _final(
    call: _Call[Any, Any], error: BaseException, ambiguous: BaseException | None
) -> BaseException:
    """The error a part fails with: UndeterminedError if an earlier attempt was lost."""
    if ambiguous is None or isinstance(error, UndeterminedError):
        return error
    return UndeterminedError(call.command, error)


#: Commands that may be served by a follower / learner / stale replica when the options
#: ask for it (client-go only applies replica read to read requests); every other command
#: goes to the leader.
REPLICA_READ_COMMANDS: frozenset[str] = frozenset(
    {
        "Get",
        "BatchGet",
        "Scan",
        "BufferBatchGet",
        "Coprocessor",
        "RawGet",
        "RawBatchGet",
        "RawScan",
        "RawBatchScan",
        "RawGetKeyTTL",
        "RawChecksum",
    }
)


class _BuiltKeysSharder:
    """Sharder for :meth:`RequestSender.call_keys`: group keys, then the caller builds."""

    __slots__ = ("build",)

    def __init__(
        self, build: Callable[[Sequence[bytes]], Sequence[tuple[Sequence[bytes], Message]]]
    ) -> None:
        self.build = build

    async def shard(
        self, locator: Locator, payload: Sequence[tuple[Sequence[bytes], Message | None]]
    ) -> list[tuple[Region, Sequence[tuple[Sequence[bytes], Message | None]]]]:
        keys = sorted({k for ks, _ in payload for k in ks})
        out: list[tuple[Region, Sequence[tuple[Sequence[bytes], Message | None]]]] = []
        region: Region | None = None
        group: list[bytes] = []
        for k in keys:
            if region is None or not region.contains(k):
                if region is not None:
                    out.extend((region, [b]) for b in self.build(group))
                region = await locator.locate_key(k)
                group = []
            group.append(k)
        if region is not None:
            out.extend((region, [b]) for b in self.build(group))
        return out


def _prebuilt(region: Region, payload: Sequence[tuple[Sequence[bytes], Message | None]]) -> Message:
    request = payload[0][1]
    assert request is not None
    return request


#: The read commands of client-go ``isReadReq`` (``read_request_bytes``).
_READ_BYTES_COMMANDS = frozenset({"Get", "BatchGet", "Scan", "Coprocessor"})
_SINGLE_KEY = KeySharder()
_REVERSE_KEY = KeySharder(reverse=True)
_RANGE = RangeSharder()
_OTHER = InvalidReason.OTHER
_INVALID_REASONS: dict[str, InvalidReason] = {
    "not_leader": InvalidReason.NO_LEADER,
    "region_not_found": InvalidReason.REGION_NOT_FOUND,
    "epoch_not_match": InvalidReason.EPOCH_NOT_MATCH,
    "store_not_match": InvalidReason.STORE_NOT_FOUND,
}


# ---------------------------------------------------------------------------------------
# Plans: a command's shape, composed once, run many times
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan(Generic[P, T, R]):
    """A command's complete shape: sharder → build → handle → merge.

    Define one per command (module level) and run it with :meth:`run`; like client-rust's
    plan builder, the parts compose and the retry loop is the shared one.

    Attributes:
        command: The transport command.
        sharder: How the payload is split by region.
        build: Builds one part's request.
        handle: Turns one part's response into a result (may raise :class:`RetryShard`).
        merge: Folds the results (in key order) into the answer.
        ambiguity: How the request may be resent when its outcome becomes unknown.

    """

    command: str
    sharder: Sharder[P]
    build: Callable[[Region, P], Message]
    handle: Callable[[Region, P, Any], T]
    merge: Callable[[list[T]], R]
    ambiguity: Ambiguity = Ambiguity.IDEMPOTENT

    async def run(
        self,
        sender: RequestSender,
        payload: P,
        *,
        bo: Backoffer | None = None,
        options: RequestOptions = DEFAULT_OPTIONS,
    ) -> R:
        """Execute the plan for ``payload`` through ``sender`` and merge the results."""
        results = await sender.execute(
            self.command,
            self.sharder,
            payload,
            self.build,
            self.handle,
            bo=bo,
            options=options,
            ambiguity=self.ambiguity,
        )
        return self.merge(results)
