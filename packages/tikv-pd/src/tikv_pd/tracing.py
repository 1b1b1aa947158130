"""OpenTelemetry tracing (the optional ``tikv-pd[tracing]`` extra).

With :func:`enable_tracing`, every client operation gets a span (``tikv.raw.get``,
``tikv.raw.batch_put``, ``tikv.txn.commit``, ...), each RPC attempt a child span named
after its gRPC method (``tikvpb.Tikv/RawBatchGet``, with the store, region and attempt as
attributes), and each backoff sleep a child span ``tikv.backoff.<kind>`` (client-go
``config/retry/backoff.go`` names its OpenTracing spans ``tikv.backoff.<kind>``; its RPC
spans ``rpcClient.SendRequest`` carry the region id and command type that our spans carry
as attributes, so span names stay low-cardinality as OpenTelemetry advises). A region
loaded from PD on a cache miss gets ``tikv.region_cache.load_region`` (client-go
``loadRegion``), a timestamp wait ``tikv.pd.get_timestamp``, and each phase of a commit
``tikv.txn.<phase>`` (``prewrite``, ``get_commit_ts``, ``commit_primary``,
``commit_secondaries``, ``cleanup``; see ``tikv_txn._observe``). Spans nest
through OpenTelemetry's context, which follows asyncio tasks, so the RPCs a multi-region
batch sends concurrently are all children of the operation's span; the blocking clients
run their work on a loop thread, and the caller's current span is still the parent
(``asyncio.run_coroutine_threadsafe`` carries the calling thread's context).

Only ``opentelemetry-api`` is needed (the application chooses and configures the SDK and
exporters). Without it, tracing is off, every module imports and works, and
:func:`enable_tracing` raises :class:`TracingNotInstalledError` (an ``ImportError``) saying
``pip install "tikv-pd[tracing]"``.

The transactional layer opens its own spans with :func:`span` (a no-op context manager
while tracing is off)::

    with tracing.span("tikv.txn.prewrite", keys=len(mutations)):
        ...

**Categories.** Every span belongs to one :class:`TraceCategory` (client-go
``trace/trace.go`` ``Category``: ``CategoryTxn2PC``, ``CategoryKVRequest``,
``CategoryRegionCache``…, each checked with ``IsCategoryEnabled`` before an event is
recorded). A span is created only while its category is on: ``enable_tracing(categories=
TraceCategory.OPERATION | TraceCategory.TXN_2PC)`` traces operations and commit phases and
nothing else, and :meth:`Tracing.enable_categories` / :meth:`Tracing.disable_categories`
change the set while tracing runs. All categories are on by default (client-go's default
hook enables none, but client-go also records nothing until TiDB installs a recorder; here
enabling tracing *is* installing the recorder). An operation whose span is off still runs
its children: they attach to whatever span is current.

**TiKV-side tracing.** While tracing is on, every RPC attempt carries the current trace's
id (``kvrpcpb.Context.trace_id``, 16 bytes, the OpenTelemetry trace id) and the
:class:`TraceControlFlags` asking TiKV what to trace (``Context.trace_control_flags``;
client-go ``trace/flags.go``, set from its ``GetTraceControlFlags`` extractor in
``internal/locate/region_request.go``). The default is client-go's:
``TIKV_CATEGORY_REQUEST``. client-go sends the flags on every request; we send them only
while tracing is on, since without a trace id TiKV has nothing to file its events under.
"""

from __future__ import annotations

import contextlib
import enum
from typing import TYPE_CHECKING, Any

from tikv_pd import interceptor as _interceptor
from tikv_pd import observability as _obs

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

    from tikv_pd.interceptor import RPCInterceptor, RPCInvoker, RPCRequest

__all__ = [
    "INSTALL_HINT",
    "INSTRUMENTATION_NAME",
    "TraceCategory",
    "TraceControlFlags",
    "Tracing",
    "TracingNotInstalledError",
    "category_of",
    "disable_tracing",
    "enable_tracing",
    "get_tracing",
    "is_category_enabled",
    "span",
]

#: What to install for tracing.
INSTALL_HINT = 'pip install "tikv-pd[tracing]"'
#: The instrumentation scope name of our tracer.
INSTRUMENTATION_NAME = "tikv"


class TracingNotInstalledError(ImportError):
    """Tracing was asked for but ``opentelemetry-api`` is not installed."""


class TraceCategory(enum.IntFlag):
    """The families of spans, one bit each; combine them with ``|``.

    client-go's ``trace.Category`` names four families (2PC, lock resolution, KV requests,
    region cache); we split out the spans client-go records elsewhere (operations, PD
    timestamp waits, backoff sleeps) so each can be switched on its own.
    """

    #: Client operations: ``tikv.raw.<method>``, ``tikv.txn.<method>``.
    OPERATION = 1 << 0
    #: Two-phase-commit phases: ``tikv.txn.prewrite``, ``get_commit_ts``, ``commit_primary``,
    #: ``commit_secondaries``, ``cleanup`` (client-go ``CategoryTxn2PC``).
    TXN_2PC = 1 << 1
    #: Lock resolution: ``tikv.lock_resolver.*`` (client-go ``CategoryTxnLockResolve``). The
    #: lock resolver opens no span of its own yet; spans given such names are filed here.
    TXN_LOCK_RESOLVE = 1 << 2
    #: One span per RPC attempt, named after its gRPC method (client-go
    #: ``CategoryKVRequest``).
    KV_REQUEST = 1 << 3
    #: Region loads from PD: ``tikv.region_cache.*`` (client-go ``CategoryRegionCache``).
    REGION_CACHE = 1 << 4
    #: Waits on PD: ``tikv.pd.*`` (the timestamp wait).
    PD = 1 << 5
    #: Backoff sleeps: ``tikv.backoff.<kind>``.
    BACKOFF = 1 << 6
    #: Spans outside the families above (an application's own names through :func:`span`).
    OTHER = 1 << 7
    #: Every category.
    ALL = (1 << 8) - 1


class TraceControlFlags(enum.IntFlag):
    """What TiKV should trace for a request (``kvrpcpb.Context.trace_control_flags``).

    The bits are client-go's (``trace/flags.go``) and kvproto's: bit 0 asks TiKV to log
    trace events at once instead of buffering them, bits 1–3 enable TiKV's request, write
    detail and read detail categories. ``flag in flags`` tests a bit (Go ``Has``),
    ``flags | flag`` adds one (Go ``With``).
    """

    #: TiKV logs trace events immediately (client-go ``FlagImmediateLog``).
    IMMEDIATE_LOG = 1 << 0
    #: TiKV traces request processing (client-go ``FlagTiKVCategoryRequest``; client-go's
    #: default).
    TIKV_CATEGORY_REQUEST = 1 << 1
    #: TiKV traces the steps of writes (client-go ``FlagTiKVCategoryWriteDetails``).
    TIKV_CATEGORY_WRITE_DETAILS = 1 << 2
    #: TiKV traces the steps of reads (client-go ``FlagTiKVCategoryReadDetails``).
    TIKV_CATEGORY_READ_DETAILS = 1 << 3


#: Span-name prefixes of each category (checked in order; the first match wins).
_CATEGORY_PREFIXES: tuple[tuple[str, TraceCategory], ...] = (
    ("tikv.backoff.", TraceCategory.BACKOFF),
    ("tikv.region_cache.", TraceCategory.REGION_CACHE),
    ("tikv.pd.", TraceCategory.PD),
    ("tikv.lock_resolver.", TraceCategory.TXN_LOCK_RESOLVE),
    ("tikv.txn.", TraceCategory.TXN_2PC),
    ("tikvpb.Tikv/", TraceCategory.KV_REQUEST),
)


def category_of(name: str) -> TraceCategory:
    """The category of a span named ``name`` by the families' naming (``OTHER`` if none).

    Operation spans (``tikv.raw.*`` and the ``tikv.txn.<method>`` spans of client methods)
    are opened by :meth:`Tracing.operation_span`, which files them under ``OPERATION``;
    a ``tikv.txn.*`` name given to :func:`span` is a commit phase.
    """
    for prefix, category in _CATEGORY_PREFIXES:
        if name.startswith(prefix):
            return category
    return TraceCategory.OTHER


def _check_categories(categories: object) -> TraceCategory:
    if not isinstance(categories, TraceCategory):
        raise TypeError(f"categories must be a TraceCategory, got {type(categories).__name__}")
    return categories


def _check_tikv_flags(flags: object) -> TraceControlFlags:
    if not isinstance(flags, TraceControlFlags):
        raise TypeError(f"tikv_flags must be a TraceControlFlags, got {type(flags).__name__}")
    return flags


def _import_otel() -> Any:
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise TracingNotInstalledError(
            f"tracing needs the opentelemetry-api package: {INSTALL_HINT}"
        ) from exc
    return trace


def _rpc_method(command: str) -> str:
    from tikv_pd.transport import COMMANDS

    spec = COMMANDS.get(command)
    return spec.method.lstrip("/") if spec is not None else f"tikvpb.Tikv/{command}"


class Tracing:
    """Spans of one tracer (create it through :func:`enable_tracing`).

    Args:
        tracer_provider: The OpenTelemetry ``TracerProvider`` (default: the global one,
            as ``opentelemetry.trace.get_tracer`` chooses).
        categories: The span categories to record (default: all).
        tikv_flags: What TiKV should trace for each request (default: client-go's,
            ``TIKV_CATEGORY_REQUEST``); ``TraceControlFlags(0)`` asks for nothing.

    Raises:
        TypeError: ``categories`` / ``tikv_flags`` of the wrong type.
        TracingNotInstalledError: ``opentelemetry-api`` is missing.

    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        *,
        categories: TraceCategory = TraceCategory.ALL,
        tikv_flags: TraceControlFlags = TraceControlFlags.TIKV_CATEGORY_REQUEST,
    ) -> None:
        self._categories = _check_categories(categories)
        self._tikv_flags = _check_tikv_flags(tikv_flags)
        trace = _import_otel()
        self._trace = trace
        self.tracer_provider = tracer_provider
        self.tracer = trace.get_tracer(INSTRUMENTATION_NAME, tracer_provider=tracer_provider)
        self._client_kind = trace.SpanKind.CLIENT
        self._internal_kind = trace.SpanKind.INTERNAL
        self._rpc: RPCInterceptor | None = None
        self._methods: dict[str, str] = {}

    # -- categories ---------------------------------------------------------------

    @property
    def categories(self) -> TraceCategory:
        """The span categories being recorded."""
        return self._categories

    @property
    def tikv_flags(self) -> TraceControlFlags:
        """The flags sent to TiKV in every request's ``trace_control_flags``."""
        return self._tikv_flags

    def enable_categories(self, categories: TraceCategory) -> None:
        """Start recording the spans of ``categories`` (the others keep their state)."""
        self._categories |= _check_categories(categories)

    def disable_categories(self, categories: TraceCategory) -> None:
        """Stop recording the spans of ``categories`` (the others keep their state)."""
        self._categories &= ~_check_categories(categories)

    def set_tikv_flags(self, flags: TraceControlFlags) -> None:
        """Replace the flags sent to TiKV (client-go ``SetTraceControlExtractor``)."""
        self._tikv_flags = _check_tikv_flags(flags)

    def is_category_enabled(self, category: TraceCategory) -> bool:
        """Whether spans of ``category`` (every bit of it) are recorded."""
        category = _check_categories(category)
        return category != 0 and self._categories & category == category

    # -- spans --------------------------------------------------------------------

    def span(
        self, name: str, *, category: TraceCategory | None = None, **attributes: Any
    ) -> contextlib.AbstractContextManager[Span | None]:
        """A child span of the current one, if its category is on; else a no-op.

        ``category`` defaults to :func:`category_of` ``(name)``. Exceptions are recorded
        on the span and set its status.
        """
        cat = category_of(name) if category is None else _check_categories(category)
        if not self._categories & cat:
            return contextlib.nullcontext()
        return self.tracer.start_as_current_span(  # type: ignore[no-any-return]
            name, kind=self._internal_kind, attributes=attributes or None
        )

    def operation_span(
        self, name: str, method: str
    ) -> contextlib.AbstractContextManager[Span | None]:
        """The span of one client operation (``tikv.raw.get``, ...), if ``OPERATION`` is on."""
        if not self._categories & TraceCategory.OPERATION:
            return contextlib.nullcontext()
        return self.tracer.start_as_current_span(  # type: ignore[no-any-return]
            name,
            kind=self._internal_kind,
            attributes={"db.system.name": "tikv", "db.operation.name": method},
        )

    def backoff_span(
        self, kind: str, sleep_ms: int
    ) -> contextlib.AbstractContextManager[Span | None]:
        """The span of one backoff sleep, if ``BACKOFF`` is on."""
        if not self._categories & TraceCategory.BACKOFF:
            return contextlib.nullcontext()
        return self.tracer.start_as_current_span(  # type: ignore[no-any-return]
            f"tikv.backoff.{kind}",
            kind=self._internal_kind,
            attributes={"tikv.backoff.kind": kind, "tikv.backoff.sleep_ms": sleep_ms},
        )

    def rpc_interceptor(self) -> RPCInterceptor:
        """The interceptor that opens a span per RPC attempt (outermost of the chain)."""
        if self._rpc is None:
            self._rpc = _interceptor.rpc_interceptor("tracing", self._wrap_rpc)
        return self._rpc

    def _wrap_rpc(self, next: RPCInvoker) -> RPCInvoker:
        tracer = self.tracer
        kind = self._client_kind
        methods = self._methods
        get_current_span = self._trace.get_current_span

        async def invoke(rpc: RPCRequest) -> Any:
            # Tell TiKV which trace the request belongs to and what to trace (client-go
            # region_request.go sets Context.trace_id and trace_control_flags per attempt).
            ctx = rpc.context
            ctx.trace_control_flags = int(self._tikv_flags)
            span_context = get_current_span().get_span_context()
            if span_context.is_valid:
                ctx.trace_id = span_context.trace_id.to_bytes(16, "big")
            if not self._categories & TraceCategory.KV_REQUEST:
                return await next(rpc)
            method = methods.get(rpc.command)
            if method is None:
                method = methods[rpc.command] = _rpc_method(rpc.command)
            service, _, short = method.partition("/")
            attributes = {
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": short,
                "server.address": rpc.target,
                "tikv.command": rpc.command,
                "tikv.store_id": rpc.store_id,
                "tikv.region_id": rpc.region_id,
                "tikv.attempt": rpc.attempt,
            }
            with tracer.start_as_current_span(method, kind=kind, attributes=attributes) as s:
                response = await next(rpc)
                try:
                    has_region_error = response.HasField("region_error")
                except (ValueError, AttributeError):
                    has_region_error = False
                if has_region_error:
                    label = _obs.region_error_label(response.region_error)
                    s.set_attribute("tikv.region_error", label)
                return response

        return invoke


def enable_tracing(
    tracer_provider: TracerProvider | None = None,
    *,
    categories: TraceCategory = TraceCategory.ALL,
    tikv_flags: TraceControlFlags = TraceControlFlags.TIKV_CATEGORY_REQUEST,
) -> Tracing:
    """Start emitting spans (process-wide) through ``tracer_provider`` (default: global).

    Args:
        tracer_provider: The OpenTelemetry ``TracerProvider``.
        categories: The span categories to record (default: all; see
            :class:`TraceCategory`).
        tikv_flags: What TiKV should trace for each request (default: client-go's).

    Raises:
        TypeError: ``categories`` / ``tikv_flags`` of the wrong type.
        TracingNotInstalledError: ``opentelemetry-api`` is missing (the message says
            ``pip install "tikv-pd[tracing]"``).

    """
    created = Tracing(tracer_provider, categories=categories, tikv_flags=tikv_flags)
    with _obs.switch_lock:
        _obs.tracing = created
        _interceptor.refresh_process_chain()
        _obs.refresh_operations()
    return created


def disable_tracing() -> None:
    """Stop emitting spans. Idempotent."""
    with _obs.switch_lock:
        _obs.tracing = None
        _interceptor.refresh_process_chain()
        _obs.refresh_operations()


def get_tracing() -> Tracing | None:
    """The enabled :class:`Tracing`, or ``None``."""
    return _obs.tracing


def is_category_enabled(category: TraceCategory) -> bool:
    """Whether spans of ``category`` are being recorded (``False`` while tracing is off).

    client-go ``trace.IsCategoryEnabled``: check it before computing costly attributes.
    """
    t = _obs.tracing
    if t is None:
        _check_categories(category)
        return False
    return t.is_category_enabled(category)


def span(
    name: str, *, category: TraceCategory | None = None, **attributes: Any
) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one while tracing and its category are on; else a no-op.

    ``category`` defaults to :func:`category_of` ``(name)``.

    Example:
        >>> with span("tikv.txn.prewrite", keys=3):
        ...     pass

    """
    t = _obs.tracing
    if t is None:
        return contextlib.nullcontext()
    return t.span(name, category=category, **attributes)
