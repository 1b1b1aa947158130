"""Request control: where a request comes from and which resources it may use.

Every KV request carries, in its ``kvrpcpb.Context``, facts TiKV uses to account for and
schedule it:

* ``request_source`` — a label of the request's origin, shown in TiKV's metrics and used
  by resource control to recognise internal work. client-go builds it in
  ``util/request_source.go``: ``"<origin>_<type>"`` or ``"<origin>_<type>_<explicit>"``
  where the origin is ``internal`` or ``external``; a source with neither a type nor an
  explicit type is ``"unknown"``, and an explicit type equal to the type is not repeated.
  :class:`RequestSource` and :func:`build_request_source` implement that format.
* ``resource_control_context.resource_group_name`` — the resource group whose request
  units (RU) the request consumes (TiKV's resource control; ``""`` is the default group);
  ``resource_group_tag`` — an opaque tag (TiDB puts its Top SQL digest there).
* ``priority`` — ``kvrpcpb.CommandPri`` (``"normal"``, ``"low"``, ``"high"``).
* ``txn_source`` — the CDC origin marker of transactional writes.

:class:`RequestContext` bundles them; a client, a transaction or a snapshot applies it to
its :class:`tikv_pd.request.RequestOptions` with :meth:`RequestContext.apply`.

Resource control (client-go ``internal/resourcecontrol`` and ``interceptedClient`` in
``internal/client/client_interceptor.go``): a process-wide :class:`ResourceController` set
with :func:`set_resource_controller` is called before each request of a non-default
resource group is sent (it may wait for RU tokens and returns a penalty and a priority for
the ``ResourceControlContext``) and after its response arrives, with the request's cost
facts (:class:`RequestInfo`, :class:`ResponseInfo`). Requests whose source contains
``internal_others`` bypass it, as in client-go.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from tikv_proto import kvrpcpb_pb2, resource_manager_pb2

from tikv_pd.config import COMMAND_PRIORITIES, CommandPriority

if TYPE_CHECKING:
    from tikv_pd.interceptor import RPCInterceptor, RPCInvoker, RPCRequest
    from tikv_pd.request import RequestOptions

__all__ = [
    "EXPLICIT_SOURCE_TYPES",
    "EXTERNAL",
    "INTERNAL",
    "INTERNAL_TXN_GC",
    "INTERNAL_TXN_OTHERS",
    "INTERNAL_TXN_STATS",
    "SOURCE_UNKNOWN",
    "WRITE_COMMANDS",
    "RequestContext",
    "RequestInfo",
    "RequestSource",
    "RequestWaitResult",
    "ResourceController",
    "ResponseInfo",
    "build_request_source",
    "get_resource_controller",
    "is_internal_source",
    "request_info",
    "resource_control_interceptor",
    "response_info",
    "set_resource_controller",
]

#: Origin of requests a program issues on a user's behalf.
EXTERNAL = "external"
#: Origin of requests the client or the database issues for itself (GC, statistics, ...).
INTERNAL = "internal"
#: The source of a request whose type is unknown (client-go ``SourceUnknown``).
SOURCE_UNKNOWN = "unknown"
#: client-go ``InternalTxnOthers``: internal work of low cost; resource control bypasses it.
INTERNAL_TXN_OTHERS = "others"
#: client-go ``InternalTxnGC``.
INTERNAL_TXN_GC = "gc"
#: client-go ``InternalTxnStats``.
INTERNAL_TXN_STATS = "stats"
#: client-go ``ExplicitTypeList``: the explicit source types TiDB sets ("" = none).
EXPLICIT_SOURCE_TYPES: tuple[str, ...] = (
    "",
    "lightning",
    "br",
    "dumpling",
    "background",
    "ddl",
    "stats",
    "import",
)


def build_request_source(internal: bool, source_type: str, explicit_type: str = "") -> str:
    """Format a ``Context.request_source`` label as client-go's ``GetRequestSource``.

    Args:
        internal: The request is the system's own work (``internal_...``), not a user's
            (``external_...``).
        source_type: What kind of work (``"txn"``, ``"gc"``, ``"stats"``, an application
            name, ...).
        explicit_type: An extra type set by the caller (``"br"``, ``"lightning"``, ...);
            left out when empty or equal to ``source_type``.

    Returns:
        ``"unknown"`` when both types are empty (client-go: the origin is then probably
        unset too, so it is not claimed), else ``"<origin>_<type>[_<explicit>]"`` with
        ``"unknown"`` standing in for an empty type.

    Example:
        >>> build_request_source(False, "myapp")
        'external_myapp'
        >>> build_request_source(True, "gc", "br")
        'internal_gc_br'

    """
    if not source_type and not explicit_type:
        return SOURCE_UNKNOWN
    parts = [INTERNAL if internal else EXTERNAL, source_type or SOURCE_UNKNOWN]
    if explicit_type and explicit_type != source_type:
        parts.append(explicit_type)
    return "_".join(parts)


def is_internal_source(source: str) -> bool:
    """Whether a ``request_source`` label marks internal work (client-go ``IsInternalRequest``)."""
    return source.startswith(INTERNAL)


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestSource:
    """The parts of a request source label (client-go ``util.RequestSource``).

    Attributes:
        internal: Internal (system) work rather than a user's request.
        source_type: The kind of work.
        explicit_type: An extra type chosen by the caller (see :data:`EXPLICIT_SOURCE_TYPES`).

    """

    internal: bool = False
    source_type: str = ""
    explicit_type: str = ""

    def __post_init__(self) -> None:
        for name in ("source_type", "explicit_type"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"RequestSource.{name} must be a str")

    def __str__(self) -> str:
        return build_request_source(self.internal, self.source_type, self.explicit_type)

    @property
    def label(self) -> str:
        """The ``Context.request_source`` string."""
        return str(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestContext:
    """Request-control settings of a client, a transaction or a snapshot.

    ``None`` / unset fields leave the options they are applied to unchanged, so a
    transaction's context can refine its client's.

    Attributes:
        request_source: The source label, as a string or a :class:`RequestSource`.
        resource_group_name: The resource group charged for the requests.
        resource_group_tag: An opaque tag sent with every request (Top SQL).
        priority: ``"normal"``, ``"low"`` or ``"high"``.
        txn_source: ``Context.txn_source`` (CDC origin marker, a non-negative int).

    Example:
        >>> ctx = RequestContext(
        ...     request_source=RequestSource(source_type="billing"),
        ...     resource_group_name="batch_jobs",
        ...     priority="low",
        ... )
        >>> ctx.source_label
        'external_billing'

    """

    request_source: str | RequestSource | None = None
    resource_group_name: str | None = None
    resource_group_tag: bytes | None = None
    priority: CommandPriority | None = None
    txn_source: int | None = None

    def __post_init__(self) -> None:
        own = "RequestContext"
        if self.request_source is not None and not isinstance(
            self.request_source, str | RequestSource
        ):
            raise TypeError(f"{own}.request_source must be a str or a RequestSource")
        if self.resource_group_name is not None and not isinstance(self.resource_group_name, str):
            raise TypeError(f"{own}.resource_group_name must be a str")
        if self.resource_group_tag is not None and not isinstance(self.resource_group_tag, bytes):
            raise TypeError(f"{own}.resource_group_tag must be bytes")
        if self.priority is not None and self.priority not in COMMAND_PRIORITIES:
            raise ValueError(
                f"{own}.priority must be one of {list(COMMAND_PRIORITIES)}, got {self.priority!r}"
            )
        if self.txn_source is not None and (
            isinstance(self.txn_source, bool)
            or not isinstance(self.txn_source, int)
            or not 0 <= self.txn_source < 2**64
        ):
            raise ValueError(
                f"{own}.txn_source must be an int in [0, 2**64), got {self.txn_source!r}"
            )

    @property
    def source_label(self) -> str | None:
        """The request source as the string sent to TiKV (``None`` when unset)."""
        if self.request_source is None:
            return None
        return str(self.request_source)

    def overrides(self) -> dict[str, Any]:
        """The :class:`~tikv_pd.request.RequestOptions` fields this context sets."""
        out: dict[str, Any] = {}
        if self.request_source is not None:
            out["request_source"] = str(self.request_source)
        if self.resource_group_name is not None:
            out["resource_group_name"] = self.resource_group_name
        if self.resource_group_tag is not None:
            out["resource_group_tag"] = self.resource_group_tag
        if self.priority is not None:
            out["priority"] = self.priority
        if self.txn_source is not None:
            out["txn_source"] = self.txn_source
        return out

    def apply(self, options: RequestOptions) -> RequestOptions:
        """Return ``options`` with this context's fields set (the same object if none are)."""
        changes = self.overrides()
        if not changes:
            return options
        return dataclasses.replace(options, **changes)

    def merge(self, other: RequestContext) -> RequestContext:
        """Return this context refined by ``other`` (``other``'s set fields win)."""
        changes = {f.name: getattr(other, f.name) for f in dataclasses.fields(other)}
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


# ---------------------------------------------------------------------------------------
# Resource control
# ---------------------------------------------------------------------------------------

#: Commands resource control charges as writes: client-go's ``IsTxnWriteRequest`` and
#: ``IsRawWriteRequest`` (``tikvrpc/tikvrpc.go``). Only RawPut, RawBatchPut and RawDelete
#: count among the raw commands there; the lock-status checks count among the
#: transactional ones.
WRITE_COMMANDS: frozenset[str] = frozenset(
    {
        "PessimisticLock",
        "Prewrite",
        "Commit",
        "BatchRollback",
        "PessimisticRollback",
        "CheckTxnStatus",
        "CheckSecondaryLocks",
        "Cleanup",
        "TxnHeartBeat",
        "ResolveLock",
        "FlashbackToVersion",
        "PrepareFlashbackToVersion",
        "Flush",
        "RawPut",
        "RawBatchPut",
        "RawDelete",
    }
)


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """The cost facts of a request, before it is sent (client-go ``resourcecontrol.RequestInfo``).

    Attributes:
        command: The command name (``"Prewrite"``, ``"RawGet"``, ...).
        is_write: Whether resource control charges it as a write.
        write_bytes: For a prewrite: the mutations' key and value bytes plus the primary
            and the secondaries' keys; for a commit: the keys' bytes; otherwise 0
            (client-go counts only these two).
        store_id: The store the request goes to.
        request_size: The serialized request's size in bytes.
        replica_number: Replicas a write is applied to (0 when unknown).

    """

    command: str
    is_write: bool
    write_bytes: int
    store_id: int
    request_size: int
    replica_number: int = 0


@dataclass(frozen=True, slots=True)
class ResponseInfo:
    """The cost facts of a response (client-go ``resourcecontrol.ResponseInfo``).

    Attributes:
        read_bytes: Bytes TiKV read: ``exec_details_v2.scan_detail_v2.processed_versions_size``
            when reported, the whole response size for a ``Scan``, else 0.
        kv_cpu_ms: TiKV's processing wall time (``time_detail_v2.process_wall_time_ns``,
            else ``time_detail.process_wall_time_ms``), in milliseconds.
        response_size: The serialized response's size in bytes.

    """

    read_bytes: int
    kv_cpu_ms: float
    response_size: int


@dataclass(frozen=True, slots=True)
class RequestWaitResult:
    """What a :class:`ResourceController` decides before a request is sent.

    Attributes:
        penalty: Consumption to report in ``ResourceControlContext.penalty`` (``None``:
            leave it unset).
        priority: The resource group's priority; put in
            ``ResourceControlContext.override_priority`` unless that is already set
            (client-go passes it because reading it on the TiKV side is costly).

    """

    penalty: resource_manager_pb2.Consumption | None = None
    priority: int = 0


@runtime_checkable
class ResourceController(Protocol):
    """A resource-control hook (client-go ``ResourceGroupKVInterceptor``).

    client-go's ``interceptedClient`` calls it around each send; an implementation may be
    PD's resource manager controller, a local token bucket, or a test recorder.
    """

    def is_background_request(self, resource_group: str, request_source: str) -> bool:
        """Whether the request is background work that TiKV accounts for itself."""
        ...

    async def on_request_wait(self, resource_group: str, info: RequestInfo) -> RequestWaitResult:
        """Called before sending; may wait for tokens; raising fails the request."""
        ...

    async def on_response_wait(
        self, resource_group: str, request: RequestInfo, response: ResponseInfo
    ) -> None:
        """Called after a response arrived (not after a transport failure)."""
        ...


_controller: ResourceController | None = None


def set_resource_controller(controller: ResourceController | None) -> None:
    """Install (or with ``None`` remove) the process-wide resource controller.

    client-go enables resource control with ``EnableResourceControl`` and sets the
    controller with ``SetResourceControlInterceptor`` (``tikv/kv.go``); this does both.
    Only requests with a non-empty resource group name reach the controller.
    """
    global _controller
    if controller is not None and not isinstance(controller, ResourceController):
        raise TypeError(
            "controller must implement is_background_request, on_request_wait and "
            f"on_response_wait, got {type(controller).__name__}"
        )
    from tikv_pd import interceptor, observability

    with observability.switch_lock:
        _controller = controller
        interceptor.refresh_process_chain()


def get_resource_controller() -> ResourceController | None:
    """The installed resource controller, or ``None``."""
    return _controller


def _write_bytes(command: str, request: Any) -> int:
    if command == "Prewrite":
        total = sum(len(m.key) + len(m.value) for m in request.mutations)
        total += len(request.primary_lock)
        return total + sum(len(k) for k in request.secondaries)
    if command == "Commit":
        return sum(len(k) for k in request.keys)
    return 0


def request_info(command: str, request: Any, store_id: int) -> RequestInfo:
    """Compute a request's :class:`RequestInfo` (client-go ``MakeRequestInfo``)."""
    is_write = command in WRITE_COMMANDS
    return RequestInfo(
        command=command,
        is_write=is_write,
        write_bytes=_write_bytes(command, request) if is_write else 0,
        store_id=store_id,
        request_size=request.ByteSize(),
    )


def response_info(command: str, response: Any) -> ResponseInfo:
    """Compute a response's :class:`ResponseInfo` (client-go ``MakeResponseInfo``)."""
    size = response.ByteSize()
    read_bytes = size if command == "Scan" else 0
    kv_cpu_ms = 0.0
    details: kvrpcpb_pb2.ExecDetailsV2 | None = None
    try:
        if response.HasField("exec_details_v2"):
            details = response.exec_details_v2
    except ValueError:  # the response type has no exec details
        details = None
    if details is not None:
        if details.HasField("scan_detail_v2"):
            read_bytes = details.scan_detail_v2.processed_versions_size
        if details.HasField("time_detail_v2"):
            kv_cpu_ms = details.time_detail_v2.process_wall_time_ns / 1e6
        elif details.HasField("time_detail"):
            kv_cpu_ms = float(details.time_detail.process_wall_time_ms)
    return ResponseInfo(read_bytes=read_bytes, kv_cpu_ms=kv_cpu_ms, response_size=size)


#: client-go ``shouldBypass``: internal low-cost work skips resource control.
_BYPASS_MARKER = f"{INTERNAL}_{INTERNAL_TXN_OTHERS}"


def resource_control_interceptor(controller: ResourceController) -> RPCInterceptor:
    """The interceptor that runs ``controller`` around each send (client-go ``interceptedClient``).

    Requests without a resource group name, background requests and internal ``others``
    requests pass untouched. Otherwise the controller's ``on_request_wait`` runs first (its
    penalty goes to ``ResourceControlContext.penalty``, its priority to
    ``override_priority`` unless already set), then the send, then ``on_response_wait``
    with the response's cost facts when a response arrived.
    """
    from tikv_pd.interceptor import rpc_interceptor

    def wrap(next: RPCInvoker) -> RPCInvoker:
        async def invoke(rpc: RPCRequest) -> Any:
            ctx = rpc.context
            group = ctx.resource_control_context.resource_group_name
            if not group:
                return await next(rpc)
            source = ctx.request_source
            if _BYPASS_MARKER in source or controller.is_background_request(group, source):
                return await next(rpc)
            info = request_info(rpc.command, rpc.request, rpc.store_id)
            decision = await controller.on_request_wait(group, info)
            rcc = ctx.resource_control_context
            if decision.penalty is not None:
                rcc.penalty.CopyFrom(decision.penalty)
            if rcc.override_priority == 0:
                rcc.override_priority = decision.priority
            response = await next(rpc)
            await controller.on_response_wait(group, info, response_info(rpc.command, response))
            return response

        return invoke

    return rpc_interceptor("resource_control", wrap)
