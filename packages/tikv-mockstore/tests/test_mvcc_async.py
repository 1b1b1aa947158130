"""Async commit, 1PC, pipelined flush, GC and range deletion."""

from __future__ import annotations

import pytest
from tikv_mockstore.mvcc import (
    MAX_TS,
    AlreadyExistError,
    IsolationLevel,
    KeyIsLockedError,
    LockType,
    Mutation,
    MvccEngine,
    Op,
    PessimisticAction,
    WriteConflictError,
    WriteType,
)


def put(e: MvccEngine, key: bytes, value: bytes, start: int, commit: int) -> None:
    assert e.prewrite([Mutation.put(key, value)], key, start, 3000).locks == ()
    e.commit([key], start, commit)


# --------------------------------------------------------------------------- async commit


def test_async_commit_min_commit_ts_is_above_max_ts_start_and_request() -> None:
    e = MvccEngine()
    e.get(b"x", 100)  # a reader at 100 raises max_ts
    res = e.prewrite(
        [Mutation.put(b"p", b"1"), Mutation.put(b"s", b"2")],
        b"p",
        50,
        3000,
        use_async_commit=True,
        secondaries=[b"s"],
        min_commit_ts=51,
    )
    assert res.min_commit_ts == 101
    assert res.one_pc_commit_ts == 0
    p = e.mvcc_by_key(b"p").lock
    s = e.mvcc_by_key(b"s").lock
    assert p is not None and s is not None
    assert p.use_async_commit and s.use_async_commit
    assert p.secondaries == (b"s",)
    assert s.secondaries == ()
    assert p.min_commit_ts == 101
    # The reader at 100 is not blocked (min_commit_ts > 100) and cannot see the write.
    assert e.get(b"p", 100) is None
    # Request min_commit_ts above max_ts wins.
    res = e.prewrite(
        [Mutation.put(b"q", b"1")], b"q", 60, 3000, use_async_commit=True, min_commit_ts=500
    )
    assert res.min_commit_ts == 500


def test_async_commit_pessimistic_uses_for_update_ts() -> None:
    e = MvccEngine()
    e.pessimistic_lock([Mutation(Op.PESSIMISTIC_LOCK, b"k")], b"k", 10, 3000, 40)
    res = e.prewrite(
        [Mutation.put(b"k", b"v")],
        b"k",
        10,
        3000,
        for_update_ts=40,
        pessimistic_actions=[PessimisticAction.DO_PESSIMISTIC_CHECK],
        use_async_commit=True,
    )
    assert res.min_commit_ts == 41


def test_async_commit_falls_back_when_max_commit_ts_exceeded() -> None:
    e = MvccEngine()
    e.get(b"x", 1000)
    res = e.prewrite(
        [Mutation.put(b"p", b"1"), Mutation.put(b"s", b"2")],
        b"p",
        50,
        3000,
        use_async_commit=True,
        secondaries=[b"s"],
        max_commit_ts=500,
    )
    assert res.locks == ()
    assert res.min_commit_ts == 0  # the client must commit with 2PC
    for k in (b"p", b"s"):
        lock = e.mvcc_by_key(k).lock
        assert lock is not None
        assert not lock.use_async_commit
    e.commit([b"p", b"s"], 50, 1001)
    assert e.get(b"s", 1001) == b"2"


def test_async_commit_retry_after_commit_returns_commit_ts() -> None:
    e = MvccEngine()
    muts = [Mutation.put(b"p", b"1")]
    res = e.prewrite(muts, b"p", 50, 3000, use_async_commit=True)
    e.commit([b"p"], 50, res.min_commit_ts)
    put(e, b"p", b"2", 60, 70)
    again = e.prewrite(muts, b"p", 50, 3000, use_async_commit=True)
    assert again.min_commit_ts == res.min_commit_ts
    assert e.lock_count() == 0


# --------------------------------------------------------------------------- 1PC


def test_one_pc_commits_directly() -> None:
    e = MvccEngine()
    put(e, b"d", b"old", 1, 2)
    e.get(b"x", 70)
    res = e.prewrite(
        [Mutation.put(b"a", b"1"), Mutation.delete(b"d"), Mutation.lock(b"l")],
        b"a",
        50,
        3000,
        try_one_pc=True,
    )
    assert res.one_pc_commit_ts == 71
    assert res.min_commit_ts == 0
    assert e.lock_count() == 0
    assert e.get(b"a", 71) == b"1"
    assert e.get(b"a", 70) is None
    assert e.get(b"d", 71) is None
    assert e.get(b"d", 70) == b"old"
    assert e.mvcc_by_key(b"l").writes[0][1].write_type is WriteType.LOCK


def test_one_pc_with_a_blocking_lock_writes_nothing() -> None:
    e = MvccEngine()
    e.prewrite([Mutation.put(b"b", b"x")], b"b", 40, 3000)
    res = e.prewrite(
        [Mutation.put(b"a", b"1"), Mutation.put(b"b", b"2")], b"a", 50, 3000, try_one_pc=True
    )
    assert res.one_pc_commit_ts == 0
    assert len(res.locks) == 1
    assert e.mvcc_by_key(b"a").writes == ()
    assert e.mvcc_by_key(b"a").lock is None


def test_one_pc_falls_back_to_2pc_locks_when_max_commit_ts_exceeded() -> None:
    e = MvccEngine()
    e.get(b"x", 1000)
    res = e.prewrite(
        [Mutation.put(b"a", b"1"), Mutation.put(b"b", b"2")],
        b"a",
        50,
        3000,
        try_one_pc=True,
        max_commit_ts=500,
    )
    assert res.one_pc_commit_ts == 0
    assert e.lock_count() == 2
    assert e.mvcc_by_key(b"a").writes == ()
    e.commit([b"a", b"b"], 50, 1001)
    assert e.get(b"b", 1001) == b"2"


def test_one_pc_pessimistic_removes_pessimistic_locks() -> None:
    e = MvccEngine()
    e.pessimistic_lock([Mutation(Op.PESSIMISTIC_LOCK, b"k")], b"k", 10, 3000, 20)
    res = e.prewrite(
        [Mutation.put(b"k", b"v")],
        b"k",
        10,
        3000,
        for_update_ts=20,
        pessimistic_actions=[PessimisticAction.DO_PESSIMISTIC_CHECK],
        try_one_pc=True,
    )
    assert res.one_pc_commit_ts == 21
    assert e.lock_count() == 0
    assert e.get(b"k", 21) == b"v"


# --------------------------------------------------------------------------- flush


def test_flush_generations_and_buffer_batch_get() -> None:
    e = MvccEngine()
    assert e.flush([Mutation.put(b"a", b"1"), Mutation.put(b"b", b"1")], b"a", 10, 1, 3000) == []
    lock = e.mvcc_by_key(b"a").lock
    assert lock is not None
    assert (lock.generation, lock.min_commit_ts, lock.lock_type) == (1, 11, LockType.PUT)
    # A newer generation overwrites; an older one is ignored.
    e.flush([Mutation.put(b"a", b"2"), Mutation.delete(b"b")], b"a", 10, 3, 3000)
    e.flush([Mutation.put(b"a", b"stale")], b"a", 10, 2, 3000)
    pairs = e.buffer_batch_get([b"a", b"b", b"c"], 10)
    assert [(p.key, p.value) for p in pairs] == [(b"a", b"2"), (b"b", b"")]
    assert e.buffer_batch_get([b"a"], 11) == []
    # Commit the pipelined transaction.
    e.commit([b"a", b"b"], 10, 20)
    assert e.get(b"a", 20) == b"2"
    assert e.get(b"b", 20) is None


def test_flush_insert_over_own_flushed_put_already_exists() -> None:
    e = MvccEngine()
    e.flush([Mutation.put(b"a", b"1")], b"a", 10, 1)
    with pytest.raises(AlreadyExistError):
        e.flush([Mutation.insert(b"a", b"2")], b"a", 10, 2)


def test_flush_reports_other_locks_but_writes_the_rest() -> None:
    e = MvccEngine()
    e.prewrite([Mutation.put(b"b", b"x")], b"b", 5, 3000)
    locks = e.flush([Mutation.put(b"a", b"1"), Mutation.put(b"b", b"2")], b"a", 10, 1)
    assert len(locks) == 1
    assert isinstance(locks[0], KeyIsLockedError)
    assert e.mvcc_by_key(b"a").lock is not None


def test_flush_conflict_and_validation() -> None:
    e = MvccEngine()
    put(e, b"a", b"v", 11, 12)
    with pytest.raises(WriteConflictError):
        e.flush([Mutation.put(b"a", b"1")], b"a", 10, 1)
    with pytest.raises(ValueError, match="generation"):
        e.flush([Mutation.put(b"a", b"1")], b"a", 10, 0)


def test_flushed_primary_rollback_is_protected_and_heartbeat_pushes_min_commit_ts() -> None:
    e = MvccEngine()
    e.flush([Mutation.put(b"p", b"1"), Mutation.put(b"s", b"1")], b"p", 10, 1, 100)
    e.txn_heart_beat(b"p", 10, 200, min_commit_ts=50)
    assert e.mvcc_by_key(b"p").lock.min_commit_ts == 50  # type: ignore[union-attr]
    e.batch_rollback([b"s"], 10)
    # A flushed lock's rollback is protected even on a secondary (generation > 0).
    assert e.mvcc_by_key(b"s").writes[0][1].is_protected


# --------------------------------------------------------------------------- GC


def test_gc_keeps_newest_visible_version() -> None:
    e = MvccEngine()
    put(e, b"k", b"v1", 10, 11)
    put(e, b"k", b"v2", 20, 21)
    e.batch_rollback([b"k"], 25)
    e.prewrite([Mutation.lock(b"k")], b"k", 26, 3000)
    e.commit([b"k"], 26, 27)
    put(e, b"k", b"v3", 30, 31)
    res = e.gc(28)
    # Versions at or below 28: Lock@27 (removed), Rollback@25 (removed), Put@21 (kept),
    # Put@11 (removed). Put@31 is above the safe point.
    assert res.versions_deleted == 3
    assert [c for c, _ in e.mvcc_by_key(b"k").writes] == [31, 21]
    assert e.get(b"k", 28) == b"v2"
    assert e.get(b"k", 31) == b"v3"


def test_gc_removes_deleted_keys_entirely() -> None:
    e = MvccEngine()
    put(e, b"k", b"v1", 10, 11)
    e.prewrite([Mutation.delete(b"k")], b"k", 20, 3000)
    e.commit([b"k"], 20, 21)
    e.prewrite([Mutation.put(b"keep", b"x")], b"keep", 5, 3000)  # locks are not GC'd
    res = e.gc(100)
    assert res.versions_deleted == 2
    assert e.mvcc_by_key(b"k").writes == ()
    assert e.mvcc_by_key(b"keep").lock is not None
    assert e.scan(b"", b"", 10, 100, isolation_level=IsolationLevel.RC) == []


def test_delete_range_and_unsafe_destroy_range() -> None:
    e = MvccEngine()
    for k in (b"a", b"b", b"c", b"d"):
        put(e, k, b"v", 10, 11)
    e.prewrite([Mutation.put(b"b2", b"x")], b"b2", 20, 3000)
    assert e.delete_range(b"b", b"d") == 3
    assert [p.key for p in e.scan(b"", b"", 10, MAX_TS - 1)] == [b"a", b"d"]
    assert e.unsafe_destroy_range(b"", b"") == 2
    assert e.scan(b"", b"", 10, MAX_TS - 1) == []
    with pytest.raises(ValueError, match="end_key"):
        e.delete_range(b"z", b"a")


def test_async_prewrite_meeting_a_lock_still_reports_min_commit_ts() -> None:
    # TiKV's Prewrite::write_result: with locks nothing is written, but the result keeps
    # the async-commit min_commit_ts computed for the keys it could lock.
    e = MvccEngine()
    assert e.prewrite([Mutation.put(b"s2", b"x")], b"s2", 40, 3000).locks == ()
    e.get(b"x", 100)  # max_ts 100
    res = e.prewrite(
        [Mutation.put(b"p", b"1"), Mutation.put(b"s2", b"2")],
        b"p",
        50,
        3000,
        use_async_commit=True,
        secondaries=[b"s2"],
    )
    (locked,) = res.locks
    assert isinstance(locked, KeyIsLockedError)
    assert locked.lock_info.lock_version == 40
    assert res.min_commit_ts == 101
    assert res.one_pc_commit_ts == 0
    assert e.lock_of(b"p") is None  # nothing written
