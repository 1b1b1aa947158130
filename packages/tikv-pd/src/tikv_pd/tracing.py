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
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tikv_pd import interceptor as _interceptor
from tikv_pd import observability as _obs

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

    from tikv_pd.interceptor import RPCInterceptor, RPCInvoker, RPCRequest

__all__ = [
    "INSTALL_HINT",
    "INSTRUMENTATION_NAME",
    "Tracing",
    "TracingNotInstalledError",
    "disable_tracing",
    "enable_tracing",
    "get_tracing",
    "span",
]

#: What to install for tracing.
INSTALL_HINT = 'pip install "tikv-pd[tracing]"'
#: The instrumentation scope name of our tracer.
INSTRUMENTATION_NAME = "tikv"


class TracingNotInstalledError(ImportError):
    """Tracing was asked for but ``opentelemetry-api`` is not installed."""


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

    """

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        trace = _import_otel()
        self._trace = trace
        self.tracer_provider = tracer_provider
        self.tracer = trace.get_tracer(INSTRUMENTATION_NAME, tracer_provider=tracer_provider)
        self._client_kind = trace.SpanKind.CLIENT
        self._internal_kind = trace.SpanKind.INTERNAL
        self._rpc: RPCInterceptor | None = None
        self._methods: dict[str, str] = {}

    @contextlib.contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[Span]:
        """A child span of the current one; exceptions are recorded and set its status."""
        with self.tracer.start_as_current_span(
            name, kind=self._internal_kind, attributes=attributes or None
        ) as current:
            yield current

    @contextlib.contextmanager
    def operation_span(self, name: str, method: str) -> Iterator[Span]:
        """The span of one client operation (``tikv.raw.get``, ...)."""
        with self.tracer.start_as_current_span(
            name,
            kind=self._internal_kind,
            attributes={"db.system.name": "tikv", "db.operation.name": method},
        ) as current:
            yield current

    @contextlib.contextmanager
    def backoff_span(self, kind: str, sleep_ms: int) -> Iterator[Span]:
        """The span of one backoff sleep."""
        with self.tracer.start_as_current_span(
            f"tikv.backoff.{kind}",
            kind=self._internal_kind,
            attributes={"tikv.backoff.kind": kind, "tikv.backoff.sleep_ms": sleep_ms},
        ) as current:
            yield current

    def rpc_interceptor(self) -> RPCInterceptor:
        """The interceptor that opens a span per RPC attempt (outermost of the chain)."""
        if self._rpc is None:
            self._rpc = _interceptor.rpc_interceptor("tracing", self._wrap_rpc)
        return self._rpc

    def _wrap_rpc(self, next: RPCInvoker) -> RPCInvoker:
        tracer = self.tracer
        kind = self._client_kind
        methods = self._methods

        async def invoke(rpc: RPCRequest) -> Any:
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


def enable_tracing(tracer_provider: TracerProvider | None = None) -> Tracing:
    """Start emitting spans (process-wide) through ``tracer_provider`` (default: global).

    Raises:
        TracingNotInstalledError: ``opentelemetry-api`` is missing (the message says
            ``pip install "tikv-pd[tracing]"``).

    """
    created = Tracing(tracer_provider)
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


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one while tracing is on; otherwise a no-op.

    Example:
        >>> with span("tikv.txn.prewrite", keys=3):
        ...     pass

    """
    t = _obs.tracing
    if t is None:
        return contextlib.nullcontext()
    return t.span(name, **attributes)
