"""Two-phase commit of an optimistic transaction: 2PC, 1PC and async commit.

:class:`TwoPhaseCommitter` follows client-go's ``txnkv/transaction/2pc.go``,
``prewrite.go``, ``commit.go`` and ``cleanup.go``:

1. **Mutations** — the write buffer becomes Percolator mutations
   (:func:`tikv_txn.policy.build_mutations`); the primary is the first key.
2. **Batches** — mutations are grouped by region and cut into ``txn_commit_batch_size``
   (16 KiB) batches, the primary's batch first (:func:`tikv_txn.policy.batch_mutations`).
   A region receiving ``txn_pre_split_detect_threshold`` mutations is split and its new
   regions scattered by PD first (:func:`pre_split_regions`).
3. **Protocol** — :func:`tikv_txn.policy.choose_commit_protocol` decides async commit
   (≤ 256 keys, ≤ 4 KiB of keys) and 1PC (one batch); both need ``min_commit_ts`` above
   every ts handed out so far (a fresh TSO + 1) unless causal consistency is enough, and
   a ``max_commit_ts`` of start ts + elapsed + 2 s (the safe window).
4. **Prewrite** — every batch concurrently (at most ``committer_concurrency``), each with
   the lock TTL for the transaction's size, its region's key count as ``txn_size``, the
   secondaries on the primary's batch for async commit. Locks of older transactions are
   resolved (then the batch is retried, after a ``txnLock`` backoff capped by their TTL if
   they are still alive); a lock of a younger transaction is a write conflict at once; any
   other key error (write conflict, key exists, ...) fails the commit with its typed error.
   A lost answer to an async-commit / 1PC prewrite makes the outcome undetermined. TiKV
   may refuse 1PC / async commit (zero commit ts in the answer, or ``CommitTsTooLarge``):
   the commit falls back to 2PC.
5. **Commit** — 1PC: done, no commit RPC. Async commit: the commit ts is the largest
   ``min_commit_ts`` TiKV returned, and every key is committed in the background.
   2PC: a commit ts from the oracle (above ``commit_wait_until_tso`` when set:
   :func:`timestamp_for_commit`); the primary batch is committed before returning (a
   ``CommitTsExpired`` answer gets a newer ts; a transport failure after sending makes the
   outcome unknown: :class:`~tikv_pd.errors.UndeterminedError`, never retried blindly);
   the secondaries are committed in the background (errors are logged: readers resolve
   their locks from the committed primary).
6. **Cleanup** — when prewrite or the primary commit fails (not undetermined), every key is
   rolled back with ``KvBatchRollback``, primary first, in the background.
7. **Heartbeat** — a transaction larger than ``ttl_refreshed_txn_size`` keeps its primary
   lock alive with ``TxnHeartBeat`` every 10 s until it finishes, it has lived
   ``max_txn_ttl_ms``, or 10 beats in a row failed.

All keys here are the keys TiKV stores (keyspace-prefixed under API v2).
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from tikv_pd import observability as _obs
from tikv_pd.backoff import (
    COMMIT_TS_LAG,
    MAX_SPLIT_REGIONS_BACKOFF,
    PD_RPC,
    REGION_MISS,
    SPLIT_REGION_BACKOFF,
    WAIT_SCATTER_REGION_FINISH_BACKOFF,
    Backoffer,
    BackoffVars,
)
from tikv_pd.config import TransactionOptions
from tikv_pd.errors import (
    AssertionFailedError,
    CommitTsExpiredError,
    CommitTsLagError,
    LockInfo,
    PDError,
    TxnAbortedError,
    TxnError,
    UndeterminedError,
    WriteConflictError,
)
from tikv_pd.errors import TimeoutError as BackoffTimeoutError
from tikv_pd.interceptor import RPCInterceptor
from tikv_pd.oracle import extract_physical
from tikv_pd.region_cache import InvalidReason, Region
from tikv_pd.request import Ambiguity, KeysSharder, RequestOptions, RetryShard
from tikv_proto import kvrpcpb_pb2, pdpb_pb2

from tikv_txn._kv import mutation_to_pb
from tikv_txn._runtime import HEARTBEAT_TASK_PREFIX
from tikv_txn.latch import LatchLock
from tikv_txn.membuffer import MemBuffer
from tikv_txn.policy import (
    Batch,
    CommitProtocol,
    Mutation,
    MutationPlan,
    Op,
    async_commit_max_commit_ts,
    async_commit_secondaries,
    batch_mutations,
    build_mutations,
    choose_commit_protocol,
    group_sorted_by_region,
    heartbeat_should_stop,
    heartbeat_ttl,
    interpret_prewrite_response,
    needs_ttl_manager,
    pre_split_keys,
    prewrite_lock_ttl,
    prewrite_min_commit_ts,
    txn_lock_ttl,
)

if TYPE_CHECKING:
    from tikv_txn._runtime import TxnRuntime

__all__ = [
    "TTL_ACCESS",
    "TWO_PC_ACCESS",
    "CommitTsLag",
    "MinCommitTsManager",
    "TwoPhaseCommitter",
    "commit_primary_keys",
    "keep_primary_alive",
    "pre_split_regions",
    "scatter_region",
    "split_region_keys",
    "timestamp_for_commit",
    "wait_scatter_region_finish",
]

_log = logging.getLogger("tikv.txn.committer")

#: Keys grouped by region, one request per region (no size limit).
_BY_KEYS: KeysSharder[bytes] = KeysSharder()

_MutBatch = Batch[Region, Mutation]
_MAX_U64 = 2**64 - 1


def _mutation_size(m: Mutation) -> int:
    return len(m.key) + len(m.value)


def _key_size(m: Mutation) -> int:
    return len(m.key)


#: Write access levels of :class:`MinCommitTsManager` (client-go ``WriteAccessLevel``):
#: the heartbeat's pushes, then the commit's own updates.
TTL_ACCESS: Final = 1
TWO_PC_ACCESS: Final = 2


class MinCommitTsManager:
    """A transaction's min commit ts, which only grows, with a write-access level.

    client-go ``minCommitTsManager`` (``2pc.go``). A pipelined transaction's heartbeat
    pushes its primary's ``min_commit_ts`` to the current ts (``TTL_ACCESS``) so readers
    need not wait for it; once the commit begins, the required level is raised to
    ``TWO_PC_ACCESS`` and the heartbeat's updates are ignored: it keeps sending the value
    it had, so it can no longer push the primary past the commit ts being chosen (which
    would make the commit fail with ``CommitTsExpired`` and fetch another one).
    Thread-safe.
    """

    __slots__ = ("_level", "_mu", "_value")

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._value = 0
        self._level = TTL_ACCESS

    def try_update(self, value: int, access: int) -> None:
        """Raise the value to ``value`` if ``access`` is high enough and it is larger."""
        with self._mu:
            if access >= self._level and value > self._value:
                self._value = value

    def elevate_write_access(self, level: int) -> int:
        """Require at least ``level`` from now on; return the current value."""
        with self._mu:
            if level > self._level:
                self._level = level
            return self._value

    def get(self) -> int:
        """The current value (0 before any update)."""
        return self._value

    @property
    def required_write_access(self) -> int:
        """The level an update needs."""
        return self._level


#: A backoff without client-go's BackOffWeight: the commit-wait budget is exactly the
#: timeout the caller set (client-go builds it with ``retry.NewBackoffer``, no vars).
_UNWEIGHTED = BackoffVars(backoff_weight=1)


@dataclasses.dataclass(frozen=True, slots=True)
class CommitTsLag:
    """How a commit waited for PD's TSO to pass its commit-wait-until ts.

    client-go ``util.CommitTSLagDetails``, filled only when the first commit ts PD
    returned was not above the wait-until ts.

    Attributes:
        wait_until_ts: The ts the commit ts had to exceed.
        first_ts: The first (lagging) ts PD returned.
        commit_ts: The ts finally used.
        backoffs: How many times the client backed off before asking again.
        wait_s: Seconds spent waiting.

    """

    wait_until_ts: int
    first_ts: int
    commit_ts: int
    backoffs: int
    wait_s: float


async def timestamp_for_commit(
    runtime: TxnRuntime, *, wait_until_ts: int, timeout_s: float
) -> tuple[int, CommitTsLag | None]:
    """A ts from the oracle greater than ``wait_until_ts`` (client-go ``GetTimestampForCommit``).

    With ``wait_until_ts`` 0 (or already passed) it is the first ts fetched. Otherwise
    the client asks again after ``commitTSLag`` backoffs (2 ms doubling to 500 ms, no
    jitter) within a budget of ``timeout_s``; a gap between the two timestamps' physical
    times larger than ``timeout_s``, or a zero timeout, fails at once.

    Returns:
        The ts and, when the first one lagged, how the wait went.

    Raises:
        CommitTsLagError: The TSO did not pass ``wait_until_ts`` in time.

    """
    first = await runtime.oracle.get_timestamp()
    if first > wait_until_ts:
        return first, None
    started = time.monotonic()
    attempts = 1
    ts = first

    def lag_error(reason: str) -> CommitTsLagError:
        return CommitTsLagError(
            wait_until_ts=wait_until_ts,
            first_ts=first,
            last_ts=ts,
            attempts=attempts,
            timeout_s=timeout_s,
            reason=reason,
        )

    try:
        if timeout_s <= 0:
            raise lag_error("failing at once since the timeout is 0")
        drift_ms = extract_physical(wait_until_ts) - extract_physical(first)
        if drift_ms > timeout_s * 1000:
            # Waiting cannot help: the clocks are further apart than the wait allowed.
            raise lag_error(f"a clock drift of {drift_ms} ms exceeds the timeout")
        # commitTSLag has no jitter: the backoffer draws no random numbers.
        bo = Backoffer(max(1, round(timeout_s * 1000)), operation="commit ts lag", vars=_UNWEIGHTED)
        while ts <= wait_until_ts:
            try:
                await bo.backoff(COMMIT_TS_LAG, f"PD TSO {ts} is not above {wait_until_ts}")
            except BackoffTimeoutError:
                raise lag_error("the TSO did not pass it before the timeout") from None
            attempts += 1
            ts = await runtime.oracle.get_timestamp()
    except Exception:
        _observe_lag(ok=False, started=started, attempts=attempts)
        raise
    _observe_lag(ok=True, started=started, attempts=attempts)
    return ts, CommitTsLag(
        wait_until_ts=wait_until_ts,
        first_ts=first,
        commit_ts=ts,
        backoffs=attempts - 1,
        wait_s=time.monotonic() - started,
    )


def _observe_lag(*, ok: bool, started: float, attempts: int) -> None:
    # client-go observes the lag histograms whenever the first ts lagged, failed or not.
    metrics = _obs.metrics
    if metrics is not None:
        metrics.observe_commit_ts_lag(ok, time.monotonic() - started, attempts)


async def pre_split_regions(
    runtime: TxnRuntime, items: Sequence[tuple[bytes, int]], *, start_ts: int
) -> bool:
    """Split the regions that would receive too many of one transaction's keys.

    client-go ``groupMutations`` / ``preSplitRegion`` (``2pc.go``): a region getting at
    least ``Config.txn_pre_split_detect_threshold`` of the keys is split every
    ``Config.txn_pre_split_size_threshold`` bytes of keys and values
    (:func:`tikv_txn.policy.pre_split_keys`) before the keys are sent, so that a large
    transaction does not make one TiKV busy. Splitting is best effort, as in client-go: a
    failed split is logged and the transaction goes on with the regions as they are. The
    new regions are then scattered by PD, waiting for each scatter to finish.

    Args:
        runtime: The client's shared state.
        items: ``(key as TiKV stores it, bytes of key and value)``, sorted by key.
        start_ts: The transaction's start ts (for the log).

    Returns:
        Whether a region was split (the caller groups its keys again).

    """
    cfg = runtime.config
    detect = cfg.txn_pre_split_detect_threshold
    if len(items) < detect:
        return False
    locator = runtime.sender.locator
    groups: list[tuple[Region, list[tuple[bytes, int]]]] = []
    for item in items:
        if groups and groups[-1][0].contains(item[0]):
            groups[-1][1].append(item)
        else:
            groups.append((await locator.locate_key(item[0]), [item]))
    split = False
    for region, group in groups:
        keys = pre_split_keys(
            group,
            lambda item: item[0],
            lambda item: item[1],
            detect_threshold=detect,
            size_threshold=cfg.txn_pre_split_size_threshold,
        )
        if not keys:
            continue
        _log.info(
            "txn %d: %d keys in region %d; splitting it at %d keys",
            start_ts,
            len(group),
            region.id,
            len(keys),
        )
        try:
            new_regions = await split_region_keys(runtime, keys)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _log.warning("txn %d: pre-split of region %d failed: %s", start_ts, region.id, exc)
            continue
        split = True
        # client-go SplitRegions(scatter=true), then WaitScatterRegionFinish per region:
        # the new regions are spread over the stores before the keys are sent to them.
        # A failed scatter or wait is only logged, as there.
        for region_id in new_regions:
            try:
                await scatter_region(runtime, region_id)
                await wait_scatter_region_finish(runtime, region_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _log.warning("txn %d: scatter of region %d failed: %s", start_ts, region_id, exc)
    return split


async def scatter_region(runtime: TxnRuntime, region_id: int) -> None:
    """Ask PD to scatter ``region_id`` (client-go ``KVStore.scatterRegion``).

    Retried with the ``pdRPC`` backoff within the split budget; a client without a PD
    client (a test stack) does nothing.

    Raises:
        PDError: PD refused (the region is unknown to it).
        tikv_pd.errors.TimeoutError: PD kept failing for the budget.

    """
    pd = runtime.pd
    if pd is None:
        return
    bo = Backoffer(SPLIT_REGION_BACKOFF, operation="scatter region", vars=_UNWEIGHTED)
    while True:
        try:
            failed = await pd.scatter_regions([region_id])
        except PDError as exc:
            await bo.backoff(PD_RPC, exc)
            continue
        if failed:
            raise PDError(f"ScatterRegion: PD could not scatter region {region_id}")
        return


async def wait_scatter_region_finish(runtime: TxnRuntime, region_id: int) -> None:
    """Wait until PD's scatter operator on ``region_id`` is no longer running.

    client-go ``WaitScatterRegionFinish``: ask PD for the region's operator, back off
    ``regionMiss`` while it is a running "scatter-region" (or PD failed), within 120 s.
    A region with no operator (PD's "Not Found") is done.

    Raises:
        tikv_pd.errors.TimeoutError: Still running when the budget ran out.

    """
    pd = runtime.pd
    if pd is None:
        return
    bo = Backoffer(
        WAIT_SCATTER_REGION_FINISH_BACKOFF, operation="wait scatter region", vars=_UNWEIGHTED
    )
    while True:
        try:
            op = await pd.get_operator(region_id)
        except PDError as exc:
            await bo.backoff(REGION_MISS, exc)
            continue
        if op is None or op[0] != b"scatter-region" or op[1] != pdpb_pb2.RUNNING:
            return
        await bo.backoff(REGION_MISS, f"scatter of region {region_id} still running")


async def split_region_keys(runtime: TxnRuntime, keys: Sequence[bytes]) -> list[int]:
    """Split regions at ``keys`` (as TiKV stores them) with TiKV's ``SplitRegion``.

    client-go ``KVStore.SplitRegions`` (its scatter is :func:`scatter_region`): keys are
    grouped by region, a key that already starts its region is dropped (nothing to split
    there), and each region gets one request with all of its keys; region errors
    re-shard through the pipeline.
    The budget is client-go's: 20 s per key, at most 120 s.

    Returns:
        The ids of the regions the splits produced, the last one of each split excluded
        (client-go: the region that kept its id is not a new one).

    Raises:
        TxnAbortedError: TiKV refused a split (its reason).
        tikv_pd.errors.TimeoutError: Region errors outlasted the budget.

    """
    locator = runtime.sender.locator
    wanted: list[bytes] = []
    for key in sorted(set(keys)):
        region = await locator.locate_key(key)
        if region.start_key != key:
            wanted.append(key)
    if not wanted:
        return []
    bo = runtime.backoffer(
        min(len(wanted) * SPLIT_REGION_BACKOFF, MAX_SPLIT_REGIONS_BACKOFF), "split regions"
    )

    def build(region: Region, part: Sequence[bytes]) -> kvrpcpb_pb2.SplitRegionRequest:
        return kvrpcpb_pb2.SplitRegionRequest(split_keys=list(part))

    def handle(region: Region, part: Sequence[bytes], resp: Any) -> list[int]:
        for err in resp.errors:
            raise TxnAbortedError(err.abort or str(err))
        # The cached region is now wrong: its next lookup loads the new ones from PD.
        locator.invalidate_region(region.id, InvalidReason.OTHER)
        return [r.id for r in resp.regions][:-1]

    parts = await runtime.sender.execute(
        "SplitRegion", _BY_KEYS, wanted, build, handle, bo=bo, options=runtime.base_options
    )
    return [rid for ids in parts for rid in ids]


async def commit_primary_keys(
    runtime: TxnRuntime,
    keys: Sequence[bytes],
    *,
    start_ts: int,
    commit_ts: Callable[[], int],
    newer_commit_ts: Callable[[], Awaitable[object]],
    options: RequestOptions,
    operation: str,
) -> None:
    """``KvCommit`` of the primary ``keys`` at ``commit_ts()`` (client-go ``commit.go``).

    A ``CommitTsExpired`` answer (a reader or the heartbeat pushed ``min_commit_ts`` past
    the commit ts) fetches a newer one with ``newer_commit_ts`` and commits again; an
    answer lost after sending makes the outcome unknown (``UndeterminedError``, never
    retried blindly). Serves 2PC and pipelined DML.

    Raises:
        UndeterminedError: The request may have been applied but no answer came.
        TxnLockNotFoundError: The primary lock is gone (rolled back by a resolver).

    """
    bo = runtime.backoffer(runtime.budgets.commit, operation)

    async def renew() -> None:
        await newer_commit_ts()

    def build(region: Region, part: Sequence[bytes]) -> kvrpcpb_pb2.CommitRequest:
        return kvrpcpb_pb2.CommitRequest(
            start_version=start_ts, keys=list(part), commit_version=commit_ts()
        )

    def handle(region: Region, part: Sequence[bytes], resp: Any) -> None:
        if resp.HasField("error"):
            err = runtime.key_error(resp.error, start_ts=start_ts)
            if isinstance(err, CommitTsExpiredError):
                raise RetryShard(part, reason=str(err), before_retry=renew)
            raise err

    await runtime.sender.execute(
        "Commit",
        _BY_KEYS,
        keys,
        build,
        handle,
        bo=bo,
        options=options,
        ambiguity=Ambiguity.RETRY_THEN_RAISE,
    )


async def keep_primary_alive(
    runtime: TxnRuntime,
    start_ts: int,
    *,
    primary: Callable[[], bytes],
    options: Callable[[], RequestOptions],
    on_beat: Callable[[], None],
    pipelined: bool = False,
    min_commit_ts: MinCommitTsManager | None = None,
) -> None:
    """Keep a transaction's primary lock alive with a ``TxnHeartBeat`` every 10 s.

    client-go ``2pc.go`` ``keepAlive``, for 2PC, pessimistic and pipelined DML alike.
    Each beat advises a TTL of the transaction's uptime plus the managed lock TTL
    (:func:`tikv_txn.policy.heartbeat_ttl`); a pipelined transaction's beat also pushes
    the primary's ``min_commit_ts`` to now, so that readers need not wait for it — through
    ``min_commit_ts`` when given, which ignores the push once the commit has begun
    (client-go sends ``minCommitTSMgr.get()`` after a ``ttlAccess`` update).

    Returns when the transaction outlived its max TTL (1 h, 24 h pipelined) or the
    primary lock is gone (a key error: committed, rolled back or resolved).

    Raises:
        Exception: The last failure once more than 10 beats in a row failed, or a
            timestamp could not be had.

    """
    cfg = runtime.config
    what = "pipelined txn" if pipelined else "txn"
    failures = 0
    while True:
        await asyncio.sleep(runtime.budgets.heartbeat_interval_s)
        now = await runtime.oracle.get_timestamp()
        ttl = heartbeat_ttl(
            start_ts,
            now,
            pipelined=pipelined,
            max_txn_ttl_ms=cfg.max_txn_ttl_ms,
            managed_lock_ttl_ms=cfg.managed_lock_ttl_ms,
        )
        if ttl is None:
            _log.warning("%s %d: lived past its max TTL; heartbeat stops", what, start_ts)
            return
        key = primary()
        pushed = 0
        if pipelined:
            pushed = now
            if min_commit_ts is not None:
                min_commit_ts.try_update(now, TTL_ACCESS)
                pushed = min_commit_ts.get()
        req = kvrpcpb_pb2.TxnHeartBeatRequest(
            primary_lock=key,
            start_version=start_ts,
            advise_lock_ttl=ttl,
            min_commit_ts=pushed,
        )
        bo = runtime.backoffer(runtime.budgets.heartbeat, f"{what} heartbeat")
        try:
            resp = await runtime.sender.call_key("TxnHeartBeat", key, req, bo=bo, options=options())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures += 1
            _log.warning("%s %d: heartbeat failed (%d in a row): %s", what, start_ts, failures, exc)
            if heartbeat_should_stop(failures, key_error=False):
                raise
            continue
        if resp.HasField("error"):
            # The primary lock is gone (committed, rolled back, resolved): stop.
            _log.info(
                "%s %d: heartbeat stops: %s",
                what,
                start_ts,
                runtime.key_error(resp.error, start_ts=start_ts),
            )
            return
        failures = 0
        on_beat()


class TwoPhaseCommitter:
    """Commits one transaction's buffer (see the module docstring).

    The steps are separate methods so that tests can stop a commit half-way, as
    client-go's ``test_probe.go`` does: :meth:`prepare`, :meth:`prewrite`,
    :meth:`commit_primary`, :meth:`commit_secondaries`; :meth:`execute` runs them all.

    Args:
        runtime: The client's shared state.
        start_ts: The transaction's start ts.
        options: The transaction's options.
        buffer: The write buffer (read, never changed).
        started_at: ``time.monotonic()`` when the transaction began (TTL and
            max_commit_ts grow with the time it has run).
        interceptor: The transaction's RPC interceptor chain (client's and its own), or
            ``None`` for the client's.

    """

    def __init__(
        self,
        runtime: TxnRuntime,
        start_ts: int,
        options: TransactionOptions,
        buffer: MemBuffer,
        started_at: float,
        interceptor: RPCInterceptor | None = None,
    ) -> None:
        self._rt = runtime
        self.start_ts = start_ts
        self._opts = options
        self._buffer = buffer
        self._started_at = started_at
        cfg = runtime.config
        self._write_options: RequestOptions = runtime.request_options(
            priority=options.priority,
            disk_full_opt=options.disk_full_opt,
            txn_source=options.txn_source,
            resource_group_name=options.resource_group_name,
            resource_group_tag=options.resource_group_tag,
            **({"request_source": options.request_source} if options.request_source else {}),
            **({"interceptor": interceptor} if interceptor is not None else {}),
        )
        #: Options of the lock resolution prewrite causes (the same interceptor chain).
        self._resolve_options: RequestOptions | None = (
            None if interceptor is None else runtime.resolve_options(interceptor)
        )
        self._concurrency = cfg.committer_concurrency
        #: The mutations (encoded keys, key order) once :meth:`prepare` ran.
        self.plan: MutationPlan | None = None
        self.batches: list[_MutBatch] = []
        #: How many mutations the transaction prewrites in all (1PC needs them in one request).
        self._mutation_count = 0
        self.primary = b""
        self.protocol = CommitProtocol(False, False, False)
        #: Whether async commit / 1PC are still in use (TiKV may refuse them).
        self.async_commit = False
        self.one_pc = False
        self.min_commit_ts = 0
        self.max_commit_ts = 0
        self.lock_ttl = 0
        self.one_pc_commit_ts = 0
        self.commit_ts = 0
        self._region_sizes: dict[int, int] = {}
        self._secondaries: list[bytes] = []
        self._prewrite_started = False
        self._heartbeat: asyncio.Task[None] | None = None
        #: Pessimistic transaction (tikv_txn.pessimistic): its locks are checked by
        #: prewrite (pessimistic actions) at :attr:`for_update_ts`, the largest
        #: for-update ts of its lock requests, and :attr:`lock_primary` (a user key,
        #: the first key it locked) is the primary (client-go ``2pc.go``).
        self.pessimistic = options.is_pessimistic
        self.for_update_ts = 0
        self.lock_primary: bytes | None = None
        #: Keys (as TiKV stores them) whose pessimistic lock must still have this
        #: for-update ts at prewrite: keys locked by aggressive locking (client-go
        #: ``forUpdateTSConstraints``).
        self.for_update_ts_constraints: dict[bytes, int] = {}
        #: Pessimistic transactions: whether a key existed when its lock was taken, as
        #: far as a lock request learned it (``PessimisticLocker.known_existence``).
        #: With an assertion level other than Off, assertions on locked keys are checked
        #: against it before prewrite (client-go ``checkAssertionByPessimisticLockResults``).
        self.lock_existence: Callable[[bytes], bool | None] | None = None
        #: The first such assertion that failed: raised once prewrite succeeded.
        self.stashed_assertion: AssertionFailedError | None = None
        #: Why the outcome of :meth:`execute` is unknown, when it is: an
        #: :class:`UndeterminedError` it raised, or the cancellation of the caller while
        #: an async-commit / 1PC prewrite or the primary commit was in flight (client-go
        #: ``GetUndeterminedErr``). ``None`` otherwise.
        self.undetermined_error: UndeterminedError | None = None
        #: Set when the primary batch was prewritten (heartbeats may start).
        self.primary_prewritten = False
        #: Number of heartbeats sent successfully (for tests and metrics).
        self.heartbeats = 0
        #: The commit ts must exceed this ts (0: no constraint) and the wait allowed for
        #: PD's TSO to pass it, seconds (TransactionOptions.commit_wait_until_tso*; the
        #: transaction updates them at commit, client-go ``SetCommitWaitUntilTSO``).
        self.commit_wait_until_tso = options.commit_wait_until_tso
        self.commit_wait_until_tso_timeout = options.commit_wait_until_tso_timeout
        #: How the commit waited for the TSO, when its first commit ts lagged.
        self.commit_ts_lag: CommitTsLag | None = None

    # -- helpers -----------------------------------------------------------------------

    def _elapsed_ms(self) -> int:
        return max(0, int((time.monotonic() - self._started_at) * 1000))

    # -- 1. + 2. + 3. ------------------------------------------------------------------

    async def prepare(self) -> bool:
        """Build mutations, group and batch them, and choose the protocol.

        Returns:
            ``False`` when there is nothing to commit (a read-only transaction).

        """
        codec = self._rt.codec
        cfg = self._rt.config
        plan = build_mutations(
            self._buffer.iterate_with_flags(),
            pessimistic=self.pessimistic,
            assertions=self._opts.assertion_level != "Off",
            primary=self.lock_primary if self.pessimistic else None,
        )
        if not plan.mutations:
            return False
        self.stashed_assertion = self._check_assertions_by_locks(plan.mutations)
        if codec.api_version == 2:
            mutations = tuple(m._replace(key=codec.encode_key(m.key)) for m in plan.mutations)
            plan = MutationPlan(
                mutations,
                codec.encode_key(plan.primary),
                plan.size,
                tuple(codec.encode_key(k) for k in plan.prewrite_only_keys),
                plan.has_shared_locks,
            )
        self.plan = plan
        self.primary = plan.primary
        if len(plan.mutations) >= cfg.txn_pre_split_detect_threshold:
            # A region receiving too many of the keys is split first (client-go
            # groupMutations); the keys are then located in the new regions.
            await pre_split_regions(
                self._rt,
                [(m.key, len(m.key) + len(m.value)) for m in plan.mutations],
                start_ts=self.start_ts,
            )
        regions = await self._locate_all([m.key for m in plan.mutations])
        starts = [r.start_key for r in regions]

        def locate(key: bytes) -> tuple[Region, bytes]:
            region = regions[bisect.bisect_right(starts, key) - 1]
            return region, region.end_key

        groups = group_sorted_by_region(plan.mutations, lambda m: m.key, locate)
        for group in groups:
            self._region_sizes[group.region.id] = len(group.items)
        self.batches = batch_mutations(
            groups,
            plan.primary,
            lambda m: m.key,
            _mutation_size,
            limit=cfg.txn_commit_batch_size,
        )
        self._mutation_count = sum(len(b.items) for b in self.batches)
        self.protocol = choose_commit_protocol(
            plan,
            prewrite_batch_count=len(self.batches),
            enable_async_commit=self._opts.async_commit,
            enable_one_pc=self._opts.try_one_pc,
            causal_consistency=self._opts.causal_consistency,
            global_scope=self._opts.txn_scope == "global",
            assertion_failed=self.stashed_assertion is not None,
            keys_limit=cfg.async_commit_keys_limit,
            total_key_size_limit=cfg.async_commit_total_key_size_limit,
        )
        self.async_commit = self.protocol.async_commit
        self.one_pc = self.protocol.one_pc
        if self.async_commit:
            self._secondaries = async_commit_secondaries(plan.mutations, plan.primary)
        return True

    def _check_assertions_by_locks(
        self, mutations: Sequence[Mutation]
    ) -> AssertionFailedError | None:
        """The first assertion on a locked key that its lock's answer contradicts.

        TiKV skips the existence read of a pessimistically locked key at prewrite unless
        the level is Strict, so client-go checks such keys against what the lock request
        saw. A failure is not raised at once: a lost pessimistic lock could make it a
        false positive, so prewrite still runs (async commit and 1PC off) and its own
        error wins; only if prewrite succeeds is this one raised (client-go
        ``stashedAssertionError``). Its existing start / commit ts are unknown here (0).
        """
        existence = self.lock_existence
        if existence is None or self._opts.assertion_level == "Off":
            return None
        for m in mutations:
            if not m.is_pessimistic_lock or not (m.assert_exist or m.assert_not_exist):
                continue
            exists = existence(m.key)
            if exists is None:
                continue
            if m.assert_not_exist and exists:
                return AssertionFailedError(start_ts=self.start_ts, key=m.key, assertion=2)
            if m.assert_exist and not exists:
                return AssertionFailedError(start_ts=self.start_ts, key=m.key, assertion=1)
        return None

    async def _locate_all(self, keys: Sequence[bytes]) -> list[Region]:
        """The regions covering sorted ``keys``, one lookup per region."""
        locator = self._rt.sender.locator
        regions: list[Region] = []
        for key in keys:
            if regions and regions[-1].contains(key):
                continue
            regions.append(await locator.locate_key(key))
        return regions

    # -- 4. prewrite -------------------------------------------------------------------

    async def prewrite(self) -> None:
        """Prewrite every batch concurrently; raise the first failure.

        Raises:
            WriteConflictError, KeyExistsError, AssertionFailedError, ...: A key error
                from TiKV, with the server's facts.
            tikv_pd.errors.TimeoutError: The 40 s prewrite budget ran out (locks that
                stayed, region errors).

        """
        assert self.plan is not None, "prepare() first"
        cfg = self._rt.config
        elapsed = self._elapsed_ms()
        if self.protocol.min_commit_ts_from_tso or (
            self.commit_wait_until_tso and (self.async_commit or self.one_pc)
        ):
            # TiKV picks an async-commit / 1PC commit ts at or above min_commit_ts, so a
            # commit-wait constraint applies to this ts too, causal consistency or not
            # (client-go prewrite: needLinearizability() || commitWaitUntilTSO > 0).
            # A lag error here leaves nothing written: prewrite has not started.
            self.min_commit_ts = await self._timestamp_for_commit() + 1
        self.min_commit_ts = prewrite_min_commit_ts(
            self.start_ts, self.for_update_ts, self.min_commit_ts
        )
        if self.async_commit or self.one_pc:
            self.max_commit_ts = async_commit_max_commit_ts(
                self.start_ts,
                self._elapsed_ms(),
                safe_window_ms=int(cfg.async_commit_safe_window * 1000),
            )
        ttl = txn_lock_ttl(
            self.plan.size,
            elapsed,
            commit_batch_size=cfg.txn_commit_batch_size,
            managed_lock_ttl_ms=cfg.managed_lock_ttl_ms,
        )
        self.lock_ttl = prewrite_lock_ttl(
            ttl,
            async_commit=self.async_commit,
            pessimistic=self.pessimistic,
            start_ts=self.start_ts,
            max_commit_ts=self.max_commit_ts,
        )
        self._prewrite_started = True
        bo = self._rt.backoffer(self._rt.budgets.prewrite, "prewrite")
        await self._run_batches(
            self.batches, lambda b: self._prewrite_batch(b, bo.fork()), assertions_last=True
        )

    async def _run_batches(
        self, batches: Sequence[_MutBatch], action: Any, *, assertions_last: bool = False
    ) -> None:
        """Run ``action`` on every batch, at most ``committer_concurrency`` at a time.

        The first failure cancels the other batches and is raised. With
        ``assertions_last`` (prewrite) an :class:`AssertionFailedError` does not: it is
        held while the other batches run, and raised only if none of them fails
        otherwise. In a pessimistic transaction whose lock was lost, a key that is not
        locked can fail its assertion only because of the conflict; the conflict is the
        error to report (client-go ``batchExecutor.process``, tikv/tikv#12113).
        """
        if len(batches) == 1:
            await action(batches[0])
            return
        sem = asyncio.Semaphore(self._concurrency)
        held: list[AssertionFailedError] = []

        async def one(batch: _MutBatch) -> None:
            async with sem:
                try:
                    await action(batch)
                except AssertionFailedError as exc:
                    if not assertions_last:
                        raise
                    held.append(exc)

        tasks = [asyncio.ensure_future(one(b)) for b in batches]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        if held:
            raise held[0]

    def _build_prewrite(
        self, region: Region, part: Sequence[Mutation]
    ) -> kvrpcpb_pb2.PrewriteRequest:
        req = kvrpcpb_pb2.PrewriteRequest(
            mutations=[mutation_to_pb(m, m.key) for m in part],
            primary_lock=self.primary,
            start_version=self.start_ts,
            lock_ttl=self.lock_ttl,
            # A region that changed since grouping gets the maximum, so that resolvers
            # never resolve its locks key by key on a wrong small size (client-go
            # sets MaxUint64 when it re-groups after a region miss).
            txn_size=self._region_sizes.get(region.id, _MAX_U64),
            min_commit_ts=self.min_commit_ts,
            assertion_level=self._opts.assertion_level_value,  # type: ignore[arg-type]
        )
        if self.pessimistic:
            # client-go prewrite.go buildPrewriteRequest: one action per mutation (locked
            # keys are checked against their pessimistic lock) and the for-update ts.
            req.pessimistic_actions.extend(
                int(m.pessimistic_action)  # type: ignore[misc]
                for m in part
            )
            req.for_update_ts = self.for_update_ts
            constraints = self.for_update_ts_constraints
            if constraints:
                for i, m in enumerate(part):
                    expected = constraints.get(m.key)
                    if expected is not None:
                        req.for_update_ts_constraints.add(index=i, expected_for_update_ts=expected)
        if self.async_commit:
            req.use_async_commit = True
            req.max_commit_ts = self.max_commit_ts
            if any(m.key == self.primary for m in part):
                req.secondaries.extend(self._secondaries)
        if self.one_pc and len(part) == self._mutation_count:
            # 1PC commits whatever one request carries, so only a request holding every
            # mutation of the transaction may ask for it. When the region split under the
            # prewrite and the pipeline re-sharded it, each part goes as a plain prewrite;
            # their zero one_pc_commit_ts then falls back to 2PC (client-go unsets 1PC once
            # the mutations span more than one batch, 2pc.go doActionOnMutations).
            req.try_one_pc = True
            req.max_commit_ts = self.max_commit_ts
        return req

    def _fall_back_to_2pc(self, reason: str) -> None:
        if self.async_commit or self.one_pc:
            _log.info("txn %d: %s; falling back to 2PC", self.start_ts, reason)
        self.async_commit = False
        self.one_pc = False

    async def _prewrite_batch(self, batch: _MutBatch, bo: Backoffer) -> None:
        # The batch is already cut to size (policy.batch_mutations); the sharder only
        # re-groups it by region when a region changed under it.
        sharder: KeysSharder[Mutation] = KeysSharder(lambda m: m.key)

        def handle(
            region: Region, part: Sequence[Mutation], resp: Any
        ) -> tuple[Sequence[Mutation], Any]:
            return part, resp

        payload: Sequence[Mutation] = batch.items
        while payload:
            # With async commit or 1PC a prewrite that reached TiKV may have decided the
            # transaction: a lost answer makes the outcome unknown (client-go
            # prewrite.go sets the undetermined error for them).
            ambiguity = (
                Ambiguity.RETRY_THEN_RAISE
                if self.async_commit or self.one_pc
                else Ambiguity.IDEMPOTENT
            )
            parts = await self._rt.sender.execute(
                "Prewrite",
                sharder,
                payload,
                self._build_prewrite,
                handle,
                bo=bo,
                options=self._write_options,
                ambiguity=ambiguity,
            )
            locks: list[LockInfo] = []
            retry: list[Mutation] = []
            assertion_failure: AssertionFailedError | None = None
            for part, resp in parts:
                errors = list(resp.errors)
                if errors:
                    if any(e.HasField("commit_ts_too_large") for e in errors):
                        # Older TiKV refuses a too-large async-commit / 1PC commit ts with
                        # an error instead of a zero ts: prewrite again as plain 2PC.
                        self._fall_back_to_2pc("commit ts too large")
                        retry.extend(part)
                        continue
                    try:
                        found = self._rt.prewrite_locks(
                            errors,
                            start_ts=self.start_ts,
                            primary=self.primary,
                            optimistic=not self.pessimistic,
                        )
                    except AssertionFailedError as exc:
                        # Another part's error, if any, is the one to report (as across
                        # batches in _run_batches).
                        assertion_failure = assertion_failure or exc
                        continue
                    locks.extend(found)
                    retry.extend(part)
                    continue
                outcome = interpret_prewrite_response(
                    one_pc=self.one_pc,
                    async_commit=self.async_commit,
                    one_pc_commit_ts=resp.one_pc_commit_ts,
                    min_commit_ts=resp.min_commit_ts,
                )
                if outcome.fall_back_to_2pc:
                    self._fall_back_to_2pc("TiKV did not commit with the requested protocol")
                elif outcome.one_pc_commit_ts:
                    self.one_pc_commit_ts = outcome.one_pc_commit_ts
                elif outcome.min_commit_ts > self.min_commit_ts:
                    self.min_commit_ts = outcome.min_commit_ts
                if any(m.key == self.primary for m in part):
                    self.primary_prewritten = True
                    self._maybe_start_heartbeat()
            if assertion_failure is not None:
                raise assertion_failure
            if locks:
                await self._rt.resolver.resolve_for_write(
                    bo, self.start_ts, locks, options=self._resolve_options
                )
            payload = retry

    # -- 7. heartbeat ------------------------------------------------------------------

    def _maybe_start_heartbeat(self) -> None:
        assert self.plan is not None
        if self._heartbeat is not None:
            return
        if needs_ttl_manager(
            self.plan.size,
            one_pc_committed=bool(self.one_pc_commit_ts),
            threshold=self._rt.config.ttl_refreshed_txn_size,
        ):
            self.start_heartbeat()

    def start_heartbeat(self) -> None:
        """Keep :attr:`primary`'s lock alive from now on (no-op if already running).

        A pessimistic transaction starts it as soon as its primary key is locked
        (client-go ``ttlManager.run`` from ``pessimistic.go``), whatever its size.
        """
        if self._heartbeat is not None and not self._heartbeat.done():
            return
        self._heartbeat = self._rt.spawn(
            self._keep_alive(), name=f"{HEARTBEAT_TASK_PREFIX}-{self.start_ts}"
        )

    @property
    def heartbeat_running(self) -> bool:
        """Whether the heartbeat task is running."""
        return self._heartbeat is not None and not self._heartbeat.done()

    @property
    def write_options(self) -> RequestOptions:
        """The request options of this transaction's writes (priority, tags, interceptor)."""
        return self._write_options

    def use_interceptor(self, interceptor: RPCInterceptor | None) -> None:
        """Send this transaction's later writes through ``interceptor`` (its whole chain)."""
        self._write_options = dataclasses.replace(self._write_options, interceptor=interceptor)
        self._resolve_options = self._rt.resolve_options(interceptor)

    @property
    def resolve_options(self) -> RequestOptions | None:
        """Options of the lock resolution this transaction's writes cause.

        They carry the transaction's interceptor chain; ``None``: the client's options.
        """
        return self._resolve_options

    @property
    def prewrite_started(self) -> bool:
        """Whether prewrite began (a failed commit then rolls back what it wrote)."""
        return self._prewrite_started

    async def _keep_alive(self) -> None:
        """Extend the primary lock's TTL periodically (client-go ``keepAlive``)."""

        def beat() -> None:
            self.heartbeats += 1

        await keep_primary_alive(
            self._rt,
            self.start_ts,
            primary=lambda: self.primary,
            options=lambda: self._write_options,
            on_beat=beat,
        )

    def stop_heartbeat(self) -> None:
        """Stop the heartbeat task, if any."""
        task, self._heartbeat = self._heartbeat, None
        if task is not None:
            task.cancel()

    # -- 5. commit ---------------------------------------------------------------------

    def _commit_keys(self, batch: _MutBatch) -> list[bytes]:
        # CHECK_NOT_EXISTS keys leave no lock: nothing to commit (PREWRITE_ONLY).
        return [m.key for m in batch.items if m.op is not Op.CHECK_NOT_EXISTS]

    async def _timestamp_for_commit(self) -> int:
        ts, lag = await timestamp_for_commit(
            self._rt,
            wait_until_ts=self.commit_wait_until_tso,
            timeout_s=self.commit_wait_until_tso_timeout,
        )
        if lag is not None:
            self.commit_ts_lag = lag
        return ts

    async def get_commit_ts(self) -> int:
        """Fetch a commit ts from the oracle (2PC) and check it is after the start ts.

        With :attr:`commit_wait_until_tso` set, the ts is above it (see
        :func:`timestamp_for_commit`).

        Raises:
            CommitTsLagError: PD's TSO did not pass :attr:`commit_wait_until_tso` in time.

        """
        commit_ts = await self._timestamp_for_commit()
        if commit_ts <= self.start_ts:
            raise TxnError(f"commit ts {commit_ts} is not after start ts {self.start_ts}")
        self.commit_ts = commit_ts
        return commit_ts

    async def commit_primary(self) -> None:
        """Commit the primary batch synchronously (2PC).

        Raises:
            UndeterminedError: The request may have been applied but no answer came.
            TxnLockNotFoundError: The primary lock is gone (rolled back by a resolver).

        """
        await commit_primary_keys(
            self._rt,
            self._commit_keys(self.batches[0]),
            start_ts=self.start_ts,
            commit_ts=lambda: self.commit_ts,
            newer_commit_ts=self.get_commit_ts,
            options=self._write_options,
            operation="commit primary",
        )

    async def commit_batches(self, batches: Sequence[_MutBatch]) -> None:
        """Commit ``batches`` at :attr:`commit_ts` (secondaries; every batch for async commit)."""
        bo = self._rt.backoffer(self._rt.budgets.commit_secondary, "commit secondaries")

        def build(region: Region, part: Sequence[bytes]) -> kvrpcpb_pb2.CommitRequest:
            return kvrpcpb_pb2.CommitRequest(
                start_version=self.start_ts, keys=list(part), commit_version=self.commit_ts
            )

        def handle(region: Region, part: Sequence[bytes], resp: Any) -> None:
            if resp.HasField("error"):
                raise self._rt.key_error(resp.error, start_ts=self.start_ts)

        async def one(batch: _MutBatch) -> None:
            keys = self._commit_keys(batch)
            if keys:
                await self._rt.sender.execute(
                    "Commit",
                    _BY_KEYS,
                    keys,
                    build,
                    handle,
                    bo=bo.fork(),
                    options=self._write_options,
                )

        await self._run_batches(batches, one)

    def commit_secondaries_in_background(self, batches: Sequence[_MutBatch]) -> asyncio.Task[None]:
        """Commit ``batches`` in a task owned by the client (errors are logged)."""
        return self._rt.spawn(
            self.commit_batches(batches), name=f"tikv-txn-commit-secondaries-{self.start_ts}"
        )

    # -- 6. cleanup --------------------------------------------------------------------

    async def cleanup(self) -> None:
        """Roll back every prewritten key (``KvBatchRollback``), primary batch first."""
        if not self.batches:
            return
        bo = self._rt.backoffer(self._rt.budgets.cleanup, "cleanup")

        def build(region: Region, part: Sequence[bytes]) -> kvrpcpb_pb2.BatchRollbackRequest:
            return kvrpcpb_pb2.BatchRollbackRequest(start_version=self.start_ts, keys=list(part))

        def handle(region: Region, part: Sequence[bytes], resp: Any) -> None:
            if resp.HasField("error"):
                raise self._rt.key_error(resp.error, start_ts=self.start_ts)

        async def one(batch: _MutBatch) -> None:
            await self._rt.sender.execute(
                "BatchRollback",
                _BY_KEYS,
                [m.key for m in batch.items],
                build,
                handle,
                bo=bo.fork(),
                options=self._write_options,
            )

        await one(self.batches[0])
        await self._run_batches(self.batches[1:], one)

    # -- everything --------------------------------------------------------------------

    async def execute(self) -> int:
        """Commit the transaction and return its commit ts (0 when nothing was written).

        Raises:
            WriteConflictError: Another transaction wrote a key after this one started
                (found by local latches or by prewrite); nothing was committed.
            KeyExistsError: An inserted key exists.
            UndeterminedError: The primary commit's outcome is unknown.
            tikv_pd.errors.TiKVError: Other failures; the transaction was rolled back.

        """
        if not await self.prepare():
            return 0
        assert self.plan is not None
        # Local latches serve optimistic transactions only: pessimistic ones already
        # hold their keys' locks (client-go KVTxn.Commit).
        latches = None if self.pessimistic else self._rt.latches
        latch: LatchLock | None = None
        if latches is not None:
            latch = await latches.acquire(self.start_ts, [m.key for m in self.plan.mutations])
            if latch.is_stale:
                latches.release(latch)
                raise self._rt.user_error(
                    WriteConflictError(
                        start_ts=self.start_ts,
                        conflict_start_ts=0,
                        conflict_commit_ts=latch.conflict_commit_ts,
                        key=latch.stale_key or b"",
                        primary=self.primary,
                        reason=1,
                    )
                )
        commit_ts = 0
        try:
            commit_ts = await self._execute_locked()
            return commit_ts
        finally:
            self.stop_heartbeat()
            if latches is not None and latch is not None:
                latches.release(latch, commit_ts)

    async def _execute_locked(self) -> int:
        try:
            await self.prewrite()
        except UndeterminedError as exc:
            # An async-commit / 1PC prewrite may have committed: never roll it back.
            self.undetermined_error = exc
            raise
        except asyncio.CancelledError as exc:
            # Cancelled with prewrites in flight: with async commit / 1PC they may all
            # have landed (the transaction is then committed), so only a 2PC prewrite is
            # rolled back; the other locks are left to the resolvers, who can tell. The
            # caller's task still ends cancelled (asyncio's contract); the unknown outcome
            # is recorded as client-go records it (GetUndeterminedErr after a context
            # cancel, TestAsyncCommitContextCancelCausingUndetermined).
            if self.async_commit or self.one_pc:
                if self._prewrite_started:
                    self.undetermined_error = UndeterminedError("async commit / 1PC prewrite", exc)
            else:
                self._spawn_cleanup()
            raise
        except BaseException:
            self._spawn_cleanup()
            raise
        if self.stashed_assertion is not None:
            # Prewrite succeeded, so the locks were there and the assertion failure from
            # the lock results is real (async commit and 1PC were off: nothing committed).
            self._spawn_cleanup()
            raise self.stashed_assertion
        if self.one_pc_commit_ts:
            self.commit_ts = self.one_pc_commit_ts
            return self.commit_ts
        if self.async_commit:
            # Every key is prewritten with its min_commit_ts: the transaction is committed
            # at the largest one and the commit phase only cleans up locks.
            self.commit_ts = self.min_commit_ts
            self.commit_secondaries_in_background(self.batches)
            return self.commit_ts
        primary_sent = False
        try:
            await self.get_commit_ts()
            primary_sent = True
            await self.commit_primary()
        except UndeterminedError as exc:
            self.undetermined_error = exc
            raise
        except asyncio.CancelledError as exc:
            if primary_sent:
                # Cancelled while the primary commit may be in flight: the outcome is
                # unknown, so leave the locks to the resolvers (client-go
                # TestContextCancelCausingUndetermined).
                self.undetermined_error = UndeterminedError("commit of the primary key", exc)
            else:
                # No commit was sent: nothing can be committed, roll back now instead of
                # leaving the locks to wait out their TTL.
                self._spawn_cleanup()
            raise
        except BaseException:
            self._spawn_cleanup()
            raise
        if len(self.batches) > 1:
            self.commit_secondaries_in_background(self.batches[1:])
        return self.commit_ts

    def _spawn_cleanup(self) -> None:
        if not self._prewrite_started or self._rt.closed:
            return
        try:
            self._rt.spawn(self.cleanup(), name=f"tikv-txn-cleanup-{self.start_ts}")
        except RuntimeError:  # no running loop (interpreter shutdown)
            _log.warning("txn %d: could not schedule cleanup", self.start_ts)
