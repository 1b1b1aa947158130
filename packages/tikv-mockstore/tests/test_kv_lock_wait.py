"""LockWaitManager on its own: queue order, delayed wake-ups, timeouts, deadlocks.

The "engine" here is a dict of key -> holder start_ts and a dict of commit timestamps, so
each test decides exactly when a lock goes away.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from tikv_mockstore.kv_lock_wait import (
    Deadlocked,
    LockWaitManager,
    Released,
    TimedOut,
    Waiter,
    WaitOutcome,
)
from tikv_mockstore.mvcc import DeadlockDetector, key_hash
from tikv_mockstore.mvcc.types import LockInfo, Op

DEADLINE = 10.0  # seconds for any expected outcome to arrive


class World:
    def __init__(self, **kw: Any) -> None:
        # Only the explicit pokes of release() may wake waiters, unless a test opts in.
        kw.setdefault("safety_poll_ms", 0)
        self.locks: dict[bytes, int] = {}
        self.commits: dict[tuple[bytes, int], int] = {}
        self.manager = LockWaitManager(
            lock_ts_of=self.locks.get,
            commit_ts_of=lambda key, start: self.commits.get((key, start), 0),
            detector=DeadlockDetector(),
            **kw,
        )

    def release(self, key: bytes, *, commit_ts: int = 0, new_holder: int | None = None) -> None:
        holder = self.locks.pop(key)
        if commit_ts:
            self.commits[(key, holder)] = commit_ts
        if new_holder is not None:
            self.locks[key] = new_holder
        self.manager.poke()


class Outcome:
    """Collects a waiter's outcome; ``get`` waits for it with a deadline."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.value: WaitOutcome | None = None
        self.at = 0.0

    def __call__(self, outcome: WaitOutcome) -> None:
        assert self.value is None, "a waiter is finished twice"
        self.value = outcome
        self.at = time.monotonic()
        self._event.set()

    def get(self) -> WaitOutcome:
        assert self._event.wait(DEADLINE), "the waiter was never finished"
        assert self.value is not None
        return self.value

    @property
    def done(self) -> bool:
        return self._event.is_set()


def lock_info(key: bytes, holder: int) -> LockInfo:
    return LockInfo(
        primary_lock=key,
        lock_version=holder,
        key=key,
        lock_ttl=3000,
        txn_size=1,
        lock_type=Op.PESSIMISTIC_LOCK,
        lock_for_update_ts=holder,
        use_async_commit=False,
        min_commit_ts=0,
    )


def waiter(
    world: World,
    key: bytes,
    start: int,
    *,
    resumable: bool = False,
    first: bool = False,
    timeout: float = 60.0,
) -> Outcome:
    out = Outcome()
    result = world.manager.wait(
        Waiter(
            start_ts=start,
            key=key,
            key_hash=key_hash(key),
            lock_info=lock_info(key, world.locks[key]),
            is_first_lock=first,
            resumable=resumable,
            deadline=time.monotonic() + timeout,
            on_done=out,
        )
    )
    assert result is None, f"expected to wait, got {result}"
    return out


def test_smallest_start_ts_is_woken_first_and_the_rest_after_the_delay() -> None:
    world = World(wake_up_delay_ms=50)
    world.locks[b"k"] = 5
    late = waiter(world, b"k", 30)
    early = waiter(world, b"k", 20)
    world.release(b"k", commit_ts=7)
    assert early.get() == Released(5, 7)
    assert late.get() == Released(5, 7)
    assert late.at - early.at >= 0.045  # wake-up-delay-duration is the feature here
    assert world.manager.waiter_count == 0


def test_delayed_wake_up_spares_requests_queued_after_the_release() -> None:
    world = World(wake_up_delay_ms=30)
    world.locks[b"k"] = 5
    first = waiter(world, b"k", 10)
    second = waiter(world, b"k", 11)
    # 5 goes away and 6 takes the key before anyone polls: one release event for 5.
    world.release(b"k", commit_ts=8, new_holder=6)
    assert first.get() == Released(5, 8)
    third = waiter(world, b"k", 12)  # queued after the wake-up: waits for 6, not told to retry
    assert second.get() == Released(5, 8)
    assert not third.done
    assert world.manager.waiter_count == 1
    world.release(b"k")
    assert third.get() == Released(6, 0)


def test_resumable_head_is_resumed_and_the_others_keep_waiting() -> None:
    world = World(wake_up_delay_ms=10)
    world.locks[b"k"] = 5
    head = waiter(world, b"k", 10, resumable=True)
    other = waiter(world, b"k", 11, resumable=True)
    world.release(b"k", commit_ts=9)
    assert head.get() == Released(5, 9)
    # No delayed notification follows a resumable wake-up: the resumed request is expected
    # to take the lock, and its release wakes the next one.
    world.locks[b"k"] = 10
    world.manager.poke()
    assert not other.done
    world.release(b"k", commit_ts=12)
    assert other.get() == Released(10, 12)


def test_timeout_reports_the_lock_waited_for() -> None:
    world = World()
    world.locks[b"k"] = 5
    began = time.monotonic()
    out = waiter(world, b"k", 10, timeout=0.1)
    outcome = out.get()
    assert isinstance(outcome, TimedOut)
    assert outcome.lock_info.lock_version == 5
    assert out.at - began >= 0.095
    assert world.manager.waiter_count == 0
    world.release(b"k")  # nobody is woken twice


def test_deadlock_is_refused_and_edges_are_cleaned_up() -> None:
    world = World()
    world.locks[b"a"] = 1
    world.locks[b"b"] = 2
    one_waits = waiter(world, b"a", 2)  # txn 2 waits for txn 1 on a
    outcome = world.manager.wait(
        Waiter(
            start_ts=1,
            key=b"b",
            key_hash=key_hash(b"b"),
            lock_info=lock_info(b"b", 2),
            is_first_lock=False,
            resumable=False,
            deadline=time.monotonic() + 60,
            on_done=lambda o: None,
        )
    )
    assert isinstance(outcome, Deadlocked)
    assert outcome.error.lock_ts == 2
    assert outcome.error.lock_key == b"b"
    assert [(e.txn, e.wait_for_txn) for e in outcome.error.wait_chain] == [(2, 1), (1, 2)]
    world.release(b"a")
    assert one_waits.get() == Released(1, 0)
    # The edge 2 -> 1 is gone with the waiter: 1 may now wait for 2 without a deadlock.
    again = waiter(world, b"b", 1)
    world.release(b"b")
    assert again.get() == Released(2, 0)


def test_first_lock_waits_without_detection() -> None:
    world = World()
    world.locks[b"a"] = 1
    world.locks[b"b"] = 2
    a = waiter(world, b"a", 2)
    b = waiter(world, b"b", 1, first=True)  # would close the cycle, but is not checked
    world.release(b"a")
    world.release(b"b")
    assert a.get() == Released(1, 0)
    assert b.get() == Released(2, 0)


def test_wait_duration_rules() -> None:
    manager = World(wait_for_lock_timeout_ms=1000).manager
    assert manager.wait_duration_ms(-5) is None
    assert manager.wait_duration_ms(0) == 1000
    assert manager.wait_duration_ms(300) == 300
    assert manager.wait_duration_ms(5000) == 1000


def test_safety_poll_finds_locks_released_without_a_poke() -> None:
    world = World(safety_poll_ms=20)
    world.locks[b"k"] = 5
    out = waiter(world, b"k", 10)
    world.commits[(b"k", 5)] = 6
    del world.locks[b"k"]  # e.g. the control API or a test changed the engine directly
    assert out.get() == Released(5, 6)
    assert world.manager.waiter_count == 0
