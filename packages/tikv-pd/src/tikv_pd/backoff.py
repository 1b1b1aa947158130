"""client-go's retry backoff: named kinds, per-operation budgets and the Backoffer.

Every retry in the client sleeps through a :class:`Backoffer`. Each retryable condition
has a named :class:`BackoffKind` (``regionMiss``, ``tikvRPC``, ``txnLock``, ...) with a
base, a cap and a jitter policy, exactly as client-go's ``config/retry/config.go``. Each
kind keeps its own attempt counter inside one Backoffer, so the sleeps of one kind grow
exponentially independently of the others. One Backoffer carries one operation's
*budget*: the total milliseconds it may sleep (``config/retry/backoff.go``). When the
budget is used up, the next :meth:`Backoffer.backoff` raises
:class:`tikv_pd.errors.TimeoutError` with the recorded causes.

Semantics kept from client-go:

* The budget check happens *before* sleeping: the sleep that crosses the budget is taken,
  the following backoff fails. A budget of 0 means unlimited.
* Budgets are multiplied by ``BackOffWeight`` (2 by default, ``kv/variables.go``) when
  the Backoffer is created, as ``NewBackofferWithVars`` does.
* Sleep caused by ``tikvServerBusy`` is "excluded": it does not count against the budget,
  up to its own limit of 10 minutes (``isSleepExcluded``).
* ``txnLockFast`` takes its base from ``BackoffVars.backoff_lock_fast_ms`` (10 ms).
* The error reported when the budget runs out names the kind that slept longest
  (ignoring excluded kinds), as client-go's ``longestSleepCfg``.
* :meth:`Backoffer.clone` and :meth:`Backoffer.fork` copy the sleep totals and causes but
  restart each kind's exponential sequence; a fork remembers its parent, and
  :meth:`Backoffer.update_using_forked` folds a fork's totals back into an ancestor.

The arithmetic is the pure function :func:`next_sleep_ms`; the Backoffer adds state, an
injectable ``sleep`` coroutine and an injectable RNG so that tests are deterministic.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace

from tikv_pd import observability as _obs
from tikv_pd.errors import TimeoutError as BackoffTimeoutError

__all__ = [
    "ASYNC_RESOLVE_LOCK_MAX_BACKOFF",
    "BATCH_GET_MAX_BACKOFF",
    "BROADCAST_MAX_BACKOFF",
    "CLEANUP_MAX_BACKOFF",
    "COMMIT_MAX_BACKOFF",
    "COMMIT_SECONDARY_MAX_BACKOFF",
    "COMMIT_TS_LAG",
    "DATA_NOT_READY",
    "DEFAULT_VARS",
    "DELETE_RANGE_ONE_REGION_MAX_BACKOFF",
    "GC_RESOLVE_LOCK_MAX_BACKOFF",
    "GET_MAX_BACKOFF",
    "GET_TXN_STATUS_MAX_BACKOFF",
    "IS_WITNESS",
    "KEEP_ALIVE_MAX_BACKOFF",
    "KINDS",
    "LOCATE_REGION_MAX_BACKOFF",
    "MAX_RECORDED_CAUSES",
    "MAX_SPLIT_REGIONS_BACKOFF",
    "MAX_TS_NOT_SYNCED",
    "PD_RPC",
    "PESSIMISTIC_LOCK_MAX_BACKOFF",
    "PESSIMISTIC_ROLLBACK_MAX_BACKOFF",
    "PREWRITE_MAX_BACKOFF",
    "RAWKV_MAX_BACKOFF",
    "REGION_MISS",
    "REGION_NOT_INITIALIZED",
    "REGION_RECOVERY_IN_PROGRESS",
    "REGION_SCHEDULING",
    "SCANNER_NEXT_MAX_BACKOFF",
    "SPLIT_REGION_BACKOFF",
    "STALE_CMD",
    "TIFLASH_RPC",
    "TIFLASH_SERVER_BUSY",
    "TIKV_DISK_FULL",
    "TIKV_RPC",
    "TIKV_SERVER_BUSY",
    "TSO_MAX_BACKOFF",
    "TXN_LOCK",
    "TXN_LOCK_FAST",
    "TXN_NOT_FOUND",
    "WAIT_SCATTER_REGION_FINISH_BACKOFF",
    "BackoffCause",
    "BackoffKind",
    "BackoffVars",
    "Backoffer",
    "Jitter",
    "SleepFn",
    "expo",
    "kind_by_name",
    "next_sleep_ms",
]


class Jitter(enum.IntEnum):
    """Jitter policy of a backoff kind (values as client-go's constants).

    With ``expo = min(cap, base * 2**attempt)``:

    * ``NO_JITTER``: sleep ``expo``.
    * ``FULL_JITTER``: sleep ``rand[0, expo)``.
    * ``EQUAL_JITTER``: sleep ``expo/2 + rand[0, expo/2)`` (never very short).
    * ``DECORR_JITTER``: sleep ``min(cap, base + rand[0, 3*last - base))``.
    """

    NO_JITTER = 1
    FULL_JITTER = 2
    EQUAL_JITTER = 3
    DECORR_JITTER = 4


@dataclass(frozen=True, slots=True)
class BackoffKind:
    """A named backoff configuration (client-go ``retry.Config``).

    Attributes:
        name: client-go's name of the kind (``"regionMiss"``, ``"tikvRPC"``, ...).
        base_ms: First sleep in milliseconds (clamped to at least 2, as client-go).
        cap_ms: Largest sleep in milliseconds.
        jitter: The jitter policy.
        error_message: The text of the error client-go returns when an operation's
            budget runs out and this kind slept longest (e.g. "region unavailable").
        excluded_limit_ms: When set, sleep of this kind does not count against the
            operation budget, up to this many milliseconds (client-go
            ``isSleepExcluded``).

    """

    name: str
    base_ms: int
    cap_ms: int
    jitter: Jitter
    error_message: str
    excluded_limit_ms: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("BackoffKind.name must not be empty")
        if self.base_ms < 0 or self.cap_ms <= 0:
            raise ValueError(
                f"BackoffKind {self.name}: base_ms must be >= 0 and cap_ms > 0, "
                f"got base_ms={self.base_ms} cap_ms={self.cap_ms}"
            )
        if not isinstance(self.jitter, Jitter):
            raise TypeError(f"BackoffKind {self.name}: jitter must be a Jitter")
        if self.excluded_limit_ms is not None and self.excluded_limit_ms < 0:
            raise ValueError(f"BackoffKind {self.name}: excluded_limit_ms must be >= 0")

    def __str__(self) -> str:
        return self.name


# The table of client-go ``config/retry/config.go`` (``BoTiKVRPC`` ... ``BoTxnLockFast``).
# Values are (base ms, cap ms, jitter); the message is that of the error client-go returns
# when this kind dominates an exhausted budget (``error/error.go``).

#: ``BoTiKVRPC``: a TiKV RPC failed at the transport level.
TIKV_RPC = BackoffKind("tikvRPC", 100, 2000, Jitter.EQUAL_JITTER, "tikv server timeout")
#: ``BoTiFlashRPC``: a TiFlash RPC failed at the transport level.
TIFLASH_RPC = BackoffKind("tiflashRPC", 100, 2000, Jitter.EQUAL_JITTER, "tiflash server timeout")
#: ``BoTxnLock``: a key is locked by a live transaction; wait before re-checking.
TXN_LOCK = BackoffKind("txnLock", 100, 3000, Jitter.EQUAL_JITTER, "resolve lock timeout")
#: ``BoPDRPC``: a PD RPC failed.
PD_RPC = BackoffKind("pdRPC", 500, 3000, Jitter.EQUAL_JITTER, "PD server timeout")
#: ``BoRegionMiss``: region error (not leader without hint, region not found, ...).
#: Base 2 ms because the condition usually clears quickly.
REGION_MISS = BackoffKind("regionMiss", 2, 500, Jitter.NO_JITTER, "region unavailable")
#: ``BoRegionScheduling``: the region is being scheduled (e.g. leader transfer pending).
REGION_SCHEDULING = BackoffKind("regionScheduling", 2, 500, Jitter.NO_JITTER, "region unavailable")
#: ``BoTiKVServerBusy``: ServerIsBusy; its sleep is excluded from the budget up to 10 min.
TIKV_SERVER_BUSY = BackoffKind(
    "tikvServerBusy",
    2000,
    10000,
    Jitter.EQUAL_JITTER,
    "tikv server busy",
    excluded_limit_ms=600_000,
)
#: ``BoTiKVDiskFull``: the store's disk is full.
TIKV_DISK_FULL = BackoffKind("tikvDiskFull", 500, 5000, Jitter.NO_JITTER, "tikv disk full")
#: ``BoRegionRecoveryInProgress``: online unsafe recovery is running on the region.
REGION_RECOVERY_IN_PROGRESS = BackoffKind(
    "regionRecoveryInProgress",
    100,
    10000,
    Jitter.EQUAL_JITTER,
    "region is being online unsafe recovered",
)
#: ``BoTiFlashServerBusy``: TiFlash is busy (not excluded from the budget in client-go).
TIFLASH_SERVER_BUSY = BackoffKind(
    "tiflashServerBusy", 2000, 10000, Jitter.EQUAL_JITTER, "tiflash server busy"
)
#: ``BoTxnNotFound``: check_txn_status found no transaction yet (prewrite may be in flight).
TXN_NOT_FOUND = BackoffKind("txnNotFound", 2, 500, Jitter.NO_JITTER, "resolve lock timeout")
#: ``BoStaleCmd``: StaleCommand region error.
STALE_CMD = BackoffKind("staleCommand", 2, 1000, Jitter.NO_JITTER, "tikv stale command")
#: ``BoMaxTsNotSynced``: MaxTimestampNotSynced (async commit after leader change).
MAX_TS_NOT_SYNCED = BackoffKind(
    "maxTsNotSynced", 2, 500, Jitter.NO_JITTER, "tikv max timestamp not synced"
)
#: ``BoCommitTSLag``: the commit ts lags behind what the server expects.
COMMIT_TS_LAG = BackoffKind(
    "commitTSLag", 2, 500, Jitter.NO_JITTER, "commit timestamp lags behind expected"
)
#: ``BoMaxRegionNotInitialized``: RegionNotInitialized (a peer still being created).
REGION_NOT_INITIALIZED = BackoffKind(
    "regionNotInitialized", 2, 1000, Jitter.NO_JITTER, "region not Initialized"
)
#: ``BoIsWitness``: the request reached a witness peer, which holds no data.
IS_WITNESS = BackoffKind("isWitness", 1000, 10000, Jitter.EQUAL_JITTER, "peer is witness")
#: ``BoTxnLockFast``: fast lock backoff; the Backoffer replaces the base with
#: ``BackoffVars.backoff_lock_fast_ms`` (10 ms by default, ``kv/variables.go``), as
#: client-go's ``createBackoffFn`` does; the table's own base is 2.
TXN_LOCK_FAST = BackoffKind("txnLockFast", 2, 3000, Jitter.EQUAL_JITTER, "resolve lock timeout")

#: ``BoMaxDataNotReady`` (2/2000, no jitter): a stale read hit a replica whose safe-ts
#: lags. client-go removed it in #1423 (2024): its stale reads now fall back to the
#: leader at once instead of backing off. Kept for callers that choose to back off.
DATA_NOT_READY = BackoffKind("dataNotReady", 2, 2000, Jitter.NO_JITTER, "region data not ready")

#: Every built-in kind by client-go name.
KINDS: Mapping[str, BackoffKind] = {
    k.name: k
    for k in (
        TIKV_RPC,
        TIFLASH_RPC,
        TXN_LOCK,
        PD_RPC,
        REGION_MISS,
        REGION_SCHEDULING,
        TIKV_SERVER_BUSY,
        TIKV_DISK_FULL,
        REGION_RECOVERY_IN_PROGRESS,
        TIFLASH_SERVER_BUSY,
        TXN_NOT_FOUND,
        STALE_CMD,
        MAX_TS_NOT_SYNCED,
        COMMIT_TS_LAG,
        REGION_NOT_INITIALIZED,
        IS_WITNESS,
        TXN_LOCK_FAST,
        DATA_NOT_READY,
    )
}


def kind_by_name(name: str) -> BackoffKind:
    """Return the built-in kind with client-go's ``name`` (case-insensitive).

    Raises:
        ValueError: No built-in kind has that name.

    """
    for kind in KINDS.values():
        if kind.name.lower() == name.lower():
            return kind
    raise ValueError(f"unknown backoff kind {name!r}; known: {', '.join(KINDS)}")


# --- Per-operation budgets: total sleep in ms, before ×BackOffWeight. -----------------

#: Any raw KV operation (``rawkv/rawkv.go`` rawkvMaxBackoff).
RAWKV_MAX_BACKOFF = 20_000
#: Snapshot point get (``txnkv/txnsnapshot/snapshot.go`` getMaxBackoff).
GET_MAX_BACKOFF = 20_000
#: Snapshot batch get (``txnkv/txnsnapshot/snapshot.go`` batchGetMaxBackoff).
BATCH_GET_MAX_BACKOFF = 20_000
#: One scanner page (``txnkv/txnsnapshot/scan.go`` scannerNextMaxBackoff).
SCANNER_NEXT_MAX_BACKOFF = 20_000
#: Prewrite (``txnkv/transaction/2pc.go`` PrewriteMaxBackoff).
PREWRITE_MAX_BACKOFF = 40_000
#: Commit of the primary (``txnkv/transaction/2pc.go`` CommitMaxBackoff).
COMMIT_MAX_BACKOFF = 40_000
#: Commit of secondaries, in the background (``2pc.go`` CommitSecondaryMaxBackoff).
COMMIT_SECONDARY_MAX_BACKOFF = 41_000
#: Cleanup / rollback after a failed commit (``2pc.go`` cleanupMaxBackoff).
CLEANUP_MAX_BACKOFF = 20_000
#: Getting a timestamp from PD (``2pc.go`` TsoMaxBackoff).
TSO_MAX_BACKOFF = 15_000
#: TTL heartbeat of the primary lock (``2pc.go`` keepAliveMaxBackoff).
KEEP_ALIVE_MAX_BACKOFF = 20_000
#: Acquiring pessimistic locks (``2pc.go`` pessimisticLockMaxBackoff).
PESSIMISTIC_LOCK_MAX_BACKOFF = 20_000
#: Rolling back pessimistic locks (``txnkv/transaction/txn.go``).
PESSIMISTIC_ROLLBACK_MAX_BACKOFF = 20_000
#: Broadcasting the transaction status (``2pc.go`` broadcastMaxBackoff).
BROADCAST_MAX_BACKOFF = 10_000
#: check_txn_status from the lock resolver (``txnkv/txnlock/lock_resolver.go``).
GET_TXN_STATUS_MAX_BACKOFF = 20_000
#: Resolving async-commit locks (``txnkv/txnlock/lock_resolver.go``).
ASYNC_RESOLVE_LOCK_MAX_BACKOFF = 40_000
#: GC resolving locks over a range (``tikv/backoff.go`` gcResolveLockMaxBackoff).
GC_RESOLVE_LOCK_MAX_BACKOFF = 100_000
#: Delete range, per region (``txnkv/rangetask/delete_range.go``).
DELETE_RANGE_ONE_REGION_MAX_BACKOFF = 100_000
#: Locating a region during a range task (``txnkv/rangetask/range_task.go``).
LOCATE_REGION_MAX_BACKOFF = 20_000
#: Splitting one batch of regions (``tikv/split_region.go`` splitRegionBackoff).
SPLIT_REGION_BACKOFF = 20_000
#: Splitting many regions (``tikv/split_region.go`` maxSplitRegionsBackoff).
MAX_SPLIT_REGIONS_BACKOFF = 120_000
#: Waiting for scatter to finish (``tikv/split_region.go``).
WAIT_SCATTER_REGION_FINISH_BACKOFF = 120_000

#: How many recent causes a Backoffer keeps for its final error. client-go keeps 3
#: (``MaxRecordBackoffErrCount``); we keep more because Python users see them in str().
MAX_RECORDED_CAUSES = 32

_MAX_INT32 = 2**31 - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class BackoffVars:
    """Backoff tunables shared by Backoffers (client-go ``kv.Variables``).

    Attributes:
        backoff_lock_fast_ms: Base of ``txnLockFast`` (``DefBackoffLockFast`` = 10).
        backoff_weight: Multiplier of every budget (``DefBackOffWeight`` = 2).

    """

    backoff_lock_fast_ms: int = 10
    backoff_weight: int = 2

    def __post_init__(self) -> None:
        if self.backoff_lock_fast_ms < 0:
            raise ValueError("backoff_lock_fast_ms must be >= 0")
        if self.backoff_weight < 1:
            raise ValueError(f"backoff_weight must be >= 1, got {self.backoff_weight}")


#: The defaults of client-go ``kv/variables.go``.
DEFAULT_VARS = BackoffVars()


def expo(base_ms: int, cap_ms: int, attempt: int) -> int:
    """Return ``min(cap, base * 2**attempt)`` (client-go ``expo``)."""
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if attempt >= 62:  # 2**62 * base exceeds any cap; avoid building huge integers.
        return cap_ms
    return min(cap_ms, base_ms << attempt)


def next_sleep_ms(kind: BackoffKind, attempt: int, last_sleep_ms: int, rng: random.Random) -> int:
    """Compute the sleep of one backoff, in milliseconds (pure; client-go ``newBackoffFn``).

    Args:
        kind: The backoff kind (its base is clamped to at least 2 ms).
        attempt: How many times this kind already slept in this Backoffer (0 first).
        last_sleep_ms: The previous sleep of this kind (its base before the first one);
            only ``DECORR_JITTER`` uses it.
        rng: Source of randomness for the jittered policies.

    Returns:
        The number of milliseconds to sleep.

    """
    base = max(kind.base_ms, 2)
    cap = kind.cap_ms
    jitter = kind.jitter
    if jitter is Jitter.NO_JITTER:
        return expo(base, cap, attempt)
    if jitter is Jitter.FULL_JITTER:
        return rng.randrange(max(expo(base, cap, attempt), 1))
    if jitter is Jitter.EQUAL_JITTER:
        half = expo(base, cap, attempt) // 2
        return half + rng.randrange(max(half, 1))
    # DECORR_JITTER
    spread = max(last_sleep_ms * 3 - base, 1)
    return min(cap, base + rng.randrange(spread))


@dataclass(frozen=True, slots=True)
class BackoffCause:
    """One recorded backoff: which kind slept, why, and when.

    Attributes:
        kind: The kind's name.
        reason: The text of the error that caused the backoff.
        at: Wall-clock time (seconds since the epoch) of the backoff.
        sleep_ms: How long it slept.

    """

    kind: str
    reason: str
    at: float
    sleep_ms: int

    def __str__(self) -> str:
        return f"{self.kind} ({self.sleep_ms} ms): {self.reason}"


#: An awaitable sleep taking seconds, like :func:`asyncio.sleep`.
SleepFn = Callable[[float], Awaitable[object]]


@dataclass(slots=True)
class _KindState:
    """Per-kind exponential state inside one Backoffer (client-go's backoffFn closure)."""

    attempts: int = 0
    last_sleep_ms: int = 0


@dataclass(slots=True)
class _Totals:
    """Accounting a Backoffer shares with its clones on copy and with ancestors on update."""

    total_sleep_ms: int = 0
    excluded_sleep_ms: int = 0
    errors_num: int = 0
    causes: deque[BackoffCause] = field(default_factory=lambda: deque(maxlen=MAX_RECORDED_CAUSES))
    sleep_by_kind: dict[str, int] = field(default_factory=dict)
    times_by_kind: dict[str, int] = field(default_factory=dict)

    def copy(self) -> _Totals:
        return _Totals(
            self.total_sleep_ms,
            self.excluded_sleep_ms,
            self.errors_num,
            deque(self.causes, maxlen=MAX_RECORDED_CAUSES),
            dict(self.sleep_by_kind),
            dict(self.times_by_kind),
        )


class Backoffer:
    """Sleeps between retries of one operation, within a total-sleep budget.

    Args:
        budget_ms: Total milliseconds this operation may sleep, before the weight is
            applied (use the ``*_MAX_BACKOFF`` constants). 0 means unlimited.
        operation: Name of the operation, shown in the final error.
        vars: Backoff tunables (weight, lock-fast base).
        sleep: Coroutine used to sleep (seconds); default :func:`asyncio.sleep`.
        rng: Random source for jitter; default a fresh :class:`random.Random`.
        noop: When true, :meth:`backoff` never sleeps and raises the cause at once
            (client-go ``NewNoopBackoff``: "do not retry").

    Raises:
        ValueError: ``budget_ms`` is negative.

    """

    __slots__ = (
        "_budget_ms",
        "_cancelled",
        "_kinds",
        "_noop",
        "_parent",
        "_rng",
        "_sleep",
        "_state",
        "_totals",
        "_vars",
        "operation",
    )

    def __init__(
        self,
        budget_ms: int,
        *,
        operation: str = "operation",
        vars: BackoffVars = DEFAULT_VARS,
        sleep: SleepFn | None = None,
        rng: random.Random | None = None,
        noop: bool = False,
    ) -> None:
        if not isinstance(budget_ms, int) or isinstance(budget_ms, bool):
            raise TypeError(f"budget_ms must be an int, got {type(budget_ms).__name__}")
        if budget_ms < 0:
            raise ValueError(f"budget_ms must be >= 0 (0 = unlimited), got {budget_ms}")
        self.operation = operation
        self._vars = vars
        # client-go withVars: multiply by BackOffWeight unless that overflows int32.
        if budget_ms > 0 and _MAX_INT32 // vars.backoff_weight >= budget_ms:
            budget_ms *= vars.backoff_weight
        self._budget_ms = budget_ms
        self._sleep: SleepFn = sleep if sleep is not None else asyncio.sleep
        self._rng = rng if rng is not None else random.Random()
        self._noop = noop
        self._totals = _Totals()
        self._state: dict[str, _KindState] = {}
        self._kinds: dict[str, BackoffKind] = {}
        self._parent: Backoffer | None = None
        self._cancelled = False

    # -- accessors ------------------------------------------------------------------

    @property
    def budget_ms(self) -> int:
        """The effective budget in ms (after the weight); 0 means unlimited."""
        return self._budget_ms

    @property
    def total_sleep_ms(self) -> int:
        """Total milliseconds slept so far, excluded kinds included."""
        return self._totals.total_sleep_ms

    @property
    def excluded_sleep_ms(self) -> int:
        """Milliseconds slept on excluded kinds (not counted against the budget)."""
        return self._totals.excluded_sleep_ms

    @property
    def errors_num(self) -> int:
        """How many backoffs were taken (all of them, not only the recorded causes)."""
        return self._totals.errors_num

    @property
    def causes(self) -> list[BackoffCause]:
        """The most recent causes, oldest first (at most :data:`MAX_RECORDED_CAUSES`)."""
        return list(self._totals.causes)

    @property
    def backoff_times(self) -> dict[str, int]:
        """How many times each kind backed off."""
        return dict(self._totals.times_by_kind)

    @property
    def backoff_sleep_ms(self) -> dict[str, int]:
        """Milliseconds slept per kind."""
        return dict(self._totals.sleep_by_kind)

    @property
    def parent(self) -> Backoffer | None:
        """The Backoffer this one was forked from, if any."""
        return self._parent

    @property
    def vars(self) -> BackoffVars:
        """The tunables this Backoffer uses."""
        return self._vars

    def kinds(self) -> list[str]:
        """Names of the kinds used, this Backoffer's first, then its ancestors'."""
        names: list[str] = []
        bo: Backoffer | None = self
        while bo is not None:
            names.extend(bo._kinds)
            bo = bo._parent
        return names

    @property
    def cancelled(self) -> bool:
        """Whether this Backoffer or an ancestor was cancelled."""
        bo: Backoffer | None = self
        while bo is not None:
            if bo._cancelled:
                return True
            bo = bo._parent
        return False

    def cancel(self) -> None:
        """Cancel this Backoffer and its forks: their next backoff raises the cause.

        The analogue of cancelling a forked Backoffer's context in client-go (e.g. when
        one prewrite batch fails, its siblings stop retrying).
        """
        self._cancelled = True

    # -- the operation --------------------------------------------------------------

    def _effective_kind(self, kind: BackoffKind) -> BackoffKind:
        if kind.name.lower() == TXN_LOCK_FAST.name.lower():
            return replace(kind, base_ms=self._vars.backoff_lock_fast_ms)
        return kind

    def longest_sleep_kind(self) -> tuple[BackoffKind | None, int]:
        """Return the non-excluded kind that slept longest and its total sleep in ms."""
        best: BackoffKind | None = None
        best_ms = 0
        for name, slept in self._totals.sleep_by_kind.items():
            kind = self._kinds.get(name) or KINDS.get(name)
            if kind is None or kind.excluded_limit_ms is not None:
                continue
            if slept > best_ms:
                best, best_ms = kind, slept
        return best, best_ms

    def budget_exceeded(self, kind: BackoffKind) -> bool:
        """Whether a backoff of ``kind`` now would fail (client-go's check, pure)."""
        if self._budget_ms <= 0:
            return False
        totals = self._totals
        if totals.total_sleep_ms - totals.excluded_sleep_ms >= self._budget_ms:
            return True
        if kind.excluded_limit_ms is not None:
            return (
                totals.excluded_sleep_ms >= kind.excluded_limit_ms
                and totals.excluded_sleep_ms >= self._budget_ms
            )
        return False

    def timeout_error(self, last_error: BaseException | None = None) -> BackoffTimeoutError:
        """Build the error that reports this Backoffer's exhausted budget."""
        longest, _ = self.longest_sleep_kind()
        return BackoffTimeoutError(
            self.operation,
            causes=[str(c) for c in self._totals.causes],
            total_sleep_ms=self._totals.total_sleep_ms,
            budget_ms=self._budget_ms,
            last_error=last_error,
            longest_kind=(f"{longest.name} ({longest.error_message})" if longest else None),
            backoff_times=self._totals.times_by_kind,
        )

    async def backoff(
        self,
        kind: BackoffKind,
        error: BaseException | str,
        *,
        max_sleep_ms: int | None = None,
    ) -> int:
        """Record ``error`` and sleep according to ``kind``; fail when the budget is gone.

        Args:
            kind: The backoff kind that matches the condition.
            error: The error (or a description of it) that caused this retry.
            max_sleep_ms: Cap this one sleep (client-go ``BackoffWithMaxSleep``, e.g.
                sleeping no longer than a lock's remaining TTL). ``None`` = no cap.

        Returns:
            The milliseconds actually slept.

        Raises:
            tikv_pd.errors.TimeoutError: The budget was already used up; carries the
                recorded causes and the kind that slept longest.
            BaseException: ``error`` itself when this Backoffer is a no-op or cancelled
                (when ``error`` is a string, a :class:`tikv_pd.errors.TimeoutError`).

        """
        if max_sleep_ms is not None and max_sleep_ms < 0:
            raise ValueError(f"max_sleep_ms must be >= 0 or None, got {max_sleep_ms}")
        if self._noop or self.cancelled:
            if isinstance(error, BaseException):
                raise error
            raise self.timeout_error(None)
        if self.budget_exceeded(kind):
            last = error if isinstance(error, BaseException) else None
            raise self.timeout_error(last)

        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        effective = self._effective_kind(kind)
        state = self._state.get(kind.name)
        if state is None:
            state = _KindState(last_sleep_ms=max(effective.base_ms, 2))
            self._state[kind.name] = state
        self._kinds.setdefault(kind.name, kind)
        sleep_ms = next_sleep_ms(effective, state.attempts, state.last_sleep_ms, self._rng)
        real_sleep = sleep_ms if max_sleep_ms is None else min(sleep_ms, max_sleep_ms)

        totals = self._totals
        totals.causes.append(BackoffCause(kind.name, reason, time.time(), real_sleep))
        totals.errors_num += 1

        if _obs.metrics is None and _obs.tracing is None:
            await self._sleep(real_sleep / 1000.0)
        else:
            # Observability hook: backoff_seconds metric and a tikv.backoff.<kind> span.
            await _obs.observed_backoff(kind.name, real_sleep, self._sleep)

        state.attempts += 1
        state.last_sleep_ms = sleep_ms
        totals.total_sleep_ms += real_sleep
        if kind.excluded_limit_ms is not None:
            totals.excluded_sleep_ms += real_sleep
        totals.sleep_by_kind[kind.name] = totals.sleep_by_kind.get(kind.name, 0) + real_sleep
        totals.times_by_kind[kind.name] = totals.times_by_kind.get(kind.name, 0) + 1
        return real_sleep

    # -- copies ---------------------------------------------------------------------

    def _copy(self) -> Backoffer:
        other = Backoffer.__new__(Backoffer)
        other.operation = self.operation
        other._vars = self._vars
        other._budget_ms = self._budget_ms
        other._sleep = self._sleep
        other._rng = self._rng
        other._noop = self._noop
        other._totals = self._totals.copy()
        # Each kind's exponential sequence restarts, as client-go does not copy ``fn``.
        other._state = {}
        other._kinds = dict(self._kinds)
        other._parent = None
        other._cancelled = False
        return other

    def clone(self) -> Backoffer:
        """Return an independent copy with the same budget, totals and causes.

        Like client-go ``Clone``, the copy keeps this Backoffer's parent link but
        restarts each kind's exponential sequence.
        """
        other = self._copy()
        other._parent = self._parent
        other._cancelled = self._cancelled
        return other

    def fork(self) -> Backoffer:
        """Return a child Backoffer for a sub-task (one batch of a batched request).

        The child starts from this Backoffer's totals, so the operation's budget is
        shared in spirit; cancelling this Backoffer cancels the child. Fold the child's
        totals back with :meth:`update_using_forked` when the sub-task is done.
        """
        other = self._copy()
        other._parent = self
        return other

    def update_using_forked(self, forked: Backoffer) -> None:
        """Adopt the totals and causes of ``forked`` if this Backoffer is its ancestor."""
        bo = forked._parent
        while bo is not None:
            if bo is self:
                self._totals = forked._totals.copy()
                return
            bo = bo._parent

    def reset(self) -> None:
        """Forget the sleep totals and the per-kind sequences (keeps the causes)."""
        self._state = {}
        self._totals.total_sleep_ms = 0
        self._totals.excluded_sleep_ms = 0

    def reset_budget(self, budget_ms: int) -> None:
        """Reset, then set a new budget (weighted as in the constructor)."""
        if budget_ms < 0:
            raise ValueError(f"budget_ms must be >= 0, got {budget_ms}")
        self.reset()
        if budget_ms > 0 and _MAX_INT32 // self._vars.backoff_weight >= budget_ms:
            budget_ms *= self._vars.backoff_weight
        self._budget_ms = budget_ms

    def __repr__(self) -> str:
        return (
            f"Backoffer(operation={self.operation!r}, budget_ms={self._budget_ms}, "
            f"total_sleep_ms={self._totals.total_sleep_ms}, kinds={self.kinds()})"
        )
