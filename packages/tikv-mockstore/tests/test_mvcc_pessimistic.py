"""Pessimistic transactions and the deadlock detector."""

from __future__ import annotations

import threading

import pytest
from tikv_mockstore.mvcc import (
    AlreadyExistError,
    Assertion,
    DeadlockDetector,
    KeyIsLockedError,
    LockType,
    LockTypeNotMatchError,
    Mutation,
    MvccEngine,
    Op,
    PessimisticAction,
    PessimisticLockNotFoundError,
    PessimisticLockRolledBackError,
    WriteConflictError,
    WriteConflictReason,
    key_hash,
)


def plock(key: bytes, assertion: Assertion = Assertion.NONE) -> Mutation:
    return Mutation(Op.PESSIMISTIC_LOCK, key, b"", assertion)


def put(e: MvccEngine, key: bytes, value: bytes, start: int, commit: int) -> None:
    assert e.prewrite([Mutation.put(key, value)], key, start, 3000).locks == ()
    e.commit([key], start, commit)


def test_pessimistic_lock_then_prewrite_then_commit() -> None:
    e = MvccEngine()
    put(e, b"k", b"old", 1, 2)
    res = e.pessimistic_lock([plock(b"k"), plock(b"n")], b"k", 10, 3000, 12, return_values=True)
    assert res.values == (b"old", b"")
    assert res.not_founds == (False, True)
    lock = e.mvcc_by_key(b"k").lock
    assert lock is not None
    assert lock.lock_type is LockType.PESSIMISTIC
    assert lock.for_update_ts == 12
    # Reads are not blocked by a pessimistic lock.
    assert e.get(b"k", 100) == b"old"
    pw = e.prewrite(
        [Mutation.put(b"k", b"new"), Mutation.put(b"n", b"nv")],
        b"k",
        10,
        3000,
        for_update_ts=12,
        pessimistic_actions=[PessimisticAction.DO_PESSIMISTIC_CHECK] * 2,
    )
    assert pw.locks == ()
    lock = e.mvcc_by_key(b"k").lock
    assert lock is not None
    assert lock.lock_type is LockType.PUT
    assert lock.for_update_ts == 12
    e.commit([b"k", b"n"], 10, 20)
    assert e.get(b"k", 20) == b"new"
    assert e.get(b"n", 20) == b"nv"


def test_pessimistic_lock_conflicts_with_newer_commit() -> None:
    e = MvccEngine()
    put(e, b"k", b"v", 14, 15)
    with pytest.raises(WriteConflictError) as ei:
        e.pessimistic_lock([plock(b"k")], b"k", 10, 3000, 12)
    err = ei.value
    assert err.reason is WriteConflictReason.PESSIMISTIC_RETRY
    assert (err.start_ts, err.conflict_start_ts, err.conflict_commit_ts) == (10, 14, 15)
    # Retrying with a newer for_update_ts succeeds.
    e.pessimistic_lock([plock(b"k")], b"k", 10, 3000, 16)
    assert e.mvcc_by_key(b"k").lock is not None


def test_pessimistic_lock_meets_another_lock_and_carries_wait_info() -> None:
    e = MvccEngine()
    e.pessimistic_lock([plock(b"a")], b"a", 10, 3000, 10)
    with pytest.raises(KeyIsLockedError) as ei:
        e.pessimistic_lock(
            [plock(b"b"), plock(b"a")], b"b", 20, 3000, 20, wait_timeout=1000, is_first_lock=True
        )
    err = ei.value
    assert err.lock_info.lock_version == 10
    assert err.wait is not None
    assert (err.wait.start_ts, err.wait.for_update_ts, err.wait.key) == (20, 20, b"a")
    assert err.wait.key_hash == key_hash(b"a")
    assert err.wait.wait_timeout == 1000
    assert err.wait.is_first_lock
    # The whole request failed: b is not locked either.
    assert e.mvcc_by_key(b"b").lock is None


def test_wait_for_lock_change_wakes_when_the_lock_is_released() -> None:
    e = MvccEngine()
    e.pessimistic_lock([plock(b"a")], b"a", 10, 3000, 10)
    assert e.wait_for_lock_change(b"a", 10, 0.0) is False
    woke: list[bool] = []
    t = threading.Thread(target=lambda: woke.append(e.wait_for_lock_change(b"a", 10, 30.0)))
    t.start()
    e.pessimistic_rollback([b"a"], 10, 10)
    t.join(30.0)
    assert woke == [True]
    e.pessimistic_lock([plock(b"a")], b"a", 20, 3000, 20)
    assert e.mvcc_by_key(b"a").lock.start_ts == 20  # type: ignore[union-attr]


def test_check_existence_and_lock_only_if_exists() -> None:
    e = MvccEngine()
    put(e, b"x", b"1", 1, 2)
    res = e.pessimistic_lock([plock(b"x"), plock(b"y")], b"x", 10, 3000, 10, check_existence=True)
    assert res.not_founds == (False, True)
    assert [r.existence for r in res.results] == [True, False]
    assert res.values == (b"", b"")
    e.pessimistic_rollback([b"x", b"y"], 10, 10)
    res = e.pessimistic_lock(
        [plock(b"x"), plock(b"y")],
        b"x",
        11,
        3000,
        11,
        return_values=True,
        lock_only_if_exists=True,
    )
    assert res.values == (b"1", b"")
    assert e.mvcc_by_key(b"x").lock is not None
    assert e.mvcc_by_key(b"y").lock is None
    with pytest.raises(Exception, match="LockIfExistsFailed"):
        e.pessimistic_lock([plock(b"z")], b"z", 12, 3000, 12, lock_only_if_exists=True)


def test_should_not_exist_lock() -> None:
    e = MvccEngine()
    put(e, b"x", b"1", 1, 2)
    with pytest.raises(AlreadyExistError):
        e.pessimistic_lock([plock(b"x", Assertion.NOT_EXIST)], b"x", 10, 3000, 10)
    e.pessimistic_lock([plock(b"y", Assertion.NOT_EXIST)], b"y", 10, 3000, 10)


def test_relock_raises_for_update_ts_and_is_idempotent() -> None:
    e = MvccEngine()
    e.pessimistic_lock([plock(b"k")], b"k", 10, 3000, 10)
    e.pessimistic_lock([plock(b"k")], b"k", 10, 3000, 15)
    assert e.mvcc_by_key(b"k").lock.for_update_ts == 15  # type: ignore[union-attr]
    e.pessimistic_lock([plock(b"k")], b"k", 10, 3000, 12)  # older: kept at 15
    assert e.mvcc_by_key(b"k").lock.for_update_ts == 15  # type: ignore[union-attr]


def test_pessimistic_rollback_respects_for_update_ts() -> None:
    e = MvccEngine()
    e.pessimistic_lock([plock(b"k")], b"k", 10, 3000, 15)
    e.pessimistic_rollback([b"k"], 10, 12)  # the lock is newer than the rollback request
    assert e.mvcc_by_key(b"k").lock is not None
    e.pessimistic_rollback([b"k"], 10, 15)
    assert e.mvcc_by_key(b"k").lock is None
    assert e.mvcc_by_key(b"k").writes == ()


def test_lock_after_rollback_is_refused() -> None:
    e = MvccEngine()
    e.batch_rollback([b"k"], 10)
    with pytest.raises(PessimisticLockRolledBackError):
        e.pessimistic_lock([plock(b"k")], b"k", 10, 3000, 10)


def test_pessimistic_prewrite_without_lock_fails_when_amend_impossible() -> None:
    e = MvccEngine()
    put(e, b"k", b"v", 12, 13)
    with pytest.raises(PessimisticLockNotFoundError) as ei:
        e.prewrite([Mutation.put(b"k", b"w")], b"k", 10, 3000, for_update_ts=14)
    assert ei.value.reason == "LockMissingAmendFail"
    # With nothing newer than start_ts, the missing lock is amended.
    res = e.prewrite([Mutation.put(b"j", b"w")], b"j", 10, 3000, for_update_ts=14)
    assert res.locks == ()


def test_pessimistic_prewrite_expected_for_update_ts_constraint() -> None:
    e = MvccEngine()
    e.pessimistic_lock([plock(b"k")], b"k", 10, 3000, 12)
    with pytest.raises(PessimisticLockNotFoundError) as ei:
        e.prewrite(
            [Mutation.put(b"k", b"w")],
            b"k",
            10,
            3000,
            for_update_ts=12,
            for_update_ts_constraints={0: 11},
        )
    assert ei.value.reason == "LockForUpdateTsMismatch"


def test_pessimistic_prewrite_skip_and_constraint_check_actions() -> None:
    e = MvccEngine()
    put(e, b"u", b"v", 11, 13)  # committed after start 10, before for_update_ts 14
    res = e.prewrite(
        [Mutation.put(b"u", b"w")],
        b"u",
        10,
        3000,
        for_update_ts=14,
        pessimistic_actions=[PessimisticAction.SKIP_PESSIMISTIC_CHECK],
    )
    assert res.locks == ()
    e.batch_rollback([b"u"], 10)
    with pytest.raises(WriteConflictError) as ei:
        e.prewrite(
            [Mutation.put(b"u", b"w")],
            b"u",
            12,
            3000,
            for_update_ts=14,
            pessimistic_actions=[PessimisticAction.DO_CONSTRAINT_CHECK],
        )
    assert ei.value.reason is WriteConflictReason.LAZY_UNIQUENESS_CHECK


def test_optimistic_prewrite_over_own_pessimistic_lock_is_type_mismatch() -> None:
    e = MvccEngine()
    e.pessimistic_lock([plock(b"k")], b"k", 10, 3000, 10)
    with pytest.raises(LockTypeNotMatchError):
        e.prewrite([Mutation.put(b"k", b"v")], b"k", 10, 3000)
    e.prewrite([Mutation.put(b"j", b"v")], b"j", 20, 3000)
    with pytest.raises(LockTypeNotMatchError):
        e.pessimistic_lock([plock(b"j")], b"j", 20, 3000, 20)


def test_pessimistic_prewrite_reports_other_lock_with_zero_ttl() -> None:
    e = MvccEngine()
    e.prewrite([Mutation.put(b"k", b"v")], b"k", 5, 3000)
    res = e.prewrite(
        [Mutation.put(b"k", b"w")],
        b"k",
        10,
        3000,
        for_update_ts=10,
        pessimistic_actions=[PessimisticAction.SKIP_PESSIMISTIC_CHECK],
    )
    assert len(res.locks) == 1
    err = res.locks[0]
    assert isinstance(err, KeyIsLockedError)
    assert err.lock_info.lock_ttl == 0


def test_commit_of_a_pessimistic_lock_removes_it_without_a_write() -> None:
    e = MvccEngine()
    e.pessimistic_lock([plock(b"k")], b"k", 10, 3000, 10)
    e.commit([b"k"], 10, 20)
    assert e.mvcc_by_key(b"k").lock is None
    assert e.mvcc_by_key(b"k").writes == ()


def test_force_lock_mode_locks_with_conflict() -> None:
    e = MvccEngine()
    put(e, b"k", b"v", 14, 15)
    res = e.pessimistic_lock(
        [plock(b"k")], b"k", 10, 3000, 12, return_values=True, allow_lock_with_conflict=True
    )
    assert res.results[0].locked_with_conflict_ts == 15
    assert res.values == (b"v",)
    lock = e.mvcc_by_key(b"k").lock
    assert lock is not None
    assert lock.for_update_ts == 15
    assert lock.is_locked_with_conflict


# --------------------------------------------------------------------------- deadlock


def test_deadlock_cycle_of_two() -> None:
    d = DeadlockDetector()
    assert d.detect(1, 2, key_hash(b"a"), b"a") is None
    dl = d.detect(2, 1, key_hash(b"b"), b"b", b"tag")
    assert dl is not None
    assert dl.lock_ts == 1
    assert dl.lock_key == b"b"
    assert [(w.txn, w.wait_for_txn) for w in dl.wait_chain] == [(1, 2), (2, 1)]
    assert dl.wait_chain[0].key == b"a"
    assert dl.wait_chain[0].key_hash == key_hash(b"a")
    assert dl.wait_chain[-1].resource_group_tag == b"tag"
    assert dl.deadlock_key_hash == key_hash(b"a")
    # Nothing was registered for the refused wait.
    assert d.waits_of(2) == frozenset()


def test_deadlock_cycle_of_three_and_cleanup() -> None:
    d = DeadlockDetector()
    assert d.detect(1, 2, 11, b"k1") is None
    assert d.detect(2, 3, 22, b"k2") is None
    dl = d.detect(3, 1, 33, b"k3")
    assert dl is not None
    assert [(w.txn, w.wait_for_txn) for w in dl.wait_chain] == [(1, 2), (2, 3), (3, 1)]
    assert [w.key for w in dl.wait_chain] == [b"k1", b"k2", b"k3"]
    assert dl.deadlock_key_hash == 22
    # Once 2 stops waiting, 3 may wait for 1.
    d.clean_up(2)
    assert d.detect(3, 1, 33, b"k3") is None
    d.clean_up_wait_for(3, 1, 33)
    assert d.waits_of(3) == frozenset()


def test_no_deadlock_for_a_chain_and_edges_expire() -> None:
    now = [0.0]
    d = DeadlockDetector(ttl_ms=100, clock_ms=lambda: now[0])
    assert d.detect(1, 2, 1) is None
    assert d.detect(2, 3, 2) is None
    assert d.detect(4, 1, 3) is None  # 4 -> 1 -> 2 -> 3: no cycle
    now[0] = 200.0
    # The old edges expired: 3 -> 1 no longer closes a cycle.
    assert d.detect(3, 1, 4) is None
    with pytest.raises(ValueError, match="itself"):
        d.detect(5, 5, 0)


def test_engine_and_detector_together_detect_a_deadlock() -> None:
    e = MvccEngine()
    d = DeadlockDetector()
    e.pessimistic_lock([plock(b"a")], b"a", 10, 3000, 10)
    e.pessimistic_lock([plock(b"b")], b"b", 20, 3000, 20)
    with pytest.raises(KeyIsLockedError) as e1:
        e.pessimistic_lock([plock(b"b")], b"a", 10, 3000, 10)
    w1 = e1.value.wait
    assert w1 is not None
    assert d.detect(w1.start_ts, w1.lock_info.lock_version, w1.key_hash, w1.key) is None
    with pytest.raises(KeyIsLockedError) as e2:
        e.pessimistic_lock([plock(b"a")], b"b", 20, 3000, 20)
    w2 = e2.value.wait
    assert w2 is not None
    dl = d.detect(w2.start_ts, w2.lock_info.lock_version, w2.key_hash, w2.key)
    assert dl is not None
    assert [(w.txn, w.wait_for_txn) for w in dl.wait_chain] == [(10, 20), (20, 10)]


def test_locked_with_conflict_result_keeps_the_value_without_return_values() -> None:
    # TiKV loads the latest value for a locked-with-conflict result whatever the request
    # asked: the client keeps it for the statement's retry.
    e = MvccEngine()
    put(e, b"k", b"v", 14, 15)
    put(e, b"gone", b"x", 14, 15)
    e.prewrite([Mutation.delete(b"gone")], b"gone", 16, 3000)
    e.commit([b"gone"], 16, 17)
    res = e.pessimistic_lock(
        [plock(b"k"), plock(b"plain")], b"k", 10, 3000, 12, allow_lock_with_conflict=True
    )
    conflict, plain = res.results
    assert (conflict.locked_with_conflict_ts, conflict.value, conflict.existence) == (
        15,
        b"v",
        True,
    )
    assert (plain.locked_with_conflict_ts, plain.value) == (0, None)
    deleted = e.pessimistic_lock(
        [plock(b"gone")], b"gone", 11, 3000, 12, allow_lock_with_conflict=True
    )
    assert (deleted.results[0].locked_with_conflict_ts, deleted.results[0].value) == (17, None)
    assert not deleted.results[0].existence
    # A retry below the lock's for_update_ts meets the lock taken with the conflict.
    again = e.pessimistic_lock([plock(b"k")], b"k", 10, 3000, 13, allow_lock_with_conflict=True)
    assert (again.results[0].locked_with_conflict_ts, again.results[0].value) == (15, b"v")


def test_lock_of_reports_the_current_lock() -> None:
    e = MvccEngine()
    assert e.lock_of(b"k") is None
    e.pessimistic_lock([plock(b"k")], b"k", 10, 3000, 10)
    lock = e.lock_of(b"k")
    assert lock is not None
    assert (lock.start_ts, lock.lock_type, lock.for_update_ts) == (10, LockType.PESSIMISTIC, 10)
    e.prewrite([Mutation.put(b"k", b"v")], b"k", 10, 3000, for_update_ts=10)
    lock = e.lock_of(b"k")
    assert lock is not None and (lock.lock_type, lock.value) == (LockType.PUT, b"v")
    e.commit([b"k"], 10, 11)
    assert e.lock_of(b"k") is None
