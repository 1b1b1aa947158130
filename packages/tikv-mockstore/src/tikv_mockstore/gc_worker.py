"""The stores' GC worker: collects MVCC versions below PD's GC safe point.

TiKV's ``GcManager`` (``src/server/gc_worker/gc_manager.rs``) polls PD's GC safe point and,
when it advances, garbage-collects every region the store leads with the new safe point
(``gc_worker.rs`` / ``actions/gc.rs``; newer TiKV does the same work in a RocksDB compaction
filter). Clients therefore only advance the safe point in PD; ``KvGC`` is not needed (TiKV
answers it UNIMPLEMENTED, the mock still serves it).

The mock's stores share one engine, so one worker per cluster does the work: it is told at
once when PD's safe point advances (instead of polling it every few seconds) and collects on
its own thread, so ``UpdateGCSafePoint`` returns without waiting for the collection.
Keyspace-level GC (API v2, ``UpdateGCSafePointV2``) collects the keyspace's transactional
range with the keyspace's safe point; the cluster-wide safe point then leaves that range
alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["GcWorker"]

_log = logging.getLogger(__name__)


class GcWorker:
    """Collects garbage below the GC safe points PD publishes, on a background thread.

    ``ranges_of(keyspace_id)`` maps a safe point's keyspace (``None``: the cluster-wide one)
    to the transactional user-key ranges it governs.
    """

    def __init__(
        self,
        engine: Any,
        ranges_of: Callable[[int | None], Sequence[tuple[bytes, bytes]]],
    ) -> None:
        self._engine = engine
        self._ranges_of = ranges_of
        self._cond = threading.Condition()
        self._pending: dict[int | None, int] = {}
        self._collected: dict[int | None, int] = {}
        self._closed = False
        self._thread: threading.Thread | None = None

    def safe_point_advanced(self, safe_point: int, keyspace_id: int | None = None) -> None:
        """PD's GC safe point (of a keyspace, or cluster-wide) is now ``safe_point``."""
        with self._cond:
            done = max(self._pending.get(keyspace_id, 0), self._collected.get(keyspace_id, 0))
            if self._closed or safe_point <= done:
                return
            self._pending[keyspace_id] = safe_point
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tikv-mockstore-gc-worker", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def collected(self, keyspace_id: int | None = None) -> int:
        """The largest safe point whose collection has finished (0: none yet)."""
        with self._cond:
            return self._collected.get(keyspace_id, 0)

    def wait(self, safe_point: int, timeout: float, keyspace_id: int | None = None) -> bool:
        """Wait until the collection at ``safe_point`` (or later) is done; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._collected.get(keyspace_id, 0) < safe_point:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return False
                self._cond.wait(left)
            return True

    def close(self) -> None:
        """Stop the worker (a collection under way finishes first)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                keyspace_id, safe_point = self._pending.popitem()
            try:
                for start, end in self._ranges_of(keyspace_id):
                    self._engine.gc(safe_point, start, end)
            except Exception:  # a failed round is retried by the next advance
                _log.exception("GC at safe point %d failed", safe_point)
                continue
            with self._cond:
                if safe_point > self._collected.get(keyspace_id, 0):
                    self._collected[keyspace_id] = safe_point
                self._cond.notify_all()
