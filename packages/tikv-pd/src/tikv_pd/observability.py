"""The switchboard of the optional observability extras (metrics, tracing).

Hot paths read two module attributes, :data:`metrics` and :data:`tracing`; both are
``None`` unless :func:`tikv_pd.metrics.enable_metrics` / :func:`tikv_pd.tracing.enable_tracing`
ran, so without the extras a request pays one ``is None`` check per hook point and
nothing else. This module imports no optional dependency.

Client operations (``RawClient.get``, ``Transaction.commit``, ...) are instrumented by
*installing* wrappers on the registered classes while metrics or tracing is on, and
restoring the original methods when both are off (the usual OpenTelemetry
instrumentation technique): an operation costs nothing extra while observability is off.
Client packages register their operations with :func:`register_operations`.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tikv_pd.metrics import ClientMetrics
    from tikv_pd.tracing import Tracing

__all__ = [
    "OperationLabel",
    "is_enabled",
    "metrics",
    "observed_backoff",
    "region_error_label",
    "register_operations",
    "register_wrappers",
    "tracing",
]

#: The enabled metrics (``tikv_pd.metrics.ClientMetrics``), or ``None``. Read-only.
metrics: ClientMetrics | None = None
#: The enabled tracing (``tikv_pd.tracing.Tracing``), or ``None``. Read-only.
tracing: Tracing | None = None

#: A metric label for an operation: a fixed string, or computed from the call's
#: arguments (``(args, kwargs) -> label``; e.g. forward vs reverse scans).
OperationLabel = str | Callable[[tuple[Any, ...], dict[str, Any]], str]


#: Wraps a method while observability is on: ``factory(original) -> replacement``.
WrapperFactory = Callable[[Callable[..., Any]], Callable[..., Any]]


class _Registration:
    __slots__ = ("cls", "installed", "originals", "wrappers")

    def __init__(self, cls: type, wrappers: Mapping[str, WrapperFactory]) -> None:
        self.cls = cls
        self.wrappers = dict(wrappers)
        self.originals: dict[str, Any] = {}
        self.installed = False


_registrations: list[_Registration] = []
#: Serialises enabling / disabling (metrics, tracing, resource control) and the refresh of
#: the hooks that depends on them. Hot paths never take it.
switch_lock = threading.RLock()


def is_enabled() -> bool:
    """Whether metrics or tracing is on."""
    return metrics is not None or tracing is not None


def register_operations(
    cls: type,
    family: str,
    operations: Mapping[str, OperationLabel | None],
    *,
    span_prefix: str | None = None,
) -> None:
    """Register the coroutine methods of ``cls`` that are client operations.

    While metrics or tracing is enabled each one runs inside a span named
    ``<span_prefix>.<method>`` and its duration is observed in the family's command
    histogram (``family="rawkv"``: ``tikv_client_go_rawkv_cmd_seconds{type=<label>}``,
    ``family="txn"``: ``tikv_client_go_txn_cmd_duration_seconds{type=<label>}``).

    Args:
        cls: The client class.
        family: ``"rawkv"`` or ``"txn"``.
        operations: Method name → metric label (client-go's label where it has one), or
            ``None`` for a span without a metric (e.g. a snapshot read inside a
            transaction read that is already measured).
        span_prefix: Span names' prefix (default ``tikv.raw`` / ``tikv.txn``).

    """
    if family not in ("rawkv", "txn"):
        raise ValueError(f"family must be 'rawkv' or 'txn', got {family!r}")
    for name in operations:
        fn = cls.__dict__.get(name)
        if fn is None or not inspect.iscoroutinefunction(fn):
            raise TypeError(f"{cls.__name__}.{name} is not a coroutine method of the class")
    prefix = span_prefix or ("tikv.raw" if family == "rawkv" else "tikv.txn")
    register_wrappers(
        cls,
        {
            name: functools.partial(
                _wrap_operation,
                family=family,
                method=name,
                span_name=f"{prefix}.{name}",
                label=label,
            )
            for name, label in operations.items()
        },
    )


def register_wrappers(cls: type, wrappers: Mapping[str, WrapperFactory]) -> None:
    """Install ``wrappers[name](original)`` as ``cls.<name>`` while observability is on.

    The general form of :func:`register_operations`, for packages that observe their own
    steps (e.g. the transactional committer's phases). The plain methods are restored
    when metrics and tracing are both off.
    """
    for name in wrappers:
        if name not in cls.__dict__:
            raise TypeError(f"{cls.__name__} has no method {name!r} of its own")
    reg = _Registration(cls, wrappers)
    with switch_lock:
        _registrations.append(reg)
        if is_enabled():
            _install(reg)


def refresh_operations() -> None:
    """Install or remove the operation wrappers after metrics / tracing changed.

    Called (with :data:`switch_lock` held) by the enabling functions.
    """
    on = is_enabled()
    for reg in _registrations:
        if on and not reg.installed:
            _install(reg)
        elif not on and reg.installed:
            _uninstall(reg)


def _install(reg: _Registration) -> None:
    for name, factory in reg.wrappers.items():
        original = reg.cls.__dict__[name]
        reg.originals[name] = original
        wrapped = factory(original)
        wrapped.__tikv_instrumented__ = True  # type: ignore[attr-defined]
        setattr(reg.cls, name, wrapped)
    reg.installed = True


def _uninstall(reg: _Registration) -> None:
    for name, original in reg.originals.items():
        setattr(reg.cls, name, original)
    reg.originals.clear()
    reg.installed = False


def _wrap_operation(
    fn: Callable[..., Awaitable[Any]],
    *,
    family: str,
    method: str,
    span_name: str,
    label: OperationLabel | None,
) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def operation(*args: Any, **kwargs: Any) -> Any:
        t = tracing
        m = metrics
        start = time.perf_counter()
        try:
            if t is None:
                return await fn(*args, **kwargs)
            with t.operation_span(span_name, method):
                return await fn(*args, **kwargs)
        finally:
            if m is not None and label is not None:
                text = label if isinstance(label, str) else label(args, kwargs)
                m.observe_operation(family, text, time.perf_counter() - start)

    return operation


async def observed_backoff(
    kind: str, sleep_ms: int, sleep: Callable[[float], Awaitable[object]]
) -> None:
    """Sleep a backoff of ``kind`` while metrics / tracing is on (used by the Backoffer).

    Observes ``tikv_client_go_backoff_seconds`` and opens a ``tikv.backoff.<kind>`` span
    (client-go ``config/retry/backoff.go`` names its span so) around the sleep.
    """
    m = metrics
    if m is not None:
        m.observe_backoff(kind, sleep_ms)
    t = tracing
    if t is None:
        await sleep(sleep_ms / 1000.0)
        return
    with t.backoff_span(kind, sleep_ms):
        await sleep(sleep_ms / 1000.0)


def region_error_label(error: Any) -> str:
    """The kind of an ``errorpb.Error``: the name of its set field (``"not_leader"``, ...).

    client-go's ``regionErrorToLabel`` uses the same names for ``region_err_total``.
    """
    for desc, _ in error.ListFields():
        if desc.message_type is not None:
            return str(desc.name)
    return "unknown"
