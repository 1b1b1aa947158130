"""A deadlock detector: the wait-for graph of pessimistic transactions.

Modelled on TiKV's detector (``src/server/lock_manager/deadlock.rs``, ``DetectTable``):
an edge ``txn -> wait_for_txn`` is registered when a lock request of ``txn`` waits for a
lock held by ``wait_for_txn``. Before registering, the detector searches for a path from
``wait_for_txn`` back to ``txn``; if one exists, registering would close a cycle, so the
request is refused with the wait chain (the path, plus the new edge last) and nothing is
registered. Edges expire after ``ttl_ms`` (TiKV: ``wait-for-lock-timeout``-sized TTL,
3 s by default) so that a lost clean-up cannot poison the graph forever.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tikv_mockstore.mvcc.types import WaitForEntry

__all__ = ["Deadlock", "DeadlockDetector"]

#: TiKV's default TTL of wait-for entries (``DEFAULT_DEADLOCK_DETECT_TTL`` ... 3 s).
DEFAULT_TTL_MS = 3000


@dataclass(frozen=True, slots=True)
class Deadlock:
    """A refused wait: the facts kvrpcpb.Deadlock needs.

    ``lock_ts`` / ``lock_key`` are the lock the requester wanted; ``deadlock_key_hash``
    is the hash of the key on which the cycle closes back to the requester (the first
    key of the last edge's waiter group); ``wait_chain`` starts with the edge leaving
    ``lock_ts`` and ends with the requester's new edge.
    """

    lock_ts: int
    lock_key: bytes
    deadlock_key_hash: int
    wait_chain: tuple[WaitForEntry, ...]
    deadlock_key: bytes = b""


@dataclass
class _Edge:
    # Keys (hash, key) the waiter waits for on this holder, and when last refreshed.
    keys: list[tuple[int, bytes]] = field(default_factory=list)
    resource_group_tag: bytes = b""
    since_ms: float = 0.0
    touched_ms: float = 0.0


class DeadlockDetector:
    """Thread-safe wait-for graph with cycle detection.

    Args:
        ttl_ms: how long an edge lives without being refreshed.
        clock_ms: a monotonic millisecond clock (injectable for tests).

    """

    def __init__(
        self, ttl_ms: float = DEFAULT_TTL_MS, clock_ms: Callable[[], float] | None = None
    ) -> None:
        if ttl_ms <= 0:
            raise ValueError(f"ttl_ms must be positive, got {ttl_ms}")
        self._ttl = float(ttl_ms)
        self._clock = clock_ms if clock_ms is not None else (lambda: time.monotonic() * 1000.0)
        self._mu = threading.Lock()
        # waiter start_ts -> {holder start_ts -> edge}
        self._graph: dict[int, dict[int, _Edge]] = {}

    def detect(
        self,
        txn_ts: int,
        lock_ts: int,
        key_hash: int,
        key: bytes = b"",
        resource_group_tag: bytes = b"",
    ) -> Deadlock | None:
        """Register "``txn_ts`` waits for ``lock_ts`` on ``key``" unless it closes a cycle.

        Returns:
            None when the edge was registered (or refreshed); a :class:`Deadlock` when
            waiting would deadlock (then nothing is registered).

        """
        if txn_ts == lock_ts:
            raise ValueError("a transaction cannot wait for itself")
        now = self._clock()
        with self._mu:
            edges = self._graph.get(txn_ts)
            if edges is not None:
                edge = edges.get(lock_ts)
                if edge is not None and not self._expired(edge, now):
                    if all(h != key_hash for h, _ in edge.keys):
                        edge.keys.append((key_hash, key))
                    edge.touched_ms = now
                    edge.resource_group_tag = resource_group_tag
                    return None
            found = self._find_path(lock_ts, txn_ts, now)
            if found is not None:
                chain, closing_hash, closing_key = found
                last = WaitForEntry(
                    txn=txn_ts,
                    wait_for_txn=lock_ts,
                    key_hash=key_hash,
                    key=key,
                    resource_group_tag=resource_group_tag,
                )
                return Deadlock(
                    lock_ts=lock_ts,
                    lock_key=key,
                    deadlock_key_hash=closing_hash,
                    wait_chain=(*chain, last),
                    deadlock_key=closing_key,
                )
            self._graph.setdefault(txn_ts, {})[lock_ts] = _Edge(
                keys=[(key_hash, key)],
                resource_group_tag=resource_group_tag,
                since_ms=now,
                touched_ms=now,
            )
            return None

    def _expired(self, edge: _Edge, now: float) -> bool:
        return now - edge.touched_ms >= self._ttl

    def _find_path(
        self, start: int, target: int, now: float
    ) -> tuple[list[WaitForEntry], int, bytes] | None:
        """Depth-first search from ``start`` to ``target`` over live edges."""
        pred: dict[int, int] = {start: 0}
        stack = [start]
        while stack:
            cur = stack.pop()
            edges = self._graph.get(cur)
            if not edges:
                continue
            for holder in [h for h, e in edges.items() if self._expired(e, now)]:
                del edges[holder]
            if not edges:
                del self._graph[cur]
                continue
            for holder, edge in edges.items():
                if holder == target:
                    chain = self._chain(start, cur, pred, now)
                    chain.append(self._entry(cur, holder, edge, now))
                    return chain, edge.keys[0][0], edge.keys[0][1]
                if holder not in pred:
                    pred[holder] = cur
                    stack.append(holder)
        return None

    def _chain(self, start: int, end: int, pred: dict[int, int], now: float) -> list[WaitForEntry]:
        out: list[WaitForEntry] = []
        holder = end
        while holder != start:
            waiter = pred[holder]
            out.append(self._entry(waiter, holder, self._graph[waiter][holder], now))
            holder = waiter
        out.reverse()
        return out

    @staticmethod
    def _entry(waiter: int, holder: int, edge: _Edge, now: float) -> WaitForEntry:
        h, k = edge.keys[0]
        return WaitForEntry(
            txn=waiter,
            wait_for_txn=holder,
            key_hash=h,
            key=k,
            resource_group_tag=edge.resource_group_tag,
            wait_time=int(now - edge.since_ms),
        )

    def clean_up_wait_for(self, txn_ts: int, lock_ts: int, key_hash: int) -> None:
        """Forget that ``txn_ts`` waits for ``lock_ts`` on the key hashed ``key_hash``."""
        with self._mu:
            edges = self._graph.get(txn_ts)
            if edges is None:
                return
            edge = edges.get(lock_ts)
            if edge is None:
                return
            edge.keys = [(h, k) for h, k in edge.keys if h != key_hash]
            if not edge.keys:
                del edges[lock_ts]
                if not edges:
                    del self._graph[txn_ts]

    def clean_up(self, txn_ts: int) -> None:
        """Forget every wait of ``txn_ts`` (it finished, or its lock wait ended)."""
        with self._mu:
            self._graph.pop(txn_ts, None)

    def clear(self) -> None:
        """Forget everything."""
        with self._mu:
            self._graph.clear()

    def waits_of(self, txn_ts: int) -> frozenset[int]:
        """The transactions ``txn_ts`` currently waits for (live edges only)."""
        now = self._clock()
        with self._mu:
            edges = self._graph.get(txn_ts, {})
            return frozenset(h for h, e in edges.items() if not self._expired(e, now))
