"""Garbage collection: resolve old locks, advance the GC safepoint, check read visibility.

GC may drop every MVCC version that no read at or after the *GC safepoint* can see. Before
the safepoint moves, no transaction that started at or below it may still hold a lock:
a lock left there would point at data GC is about to remove. :func:`run_gc` does what
client-go's ``KVStore.GC`` (``tikv/gc.go``) and TiDB's GC worker do, in order:

1. **Bound the safepoint.** Register the safepoint as the ``gc_worker`` service safepoint
   with PD (TiDB ``gc_worker.go`` ``setGCWorkerServiceSafePoint``). PD answers with the
   smallest service safepoint (BR, CDC, ... barriers): GC never passes it, so the safepoint
   actually used is the smaller of the two (client-go's newer PD API does the same through
   ``AdvanceTxnSafePoint``, whose result may be below the request).
2. **Resolve every lock at or below it**, in every region: a :class:`~tikv_pd.rangetask.
   RangeTaskRunner` walks the key space with 8 workers (client-go ``GC``'s default
   concurrency); each region is scanned with ``ScanLock`` in batches of
   :data:`GC_SCAN_LOCK_LIMIT` locks (1024, client-go ``GCScanLockLimit``) and each batch is
   settled as client-go ``LockResolver.BatchResolveLocks`` does: ``CheckTxnStatus`` on each
   transaction's primary with ``current_ts = MaxUint64`` and ``rollback_if_not_exist`` (a
   transaction still running below the safepoint is rolled back: GC's contract is that
   none exists), async-commit transactions settled from their secondaries, pessimistic
   locks rolled back, then one ``ResolveLock`` with ``txn_infos`` per region.
3. **Advance PD's GC safepoint** (``UpdateGCSafePoint``; PD never moves it backwards and
   returns the value it holds — the result of :func:`run_gc`).
4. **Collect garbage.** TiKV's GC worker reads the safepoint from PD and drops old versions
   on its own (its ``KvGC`` RPC answers UNIMPLEMENTED). The embedded cluster has no GC
   worker and serves ``KvGC`` instead, so :func:`run_gc` sends ``KvGC`` to every region
   (TiDB's old "central" GC mode). One probe request goes first, without retries and with
   a 5 s deadline: UNIMPLEMENTED (or, over BatchCommands, where TiKV drops the failed
   sub-request, the deadline) means the stores collect on their own; the client then
   never asks again.

Reads below the safepoint are refused, as client-go ``KVStore.CheckVisibility`` does after
each read returns (``txnsnapshot/snapshot.go``, ``scan.go``): :class:`SafePointCache` keeps
the safepoint per client, refreshed from PD when older than 10 s (client-go polls every
10 s; a cache older than 100 s − 1 s is not trusted: the read fails with PD's error), and
:func:`check_visibility` raises :class:`~tikv_pd.errors.GCTooEarlyError` for a read ts below
it. Checking *after* the read matters: GC may advance while the read is in flight.

TiDB's GC worker records its times (``tikv_gc_safe_point``, ``tikv_gc_last_run_time``…) as
text in ``mysql.tidb``: :func:`parse_gc_time` reads them (legacy layouts included) and
:func:`format_gc_time` writes them (:mod:`tikv_txn.gc_time`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from tikv_pd.backoff import (
    GC_RESOLVE_LOCK_MAX_BACKOFF,
    PESSIMISTIC_ROLLBACK_MAX_BACKOFF,
    TXN_LOCK,
    Backoffer,
)
from tikv_pd.codec import KeyCodec
from tikv_pd.errors import GCTooEarlyError, LockInfo, RegionError, TxnError
from tikv_pd.pd_client import PDClient, ServiceSafePoint
from tikv_pd.rangetask import (
    ProgressCallback,
    RangeTaskRunner,
    TaskStat,
)
from tikv_pd.region_cache import Region
from tikv_pd.request import KeysSharder, RequestOptions
from tikv_pd.transport import TransportError
from tikv_proto import kvrpcpb_pb2

from tikv_txn._kv import lock_from_pb
from tikv_txn.gc_time import GC_TIME_FORMAT, format_gc_time, parse_gc_time
from tikv_txn.lock_resolver import RESOLVED_CACHE_SIZE

if TYPE_CHECKING:
    from tikv_txn._runtime import TxnRuntime

__all__ = [
    "GC_CONCURRENCY",
    "GC_SCAN_LOCK_LIMIT",
    "GC_TIME_FORMAT",
    "GC_WORKER_SERVICE_ID",
    "KVGC_PROBE_TIMEOUT",
    "SAFE_POINT_CACHE_INTERVAL",
    "SAFE_POINT_POLL_INTERVAL",
    "GCResult",
    "SafePointCache",
    "check_visibility",
    "format_gc_time",
    "get_gc_safe_point",
    "parse_gc_time",
    "resolve_lock_batch",
    "resolve_locks_below",
    "run_gc",
    "safe_point_cache",
    "update_service_gc_safe_point",
]

_log = logging.getLogger("tikv.txn.gc")

#: Locks scanned per ScanLock request (client-go ``GCScanLockLimit`` =
#: ``ResolvedCacheSize / 2``, so one batch never evicts other callers' cached statuses).
GC_SCAN_LOCK_LIMIT = RESOLVED_CACHE_SIZE // 2
#: Regions resolved at once (client-go ``GC``'s default concurrency).
GC_CONCURRENCY = 8
#: The service id of the GC worker's own service safepoint (TiDB ``gcWorkerServiceSafePointID``).
GC_WORKER_SERVICE_ID = "gc_worker"
#: How long a cached safepoint is used before it is read from PD again, seconds (client-go
#: ``gcSafePointUpdateInterval`` / ``pollTxnSafePointInterval``).
SAFE_POINT_POLL_INTERVAL = 10.0
#: A cached safepoint older than this (seconds) is not trusted when PD cannot be reached
#: (client-go ``GcStateCacheInterval`` 100 s minus ``gcCPUTimeInaccuracyBound`` 1 s).
SAFE_POINT_CACHE_INTERVAL = 99.0

_MAX_TS = 2**64 - 1
#: PD's TTL for a service safepoint that never expires (``math.MaxInt64``).
_INFINITE_TTL = 2**63 - 1
_PESSIMISTIC_LOCK_TYPES = (5, 8)  # kvrpcpb.Op PessimisticLock, SharedPessimisticLock
_BY_KEY: KeysSharder[bytes] = KeysSharder()


# ---------------------------------------------------------------------------------------
# Safepoints in PD (cluster-wide under API v1, per keyspace under API v2)
# ---------------------------------------------------------------------------------------


def _keyspace_of(codec: KeyCodec) -> int | None:
    return codec.keyspace_id if codec.api_version == 2 else None


async def get_gc_safe_point(pd: PDClient, codec: KeyCodec) -> int:
    """PD's GC safepoint for this client's key space (the keyspace's under API v2)."""
    keyspace = _keyspace_of(codec)
    if keyspace is None:
        return await pd.get_gc_safe_point()
    return await pd.get_gc_safe_point_v2(keyspace)


async def _update_gc_safe_point(pd: PDClient, codec: KeyCodec, safe_point: int) -> int:
    keyspace = _keyspace_of(codec)
    if keyspace is None:
        return await pd.update_gc_safe_point(safe_point)
    return await pd.update_gc_safe_point_v2(keyspace, safe_point)


async def update_service_gc_safe_point(
    pd: PDClient, codec: KeyCodec, service_id: str, ttl: int, safe_point: int
) -> ServiceSafePoint:
    """Register a service safepoint (a GC barrier) for this client's key space.

    PD keeps it for ``ttl`` seconds (``ttl <= 0`` removes it) and GC does not pass the
    smallest live one. PD refuses a safepoint below the current minimum (the answer then
    carries the minimum unchanged).

    Raises:
        TypeError / ValueError: Bad service id, ttl or safepoint.
        tikv_pd.errors.PDError: PD failed.

    """
    keyspace = _keyspace_of(codec)
    if keyspace is None:
        return await pd.update_service_gc_safe_point(service_id, ttl, safe_point)
    return await pd.update_service_safe_point_v2(keyspace, service_id, ttl, safe_point)


# ---------------------------------------------------------------------------------------
# Visibility: reads below the safepoint fail
# ---------------------------------------------------------------------------------------


class SafePointCache:
    """The GC safepoint as last read from PD, for read-visibility checks.

    Reloaded (one load at a time) when older than ``poll_interval``; if reloading fails,
    the cached value keeps serving until it is ``max_age`` old, then the load's error
    propagates (client-go fails reads with PDServerTimeout when its poller fell behind).

    Args:
        load: Reads the safepoint from PD.
        poll_interval: Seconds a loaded value is used before reloading.
        max_age: Seconds a value may be used while reloading fails.
        clock: Monotonic seconds (tests pass a fake one).

    """

    __slots__ = ("_clock", "_inflight", "_load", "_loaded_at", "_value", "max_age", "poll_interval")

    def __init__(
        self,
        load: Callable[[], Awaitable[int]],
        *,
        poll_interval: float = SAFE_POINT_POLL_INTERVAL,
        max_age: float = SAFE_POINT_CACHE_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self.poll_interval = poll_interval
        self.max_age = max_age
        self._clock = clock
        self._value = 0
        self._loaded_at: float | None = None
        self._inflight: asyncio.Future[int] | None = None

    @property
    def safe_point(self) -> int:
        """The cached safepoint (0 before the first load)."""
        return self._value

    def advance(self, safe_point: int) -> None:
        """Record a safepoint just read from (or written to) PD; never moves backwards."""
        if safe_point > self._value:
            self._value = safe_point
        self._loaded_at = self._clock()

    async def refresh(self) -> int:
        """Read the safepoint from PD now (joining a load already in flight)."""
        future = self._inflight
        if future is None:
            future = self._inflight = asyncio.ensure_future(self._load())

            def _done(f: asyncio.Future[int]) -> None:
                if self._inflight is f:
                    self._inflight = None
                if not f.cancelled() and f.exception() is None:
                    self.advance(f.result())

            future.add_done_callback(_done)
        return await asyncio.shield(future)

    async def check(self, ts: int) -> None:
        """Raise :class:`GCTooEarlyError` if ``ts`` is below the GC safepoint.

        Raises:
            GCTooEarlyError: ``ts`` < the safepoint (versions it needs may be gone).
            tikv_pd.errors.PDError: The safepoint could not be read and the cached value
                is too old to trust.

        """
        loaded_at = self._loaded_at
        if loaded_at is None or self._clock() - loaded_at >= self.poll_interval:
            try:
                await self.refresh()
            except Exception:
                if loaded_at is None or self._clock() - loaded_at >= self.max_age:
                    raise
                _log.warning("GC safepoint reload failed; using the cached value", exc_info=True)
        if ts < self._value:
            raise GCTooEarlyError(ts, self._value)


_CACHES: weakref.WeakKeyDictionary[TxnRuntime, SafePointCache] = weakref.WeakKeyDictionary()


def safe_point_cache(rt: TxnRuntime) -> SafePointCache | None:
    """The safepoint cache of a client (``None`` when its stack has no PD client)."""
    cache = _CACHES.get(rt)
    if cache is None:
        pd = rt.pd
        if pd is None:
            return None
        codec = rt.codec
        cache = SafePointCache(lambda: get_gc_safe_point(pd, codec))
        _CACHES[rt] = cache
    return cache


async def check_visibility(rt: TxnRuntime, ts: int) -> None:
    """Fail a read at ``ts`` that GC may already have broken (client-go ``CheckVisibility``).

    Call it after the read returned (GC may advance while it is in flight).

    Raises:
        GCTooEarlyError: ``ts`` is below the GC safepoint.

    """
    cache = safe_point_cache(rt)
    if cache is not None:
        await cache.check(ts)


# ---------------------------------------------------------------------------------------
# Resolving locks (client-go BatchResolveLocks / ResolveLocksForRange)
# ---------------------------------------------------------------------------------------


async def _final_commit_ts(rt: TxnRuntime, bo: Backoffer, lock: LockInfo) -> int:
    """The fate of ``lock``'s transaction, forcing a rollback if it is still running."""
    resolver = rt.resolver
    while True:
        # current_ts = MaxUint64: TiKV rolls the transaction back whether or not its lock
        # expired (client-go BatchResolveLocks: GC kills every transaction below the
        # safepoint).
        status = await resolver.get_txn_status(
            bo,
            lock.lock_version,
            lock.primary_lock,
            caller_start_ts=0,
            current_ts=_MAX_TS,
            rollback_if_not_exist=True,
        )
        if status.ttl == 0:
            return status.commit_ts
        primary = status.primary_lock
        if primary is None or not primary.use_async_commit:
            raise TxnError(
                f"GC asked TiKV to roll back txn {lock.lock_version} but its lock is "
                f"still alive (ttl {status.ttl} ms)"
            )
        # TiKV never rolls back an async-commit primary: the outcome comes from the
        # secondaries (client-go checkAllSecondaries). The resolver settles every key of
        # the transaction once its lock expired; until then, wait for it.
        result = await resolver.resolve_locks(bo, 0, [lock], for_read=False)
        cached = resolver.cached_status(lock.lock_version)
        if cached is not None:
            return cached.commit_ts
        # Not settled yet (the lock has not expired): wait, at most until it expires.
        await bo.backoff(
            TXN_LOCK, rt.locked_error(lock), max_sleep_ms=result.ms_before_expired or None
        )


async def _pessimistic_rollback(
    rt: TxnRuntime, start_ts: int, for_update_ts: int, keys: Sequence[bytes]
) -> None:
    """PessimisticRollback of ``keys`` (client-go ``resolvePessimisticLock``), per region."""

    def build(region: Region, part: Sequence[bytes]) -> kvrpcpb_pb2.PessimisticRollbackRequest:
        return kvrpcpb_pb2.PessimisticRollbackRequest(
            start_version=start_ts, for_update_ts=for_update_ts, keys=list(part)
        )

    bo = Backoffer(PESSIMISTIC_ROLLBACK_MAX_BACKOFF, operation="gc pessimistic rollback")
    responses: list[Any] = await rt.sender.execute(
        "PessimisticRollback", _BY_KEY, list(keys), build, bo=bo, options=rt.base_options
    )
    for resp in responses:
        if resp.errors:
            raise rt.key_error(resp.errors[0], start_ts=start_ts)


async def resolve_lock_batch(rt: TxnRuntime, bo: Backoffer, locks: Sequence[LockInfo]) -> None:
    """Settle every lock of ``locks`` for GC (client-go ``LockResolver.BatchResolveLocks``).

    Each transaction's fate is read from its primary (rolled back if still running;
    async-commit transactions settled from their secondaries); pessimistic locks are
    rolled back; then one ``ResolveLock`` with ``txn_infos`` goes to every region holding
    one of the locks — grouped by the regions as they are *now*, so a region that split
    since the scan gets one request per part.

    Raises:
        TxnError: A key error from TiKV, or a transaction TiKV refused to roll back.
        tikv_pd.errors.TimeoutError: ``bo``'s budget ran out.

    """
    infos: dict[int, int] = {}
    pessimistic: dict[tuple[int, int], list[bytes]] = {}
    keys: list[bytes] = []
    for lock in locks:
        if lock.lock_type in _PESSIMISTIC_LOCK_TYPES:
            # Committing a pessimistic lock means nothing; rolling it back is always
            # correct, and its primary may not be the transaction's real primary.
            group = (lock.lock_version, lock.lock_for_update_ts or _MAX_TS)
            pessimistic.setdefault(group, []).append(lock.key)
            continue
        keys.append(lock.key)
        if lock.lock_version not in infos:
            infos[lock.lock_version] = await _final_commit_ts(rt, bo, lock)
    for (start_ts, for_update_ts), pkeys in pessimistic.items():
        await _pessimistic_rollback(rt, start_ts, for_update_ts, pkeys)
    if not infos:
        return
    txn_infos = [kvrpcpb_pb2.TxnInfo(txn=t, status=c) for t, c in infos.items()]

    def build(region: Region, part: Sequence[bytes]) -> kvrpcpb_pb2.ResolveLockRequest:
        return kvrpcpb_pb2.ResolveLockRequest(txn_infos=txn_infos)

    responses: list[Any] = await rt.sender.execute(
        "ResolveLock", _BY_KEY, keys, build, bo=bo, options=rt.base_options
    )
    for resp in responses:
        if resp.HasField("error"):
            raise rt.key_error(resp.error)


class _LockSweeper:
    """The per-region handler of the resolve phase (client-go ``ResolveLocksForRange``)."""

    def __init__(self, rt: TxnRuntime, safe_point: int, scan_limit: int) -> None:
        self._rt = rt
        self._safe_point = safe_point
        self._limit = scan_limit
        self._options: RequestOptions = rt.request_options(timeout=rt.config.read_timeout_medium)
        #: Locks found (and resolved) at or below the safepoint.
        self.locks = 0

    async def __call__(self, region: Region, start: bytes, end: bytes) -> TaskStat:
        sp = self._safe_point
        limit = self._limit

        def build(s: bytes, e: bytes) -> kvrpcpb_pb2.ScanLockRequest:
            return kvrpcpb_pb2.ScanLockRequest(max_version=sp, start_key=s, end_key=e, limit=limit)

        key = start
        completed = 0
        while True:
            bo = Backoffer(GC_RESOLVE_LOCK_MAX_BACKOFF, operation="gc resolve locks")
            responses, part = await self._rt.sender.call_first_region(
                "ScanLock", key, end, build, reverse=False, bo=bo, options=self._options
            )
            resume: bytes | None = None
            for resp in responses:
                if resp.HasField("error"):
                    raise self._rt.key_error(resp.error)
                locks = [lock_from_pb(pb) for pb in resp.locks]
                if locks:
                    await self._rt.resolver.batch_resolve_locks(bo, locks)
                    self.locks += len(locks)
                if len(locks) >= limit:
                    # A full batch: the region may hold more; scan again after the last.
                    resume = locks[-1].key + b"\x00"
                    break
                completed += 1
            if resume is not None:
                key = resume
                continue
            key = part[1]
            if not key or (end and key >= end):
                return TaskStat(completed_regions=max(completed, 1))


async def resolve_locks_below(
    rt: TxnRuntime,
    safe_point: int,
    start: bytes = b"",
    end: bytes = b"",
    *,
    concurrency: int = GC_CONCURRENCY,
    scan_limit: int = GC_SCAN_LOCK_LIMIT,
    on_progress: ProgressCallback | None = None,
) -> tuple[TaskStat, int]:
    """Resolve every lock with start ts <= ``safe_point`` in ``[start, end)`` (stored keys).

    Returns:
        The region counts and the number of locks resolved.

    Raises:
        BaseException: The first failure; the runner's note names the key to resume from.

    """
    sweeper = _LockSweeper(rt, safe_point, scan_limit)
    runner = RangeTaskRunner(
        "resolve-locks",
        rt.sender.locator,
        sweeper,
        concurrency=concurrency,
        on_progress=on_progress,
    )
    stat = await runner.run(start, end)
    return stat, sweeper.locks


# ---------------------------------------------------------------------------------------
# The whole GC
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GCResult:
    """What :func:`run_gc` did.

    Attributes:
        requested: The safepoint the caller asked for.
        resolved_below: Locks at or below this ts were resolved: ``requested``, or the
            smallest service safepoint when that is lower.
        safe_point: PD's GC safepoint afterwards (never lower than before).
        locks_resolved: Locks found at or below ``resolved_below`` and resolved.
        regions: Regions swept for locks.
        collected_regions: Regions that dropped their old versions on request (KvGC);
            ``None`` when the stores collect garbage on their own (real TiKV) or
            collection was not asked for.

    """

    requested: int
    resolved_below: int
    safe_point: int
    locks_resolved: int
    regions: int
    collected_regions: int | None


#: Clients whose stores do not serve KvGC (real TiKV): collection is not asked again.
_NO_KVGC: weakref.WeakSet[TxnRuntime] = weakref.WeakSet()
#: Seconds the first KvGC of a client may take before the stores are taken not to serve
#: it: TiKV fails KvGC with UNIMPLEMENTED, but over BatchCommands it drops the failed
#: sub-request, so the only answer a batched KvGC ever gets there is its deadline.
KVGC_PROBE_TIMEOUT = 5.0


async def _collect(
    rt: TxnRuntime, safe_point: int, start: bytes, end: bytes, concurrency: int
) -> int | None:
    """Send KvGC to every region; ``None`` when the stores do not serve it (real TiKV)."""
    if rt in _NO_KVGC:
        return None
    request = kvrpcpb_pb2.GCRequest(safe_point=safe_point)
    try:
        # One request first, without retries and with a short deadline: TiKV's answer.
        probe = await rt.sender.call_key(
            "GC",
            start,
            request,
            bo=Backoffer(0, operation="gc collect probe", noop=True),
            options=rt.request_options(timeout=KVGC_PROBE_TIMEOUT),
        )
    except TransportError as exc:
        if exc.code in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.DEADLINE_EXCEEDED):
            _log.info("the stores collect garbage on their own (KvGC not served: %s)", exc)
            _NO_KVGC.add(rt)
            return None
        # Another failure says nothing about KvGC: the regions are tried with retries.
    except RegionError:
        pass
    else:
        if probe.HasField("error"):
            raise rt.key_error(probe.error)
    options = rt.request_options(timeout=rt.config.read_timeout_medium)

    async def handler(region: Region, s: bytes, e: bytes) -> TaskStat:
        bo = Backoffer(GC_RESOLVE_LOCK_MAX_BACKOFF, operation="gc collect")
        # A message per part: the pipeline fills each request's own context.
        responses: list[Any] = await rt.sender.call_range(
            "GC",
            s,
            e,
            lambda _s, _e: kvrpcpb_pb2.GCRequest(safe_point=safe_point),
            bo=bo,
            options=options,
        )
        for resp in responses:
            if resp.HasField("error"):
                raise rt.key_error(resp.error)
        return TaskStat(completed_regions=len(responses))

    runner = RangeTaskRunner("gc-collect", rt.sender.locator, handler, concurrency=concurrency)
    stat = await runner.run(start, end)
    return stat.completed_regions


async def run_gc(
    rt: TxnRuntime,
    pd: PDClient,
    safe_point: int,
    *,
    concurrency: int = GC_CONCURRENCY,
    collect: bool = True,
    on_progress: ProgressCallback | None = None,
) -> GCResult:
    """Garbage-collect below ``safe_point`` (see the module docstring for the steps).

    Args:
        rt: The client's runtime.
        pd: Its PD client.
        safe_point: The wanted safepoint (a TSO timestamp). No transaction that started
            at or below it may still be running: one that is gets rolled back.
        concurrency: Regions worked on at once.
        collect: Ask the stores to drop old versions now (KvGC), where they serve it.
        on_progress: Called after each region of the lock-resolving phase.

    Raises:
        TypeError / ValueError: ``safe_point`` is not a positive 64-bit int.
        tikv_pd.errors.PDError: PD failed.
        tikv_pd.errors.TiKVError: Resolving locks failed (the safepoint was not advanced).

    """
    if isinstance(safe_point, bool) or not isinstance(safe_point, int):
        raise TypeError(f"safe_point must be an int, got {type(safe_point).__name__}")
    if not 0 < safe_point < 2**64:
        raise ValueError(f"safe_point must be a positive 64-bit timestamp, got {safe_point}")
    codec = rt.codec
    barrier = await update_service_gc_safe_point(
        pd, codec, GC_WORKER_SERVICE_ID, _INFINITE_TTL, safe_point
    )
    resolve_below = min(safe_point, barrier.min_safe_point)
    if resolve_below < safe_point:
        _log.info(
            "GC safepoint held back by service %r at %d (asked %d)",
            barrier.service_id,
            resolve_below,
            safe_point,
        )
    start, end = codec.encode_range(b"", b"")
    if resolve_below == 0:  # a service holds GC at 0: nothing may be collected
        current = await get_gc_safe_point(pd, codec)
        return GCResult(safe_point, 0, current, 0, 0, None)
    stat, locks = await resolve_locks_below(
        rt, resolve_below, start, end, concurrency=concurrency, on_progress=on_progress
    )
    new_safe_point = await _update_gc_safe_point(pd, codec, resolve_below)
    cache = safe_point_cache(rt)
    if cache is not None:
        cache.advance(new_safe_point)
    collected: int | None = None
    if collect and new_safe_point > 0:
        collected = await _collect(rt, new_safe_point, start, end, concurrency)
    return GCResult(
        requested=safe_point,
        resolved_below=resolve_below,
        safe_point=new_safe_point,
        locks_resolved=locks,
        regions=stat.completed_regions,
        collected_regions=collected,
    )
