"""Prometheus metrics (the optional ``tikv-pd[metrics]`` extra).

Nothing is collected until :func:`enable_metrics` is called; without the
``prometheus-client`` package every module imports and works, and :func:`enable_metrics`
raises :class:`MetricsNotInstalledError` (an ``ImportError``) saying what to install.

Names follow client-go (``metrics/metrics.go``: namespace ``tikv``, subsystem
``client_go``) wherever client-go has the same metric, with its labels and buckets, so
dashboards built for TiDB's client read ours. The TSO batch size uses the PD client's name
(``pd_client_request_handle_tso_batch_size``, which client-go processes export too).
Metrics client-go does not have are named ``tikv_client_python_*``.

Collected (name — labels — what moves it):

* ``tikv_client_go_request_seconds`` — type, store, stale_read, scope — every RPC attempt
  (latency at the transport, as client-go measures it);
* ``tikv_client_go_region_err_total`` — type, store — each region error received;
* ``tikv_client_go_rpc_err_total`` — type, store — each failed send (gRPC code, timeout);
* ``tikv_client_go_request_retry_times`` — request parts that needed resends;
* ``tikv_client_go_batch_requests`` — target — requests per BatchCommands message;
* ``tikv_client_go_stale_read_counter_total`` — result (hit / miss) — stale-read request
  parts, a hit when the first replica asked answered; ``..._stale_read_req_counter_total``
  — type (local / cross-zone) — stale-read attempts; ``..._stale_read_bytes_total`` —
  result (local / cross-zone), direction (out / in) — their request and response bytes
  (client-go ``internal/locate/metrics_collector.go``);
* ``tikv_client_go_read_request_bytes`` (a summary) — type (leader / follower), result
  (local / cross-zone) — request plus response bytes of each read attempt (get, batch
  get, scan, coprocessor) whose zone is known on both sides;
* ``tikv_client_go_backoff_seconds`` — type — each backoff sleep (count = backoffs);
* ``tikv_client_go_region_cache_operations_total`` — type, result — lookups that went to
  PD (``get_region_when_miss``); ``tikv_client_go_load_region_cache_seconds`` — their time;
* ``tikv_client_python_region_cache_lookups_total`` — result — every region lookup, hit
  or miss (client-go counts only the misses);
* ``tikv_client_go_rawkv_cmd_seconds`` — type — every raw client operation;
* ``tikv_client_go_txn_cmd_duration_seconds`` — type, scope — transaction operations;
* ``tikv_client_go_ts_future_wait_seconds`` — each wait for a timestamp;
* ``pd_client_request_handle_tso_batch_size`` — timestamps per TSO request sent to PD;
* ``tikv_client_go_lock_resolver_actions_total`` — type — lock resolver steps;
* ``tikv_client_go_commit_txn_counter_total``, ``..._async_commit_txn_counter_total``,
  ``..._one_pc_txn_counter_total`` — type (ok / err / fallback) — commits by protocol;
* ``tikv_client_go_txn_write_kv_num``, ``tikv_client_go_txn_write_size_bytes`` — scope;
  ``tikv_client_go_txn_regions_num`` — type, scope;
  ``tikv_client_go_txn_commit_backoff_seconds`` / ``_count`` — committed transactions;
* ``tikv_client_python_txn_commit_phase_seconds`` — phase — each commit phase;
* ``tikv_client_go_txn_lag_commit_ts_wait_seconds``,
  ``tikv_client_go_txn_lag_commit_ts_attempt_count`` — result (ok / err) — commits whose
  first commit ts was not above their commit-wait-until ts: the wait and the timestamps
  fetched.

prometheus-client always exposes counters with a ``_total`` suffix, so client-go's
``commit_txn_counter`` family reads ``commit_txn_counter_total`` here.

The transactional layer reports through :class:`ClientMetrics`' ``observe_*`` / ``count_*``
methods, reached as ``tikv_pd.observability.metrics`` (``None`` when off)::

    from tikv_pd import observability
    m = observability.metrics
    if m is not None:
        m.observe_commit_phase("prewrite", seconds)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tikv_pd import interceptor as _interceptor
from tikv_pd import observability as _obs

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from tikv_pd.interceptor import RPCInterceptor, RPCInvoker, RPCRequest

__all__ = [
    "BACKOFF_LABELS",
    "COMMIT_PHASES",
    "INSTALL_HINT",
    "LOCK_RESOLVER_ACTIONS",
    "ClientMetrics",
    "MetricsNotInstalledError",
    "disable_metrics",
    "enable_metrics",
    "exponential_buckets",
    "get_metrics",
]

#: What to install for metrics.
INSTALL_HINT = 'pip install "tikv-pd[metrics]"'

#: client-go's ``backoff_seconds`` label per backoff kind (``metrics/shortcuts.go`` and
#: ``config/retry/config.go``). client-go reports txnNotFound, maxTsNotSynced,
#: commitTSLag and regionNotInitialized under an empty label; we report their names.
BACKOFF_LABELS: dict[str, str] = {
    "tikvRPC": "tikvRPC",
    "tiflashRPC": "tikvRPC",
    "txnLock": "txnLock",
    "txnLockFast": "tikvLockFast",
    "pdRPC": "pdRPC",
    "regionMiss": "regionMiss",
    "regionScheduling": "regionScheduling",
    "tikvServerBusy": "serverBusy",
    "tiflashServerBusy": "serverBusy",
    "tikvDiskFull": "tikvDiskFull",
    "regionRecoveryInProgress": "regionRecoveryInProgress",
    "staleCommand": "staleCommand",
    "dataNotReady": "dataNotReady",
    "isWitness": "isWitness",
}

#: client-go's lock resolver action labels (``metrics/shortcuts.go``).
LOCK_RESOLVER_ACTIONS = frozenset(
    {
        "batch_resolve",
        "expired",
        "not_expired",
        "wait_expired",
        "resolve",
        "resolve_for_write",
        "resolve_async_commit",
        "query_txn_status",
        "query_txn_status_committed",
        "query_txn_status_rolled_back",
        "query_check_secondary_locks",
        "query_resolve_locks",
        "query_resolve_lock_lite",
        "async_resolve_async_commit_fallback",
        "read_async_resolve_fallback",
        "async_check_secondaries_fallback",
        "async_resolve_async_commit_region_fallback",
    }
)

#: The commit phases :meth:`ClientMetrics.observe_commit_phase` accepts (client-go's
#: ``util.CommitDetails`` steps).
COMMIT_PHASES = frozenset(
    {
        "get_start_ts",
        "prewrite",
        "get_commit_ts",
        "commit_primary",
        "commit_secondaries",
        "one_pc",
        "async_commit",
        "pessimistic_lock",
        "resolve_lock",
        "local_latch_wait",
        "cleanup",
    }
)


class MetricsNotInstalledError(ImportError):
    """Metrics were asked for but ``prometheus-client`` is not installed."""


def exponential_buckets(start: float, factor: float, count: int) -> list[float]:
    """Prometheus ``ExponentialBuckets``: ``count`` bounds from ``start``, each × ``factor``."""
    if start <= 0 or factor <= 1 or count < 1:
        raise ValueError("exponential_buckets needs start > 0, factor > 1, count >= 1")
    return [start * factor**i for i in range(count)]


# Buckets as client-go declares them (metrics/metrics.go).
_REQUEST_BUCKETS = exponential_buckets(0.0005, 2, 24)  # 0.5 ms .. 1.2 h
_CMD_BUCKETS = exponential_buckets(0.0005, 2, 29)  # 0.5 ms .. 1.5 days
_LOAD_REGION_BUCKETS = exponential_buckets(0.0001, 2, 20)  # 0.1 ms .. 52 s
_TS_WAIT_BUCKETS = exponential_buckets(0.000005, 2, 30)  # 5 µs .. 2560 s
_RETRY_BUCKETS = [1.0, 2, 3, 4, 8, 16, 32, 64, 128, 256]
_KV_NUM_BUCKETS = exponential_buckets(1, 4, 17)
_WRITE_SIZE_BUCKETS = exponential_buckets(16, 4, 17)
_REGIONS_NUM_BUCKETS = exponential_buckets(1, 2, 25)
_COMMIT_BACKOFF_BUCKETS = exponential_buckets(0.001, 2, 22)
_COMMIT_BACKOFF_COUNT_BUCKETS = exponential_buckets(1, 2, 12)
# The PD client's TSO batch size buckets (tikv/pd client/metrics/metrics.go).
_TSO_BATCH_BUCKETS = [
    1.0, 2, 4, 8, 10, 14, 18, 22, 26, 30, 35, 40, 45, 50, 60, 70, 80, 90, 100,
    110, 120, 140, 160, 180, 200, 500, 1000,
]  # fmt: skip


def _import_prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise MetricsNotInstalledError(
            f"metrics need the prometheus-client package: {INSTALL_HINT}"
        ) from exc
    return prometheus_client


class ClientMetrics:
    """The client's Prometheus collectors, registered in one registry.

    Create it through :func:`enable_metrics`. Every ``observe_*`` / ``count_*`` method is
    safe to call from any thread.

    Args:
        registry: The ``prometheus_client.CollectorRegistry`` to register in.

    """

    def __init__(self, registry: CollectorRegistry) -> None:
        prom = _import_prometheus()
        self.registry = registry
        self._collectors: list[Any] = []

        def hist(name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]) -> Any:
            h = prom.Histogram(name, doc, list(labels), registry=registry, buckets=list(buckets))
            self._collectors.append(h)
            return h

        def counter(name: str, doc: str, labels: Sequence[str]) -> Any:
            c = prom.Counter(name, doc, list(labels), registry=registry)
            self._collectors.append(c)
            return c

        go = "tikv_client_go_"
        py = "tikv_client_python_"
        self.request_seconds = hist(
            go + "request_seconds",
            "Bucketed histogram of sending request duration.",
            ("type", "store", "stale_read", "scope"),
            _REQUEST_BUCKETS,
        )
        self.region_err = counter(go + "region_err", "Counter of region errors.", ("type", "store"))
        self.rpc_err = counter(go + "rpc_err", "Counter of rpc errors.", ("type", "store"))
        self.request_retry_times = hist(
            go + "request_retry_times",
            "Bucketed histogram of how many times a region request retries.",
            (),
            _RETRY_BUCKETS,
        )
        self.backoff_seconds = hist(
            go + "backoff_seconds",
            "Backoff sleep seconds, per backoff kind.",
            ("type",),
            _CMD_BUCKETS,
        )
        self.region_cache_operations = counter(
            go + "region_cache_operations", "Counter of region cache.", ("type", "result")
        )
        self.load_region_cache_seconds = hist(
            go + "load_region_cache_seconds",
            "Load region information duration",
            ("type",),
            _LOAD_REGION_BUCKETS,
        )
        self.region_cache_lookups = counter(
            py + "region_cache_lookups",
            "Region lookups by the request pipeline, answered from the cache (hit) or PD (miss).",
            ("result",),
        )
        self.rawkv_cmd_seconds = hist(
            go + "rawkv_cmd_seconds",
            "Bucketed histogram of processing time of rawkv cmds.",
            ("type",),
            _CMD_BUCKETS,
        )
        self.txn_cmd_duration_seconds = hist(
            go + "txn_cmd_duration_seconds",
            "Bucketed histogram of processing time of txn cmds.",
            ("type", "scope"),
            _CMD_BUCKETS,
        )
        self.ts_future_wait_seconds = hist(
            go + "ts_future_wait_seconds",
            "Bucketed histogram of seconds cost for waiting timestamp future.",
            (),
            _TS_WAIT_BUCKETS,
        )
        self.batch_requests = hist(
            go + "batch_requests",
            "number of requests in one batch",
            ("target",),
            exponential_buckets(1, 2, 11),
        )
        # Stale reads (client-go metrics/metrics.go TiKVStaleRead*, with the label values
        # of metrics/shortcuts.go). "cross-zone" when the client's zone label and the
        # target store's "zone" label are both known and differ, else "local".
        self.stale_read_counter = counter(
            go + "stale_read_counter", "Counter of stale read hit/miss", ("result",)
        )
        self.stale_read_req_counter = counter(
            go + "stale_read_req_counter", "Counter of stale read requests", ("type",)
        )
        self.stale_read_bytes = counter(
            go + "stale_read_bytes",
            "Counter of stale read requests bytes",
            ("result", "direction"),
        )
        self.read_request_bytes = prom.Summary(
            go + "read_request_bytes",
            "Summary of read requests bytes",
            ["type", "result"],
            registry=registry,
        )
        self._collectors.append(self.read_request_bytes)
        self.tso_batch_size = hist(
            "pd_client_request_handle_tso_batch_size",
            "Bucketed histogram of the batch size of handled requests.",
            (),
            _TSO_BATCH_BUCKETS,
        )
        self.lock_resolver_actions = counter(
            go + "lock_resolver_actions", "Counter of lock resolver actions.", ("type",)
        )
        self.commit_txn = counter(
            go + "commit_txn_counter", "Counter of 2PC transactions.", ("type",)
        )
        self.async_commit_txn = counter(
            go + "async_commit_txn_counter", "Counter of async commit transactions.", ("type",)
        )
        self.one_pc_txn = counter(
            go + "one_pc_txn_counter", "Counter of 1PC transactions.", ("type",)
        )
        self.txn_write_kv_num = hist(
            go + "txn_write_kv_num",
            "Count of kv pairs to write in a transaction.",
            ("scope",),
            _KV_NUM_BUCKETS,
        )
        self.txn_write_size_bytes = hist(
            go + "txn_write_size_bytes",
            "Size of kv pairs to write in a transaction.",
            ("scope",),
            _WRITE_SIZE_BUCKETS,
        )
        self.txn_regions_num = hist(
            go + "txn_regions_num",
            "Number of regions in a transaction.",
            ("type", "scope"),
            _REGIONS_NUM_BUCKETS,
        )
        self.txn_commit_backoff_seconds = hist(
            go + "txn_commit_backoff_seconds",
            "Bucketed histogram of the total backoff duration in committing a transaction.",
            (),
            _COMMIT_BACKOFF_BUCKETS,
        )
        self.txn_commit_backoff_count = hist(
            go + "txn_commit_backoff_count",
            "Bucketed histogram of the backoff count in committing a transaction.",
            (),
            _COMMIT_BACKOFF_COUNT_BUCKETS,
        )
        self.txn_commit_phase_seconds = hist(
            py + "txn_commit_phase_seconds",
            "Duration of each phase of committing a transaction.",
            ("phase",),
            _CMD_BUCKETS,
        )
        self.txn_lag_commit_ts_wait_seconds = hist(
            go + "txn_lag_commit_ts_wait_seconds",
            "Bucketed histogram of seconds waiting commit TSO lag.",
            ("result",),
            exponential_buckets(0.0005, 2, 16),  # client-go metrics.go: 0.5 ms .. 16 s
        )
        self.txn_lag_commit_ts_attempt_count = hist(
            go + "txn_lag_commit_ts_attempt_count",
            "Bucketed histogram of attempts to get the lagging TSO in one commit",
            ("result",),
            exponential_buckets(1, 2, 6),  # client-go metrics.go: 1 .. 32
        )
        self._rpc_interceptor: RPCInterceptor | None = None

    def unregister(self) -> None:
        """Remove every collector from the registry."""
        for c in self._collectors:
            self.registry.unregister(c)
        self._collectors.clear()

    # -- RPCs ------------------------------------------------------------------------

    def rpc_interceptor(self) -> RPCInterceptor:
        """The interceptor that observes each RPC attempt (installed next to the transport)."""
        if self._rpc_interceptor is None:
            self._rpc_interceptor = _interceptor.rpc_interceptor("metrics", self._wrap_rpc)
        return self._rpc_interceptor

    def _wrap_rpc(self, next: RPCInvoker) -> RPCInvoker:
        request_seconds = self.request_seconds
        rpc_err = self.rpc_err
        region_err = self.region_err

        async def invoke(rpc: RPCRequest) -> Any:
            start = time.perf_counter()
            store = str(rpc.store_id)
            try:
                response = await next(rpc)
            except BaseException as exc:
                rpc_err.labels(_rpc_error_label(exc), store).inc()
                raise
            ctx = rpc.context
            request_seconds.labels(
                rpc.command,
                store,
                "true" if ctx.stale_read else "false",
                "true" if ctx.request_source.startswith("internal") else "false",
            ).observe(time.perf_counter() - start)
            try:
                has_region_error = response.HasField("region_error")
            except (ValueError, AttributeError):
                has_region_error = False
            if has_region_error:
                region_err.labels(_obs.region_error_label(response.region_error), store).inc()
            return response

        return invoke

    def observe_batch(self, target: str, requests: int) -> None:
        """One BatchCommands message to ``target`` carried ``requests`` requests."""
        self.batch_requests.labels(target).observe(requests)

    def observe_retry_times(self, retries: int) -> None:
        """A request part needed ``retries`` resends (client-go observes only > 0)."""
        if retries > 0:
            self.request_retry_times.observe(retries)

    def observe_stale_read_attempt(
        self, out_bytes: int, in_bytes: int | None, *, cross_zone: bool
    ) -> None:
        """One attempt of a stale read: its request (and response) size in bytes.

        As client-go's network collector: an empty request is not counted; ``in_bytes``
        is ``None`` when no response arrived (a failed send).
        """
        zone = "cross-zone" if cross_zone else "local"
        if out_bytes > 0:
            self.stale_read_bytes.labels(zone, "out").inc(out_bytes)
            self.stale_read_req_counter.labels(zone).inc()
        if in_bytes:
            self.stale_read_bytes.labels(zone, "in").inc(in_bytes)

    def observe_read_bytes(self, size: int, *, replica_read: bool, cross_zone: bool) -> None:
        """A read attempt moved ``size`` bytes (request + response) to a known zone."""
        self.read_request_bytes.labels(
            "follower" if replica_read else "leader", "cross-zone" if cross_zone else "local"
        ).observe(size)

    def count_stale_read(self, hit: bool) -> None:
        """A stale-read request part was answered by the first replica asked (hit) or not."""
        self.stale_read_counter.labels("hit" if hit else "miss").inc()

    # -- backoff, region cache, TSO ----------------------------------------------------

    def observe_backoff(self, kind: str, sleep_ms: int) -> None:
        """One backoff sleep of ``kind`` (a :class:`tikv_pd.backoff.BackoffKind` name)."""
        self.backoff_seconds.labels(BACKOFF_LABELS.get(kind, kind)).observe(sleep_ms / 1000.0)

    def region_cache_hit(self) -> None:
        """A region lookup answered from the cache."""
        self.region_cache_lookups.labels("hit").inc()

    def region_cache_miss(self, ok: bool, seconds: float) -> None:
        """A region lookup that went to PD (client-go ``get_region_when_miss``)."""
        self.region_cache_lookups.labels("miss").inc()
        self.region_cache_operations.labels("get_region_when_miss", "ok" if ok else "err").inc()
        if ok:
            self.load_region_cache_seconds.labels("get_region_when_miss").observe(seconds)

    def region_cache_operation(self, operation: str, ok: bool = True) -> None:
        """Count another region cache operation.

        client-go's types: ``invalidate_region_from_cache``, ``send_fail``,
        ``get_region_by_id``, ``scan_regions``, ``get_store``, ...
        """
        self.region_cache_operations.labels(operation, "ok" if ok else "err").inc()

    def observe_tso_batch(self, size: int) -> None:
        """One TSO request carrying ``size`` timestamps was sent to PD."""
        self.tso_batch_size.observe(size)

    def observe_tso_wait(self, seconds: float) -> None:
        """A caller waited ``seconds`` for its timestamp."""
        self.ts_future_wait_seconds.observe(seconds)

    # -- operations ------------------------------------------------------------------

    def observe_operation(self, family: str, label: str, seconds: float) -> None:
        """A client operation finished (see :func:`tikv_pd.observability.register_operations`).

        Observed whether it succeeded or not, as client-go's deferred observations do.
        """
        if family == "rawkv":
            self.rawkv_cmd_seconds.labels(label).observe(seconds)
        else:
            self.txn_cmd_duration_seconds.labels(label, "general").observe(seconds)

    # -- the transactional API -------------------------------------------------------

    def observe_txn_command(self, command: str, seconds: float, *, internal: bool = False) -> None:
        """A transaction command took ``seconds``.

        client-go's commands: ``"commit"``, ``"rollback"``, ``"get"``, ``"batch_get"``,
        ``"lock_keys"``.
        """
        scope = "internal" if internal else "general"
        self.txn_cmd_duration_seconds.labels(command, scope).observe(seconds)

    def observe_commit_phase(self, phase: str, seconds: float) -> None:
        """A phase of a commit (one of :data:`COMMIT_PHASES`) took ``seconds``."""
        if phase not in COMMIT_PHASES:
            raise ValueError(
                f"unknown commit phase {phase!r}; expected one of {sorted(COMMIT_PHASES)}"
            )
        self.txn_commit_phase_seconds.labels(phase).observe(seconds)

    def count_commit(self, protocol: str, result: str) -> None:
        """Count a finished commit.

        ``protocol`` is ``"2pc"``, ``"async_commit"`` or ``"1pc"``; ``result`` is ``"ok"`` or
        ``"err"`` (and ``"fallback"`` for a 1PC attempt that fell back to 2PC).
        """
        counters = {
            "2pc": self.commit_txn,
            "async_commit": self.async_commit_txn,
            "1pc": self.one_pc_txn,
        }
        counter = counters.get(protocol)
        if counter is None:
            raise ValueError(f"protocol must be one of {sorted(counters)}, got {protocol!r}")
        allowed = ("ok", "err", "fallback") if protocol == "1pc" else ("ok", "err")
        if result not in allowed:
            raise ValueError(f"result must be one of {allowed}, got {result!r}")
        counter.labels(result).inc()

    def observe_commit_ts_lag(self, ok: bool, seconds: float, attempts: int) -> None:
        """A commit's first ts lagged its commit-wait-until ts; it waited ``seconds``.

        ``attempts`` counts the timestamps fetched, the first included; ``ok`` is whether
        one finally passed (client-go ``GetTimestampForCommit``'s deferred observation).
        """
        result = "ok" if ok else "err"
        self.txn_lag_commit_ts_wait_seconds.labels(result).observe(seconds)
        self.txn_lag_commit_ts_attempt_count.labels(result).observe(attempts)

    def count_lock_resolve(self, action: str, amount: int = 1) -> None:
        """Lock resolver steps of ``action`` (one of :data:`LOCK_RESOLVER_ACTIONS`)."""
        if action not in LOCK_RESOLVER_ACTIONS:
            raise ValueError(f"unknown lock resolver action {action!r}")
        self.lock_resolver_actions.labels(action).inc(amount)

    def observe_txn_write(self, kv_count: int, size_bytes: int, *, internal: bool = False) -> None:
        """A committed transaction wrote ``kv_count`` pairs of ``size_bytes`` bytes."""
        scope = "internal" if internal else "general"
        self.txn_write_kv_num.labels(scope).observe(kv_count)
        self.txn_write_size_bytes.labels(scope).observe(size_bytes)

    def observe_txn_regions(self, action: str, regions: int, *, internal: bool = False) -> None:
        """A 2PC action covered ``regions`` regions.

        client-go's actions: ``"2pc_prewrite"``, ``"2pc_commit"``, ``"2pc_cleanup"``,
        ``"2pc_pessimistic_lock"``, ``"2pc_pessimistic_rollback"``, ``"snapshot"``.
        """
        self.txn_regions_num.labels(action, "internal" if internal else "general").observe(regions)

    def observe_commit_backoff(self, total_sleep_ms: int, backoffs: int) -> None:
        """A commit slept ``total_sleep_ms`` in ``backoffs`` backoffs."""
        self.txn_commit_backoff_seconds.observe(total_sleep_ms / 1000.0)
        self.txn_commit_backoff_count.observe(backoffs)


def _rpc_error_label(exc: BaseException) -> str:
    from tikv_pd.transport import RPCTimeoutError, TransportError

    if isinstance(exc, asyncio.CancelledError):
        # The caller gave up (cancelled, or its deadline passed): client-go onSendFail's
        # label for a cancelled context.
        return "context-canceled"
    if isinstance(exc, RPCTimeoutError):
        return "timeout"
    if isinstance(exc, TransportError):
        return exc.code.name.lower() if exc.code is not None else "send_fail"
    return type(exc).__name__


def enable_metrics(registry: CollectorRegistry | None = None) -> ClientMetrics:
    """Start collecting metrics into ``registry`` (default: prometheus-client's global one).

    Process-wide, like client-go's. Enabling again with the same registry returns the
    same :class:`ClientMetrics`; with another registry, the old collectors are removed
    first. Expose them as usual, e.g. ``prometheus_client.start_http_server(port)``.

    Raises:
        MetricsNotInstalledError: ``prometheus-client`` is missing (the message says
            ``pip install "tikv-pd[metrics]"``).

    """
    prom = _import_prometheus()
    target = registry if registry is not None else prom.REGISTRY
    with _obs.switch_lock:
        current = _obs.metrics
        if current is not None and current.registry is target:
            return current
        if current is not None:
            current.unregister()
        created = ClientMetrics(target)
        _obs.metrics = created
        _interceptor.refresh_process_chain()
        _obs.refresh_operations()
    return created


def disable_metrics() -> None:
    """Stop collecting and unregister the collectors. Idempotent."""
    with _obs.switch_lock:
        current = _obs.metrics
        _obs.metrics = None
        if current is not None:
            current.unregister()
        _interceptor.refresh_process_chain()
        _obs.refresh_operations()


def get_metrics() -> ClientMetrics | None:
    """The enabled :class:`ClientMetrics`, or ``None``."""
    return _obs.metrics
