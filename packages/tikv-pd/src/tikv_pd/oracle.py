"""Timestamps: TSO arithmetic, the Oracle protocol, local and mock oracles.

A TiKV timestamp (TSO) is a 64-bit integer ``physical_ms << 18 | logical``: the physical
part is PD's wall clock in Unix milliseconds, the 18 logical bits order timestamps issued
within the same millisecond (client-go ``oracle/oracle.go``). Lock TTLs are measured from
the physical part of the lock's start ts.

:class:`Oracle` is what transactions use. :class:`LocalOracle` (wall clock of this
process, for tests and embedded use) and :class:`MockOracle` (settable time, an outage
switch) implement it here; the PD-backed oracle lives with the PD client and reuses
:class:`LowResolutionTimestampCache`, the 2-second cached timestamp of client-go
``oracle/oracles/pd.go``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from tikv_pd.errors import ClientClosedError, PDError

__all__ = [
    "ADAPTIVE_BLOCK_RECOVER_THRESHOLD",
    "ADAPTIVE_DELAY_BEFORE_RECOVERING",
    "ADAPTIVE_MIN_INTERVAL",
    "ADAPTIVE_RECOVER_PER_SECOND",
    "ADAPTIVE_SHRINK_PRESERVE",
    "DEFAULT_LOW_RESOLUTION_UPDATE_INTERVAL",
    "LOGICAL_BITS",
    "LOGICAL_MASK",
    "MAX_TIMESTAMP",
    "AdaptiveUpdateInterval",
    "Clock",
    "LocalOracle",
    "LowResolutionTimestampCache",
    "MockOracle",
    "Oracle",
    "compose_ts",
    "extract_logical",
    "extract_physical",
    "lower_limit_start_ts",
    "time_from_ts",
    "ts_from_time",
]

_log = logging.getLogger("tikv.oracle")

#: Number of logical bits in a timestamp (client-go ``physicalShiftBits``).
LOGICAL_BITS = 18
#: Mask of the logical part.
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1
#: The largest timestamp (uint64 max; TiKV reads at it see the latest data).
MAX_TIMESTAMP = 2**64 - 1
#: Refresh period of the low-resolution timestamp, seconds (client-go ``tikv/kv.go``
#: defaultOracleUpdateInterval = 2 s).
DEFAULT_LOW_RESOLUTION_UPDATE_INTERVAL = 2.0

#: A wall clock returning Unix time in seconds, like :func:`time.time`.
Clock = Callable[[], float]


def compose_ts(physical_ms: int, logical: int) -> int:
    """Build a timestamp from its physical (Unix ms) and logical parts.

    Raises:
        ValueError: ``physical_ms`` is negative or too large, or ``logical`` is outside
            ``[0, 2**18)``.

    """
    if not 0 <= logical <= LOGICAL_MASK:
        raise ValueError(f"logical part must be in [0, {LOGICAL_MASK}], got {logical}")
    if not 0 <= physical_ms < 1 << (64 - LOGICAL_BITS):
        raise ValueError(f"physical part must be in [0, 2**46), got {physical_ms}")
    return (physical_ms << LOGICAL_BITS) | logical


def extract_physical(ts: int) -> int:
    """Return the physical part (Unix milliseconds) of ``ts``."""
    return ts >> LOGICAL_BITS


def extract_logical(ts: int) -> int:
    """Return the logical part of ``ts``."""
    return ts & LOGICAL_MASK


def ts_from_time(unix_seconds: float) -> int:
    """Return the timestamp of a wall-clock time (logical part 0; client-go GoTimeToTS)."""
    # Truncate to whole milliseconds like client-go; round first at the microsecond so
    # float noise (1.005 * 1000 == 1004.9999...) does not lose a millisecond.
    return compose_ts(math.floor(round(unix_seconds * 1000, 3)), 0)


def time_from_ts(ts: int) -> float:
    """Return the wall-clock time (Unix seconds) of ``ts``'s physical part."""
    return extract_physical(ts) / 1000.0


def lower_limit_start_ts(now_unix_seconds: float, max_txn_time_use_ms: int) -> int:
    """Return the oldest start ts a live transaction may have.

    A transaction older than ``max_txn_time_use_ms`` cannot still be running (client-go
    ``GoTimeToLowerLimitStartTS``; MaxTxnTimeUse is 24 h in ``txnkv/transaction/txn.go``).
    """
    return ts_from_time(max(now_unix_seconds - max_txn_time_use_ms / 1000.0, 0.0))


def _check_lock_args(lock_ts: int, ttl_ms: int) -> None:
    if lock_ts < 0 or ttl_ms < 0:
        raise ValueError(f"lock_ts and ttl_ms must be >= 0, got {lock_ts}, {ttl_ms}")


def _check_prev_seconds(prev_seconds: float) -> None:
    if prev_seconds < 0:
        raise ValueError(f"prev_seconds must be >= 0, got {prev_seconds}")


@runtime_checkable
class Oracle(Protocol):
    """A source of timestamps (client-go ``oracle.Oracle``)."""

    async def get_timestamp(self) -> int:
        """Return a fresh timestamp, greater than every one returned before."""
        ...

    async def get_low_resolution_timestamp(self) -> int:
        """Return a recent, possibly cached timestamp (cheap; for expiry checks and reads)."""
        ...

    async def get_stale_timestamp(self, prev_seconds: float) -> int:
        """Return the timestamp of about ``prev_seconds`` ago (for stale reads)."""
        ...

    def is_expired(self, lock_ts: int, ttl_ms: int) -> bool:
        """Whether a lock started at ``lock_ts`` with ``ttl_ms`` has expired by now."""
        ...

    def until_expired(self, lock_ts: int, ttl_ms: int) -> int:
        """Milliseconds until that lock expires (negative when already expired)."""
        ...

    async def close(self) -> None:
        """Release resources; later calls raise ClientClosedError."""
        ...


class _ClockOracle:
    """Shared machinery of the local and mock oracles: a monotonic TSO over a clock."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last_ts = 0
        self._closed = False

    def _now(self) -> float:
        return self._clock()

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("oracle")

    def _next_ts(self) -> int:
        # Timestamps must strictly increase even if the clock stalls or steps back:
        # within one millisecond (or after a backward step) the logical part counts up,
        # carrying into the physical part if it overflows.
        ts = ts_from_time(self._now())
        with self._lock:
            if ts <= self._last_ts:
                ts = self._last_ts + 1
            self._last_ts = ts
        return ts

    @property
    def last_timestamp(self) -> int:
        """The last timestamp handed out (0 before the first)."""
        return self._last_ts

    def is_expired(self, lock_ts: int, ttl_ms: int) -> bool:
        """Whether the lock's physical start plus ``ttl_ms`` is at or before now."""
        return self.until_expired(lock_ts, ttl_ms) <= 0

    def until_expired(self, lock_ts: int, ttl_ms: int) -> int:
        """Milliseconds from now until ``physical(lock_ts) + ttl_ms``."""
        _check_lock_args(lock_ts, ttl_ms)
        return extract_physical(lock_ts) + ttl_ms - extract_physical(ts_from_time(self._now()))

    async def close(self) -> None:
        """Close the oracle; later timestamp requests raise ClientClosedError."""
        self._closed = True


class LocalOracle(_ClockOracle):
    """Timestamps from this process's wall clock (client-go ``oracles/local.go``).

    Strictly increasing: within one millisecond the logical part counts up. Only valid
    when a single process issues all timestamps (tests, the embedded cluster); a real
    cluster needs PD's TSO.

    Args:
        clock: Wall clock in Unix seconds (default :func:`time.time`).

    """

    def __init__(self, clock: Clock = time.time) -> None:
        super().__init__(clock)

    async def get_timestamp(self) -> int:
        """Return a fresh, strictly increasing timestamp."""
        self._check_open()
        return self._next_ts()

    async def get_low_resolution_timestamp(self) -> int:
        """Same as :meth:`get_timestamp` (a local timestamp is already cheap)."""
        return await self.get_timestamp()

    async def get_stale_timestamp(self, prev_seconds: float) -> int:
        """Return the timestamp of ``prev_seconds`` ago."""
        self._check_open()
        _check_prev_seconds(prev_seconds)
        return ts_from_time(max(self._now() - prev_seconds, 0.0))


class MockOracle(_ClockOracle):
    """A controllable oracle for tests (client-go ``oracles/mock.go``).

    Time is the clock plus an offset (:meth:`add_offset`), or a frozen manual time
    (:meth:`set_time` / :meth:`advance`). :meth:`disable` simulates a PD outage: timestamp
    requests raise :class:`~tikv_pd.errors.PDError` until :meth:`enable`. Expiry checks
    keep working during an outage, as they use the oracle's clock.

    Args:
        clock: Base wall clock in Unix seconds (default :func:`time.time`).

    """

    def __init__(self, clock: Clock = time.time) -> None:
        super().__init__(clock)
        self._offset = 0.0
        self._manual: float | None = None
        self._enabled = True

    def _now(self) -> float:
        base = self._manual if self._manual is not None else self._clock()
        return base + self._offset

    # -- controls -------------------------------------------------------------------

    def add_offset(self, seconds: float) -> None:
        """Shift the oracle's time by ``seconds`` (may be negative; timestamps still rise)."""
        self._offset += seconds

    def set_time(self, unix_seconds: float) -> None:
        """Freeze the oracle's base time at ``unix_seconds`` (the offset still applies)."""
        if unix_seconds < 0:
            raise ValueError(f"unix_seconds must be >= 0, got {unix_seconds}")
        self._manual = unix_seconds

    def advance(self, seconds: float) -> None:
        """Move a frozen time forward by ``seconds``.

        Raises:
            ValueError: no manual time was set, or ``seconds`` is negative.

        """
        if self._manual is None:
            raise ValueError("advance() needs a manual time: call set_time() first")
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        self._manual += seconds

    def use_clock(self) -> None:
        """Return to the live clock (drop a manual time)."""
        self._manual = None

    def disable(self) -> None:
        """Simulate a PD outage: timestamp requests fail until :meth:`enable`."""
        self._enabled = False

    def enable(self) -> None:
        """End a simulated outage."""
        self._enabled = True

    @property
    def enabled(self) -> bool:
        """Whether timestamp requests currently succeed."""
        return self._enabled

    def now(self) -> float:
        """The oracle's current time in Unix seconds."""
        return self._now()

    # -- Oracle ---------------------------------------------------------------------

    def _check_available(self) -> None:
        self._check_open()
        if not self._enabled:
            raise PDError("mock oracle is disabled (simulated PD outage)")

    async def get_timestamp(self) -> int:
        """Return a fresh, strictly increasing timestamp.

        Raises:
            tikv_pd.errors.PDError: the oracle is disabled.
            tikv_pd.errors.ClientClosedError: the oracle is closed.

        """
        self._check_available()
        return self._next_ts()

    async def get_low_resolution_timestamp(self) -> int:
        """Same as :meth:`get_timestamp` (client-go's mock does the same)."""
        return await self.get_timestamp()

    async def get_stale_timestamp(self, prev_seconds: float) -> int:
        """Return the timestamp of ``prev_seconds`` before the oracle's current time."""
        self._check_available()
        _check_prev_seconds(prev_seconds)
        return ts_from_time(max(self._now() - prev_seconds, 0.0))


class LowResolutionTimestampCache:
    """The cached "last timestamp" of a PD oracle, refreshed periodically.

    client-go's PD oracle remembers the newest timestamp it has seen together with the
    local time it arrived (``setLastTS`` only moves forward), refreshes it every 2 s in
    the background, and answers low-resolution reads, stale-timestamp requests and lock
    expiry checks from it without an RPC (``oracle/oracles/pd.go``). This class is that
    state; the PD oracle feeds it with :meth:`observe` and may run :meth:`refresh_forever`.

    Args:
        update_interval: Refresh period in seconds (default 2 s).
        monotonic: Local monotonic clock in seconds for arrival times (default
            :func:`time.monotonic`).

    """

    def __init__(
        self,
        update_interval: float = DEFAULT_LOW_RESOLUTION_UPDATE_INTERVAL,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = 0.0
        self.update_interval = update_interval
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._ts = 0
        self._arrival = 0.0
        self._has_ts = False

    @property
    def update_interval(self) -> float:
        """The refresh period in seconds."""
        return self._interval

    @update_interval.setter
    def update_interval(self, seconds: float) -> None:
        # client-go SetLowResolutionTimestampUpdateInterval rejects non-positive values.
        if not seconds > 0:
            raise ValueError(f"update_interval must be > 0 seconds, got {seconds}")
        self._interval = float(seconds)

    def observe(self, ts: int, arrival: float | None = None) -> None:
        """Record a timestamp obtained from PD; older ones than the cached are ignored.

        Args:
            ts: The timestamp.
            arrival: Local monotonic time it arrived (default: now).

        """
        if ts < 0:
            raise ValueError(f"ts must be >= 0, got {ts}")
        when = self._monotonic() if arrival is None else arrival
        with self._lock:
            if self._has_ts and ts <= self._ts:
                return
            # Keep arrival monotonic too: a newer ts never "arrives" earlier.
            self._arrival = max(when, self._arrival) if self._has_ts else when
            self._ts = ts
            self._has_ts = True

    def get(self) -> int | None:
        """The cached timestamp, or ``None`` before the first :meth:`observe`."""
        return self._ts if self._has_ts else None

    @property
    def arrival(self) -> float | None:
        """Monotonic time the cached timestamp arrived, or ``None``."""
        return self._arrival if self._has_ts else None

    def needs_refresh(self, now: float | None = None) -> bool:
        """Whether the cached timestamp is older than the update interval (or missing)."""
        if not self._has_ts:
            return True
        current = self._monotonic() if now is None else now
        return current - self._arrival >= self._interval

    def is_expired(self, lock_ts: int, ttl_ms: int) -> bool:
        """Expiry judged against the cached ts (client-go pdOracle.IsExpired).

        With no cached timestamp the lock counts as expired, as in client-go.
        """
        _check_lock_args(lock_ts, ttl_ms)
        if not self._has_ts:
            return True
        return extract_physical(self._ts) >= extract_physical(lock_ts) + ttl_ms

    def until_expired(self, lock_ts: int, ttl_ms: int) -> int:
        """Milliseconds until expiry against the cached ts (0 when nothing is cached)."""
        _check_lock_args(lock_ts, ttl_ms)
        if not self._has_ts:
            return 0
        return extract_physical(lock_ts) + ttl_ms - extract_physical(self._ts)

    def stale_timestamp(self, prev_seconds: float, now: float | None = None) -> int:
        """Estimate the timestamp of ``prev_seconds`` ago from the cached one.

        The cached ts's physical time is advanced by the local time elapsed since it
        arrived, minus ``prev_seconds`` (client-go ``getStaleTimestampWithLastTS``).

        Raises:
            LookupError: nothing is cached yet (the caller should fetch a ts first).
            ValueError: ``prev_seconds`` is negative or reaches back before 1970.

        """
        _check_prev_seconds(prev_seconds)
        if not self._has_ts:
            raise LookupError("no timestamp cached yet")
        physical_s = time_from_ts(self._ts)
        if physical_s <= prev_seconds:
            raise ValueError(f"invalid prev_seconds {prev_seconds}: before the Unix epoch")
        current = self._monotonic() if now is None else now
        return ts_from_time(physical_s + (current - prev_seconds - self._arrival))

    async def refresh_forever(
        self,
        fetch: Callable[[], Awaitable[int]],
        *,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        """Fetch a timestamp every :attr:`update_interval` until cancelled.

        Errors of ``fetch`` are logged and the loop continues, as client-go's updateTS
        goroutine does; cancel the task to stop.
        """
        while True:
            try:
                ts = await fetch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _log.warning("low-resolution timestamp refresh failed: %s", exc)
            else:
                self.observe(ts)
            await sleep(self._interval)


# ---------------------------------------------------------------------------------------
# Adaptive refresh interval of the low-resolution timestamp
# ---------------------------------------------------------------------------------------

#: Lower bound of the adaptive interval, seconds: one odd read cannot make the oracle ask
#: PD more often than twice a second (client-go ``minAllowedAdaptiveUpdateTSInterval``).
ADAPTIVE_MIN_INTERVAL = 0.5
#: How far below the requested staleness the interval is shrunk, seconds (client-go
#: ``adaptiveUpdateTSIntervalShrinkingPreserve``).
ADAPTIVE_SHRINK_PRESERVE = 0.1
#: A read whose staleness is within this much above the current interval keeps the
#: interval from recovering, seconds (``adaptiveUpdateTSIntervalBlockRecoverThreshold``).
ADAPTIVE_BLOCK_RECOVER_THRESHOLD = 0.2
#: Growth of the interval per second while recovering, seconds (client-go
#: ``adaptiveUpdateTSIntervalRecoverPerSecond``).
ADAPTIVE_RECOVER_PER_SECOND = 0.02
#: How long the shrunk interval is held after the last short-staleness read before it
#: starts recovering, seconds (``adaptiveUpdateTSIntervalDelayBeforeRecovering``: 5 min).
ADAPTIVE_DELAY_BEFORE_RECOVERING = 300.0


class AdaptiveUpdateInterval:
    """The refresh interval of the low-resolution timestamp, adapted to stale reads.

    client-go's PD oracle (``oracle/oracles/pd.go``) refreshes its cached timestamp every
    ``update_interval`` (2 s). A stale read at ``now - 1 s`` validated against that cache
    would find the cache older than its read ts and have to ask PD each time; so when
    reads ask for a staleness at or below the interval, the interval shrinks to just
    under it (never below :data:`ADAPTIVE_MIN_INTERVAL`), is held while such reads keep
    coming, and 5 minutes after the last one grows back by 20 ms per second to the
    configured value. An interval configured at or below 0.5 s is never adapted.

    States (client-go's names): ``normal`` (the configured interval), ``adapting``
    (shrunk, or held by recent short-staleness reads), ``recovering`` (growing back),
    ``unadjustable`` (configured too short to adapt).

    Sans-IO: every method takes ``now``, a monotonic time in seconds; the PD oracle calls
    :meth:`next_interval` on each tick and when :meth:`note_read` asks for a shrink.

    Args:
        configured: The configured interval in seconds (> 0).
        now: The current monotonic time (the time of the "last tick").

    """

    def __init__(self, configured: float, now: float) -> None:
        self._configured = _check_interval(configured)
        self._interval = self._configured
        self._state = ""
        self._last_short_staleness_read: float | None = None
        self._lock = threading.Lock()
        #: Monotonic time of the last refresh (the owner sets it after each one).
        self.last_tick = now

    @property
    def configured(self) -> float:
        """The configured interval, seconds."""
        return self._configured

    @property
    def interval(self) -> float:
        """The interval in use, seconds."""
        return self._interval

    @property
    def state(self) -> str:
        """The state: ``normal``, ``adapting``, ``recovering`` or ``unadjustable``.

        Empty before the first decision.
        """
        return self._state

    @property
    def last_short_staleness_read(self) -> float | None:
        """When a read last asked for a staleness close to the interval (or ``None``)."""
        return self._last_short_staleness_read

    def set_configured(self, seconds: float) -> None:
        """Change the configured interval (client-go ``SetLowResolutionTimestampUpdateInterval``).

        The interval in use follows at once when it was not adapted, or when the new value
        is shorter than it; otherwise the adaptation continues and recovers toward the new
        value. Raises :class:`ValueError` for a non-positive value.
        """
        seconds = _check_interval(seconds)
        with self._lock:
            previous, self._configured = self._configured, seconds
            if seconds == previous:
                return
            if self._interval == previous or seconds < self._interval:
                self._interval = seconds

    def note_read(self, read_ts: int, current_ts: int, now: float) -> float | None:
        """Record a stale read at ``read_ts`` while PD's time is ``current_ts``.

        Returns the staleness (seconds, at least 1 ms) the interval should shrink to at
        once, or ``None`` when the current interval already serves such reads (client-go
        ``adjustUpdateLowResolutionTSIntervalWithRequestedStaleness``). Staleness is
        measured on PD's clock: the physical parts of the two timestamps.
        """
        staleness = (extract_physical(current_ts) - extract_physical(read_ts)) / 1000.0
        interval = self._interval
        if staleness <= interval + ADAPTIVE_BLOCK_RECOVER_THRESHOLD:
            last = self._last_short_staleness_read
            if last is None or last < now:
                self._last_short_staleness_read = now
        if staleness <= interval and interval > ADAPTIVE_MIN_INTERVAL:
            # Clock drift between PD and the reader can make it zero or negative.
            return max(staleness, 0.001)
        return None

    def next_interval(self, now: float, required_staleness: float = 0.0) -> float:
        """Decide the interval to use from ``now`` on, and the state.

        Called on each refresh tick with ``required_staleness = 0`` and when a read asked
        for a shrink (:meth:`note_read`) with its staleness (client-go
        ``nextUpdateInterval``).
        """
        with self._lock:
            checks: tuple[Callable[[float, float], tuple[str, float] | None], ...]
            if required_staleness:
                checks = (self._check_unadjustable, self._check_adapting)
            else:
                checks = (
                    self._check_unadjustable,
                    self._check_adapting,
                    self._check_normal,
                    self._check_recovering,
                )
            for check in checks:
                found = check(now, required_staleness)
                if found is None:
                    continue
                state, interval = found
                self._interval = interval
                if state == "recovering":
                    # Recovery may have reached the configured value: normal again.
                    back = self._check_normal(now, required_staleness)
                    if back is not None:
                        state, self._interval = back
                if state != self._state:
                    _log.info(
                        "low-resolution ts update interval: %s -> %s (%.3fs, configured %.3fs)",
                        self._state or "initial",
                        state,
                        self._interval,
                        self._configured,
                    )
                    self._state = state
                break
            return self._interval

    def _recent_short_read(self, now: float) -> bool:
        last = self._last_short_staleness_read
        return last is not None and now - last < ADAPTIVE_DELAY_BEFORE_RECOVERING

    def _check_unadjustable(self, now: float, required: float) -> tuple[str, float] | None:
        if self._configured <= ADAPTIVE_MIN_INTERVAL:
            return "unadjustable", self._configured
        return None

    def _check_normal(self, now: float, required: float) -> tuple[str, float] | None:
        if self._configured > ADAPTIVE_MIN_INTERVAL and self._interval == self._configured:
            return "normal", self._interval
        return None

    def _check_adapting(self, now: float, required: float) -> tuple[str, float] | None:
        current = self._interval
        if required and required < current and current > ADAPTIVE_MIN_INTERVAL:
            # Shrink just below the requested staleness, but not below the floor.
            return "adapting", max(required - ADAPTIVE_SHRINK_PRESERVE, ADAPTIVE_MIN_INTERVAL)
        if current != self._configured and self._recent_short_read(now):
            return "adapting", current  # hold: short-staleness reads are still coming
        return None

    def _check_recovering(self, now: float, required: float) -> tuple[str, float] | None:
        current = self._interval
        if current == self._configured or self._recent_short_read(now):
            return None
        grown = current + (now - self.last_tick) * ADAPTIVE_RECOVER_PER_SECOND
        return "recovering", min(grown, self._configured)


def _check_interval(seconds: object) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"update interval must be a number of seconds, got {seconds!r}")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"update interval must be > 0 seconds, got {seconds}")
    return float(seconds)
