"""Prewrite / commit / rollback semantics of the MVCC engine (optimistic transactions)."""

from __future__ import annotations

import pytest
from tikv_mockstore.mvcc import (
    AlreadyExistError,
    Assertion,
    AssertionFailedError,
    AssertionLevel,
    CommittedError,
    CommitTsExpiredError,
    InvalidTxnTsoError,
    KeyIsLockedError,
    Mutation,
    MvccEngine,
    Op,
    TxnLockNotFoundError,
    WriteConflictError,
    WriteConflictReason,
    WriteType,
)


def ts(ms: int, logical: int = 0) -> int:
    return (ms << 18) | logical


def put(e: MvccEngine, key: bytes, value: bytes, start: int, commit: int) -> None:
    assert e.prewrite([Mutation.put(key, value)], key, start, 3000).locks == ()
    e.commit([key], start, commit)


def write_types(e: MvccEngine, key: bytes) -> list[tuple[int, WriteType, bool]]:
    return [(c, w.write_type, w.is_protected) for c, w in e.mvcc_by_key(key).writes]


def test_second_writer_conflicts_no_lost_update() -> None:
    e = MvccEngine()
    put(e, b"k", b"0", 1, 2)
    # Two transactions read k at their start ts and both write it.
    t1, t2 = 10, 11
    assert e.get(b"k", t1) == b"0"
    assert e.get(b"k", t2) == b"0"
    e.prewrite([Mutation.put(b"k", b"t1")], b"k", t1, 3000)
    blocked = e.prewrite([Mutation.put(b"k", b"t2")], b"k", t2, 3000)
    assert len(blocked.locks) == 1
    assert isinstance(blocked.locks[0], KeyIsLockedError)
    e.commit([b"k"], t1, 12)
    with pytest.raises(WriteConflictError) as ei:
        e.prewrite([Mutation.put(b"k", b"t2")], b"k", t2, 3000)
    err = ei.value
    assert (err.start_ts, err.conflict_start_ts, err.conflict_commit_ts) == (t2, t1, 12)
    assert err.key == b"k"
    assert err.primary == b"k"
    assert err.reason is WriteConflictReason.OPTIMISTIC
    assert e.get(b"k", 100) == b"t1"


def test_key_is_locked_is_returned_per_key_and_nothing_is_written() -> None:
    e = MvccEngine()
    e.prewrite([Mutation.put(b"b", b"x")], b"b", 5, 3000)
    res = e.prewrite(
        [Mutation.put(b"a", b"1"), Mutation.put(b"b", b"2"), Mutation.put(b"c", b"3")],
        b"a",
        10,
        3000,
    )
    assert len(res.locks) == 1
    err = res.locks[0]
    assert isinstance(err, KeyIsLockedError)
    assert err.lock_info.key == b"b"
    assert err.lock_info.lock_version == 5
    assert e.mvcc_by_key(b"a").lock is None
    assert e.mvcc_by_key(b"c").lock is None
    assert e.lock_count() == 1


def test_prewrite_error_leaves_no_partial_locks() -> None:
    e = MvccEngine()
    put(e, b"b", b"old", 1, 20)
    with pytest.raises(WriteConflictError):
        e.prewrite([Mutation.put(b"a", b"1"), Mutation.put(b"b", b"2")], b"a", 10, 3000)
    assert e.lock_count() == 0


def test_reprewrite_is_idempotent() -> None:
    e = MvccEngine()
    muts = [Mutation.put(b"a", b"1"), Mutation.put(b"b", b"2")]
    assert e.prewrite(muts, b"a", 10, 3000).locks == ()
    assert e.prewrite(muts, b"a", 10, 3000).locks == ()
    assert e.lock_count() == 2
    e.commit([b"a", b"b"], 10, 11)
    # Retried prewrite after commit succeeds without writing anything.
    put(e, b"a", b"later", 20, 21)
    assert e.prewrite(muts, b"a", 10, 3000).locks == ()
    assert e.lock_count() == 0
    assert e.get(b"a", 100) == b"later"


def test_rollback_record_stops_a_late_prewrite() -> None:
    e = MvccEngine()
    e.batch_rollback([b"k"], 10)
    assert write_types(e, b"k") == [(10, WriteType.ROLLBACK, False)]
    with pytest.raises(WriteConflictError) as ei:
        e.prewrite([Mutation.put(b"k", b"v")], b"k", 10, 3000)
    assert ei.value.reason is WriteConflictReason.SELF_ROLLED_BACK
    assert e.lock_count() == 0


def test_insert_and_check_not_exists() -> None:
    e = MvccEngine()
    put(e, b"k", b"v", 1, 2)
    with pytest.raises(AlreadyExistError) as ei:
        e.prewrite([Mutation.insert(b"k", b"w")], b"k", 10, 3000)
    assert ei.value.key == b"k"
    assert ei.value.existing_start_ts == 1
    with pytest.raises(AlreadyExistError):
        e.prewrite([Mutation.check_not_exists(b"k")], b"k", 10, 3000)
    # After a delete, Insert succeeds; a Lock record on top does not hide the delete.
    e.prewrite([Mutation.delete(b"k")], b"k", 20, 3000)
    e.commit([b"k"], 20, 21)
    e.prewrite([Mutation.lock(b"k")], b"k", 22, 3000)
    e.commit([b"k"], 22, 23)
    res = e.prewrite(
        [Mutation.insert(b"k", b"new"), Mutation.check_not_exists(b"z")], b"k", 30, 3000
    )
    assert res.locks == ()
    assert e.mvcc_by_key(b"z").lock is None  # CheckNotExists writes nothing
    e.commit([b"k"], 30, 31)
    assert e.get(b"k", 40) == b"new"


def test_insert_over_lock_record_sees_older_put() -> None:
    e = MvccEngine()
    put(e, b"k", b"v", 1, 2)
    e.prewrite([Mutation.lock(b"k")], b"k", 3, 3000)
    e.commit([b"k"], 3, 4)
    with pytest.raises(AlreadyExistError) as ei:
        e.prewrite([Mutation.insert(b"k", b"w")], b"k", 10, 3000)
    assert ei.value.existing_start_ts == 1


@pytest.mark.parametrize("level", [AssertionLevel.FAST, AssertionLevel.STRICT])
def test_assertions(level: AssertionLevel) -> None:
    e = MvccEngine()
    put(e, b"k", b"v", 1, 2)
    with pytest.raises(AssertionFailedError) as ei:
        e.prewrite(
            [Mutation.put(b"k", b"w", Assertion.NOT_EXIST)], b"k", 10, 3000, assertion_level=level
        )
    err = ei.value
    assert (err.start_ts, err.key, err.assertion) == (10, b"k", Assertion.NOT_EXIST)
    assert (err.existing_start_ts, err.existing_commit_ts) == (1, 2)
    with pytest.raises(AssertionFailedError) as ei:
        e.prewrite(
            [Mutation.put(b"n", b"w", Assertion.EXIST)], b"n", 10, 3000, assertion_level=level
        )
    assert (ei.value.existing_start_ts, ei.value.existing_commit_ts) == (0, 0)
    ok = e.prewrite(
        [Mutation.put(b"k", b"w", Assertion.EXIST), Mutation.put(b"n", b"x", Assertion.NOT_EXIST)],
        b"k",
        10,
        3000,
        assertion_level=level,
    )
    assert ok.locks == ()


def test_assertion_level_off_ignores_assertions() -> None:
    e = MvccEngine()
    put(e, b"k", b"v", 1, 2)
    res = e.prewrite([Mutation.put(b"k", b"w", Assertion.NOT_EXIST)], b"k", 10, 3000)
    assert res.locks == ()


def test_fast_assertion_skipped_when_constraint_check_skipped_strict_is_not() -> None:
    e = MvccEngine()
    put(e, b"k", b"v", 1, 2)
    m = [Mutation.put(b"k", b"w", Assertion.NOT_EXIST)]
    ok = e.prewrite(
        m, b"k", 10, 3000, skip_constraint_check=True, assertion_level=AssertionLevel.FAST
    )
    assert ok.locks == ()
    e.batch_rollback([b"k"], 10)
    with pytest.raises(AssertionFailedError):
        e.prewrite(
            m, b"k", 11, 3000, skip_constraint_check=True, assertion_level=AssertionLevel.STRICT
        )


def test_commit_errors_and_idempotence() -> None:
    e = MvccEngine()
    e.prewrite([Mutation.put(b"k", b"v")], b"k", 10, 3000, min_commit_ts=20)
    with pytest.raises(CommitTsExpiredError) as ei:
        e.commit([b"k"], 10, 15)
    err = ei.value
    assert (err.start_ts, err.attempted_commit_ts, err.key, err.min_commit_ts) == (10, 15, b"k", 20)
    with pytest.raises(InvalidTxnTsoError):
        e.commit([b"k"], 10, 10)
    assert e.commit([b"k"], 10, 25) == 25
    assert e.commit([b"k"], 10, 25) == 25  # already committed: success
    with pytest.raises(TxnLockNotFoundError) as ei2:
        e.commit([b"never"], 10, 25)
    assert (ei2.value.start_ts, ei2.value.commit_ts, ei2.value.key) == (10, 25, b"never")


def test_commit_after_rollback_fails_and_rollback_after_commit_fails() -> None:
    e = MvccEngine()
    e.prewrite([Mutation.put(b"k", b"v")], b"k", 10, 3000)
    e.batch_rollback([b"k"], 10)
    with pytest.raises(TxnLockNotFoundError):
        e.commit([b"k"], 10, 11)
    e.prewrite([Mutation.put(b"j", b"v")], b"j", 20, 3000)
    e.commit([b"j"], 20, 21)
    with pytest.raises(CommittedError) as ei:
        e.batch_rollback([b"j"], 20)
    assert ei.value.commit_ts == 21


def test_commit_is_atomic_across_keys() -> None:
    e = MvccEngine()
    e.prewrite([Mutation.put(b"a", b"1")], b"a", 10, 3000)
    with pytest.raises(TxnLockNotFoundError):
        e.commit([b"a", b"missing"], 10, 11)
    assert e.mvcc_by_key(b"a").lock is not None
    assert e.get(b"a", 5) is None


def test_rollback_protection_and_collapse() -> None:
    e = MvccEngine()
    # Primary lock rolled back -> protected rollback; secondary -> not protected.
    e.prewrite([Mutation.put(b"p", b"1"), Mutation.put(b"s", b"2")], b"p", 10, 3000)
    e.batch_rollback([b"p", b"s"], 10)
    assert write_types(e, b"p") == [(10, WriteType.ROLLBACK, True)]
    assert write_types(e, b"s") == [(10, WriteType.ROLLBACK, False)]
    # A later non-protected rollback collapses the older non-protected one.
    e.batch_rollback([b"s"], 20)
    assert write_types(e, b"s") == [(20, WriteType.ROLLBACK, False)]
    # ... but not a protected one.
    e.batch_rollback([b"p"], 20)
    assert write_types(e, b"p") == [(20, WriteType.ROLLBACK, False), (10, WriteType.ROLLBACK, True)]


def test_rollback_overlapping_a_commit_marks_the_commit() -> None:
    e = MvccEngine()
    # Transaction 5 commits k at ts 10; transaction 10 (start 10) is then rolled back on k.
    e.prewrite([Mutation.put(b"k", b"v")], b"k", 5, 3000)
    e.commit([b"k"], 5, 10)
    e.check_txn_status(b"k", 10, 0, 0, rollback_if_not_exist=True)
    writes = e.mvcc_by_key(b"k").writes
    assert len(writes) == 1
    commit_ts, w = writes[0]
    assert (commit_ts, w.write_type, w.start_ts, w.has_overlapped_rollback) == (
        10,
        WriteType.PUT,
        5,
        True,
    )
    assert e.get(b"k", 10) == b"v"
    with pytest.raises(WriteConflictError) as ei:
        e.prewrite([Mutation.put(b"k", b"late")], b"k", 10, 3000)
    assert ei.value.reason is WriteConflictReason.SELF_ROLLED_BACK


def test_cleanup_respects_ttl_against_physical_time() -> None:
    e = MvccEngine()
    start = ts(1000)
    e.prewrite([Mutation.put(b"k", b"v")], b"k", start, 100)
    with pytest.raises(KeyIsLockedError):
        e.cleanup(b"k", start, ts(1100))  # 1000 + 100 >= 1100: still alive
    e.cleanup(b"k", start, ts(1101))
    assert e.mvcc_by_key(b"k").lock is None
    assert write_types(e, b"k") == [(start, WriteType.ROLLBACK, True)]
    # current_ts = 0 rolls back unconditionally.
    e.prewrite([Mutation.put(b"j", b"v")], b"j", start, 100_000)
    e.cleanup(b"j", start, 0)
    assert e.mvcc_by_key(b"j").lock is None


def test_cleanup_of_committed_txn_reports_commit_ts() -> None:
    e = MvccEngine()
    put(e, b"k", b"v", 10, 11)
    with pytest.raises(CommittedError) as ei:
        e.cleanup(b"k", 10, 0)
    assert ei.value.commit_ts == 11


def test_delete_and_lock_mutations_commit_the_right_write_types() -> None:
    e = MvccEngine()
    put(e, b"a", b"1", 1, 2)
    e.prewrite([Mutation.delete(b"a"), Mutation.lock(b"b")], b"a", 10, 3000)
    e.commit([b"a", b"b"], 10, 11)
    assert write_types(e, b"a")[0][:2] == (11, WriteType.DELETE)
    assert write_types(e, b"b")[0][:2] == (11, WriteType.LOCK)
    assert e.get(b"a", 20) is None


def test_prewrite_validation() -> None:
    e = MvccEngine()
    with pytest.raises(ValueError, match="ROLLBACK"):
        e.prewrite([Mutation(Op.ROLLBACK, b"k")], b"k", 1, 0)
    with pytest.raises(ValueError, match="start_version"):
        e.prewrite([Mutation.put(b"k", b"v")], b"k", 0, 0)
    with pytest.raises(TypeError):
        e.prewrite([("k", "v")], b"k", 1, 0)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="pessimistic_actions"):
        e.prewrite([Mutation.put(b"k", b"v")], b"k", 5, 0, for_update_ts=5, pessimistic_actions=[])
    with pytest.raises(ValueError, match="secondaries"):
        e.prewrite([Mutation.put(b"k", b"v")], b"k", 5, 0, secondaries=[b"x"])
