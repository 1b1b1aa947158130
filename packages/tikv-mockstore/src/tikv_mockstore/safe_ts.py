"""Per-store safe timestamps (TiKV's resolved ts) and the stale-read check.

TiKV lets any replica serve a *stale read* (``Context.stale_read``) at ``read_ts`` when the
replica's *safe ts* is at least ``read_ts``: no transaction can still commit at or below it.
The leader's resolved-ts worker (``components/resolved_ts``, ``advance.rs``) fetches a PD
timestamp, raises the concurrency manager's ``max_ts`` to it (so async-commit and 1PC commit
timestamps land above it), and resolves each region to ``min(tso, oldest lock start_ts)``
(``resolver.rs``: pessimistic locks do not hold it back; the value never decreases). Followers
learn it later, so a follower's safe ts lags real time. A stale read above the peer's safe ts is
refused with ``DataIsNotReady{region_id, peer_id, safe_ts}`` (raftstore ``ReadDelegate::
check_stale_read_safe``) — except on a leader in lease, which falls back to a normal leader read
(``LocalReader::propose_raft_command``, TiKV PR #15726), so a leader never answers
``DataIsNotReady``.

The mock computes the same value on demand instead of in a background worker, per store and
region: ``min(cap, oldest prewrite lock start_ts in the region)``, never below what it already
published, where the *cap* is the cluster clock minus the store's lag (the TSO of ``lag_ms``
ago), or a pinned value while the store is held. Tests steer it with
:meth:`SafeTsTracker.set_lag` (``MockCluster.set_safe_ts_lag``), :meth:`SafeTsTracker.hold`
(``MockCluster.hold_safe_ts``: the store's resolved ts stops advancing), :meth:`SafeTsTracker.pin`
and :meth:`SafeTsTracker.release`.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable
from typing import Any

from tikv_mockstore._codec import decode_bytes_lenient
from tikv_mockstore.clock import Clock

__all__ = ["TSO_LOGICAL_BITS", "SafeTsTracker", "region_locks", "store_safe_ts"]

#: PD timestamps carry 18 logical bits (``physical << 18 | logical``).
TSO_LOGICAL_BITS = 18
_MAX_TS = (1 << 64) - 1
_PESSIMISTIC_LOCK = 5  # kvrpcpb.Op.PessimisticLock


class SafeTsTracker:
    """The safe ts of every (store, region) of one mock cluster (thread-safe).

    Args:
        clock: The cluster clock (PD's TSO physical time follows it).

    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._mu = threading.Lock()
        self._lag_ms: dict[int, int] = {}
        self._pinned: dict[int, int] = {}
        # The last value published per (store, region): a safe ts never goes back.
        self._published: dict[tuple[int, int], int] = {}

    # -- control (tests) ---------------------------------------------------------------

    def set_lag(self, store_id: int, lag_ms: int) -> None:
        """Make ``store_id``'s safe ts trail the clock by ``lag_ms`` milliseconds (0: none)."""
        if isinstance(lag_ms, bool) or not isinstance(lag_ms, int) or lag_ms < 0:
            raise ValueError(f"lag_ms must be a non-negative int, got {lag_ms!r}")
        with self._mu:
            self._lag_ms[store_id] = lag_ms

    def lag_ms(self, store_id: int) -> int:
        """The store's configured lag in milliseconds."""
        with self._mu:
            return self._lag_ms.get(store_id, 0)

    def hold(self, store_id: int) -> int:
        """Stop ``store_id``'s safe ts from advancing; returns the value it is held at.

        The store keeps every value it already published; nothing above the returned cap
        becomes readable there until :meth:`release`.
        """
        with self._mu:
            cap = self._pinned.get(store_id)
            if cap is None:
                cap = self._clock_cap(store_id)
                self._pinned[store_id] = cap
            return cap

    def pin(self, store_id: int, ts: int) -> None:
        """Hold ``store_id``'s safe ts at ``ts``.

        Values already published stay: a safe ts never goes back.
        """
        if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts < _MAX_TS:
            raise ValueError(f"ts must be a 64-bit timestamp, got {ts!r}")
        with self._mu:
            self._pinned[store_id] = ts

    def release(self, store_id: int) -> None:
        """Let ``store_id``'s safe ts follow the clock again (minus its lag)."""
        with self._mu:
            self._pinned.pop(store_id, None)

    def is_held(self, store_id: int) -> bool:
        """Whether the store's safe ts is held or pinned."""
        with self._mu:
            return store_id in self._pinned

    # -- computation ---------------------------------------------------------------------

    def _clock_cap(self, store_id: int) -> int:
        physical = self._clock.now_ms() - self._lag_ms.get(store_id, 0)
        return max(physical, 0) << TSO_LOGICAL_BITS

    def region_safe_ts(
        self,
        store_id: int,
        region_id: int,
        locks: Callable[[], Iterable[Any]],
        engine: Any = None,
    ) -> int:
        """The safe ts of ``region_id``'s peer on ``store_id``.

        Args:
            store_id: The store holding the peer.
            region_id: The region.
            locks: Returns the region's locks (objects with ``lock_version`` and
                ``lock_type``); called only when the value may advance.
            engine: The MVCC engine whose ``max_ts`` is raised to the cap first (the
                resolved-ts worker syncs the concurrency manager before reading locks).

        """
        with self._mu:
            cap = self._pinned.get(store_id)
            advancing = cap is None
            if cap is None:
                cap = self._clock_cap(store_id)
            key = (store_id, region_id)
            last = self._published.get(key, 0)
        if cap <= last:
            return last
        if advancing and engine is not None and cap:
            engine.update_max_ts(cap)
        value = cap
        for lock in locks():
            if int(lock.lock_type) != _PESSIMISTIC_LOCK and lock.lock_version < value:
                value = lock.lock_version
        with self._mu:
            value = max(value, self._published.get(key, 0))
            self._published[key] = value
        return value

    def forget_store(self, store_id: int) -> None:
        """Drop everything known about ``store_id`` (the store was removed)."""
        with self._mu:
            self._lag_ms.pop(store_id, None)
            self._pinned.pop(store_id, None)
            for key in [k for k in self._published if k[0] == store_id]:
                del self._published[key]


def region_locks(engine: Any, start_key: bytes, end_key: bytes, *, encoded: bool) -> list[Any]:
    """The locks of the region ``[start_key, end_key)`` (boundaries as PD holds them).

    ``encoded``: the boundaries are memcomparable-encoded (transactional key space) and are
    decoded to the engine's user keys.
    """
    if engine is None:
        return []
    if encoded:
        start = decode_bytes_lenient(start_key) if start_key else b""
        end = decode_bytes_lenient(end_key) if end_key else b""
    else:
        start, end = start_key, end_key
    if end and end <= start:
        return []
    result: list[Any] = engine.scan_lock(_MAX_TS, start, end)
    return result


def store_safe_ts(
    cluster: Any, engine: Any, store_id: int, start_key: bytes = b"", end_key: bytes = b""
) -> int:
    """The safe ts of ``store_id``: the minimum over its regions overlapping the range.

    ``cluster`` is the :class:`tikv_mockstore.cluster.Cluster`; boundaries are compared as PD
    holds them (an empty range: every region of the store). A store without such a region
    answers 0, as TiKV does.
    """
    tracker: SafeTsTracker = cluster.safe_ts
    safe: int | None = None
    for region in cluster.regions():
        if region.peer_on(store_id) is None:
            continue
        if end_key and region.start_key >= end_key:
            continue
        if region.end_key and start_key >= region.end_key:
            continue
        value = tracker.region_safe_ts(
            store_id, region.id, functools.partial(_locks_of, engine, region), engine
        )
        safe = value if safe is None else min(safe, value)
    return safe or 0


def _locks_of(engine: Any, region: Any) -> list[Any]:
    return region_locks(engine, region.start_key, region.end_key, encoded=True)
