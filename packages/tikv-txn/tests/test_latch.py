"""Tests of local latches: client-go latch_test.go and scheduler_test.go semantics."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest
from tikv_pd.errors import ClientClosedError
from tikv_txn.latch import (
    CHECK_INTERVAL_MS,
    EXPIRE_DURATION_MS,
    AcquireResult,
    Latches,
    LatchLock,
    LatchScheduler,
    murmur3_32,
)

_tso = itertools.count(1)


def get_tso() -> int:
    return next(_tso)


def ts_at(ms: int, logical: int = 0) -> int:
    return (ms << 18) | logical


# ---------------------------------------------------------------------------- hashing


@pytest.mark.parametrize(
    ("data", "seed", "expected"),
    [
        # Published MurmurHash3_x86_32 test vectors.
        (b"", 0, 0),
        (b"", 1, 0x514E28B7),
        (b"", 0xFFFFFFFF, 0x81F16F39),
        (b"\x00\x00\x00\x00", 0, 0x2362F9DE),
        (b"aaaa", 0x9747B28C, 0x5A97808A),
        (b"abc", 0x9747B28C, 0xC84A62DD),
        (b"Hello, world!", 0x9747B28C, 0x24884CBA),
        (b"The quick brown fox jumps over the lazy dog", 0x9747B28C, 0x2FA826CD),
        (b"hello", 0, 0x248BFA47),
    ],
)
def test_murmur3_vectors(data: bytes, seed: int, expected: int) -> None:
    assert murmur3_32(data, seed) == expected


def test_murmur3_rejects_str() -> None:
    with pytest.raises(TypeError, match="bytes"):
        murmur3_32("abc")  # type: ignore[arg-type]


def test_slot_count_rounds_up_to_power_of_two() -> None:
    assert Latches(256).slot_count == 256
    assert Latches(7).slot_count == 8
    assert Latches(1).slot_count == 1
    assert Latches(2_048_000).slot_count == 1 << 21
    latches = Latches(8)
    assert latches.slot_id(b"abc") == murmur3_32(b"abc") & 7
    with pytest.raises(ValueError, match="positive"):
        Latches(0)
    with pytest.raises(TypeError):
        Latches(2.5)  # type: ignore[arg-type]


def test_gen_lock_sorts_and_dedupes() -> None:
    latches = Latches(16)
    lock = latches.gen_lock(5, [b"c", b"a", b"b", b"a"])
    assert lock.keys == (b"a", b"b", b"c")
    assert lock.required_slots == tuple(latches.slot_id(k) for k in lock.keys)
    with pytest.raises(TypeError, match="bytes"):
        latches.gen_lock(5, ["a"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="non-negative"):
        latches.gen_lock(-1, [b"a"])
    # Duplicates do not make a transaction wait for itself.
    assert latches.acquire(latches.gen_lock(6, [b"x", b"x"])) is AcquireResult.SUCCESS


# ---------------------------------------------------------------------------- latch_test.go


def test_wake_up() -> None:
    latches = Latches(256)
    lock_a = latches.gen_lock(get_tso(), [b"a", b"b", b"c"])
    start_b = get_tso()
    lock_b = latches.gen_lock(start_b, [b"d", b"e", b"a", b"c"])

    assert latches.acquire(lock_a) is AcquireResult.SUCCESS
    assert latches.acquire(lock_b) is AcquireResult.LOCKED
    assert lock_b.is_locked

    lock_a.set_commit_ts(get_tso())
    wakeup = latches.release(lock_a)
    assert [lk.start_ts for lk in wakeup] == [start_b]
    # B is woken stale: A committed after B started, on a key B needs.
    assert latches.acquire(lock_b) is AcquireResult.STALE
    assert lock_b.is_stale and lock_b.stale_key == b"a"
    assert lock_b.conflict_commit_ts == lock_a.commit_ts
    assert latches.release(lock_b) == []
    assert lock_b.acquired_count == 0

    # B restarts with a new start ts and gets everything.
    lock_b = latches.gen_lock(get_tso(), [b"d", b"e", b"a", b"c"])
    assert latches.acquire(lock_b) is AcquireResult.SUCCESS


def test_first_acquire_failed_with_stale() -> None:
    latches = Latches(256)
    keys = [b"a", b"b", b"c"]
    lock_a = latches.gen_lock(get_tso(), keys)
    start_b = get_tso()
    lock_b = latches.gen_lock(start_b, keys)
    assert latches.acquire(lock_a) is AcquireResult.SUCCESS
    commit_a = get_tso()
    lock_a.set_commit_ts(commit_a)
    latches.release(lock_a)
    assert commit_a > start_b
    assert latches.acquire(lock_b) is AcquireResult.STALE
    assert lock_b.stale_key == b"a" and lock_b.conflict_commit_ts == commit_a
    latches.release(lock_b)


def test_waiter_not_stale_gets_latch() -> None:
    latches = Latches(256)
    lock_a = latches.gen_lock(10, [b"k"])
    lock_b = latches.gen_lock(20, [b"k"])
    assert latches.acquire(lock_a) is AcquireResult.SUCCESS
    assert latches.acquire(lock_b) is AcquireResult.LOCKED
    # A rolled back (no commit ts): B is not stale.
    assert latches.release(lock_a) == [lock_b]
    assert latches.acquire(lock_b) is AcquireResult.SUCCESS
    assert not lock_b.is_stale
    # A committed at 15 < 20 would not make B stale either.
    latches.release(lock_b)
    lock_c = latches.gen_lock(15, [b"k"])
    lock_c.set_commit_ts(18)
    assert latches.acquire(lock_c) is AcquireResult.SUCCESS
    latches.release(lock_c)
    assert latches.acquire(latches.gen_lock(20, [b"k"])) is AcquireResult.SUCCESS


def test_recycle() -> None:
    latches = Latches(8)
    now_ms = 1_700_000_000_000
    start_ts = ts_at(now_ms)
    lock = latches.gen_lock(start_ts, [b"a", b"b"])
    lock1 = latches.gen_lock(start_ts, [b"b", b"c"])
    assert latches.acquire(lock) is AcquireResult.SUCCESS
    assert latches.acquire(lock1) is AcquireResult.LOCKED
    lock.set_commit_ts(start_ts + 1)
    # Releasing hands the latch of b to lock1 (stale: start_ts < start_ts + 1).
    latches.release(lock)
    latches.release(lock1)

    lock2 = latches.gen_lock(start_ts + 3, [b"b", b"c"])
    assert latches.acquire(lock2) is AcquireResult.SUCCESS
    latches.release(lock2)
    assert latches.latch_count() == 3

    # "c" was only held by transactions that did not commit (max commit ts 0), so it
    # is expired at once; "a" and "b" remember a commit at start_ts + 1.
    assert latches.recycle(ts_at(now_ms + EXPIRE_DURATION_MS - 1)) == 1
    assert latches.latch_count() == 2
    assert latches.recycle(ts_at(now_ms + EXPIRE_DURATION_MS) + 3) == 2
    assert latches.latch_count() == 0


def test_recycle_keeps_held_latches() -> None:
    latches = Latches(8)
    held = latches.gen_lock(ts_at(1000), [b"a"])
    assert latches.acquire(held) is AcquireResult.SUCCESS
    assert latches.recycle(ts_at(1000 + 10 * EXPIRE_DURATION_MS)) == 0
    assert latches.latch_count() == 1


def test_slot_sweep_on_acquire() -> None:
    # One slot: once it has LATCH_LIST_COUNT entries, acquiring sweeps expired ones.
    latches = Latches(1)
    for i in range(5):
        lk = latches.gen_lock(ts_at(1000), [b"k%d" % i])
        assert latches.acquire(lk) is AcquireResult.SUCCESS
        lk.set_commit_ts(ts_at(1001))
        latches.release(lk)
    assert latches.latch_count() == 5
    late = latches.gen_lock(ts_at(1001 + EXPIRE_DURATION_MS), [b"new"])
    assert latches.acquire(late) is AcquireResult.SUCCESS
    assert latches.latch_count() == 1


def test_release_of_foreign_lock_rejected() -> None:
    a, b = Latches(8), Latches(8)
    lk = a.gen_lock(1, [b"x"])
    assert a.acquire(lk) is AcquireResult.SUCCESS
    with pytest.raises(RuntimeError, match="not held"):
        b.release(lk)


# ---------------------------------------------------------------------------- scheduler


async def test_scheduler_serialises_conflicting_transactions() -> None:
    sched = LatchScheduler(16)
    first = await sched.acquire(get_tso(), [b"a", b"b"])
    second_task = asyncio.create_task(sched.acquire(get_tso(), [b"b", b"c"]))
    await _until(lambda: sched.latches.waiting_count() == 1)
    assert not second_task.done()
    sched.release(first)  # rolled back: no commit ts
    second = await asyncio.wait_for(second_task, 5)
    assert not second.is_stale and second.acquired_count == 2
    sched.release(second, get_tso())


async def test_scheduler_reports_stale_waiter() -> None:
    sched = LatchScheduler(16)
    first = await sched.acquire(get_tso(), [b"k"])
    second_task = asyncio.create_task(sched.acquire(get_tso(), [b"k"]))
    await _until(lambda: sched.latches.waiting_count() == 1)
    sched.release(first, get_tso())  # committed after second started
    second = await asyncio.wait_for(second_task, 5)
    assert second.is_stale and second.stale_key == b"k"
    sched.release(second)
    # A fresh transaction gets the latch.
    third = await sched.acquire(get_tso(), [b"k"])
    assert not third.is_stale
    sched.release(third)


async def test_cancelled_waiter_leaves_queue_and_releases() -> None:
    sched = LatchScheduler(16)
    holder = await sched.acquire(get_tso(), [b"b"])
    # The waiter takes "a" first, then waits on "b".
    waiter = asyncio.create_task(sched.acquire(get_tso(), [b"a", b"b"]))
    await _until(lambda: sched.latches.waiting_count() == 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert sched.latches.waiting_count() == 0
    # "a" was released by the cancelled waiter.
    other = await asyncio.wait_for(sched.acquire(get_tso(), [b"a"]), 5)
    sched.release(other)
    sched.release(holder)


async def test_close_fails_waiters_and_new_acquires() -> None:
    sched = LatchScheduler(16)
    holder = await sched.acquire(get_tso(), [b"k"])
    waiter = asyncio.create_task(sched.acquire(get_tso(), [b"k"]))
    await _until(lambda: sched.latches.waiting_count() == 1)
    sched.close()
    with pytest.raises(ClientClosedError):
        await waiter
    with pytest.raises(ClientClosedError):
        await sched.acquire(get_tso(), [b"z"])
    sched.release(holder)  # no-op after close
    assert sched.closed


async def test_scheduler_periodic_recycle() -> None:
    sched = LatchScheduler(64)
    base = 1_800_000_000_000
    lk = await sched.acquire(ts_at(base), [b"old"])
    sched.release(lk, ts_at(base + 1))  # first release sweeps (nothing expired yet)
    assert sched.latches.latch_count() == 1
    later = base + EXPIRE_DURATION_MS + CHECK_INTERVAL_MS
    lk2 = await sched.acquire(ts_at(later), [b"new"])
    sched.release(lk2, ts_at(later + 1))
    # A minute of TSO time passed since the last sweep: "old" expired and is gone.
    assert sched.latches.latch_count() == 1
    again = await sched.acquire(ts_at(base + 5), [b"old"])
    assert not again.is_stale  # the record of its commit is gone with it
    sched.release(again)


async def test_with_concurrency() -> None:
    # client-go TestWithConcurrency, plus the invariant the latches exist for: two
    # transactions holding latches at once never share a key.
    sched = LatchScheduler(7)
    rng = random.Random(7)
    table = [bytes([c]) for c in b"abcdefgh"]
    holders: dict[bytes, int] = {}
    committed = stale = 0

    def generate() -> list[bytes]:
        keys: list[bytes] = []
        for chance in (100, 60, 40, 20):
            if rng.randrange(100) < chance:
                key = rng.choice(table)
                if key not in keys:
                    keys.append(key)
        return keys

    queue: asyncio.Queue[list[bytes]] = asyncio.Queue()
    for _ in range(999):
        queue.put_nowait(generate())

    async def worker() -> None:
        nonlocal committed, stale
        while not queue.empty():
            keys = queue.get_nowait()
            lock = await sched.acquire(get_tso(), keys)
            commit_ts = 0
            if lock.is_stale:
                stale += 1
            else:
                for key in lock.keys:
                    assert key not in holders, "two transactions hold the same latch"
                    holders[key] = lock.start_ts
                await asyncio.sleep(0)
                for key in lock.keys:
                    del holders[key]
                commit_ts = get_tso()
                committed += 1
            sched.release(lock, commit_ts)

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(10))), 60)
    assert committed + stale == 999
    assert committed > 0
    assert sched.latches.waiting_count() == 0


async def _until(cond: object) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while not cond():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0)


@pytest.mark.parametrize("seed", range(5))
def test_latches_randomised_against_model(seed: int) -> None:
    # Random acquire / release interleavings of the sans-IO table, checked against a
    # model: mutual exclusion per key, stale exactly when a needed key has a newer
    # commit, and no lock left waiting once every holder has released (sorted
    # acquisition cannot deadlock).
    rng = random.Random(seed)
    latches = Latches(4)  # few slots: keys share slots
    keys = [b"k%d" % i for i in range(8)]
    ts = itertools.count(1)
    max_commit: dict[bytes, int] = {}
    holding: list[LatchLock] = []  # SUCCESS or STALE: must be released
    waiting: list[LatchLock] = []

    def check_outcome(lock: LatchLock, result: AcquireResult) -> None:
        if result is AcquireResult.SUCCESS:
            assert all(max_commit.get(k, 0) <= lock.start_ts for k in lock.keys)
            holding.append(lock)
        elif result is AcquireResult.STALE:
            assert lock.stale_key is not None
            assert max_commit.get(lock.stale_key, 0) > lock.start_ts
            assert lock.conflict_commit_ts == max_commit[lock.stale_key]
            holding.append(lock)
        else:
            waiting.append(lock)

    def check_exclusion() -> None:
        owners: dict[bytes, LatchLock] = {}
        for lk in holding + waiting:
            for k in lk.keys[: lk.acquired_count]:
                assert k not in owners, "two locks hold one latch"
                owners[k] = lk

    for _ in range(600):
        if rng.random() < 0.5 or not holding:
            lock = latches.gen_lock(next(ts), rng.sample(keys, rng.randint(1, 4)))
            check_outcome(lock, latches.acquire(lock))
        else:
            lock = holding.pop(rng.randrange(len(holding)))
            commit = 0 if lock.is_stale or rng.random() < 0.3 else next(ts)
            lock.set_commit_ts(commit)
            for k in lock.keys[: lock.acquired_count]:
                max_commit[k] = max(max_commit.get(k, 0), commit)
            for woken in latches.release(lock):
                waiting.remove(woken)
                check_outcome(woken, latches.acquire(woken))
        check_exclusion()

    while holding:
        lock = holding.pop()
        for woken in latches.release(lock):
            waiting.remove(woken)
            check_outcome(woken, latches.acquire(woken))
        check_exclusion()
    assert waiting == []
    assert latches.waiting_count() == 0
