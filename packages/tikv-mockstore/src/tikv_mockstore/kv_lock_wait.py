"""Pessimistic lock waiting, as TiKV's lock manager does it, without blocking request threads.

When a ``PessimisticLock`` request meets another transaction's lock and its ``wait_timeout``
allows waiting, TiKV parks the request in a per-key queue (``src/storage/lock_manager/
lock_waiting_queue.rs``), registers the wait-for edge with the deadlock detector
(``src/server/lock_manager/deadlock.rs``) and arms a timer (``waiter_manager.rs``). One of
three things then finishes the request:

* **The lock is released** (commit, rollback, pessimistic rollback, resolve, cleanup, ...).
  The waiter with the smallest ``start_ts`` is popped. A *legacy* waiter (wake-up mode
  ``Normal``) is answered at once with ``WriteConflict(reason=PessimisticRetry)`` naming the
  released transaction and its commit ts (0 if it rolled back), and the client retries with a
  newer ``for_update_ts``; the other legacy waiters that were queued before that release get
  the same answer ``wake-up-delay-duration`` (20 ms) later, unless another release extends the
  delay. A *resumable* waiter (``WakeUpModeForceLock``) re-runs its lock request instead.
* **The timeout expires**: the answer is the ``KeyIsLocked`` error of the lock it waited for.
  ``wait_timeout`` 0 means the server default ``wait-for-lock-timeout`` (1 s), and a larger
  timeout is capped at it (``WaitTimeout::into_duration_with_ceiling``).
* **The wait would close a cycle** of the cluster-wide wait-for graph: the request fails at
  once with ``Deadlock``. TiKV skips detection for a transaction's first lock
  (``is_first_lock``): a transaction that holds no lock cannot be waited for.

This module is protocol-free: the command handlers turn a :data:`WaitOutcome` into a response.
The manager learns about releases by polling: after every write command the handlers call
:meth:`LockWaitManager.poke`, which compares the lock now on each waited-for key with the one
seen before. Code that changes the engine outside the handlers should call ``poke`` too; as a
safety net, the manager also polls every ``safety_poll_ms`` while requests wait.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from tikv_mockstore.mvcc.deadlock import Deadlock
from tikv_mockstore.mvcc.errors import DeadlockError
from tikv_mockstore.mvcc.types import LockInfo, WaitForEntry

__all__ = [
    "DEFAULT_SAFETY_POLL_MS",
    "DEFAULT_WAIT_FOR_LOCK_TIMEOUT_MS",
    "DEFAULT_WAKE_UP_DELAY_MS",
    "Deadlocked",
    "LockWaitManager",
    "Released",
    "TimedOut",
    "TimerThread",
    "WaitForGraph",
    "WaitOutcome",
    "Waiter",
]

_log = logging.getLogger(__name__)

#: TiKV's ``pessimistic-txn.wait-for-lock-timeout``: the default and the ceiling of a wait.
DEFAULT_WAIT_FOR_LOCK_TIMEOUT_MS = 1000
#: TiKV's ``pessimistic-txn.wake-up-delay-duration``: how long the other legacy waiters of a
#: key wait after the first one was woken, before they are told to retry too.
DEFAULT_WAKE_UP_DELAY_MS = 20
#: How often waiting requests also look for locks released outside the handlers.
DEFAULT_SAFETY_POLL_MS = 100


class WaitForGraph(Protocol):
    """The cluster-wide deadlock detector, as the lock manager uses it.

    :class:`tikv_mockstore.mvcc.DeadlockDetector` is the implementation.
    """

    def detect(
        self,
        txn_ts: int,
        lock_ts: int,
        key_hash: int,
        key: bytes = b"",
        resource_group_tag: bytes = b"",
    ) -> Deadlock | None:
        """Add the edge ``txn_ts -> lock_ts``, or return the cycle it would close."""
        ...

    def clean_up_wait_for(self, txn_ts: int, lock_ts: int, key_hash: int) -> None:
        """Remove the edge ``txn_ts -> lock_ts`` for the key with ``key_hash``."""
        ...


@dataclass(frozen=True, slots=True)
class Released:
    """The lock waited for went away: ``conflict_commit_ts`` is 0 if it was rolled back."""

    conflict_start_ts: int
    conflict_commit_ts: int


@dataclass(frozen=True, slots=True)
class TimedOut:
    """The wait timed out; TiKV answers with ``KeyIsLocked(lock_info)``."""

    lock_info: LockInfo


@dataclass(frozen=True, slots=True)
class Deadlocked:
    """Waiting would close a cycle of the wait-for graph."""

    error: DeadlockError


#: How a wait ended.
WaitOutcome = Released | TimedOut | Deadlocked


class _TimerHandle:
    __slots__ = ("cancelled", "fn")

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class TimerThread:
    """One daemon thread that runs callbacks at (monotonic) deadlines, in deadline order.

    Lock-wait timeouts, delayed wake-ups and the answers to woken waiters run here, so that
    a request thread that releases a lock never runs another request's continuation.
    """

    def __init__(self, name: str = "tikv-mockstore-lock-wait") -> None:
        self._name = name
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _TimerHandle]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def call_at(self, deadline: float, fn: Callable[[], None]) -> _TimerHandle:
        """Run ``fn`` on the timer thread at ``deadline`` (``time.monotonic()`` seconds)."""
        handle = _TimerHandle(fn)
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._seq), handle))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()
        return handle

    def call_soon(self, fn: Callable[[], None]) -> _TimerHandle:
        """Run ``fn`` on the timer thread as soon as possible."""
        return self.call_at(time.monotonic(), fn)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._heap:
                        self._cond.wait()
                        continue
                    deadline, _, handle = self._heap[0]
                    delay = deadline - time.monotonic()
                    if delay > 0:
                        self._cond.wait(delay)
                        continue
                    heapq.heappop(self._heap)
                    break
            if handle.cancelled:
                continue
            try:
                handle.fn()
            except Exception:  # a failing callback must not stop every other timer
                _log.exception("lock-wait timer callback failed")


_SHARED_TIMER = TimerThread()


@dataclass(eq=False)
class Waiter:
    """One pessimistic lock request waiting for a lock on ``key``.

    ``lock_info`` describes the lock it met (``lock_version`` is the holder's start ts);
    ``on_done`` receives the outcome, exactly once, on the timer thread.
    """

    start_ts: int
    key: bytes
    key_hash: int
    lock_info: LockInfo
    is_first_lock: bool
    #: ``WakeUpModeForceLock``: woken by re-running the request instead of a WriteConflict.
    resumable: bool
    #: ``time.monotonic()`` at which the wait times out.
    deadline: float
    on_done: Callable[[WaitOutcome], None]
    #: The request's ``Context.resource_group_tag``, recorded in wait-for entries as TiKV does.
    resource_group_tag: bytes = b""
    #: The store that received the request (TiKV keeps one waiter table per store).
    store_id: int = 0
    _seq: int = 0
    _legacy_index: int = 0
    _in_detector: bool = False
    _timer: _TimerHandle | None = None


@dataclass(eq=False)
class _KeyQueue:
    #: Start ts of the lock last seen on the key (None: unlocked).
    observed_ts: int | None
    waiters: list[Waiter] = field(default_factory=list)
    #: Counts legacy wake-ups; a waiter queued before the n-th one has an index < n.
    legacy_wake_index: int = 0
    last_conflict: Released = field(default_factory=lambda: Released(0, 0))
    delayed: _TimerHandle | None = None


class LockWaitManager:
    """The lock-wait queues and wait-for graph of one cluster (shared by all its stores).

    Args:
        lock_ts_of: the start ts of the lock now on a key, or ``None``.
        commit_ts_of: the commit ts of transaction ``start_ts`` on ``key`` (0 if it is not
            committed there).
        detector: the cluster's deadlock detector.
        wait_for_lock_timeout_ms: TiKV's ``wait-for-lock-timeout``.
        wake_up_delay_ms: TiKV's ``wake-up-delay-duration``.
        safety_poll_ms: while requests wait, also look for released locks this often (0:
            never). The handlers poke the manager after every write command, so this only
            catches locks removed by other paths (the control API, UnsafeDestroyRange, code
            that drives the engine directly), which TiKV would have woken at once.
        timer: the thread that runs timeouts and answers.

    """

    def __init__(
        self,
        *,
        lock_ts_of: Callable[[bytes], int | None],
        commit_ts_of: Callable[[bytes, int], int],
        detector: WaitForGraph,
        wait_for_lock_timeout_ms: int = DEFAULT_WAIT_FOR_LOCK_TIMEOUT_MS,
        wake_up_delay_ms: int = DEFAULT_WAKE_UP_DELAY_MS,
        safety_poll_ms: int = DEFAULT_SAFETY_POLL_MS,
        timer: TimerThread | None = None,
    ) -> None:
        self._lock_ts_of = lock_ts_of
        self._commit_ts_of = commit_ts_of
        self._detector = detector
        self.wait_for_lock_timeout_ms = wait_for_lock_timeout_ms
        self.wake_up_delay_ms = wake_up_delay_ms
        self.safety_poll_ms = safety_poll_ms
        self._poller: _TimerHandle | None = None
        self._timer = timer if timer is not None else _SHARED_TIMER
        self._mutex = threading.Lock()
        self._queues: dict[bytes, _KeyQueue] = {}
        self._poke_scheduled = False
        self._seq = itertools.count()

    def wait_duration_ms(self, wait_timeout: int) -> int | None:
        """How long a request with kvrpcpb ``wait_timeout`` waits, or ``None`` for no wait."""
        if wait_timeout < 0:
            return None
        if wait_timeout == 0:
            return self.wait_for_lock_timeout_ms
        return min(wait_timeout, self.wait_for_lock_timeout_ms)

    @property
    def waiter_count(self) -> int:
        """The number of requests waiting now."""
        with self._mutex:
            return sum(len(q.waiters) for q in self._queues.values())

    def wait_for_entries(self, store_id: int | None = None) -> list[WaitForEntry]:
        """The wait-for edges of the waiting requests (of one store, or of all).

        What TiKV's ``GetLockWaitInfo`` returns (``waiter_manager.rs``
        ``to_wait_for_entries``): waiter, holder, key hash, key and resource group tag.
        """
        with self._mutex:
            return [
                WaitForEntry(
                    txn=w.start_ts,
                    wait_for_txn=w.lock_info.lock_version,
                    key_hash=w.key_hash,
                    key=w.key,
                    resource_group_tag=w.resource_group_tag,
                )
                for q in self._queues.values()
                for w in q.waiters
                if store_id is None or w.store_id == store_id
            ]

    def wait(self, waiter: Waiter) -> WaitOutcome | None:
        """Park ``waiter`` until its lock goes, it times out, or return an outcome now.

        Returns ``None`` when the waiter was queued (``waiter.on_done`` will be called), or
        the outcome decided at once: :class:`Deadlocked` if waiting would close a cycle, or
        :class:`Released` if the lock it met is already gone. ``on_done`` is not called then.
        """
        deliveries: list[tuple[Waiter, WaitOutcome]] = []
        outcome: WaitOutcome | None = None
        lock_ts = waiter.lock_info.lock_version
        with self._mutex:
            queue = self._queues.get(waiter.key)
            if queue is None:
                queue = _KeyQueue(observed_ts=self._lock_ts_of(waiter.key))
            else:
                # A release not polled yet must wake the earlier waiters before this one joins.
                self._check_key(waiter.key, queue, deliveries)
            if queue.observed_ts != lock_ts:
                # The lock went away between the engine's answer and now. TiKV's latches make
                # the release wait for this request to be queued, and then wake it: the same
                # outcome as here.
                outcome = Released(lock_ts, self._commit_ts_of(waiter.key, lock_ts))
            else:
                if not waiter.is_first_lock:
                    found = self._detector.detect(
                        waiter.start_ts,
                        lock_ts,
                        waiter.key_hash,
                        waiter.key,
                        waiter.resource_group_tag,
                    )
                    if found is not None:
                        # TiKV's waiter manager fills lock_ts, lock_key, deadlock_key_hash
                        # and the wait chain (ending with this request's edge); it leaves
                        # deadlock_key empty.
                        outcome = Deadlocked(
                            DeadlockError(
                                lock_ts=found.lock_ts,
                                lock_key=found.lock_key,
                                deadlock_key_hash=found.deadlock_key_hash,
                                wait_chain=found.wait_chain,
                            )
                        )
                    else:
                        waiter._in_detector = True
                if outcome is None:
                    waiter._seq = next(self._seq)
                    waiter._legacy_index = queue.legacy_wake_index
                    queue.waiters.append(waiter)
                    queue.waiters.sort(key=lambda w: (w.start_ts, w._seq))
                    self._queues[waiter.key] = queue
                    waiter._timer = self._timer.call_at(
                        waiter.deadline, lambda: self._on_timeout(waiter)
                    )
                    self._arm_poller()
            if not queue.waiters:
                self._queues.pop(waiter.key, None)
        self._deliver(deliveries)
        return outcome

    def locks_released(self) -> None:
        """A lock changed hands in the engine: :meth:`poke` soon, on the timer thread.

        The engine's lock listener (:meth:`MvccEngine.add_lock_listener`): it runs inside the
        engine's lock, so it only schedules the poke, and only when someone is waiting.
        """
        # Racy but safe: a queue added now checks the lock itself, and a change made after
        # the scheduled poke cleared the flag schedules another one.
        if self._queues and not self._poke_scheduled:
            self._poke_scheduled = True
            self._timer.call_soon(self._scheduled_poke)

    def _scheduled_poke(self) -> None:
        # Runs on the timer thread: one poke covers every change made before it starts.
        self._poke_scheduled = False
        self.poke()

    def poke(self) -> None:
        """Look for released locks on every waited-for key and wake their waiters."""
        if not self._queues:  # racy but safe: a queue added now checks the lock itself
            return
        deliveries: list[tuple[Waiter, WaitOutcome]] = []
        with self._mutex:
            for key, queue in list(self._queues.items()):
                self._check_key(key, queue, deliveries)
        self._deliver(deliveries)

    # -- internals (called with self._mutex held unless noted) --

    def _arm_poller(self) -> None:
        if self.safety_poll_ms > 0 and self._poller is None:
            deadline = time.monotonic() + self.safety_poll_ms / 1000
            self._poller = self._timer.call_at(deadline, self._safety_poll)

    def _safety_poll(self) -> None:
        # Runs on the timer thread (takes the mutex itself).
        with self._mutex:
            self._poller = None
        self.poke()
        with self._mutex:
            if self._queues:
                self._arm_poller()

    def _check_key(
        self, key: bytes, queue: _KeyQueue, out: list[tuple[Waiter, WaitOutcome]]
    ) -> None:
        current = self._lock_ts_of(key)
        previous = queue.observed_ts
        if current == previous:
            return
        queue.observed_ts = current
        if previous is None:
            return
        released = Released(previous, self._commit_ts_of(key, previous))
        queue.last_conflict = released
        if queue.waiters:
            # lock_waiting_queue.rs pop_for_waking_up: the smallest start_ts goes first.
            head = queue.waiters.pop(0)
            self._forget(head)
            out.append((head, released))
            if not head.resumable:
                queue.legacy_wake_index += 1
                if queue.waiters:
                    self._schedule_delayed_notify(key, queue)
        if not queue.waiters:
            self._drop_queue(key, queue)

    def _schedule_delayed_notify(self, key: bytes, queue: _KeyQueue) -> None:
        # A later wake-up on the same key pushes the delayed notification back, as TiKV
        # extends its delay (handle_delayed_wake_up).
        if queue.delayed is not None:
            queue.delayed.cancel()
        deadline = time.monotonic() + self.wake_up_delay_ms / 1000
        handle: _TimerHandle | None = None

        def fire() -> None:
            self._delayed_notify_all(key, queue, handle)

        handle = self._timer.call_at(deadline, fire)
        queue.delayed = handle

    def _delayed_notify_all(
        self, key: bytes, queue: _KeyQueue, handle: _TimerHandle | None
    ) -> None:
        # Runs on the timer thread (takes the mutex itself).
        deliveries: list[tuple[Waiter, WaitOutcome]] = []
        with self._mutex:
            if self._queues.get(key) is not queue or queue.delayed is not handle:
                return
            queue.delayed = None
            index = queue.legacy_wake_index
            while queue.waiters and queue.waiters[0]._legacy_index < index:
                front = queue.waiters.pop(0)
                self._forget(front)
                deliveries.append((front, queue.last_conflict))
                if front.resumable:
                    break
            if not queue.waiters:
                self._drop_queue(key, queue)
        self._deliver(deliveries)

    def _on_timeout(self, waiter: Waiter) -> None:
        # Runs on the timer thread (takes the mutex itself).
        with self._mutex:
            queue = self._queues.get(waiter.key)
            if queue is None or waiter not in queue.waiters:
                return
            queue.waiters.remove(waiter)
            self._forget(waiter)
            if not queue.waiters:
                self._drop_queue(waiter.key, queue)
        self._run(waiter, TimedOut(waiter.lock_info))

    def _forget(self, waiter: Waiter) -> None:
        if waiter._timer is not None:
            waiter._timer.cancel()
            waiter._timer = None
        if waiter._in_detector:
            waiter._in_detector = False
            self._detector.clean_up_wait_for(
                waiter.start_ts, waiter.lock_info.lock_version, waiter.key_hash
            )

    def _drop_queue(self, key: bytes, queue: _KeyQueue) -> None:
        if queue.delayed is not None:
            queue.delayed.cancel()
            queue.delayed = None
        if self._queues.get(key) is queue:
            del self._queues[key]

    def _deliver(self, deliveries: list[tuple[Waiter, WaitOutcome]]) -> None:
        # Called without the mutex: answers run on the timer thread, never in the thread
        # of the request that released the lock.
        for waiter, outcome in deliveries:
            self._timer.call_soon(functools.partial(self._run, waiter, outcome))

    @staticmethod
    def _run(waiter: Waiter, outcome: WaitOutcome) -> None:
        try:
            waiter.on_done(outcome)
        except Exception:
            _log.exception("finishing a lock waiter failed")
