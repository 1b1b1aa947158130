"""Read rules of the MVCC engine: visibility, lock blocking, scans."""

from __future__ import annotations

import pytest
from tikv_mockstore.mvcc import (
    MAX_TS,
    IsolationLevel,
    KeyIsLockedError,
    Mutation,
    MvccEngine,
    Op,
    WriteConflictError,
    WriteConflictReason,
)


def put(e: MvccEngine, key: bytes, value: bytes, start: int, commit: int) -> None:
    assert e.prewrite([Mutation.put(key, value)], key, start, 3000).locks == ()
    e.commit([key], start, commit)


def delete(e: MvccEngine, key: bytes, start: int, commit: int) -> None:
    assert e.prewrite([Mutation.delete(key)], key, start, 3000).locks == ()
    e.commit([key], start, commit)


def test_read_sees_newest_commit_at_or_below_ts() -> None:
    e = MvccEngine()
    put(e, b"k", b"v1", 10, 20)
    put(e, b"k", b"v2", 30, 40)
    delete(e, b"k", 50, 60)
    assert e.get(b"k", 19) is None
    assert e.get(b"k", 20) == b"v1"
    assert e.get(b"k", 39) == b"v1"
    assert e.get(b"k", 40) == b"v2"
    assert e.get(b"k", 59) == b"v2"
    assert e.get(b"k", 60) is None
    assert e.get(b"k", MAX_TS) is None


def test_lock_and_rollback_records_are_skipped_by_reads() -> None:
    e = MvccEngine()
    put(e, b"k", b"v1", 10, 20)
    e.prewrite([Mutation.lock(b"k")], b"k", 30, 3000)
    e.commit([b"k"], 30, 35)
    e.batch_rollback([b"k"], 40)
    assert e.get(b"k", 100) == b"v1"


@pytest.mark.parametrize("op", [Op.PUT, Op.DEL])
def test_prewrite_lock_blocks_reads_at_or_after_its_start_ts(op: Op) -> None:
    e = MvccEngine()
    put(e, b"k", b"old", 1, 2)
    e.prewrite([Mutation(op, b"k", b"new")], b"p", 10, 3000, txn_size=1)
    assert e.get(b"k", 9) == b"old"  # the lock is newer than the read
    with pytest.raises(KeyIsLockedError) as ei:
        e.get(b"k", 10)
    info = ei.value.lock_info
    assert info.key == b"k"
    assert info.primary_lock == b"p"
    assert info.lock_version == 10
    assert info.lock_ttl == 3000
    assert info.txn_size == 1
    assert info.lock_type == (Op.PUT if op is Op.PUT else Op.DEL)


def test_lock_type_lock_and_pessimistic_never_block() -> None:
    e = MvccEngine()
    put(e, b"a", b"1", 1, 2)
    put(e, b"b", b"2", 1, 2)
    e.prewrite([Mutation.lock(b"a")], b"a", 10, 3000)
    e.pessimistic_lock([Mutation(Op.PESSIMISTIC_LOCK, b"b")], b"b", 11, 3000, 11)
    assert e.get(b"a", 50) == b"1"
    assert e.get(b"b", 50) == b"2"


def test_lock_with_min_commit_ts_above_read_ts_does_not_block() -> None:
    e = MvccEngine()
    put(e, b"k", b"old", 1, 2)
    e.prewrite([Mutation.put(b"k", b"new")], b"k", 10, 3000, min_commit_ts=30)
    assert e.get(b"k", 25) == b"old"
    with pytest.raises(KeyIsLockedError):
        e.get(b"k", 30)


def test_bypass_and_access_locks() -> None:
    e = MvccEngine()
    put(e, b"k", b"old", 1, 2)
    e.prewrite([Mutation.put(b"k", b"new")], b"k", 10, 3000)
    assert e.get(b"k", 20, bypass_locks={10}) == b"old"
    assert e.get(b"k", 20, access_locks={10}) == b"new"
    with pytest.raises(KeyIsLockedError):
        e.get(b"k", 20, bypass_locks={9})
    e.prewrite([Mutation.delete(b"d")], b"d", 10, 3000)
    assert e.get(b"d", 20, access_locks={10}) is None


def test_read_committed_ignores_locks_and_rc_check_ts_reports_conflict() -> None:
    e = MvccEngine()
    put(e, b"k", b"old", 1, 2)
    e.prewrite([Mutation.put(b"k", b"new")], b"k", 10, 3000)
    assert e.get(b"k", 20, isolation_level=IsolationLevel.RC) == b"old"
    with pytest.raises(WriteConflictError) as ei:
        e.get(b"k", 5, isolation_level=IsolationLevel.RC_CHECK_TS)
    assert ei.value.reason is WriteConflictReason.RC_CHECK_TS
    assert ei.value.conflict_start_ts == 10


def test_max_ts_read_through_a_2pc_primary_lock_but_not_a_secondary() -> None:
    e = MvccEngine()
    put(e, b"p", b"p0", 1, 2)
    put(e, b"s", b"s0", 1, 2)
    e.prewrite([Mutation.put(b"p", b"p1"), Mutation.put(b"s", b"s1")], b"p", 10, 3000)
    assert e.get(b"p", MAX_TS) == b"p0"
    with pytest.raises(KeyIsLockedError):
        e.get(b"s", MAX_TS)


def test_max_ts_read_of_async_commit_primary_is_blocked() -> None:
    e = MvccEngine()
    e.prewrite([Mutation.put(b"p", b"p1")], b"p", 10, 3000, use_async_commit=True, min_commit_ts=11)
    with pytest.raises(KeyIsLockedError):
        e.get(b"p", MAX_TS)


def test_reads_raise_max_ts_except_stale_reads_and_max() -> None:
    e = MvccEngine()
    e.get(b"k", 100)
    assert e.max_ts == 100
    e.get(b"k", 120, isolation_level=IsolationLevel.RC)
    assert e.max_ts == 120
    e.get(b"k", 200, stale_read=True)
    assert e.max_ts == 120
    e.get(b"k", MAX_TS)
    assert e.max_ts == 120
    e.scan(b"", b"", 10, 150)
    assert e.max_ts == 150
    e.batch_get([b"k"], 160)
    assert e.max_ts == 160


def test_batch_get_reports_locked_keys_per_key_and_omits_missing() -> None:
    e = MvccEngine()
    put(e, b"a", b"1", 1, 2)
    put(e, b"c", b"3", 1, 2)
    e.prewrite([Mutation.put(b"c", b"x")], b"c", 10, 3000)
    pairs = e.batch_get([b"a", b"b", b"c"], 20)
    assert [(p.key, p.value) for p in pairs] == [(b"a", b"1"), (b"c", b"")]
    assert pairs[0].error is None
    assert isinstance(pairs[1].error, KeyIsLockedError)


def test_scan_forward_reverse_limit_and_key_only() -> None:
    e = MvccEngine()
    for i, k in enumerate([b"a", b"b", b"c", b"d", b"e"]):
        put(e, k, k.upper(), 10 + 2 * i, 11 + 2 * i)
    delete(e, b"c", 30, 31)
    got = e.scan(b"a", b"e", 10, 100)
    assert [(p.key, p.value) for p in got] == [(b"a", b"A"), (b"b", b"B"), (b"d", b"D")]
    got = e.scan(b"b", b"", 2, 100)
    assert [p.key for p in got] == [b"b", b"d"]
    # Reverse: start_key is the exclusive upper bound, end_key the inclusive lower bound.
    got = e.scan(b"e", b"b", 10, 100, reverse=True)
    assert [p.key for p in got] == [b"d", b"b"]
    got = e.scan(b"z", b"", 10, 100, reverse=True, key_only=True)
    assert [(p.key, p.value) for p in got] == [(b"e", b""), (b"d", b""), (b"b", b""), (b"a", b"")]
    # A snapshot before the delete still sees c.
    assert [p.key for p in e.scan(b"", b"", 10, 29)] == [b"a", b"b", b"c", b"d", b"e"]
    assert e.scan(b"", b"", 0, 100) == []


def test_scan_locked_key_is_an_error_entry_counted_in_limit() -> None:
    e = MvccEngine()
    put(e, b"a", b"1", 1, 2)
    put(e, b"c", b"3", 1, 2)
    e.prewrite([Mutation.put(b"b", b"2")], b"b", 10, 3000)  # a brand-new key, only locked
    got = e.scan(b"", b"", 2, 20)
    assert [p.key for p in got] == [b"a", b"b"]
    assert isinstance(got[1].error, KeyIsLockedError)
    assert got[1].error.lock_info.lock_version == 10


def test_bad_input_is_rejected() -> None:
    e = MvccEngine()
    with pytest.raises(TypeError):
        e.get("k", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="version"):
        e.get(b"k", -1)
    with pytest.raises(ValueError, match="limit"):
        e.scan(b"", b"", -1, 1)
    with pytest.raises(TypeError):
        e.batch_get(b"abc", 1)  # type: ignore[arg-type]


def test_rc_check_ts_conflict_fails_a_scan_but_is_per_key_in_batch_get() -> None:
    e = MvccEngine()
    put(e, b"a", b"1", 1, 2)
    e.prewrite([Mutation.put(b"b", b"x")], b"b", 10, 3000)
    with pytest.raises(WriteConflictError):
        e.scan(b"", b"", 10, 20, isolation_level=IsolationLevel.RC_CHECK_TS)
    pairs = e.batch_get([b"a", b"b"], 20, isolation_level=IsolationLevel.RC_CHECK_TS)
    assert pairs[0].value == b"1"
    assert isinstance(pairs[1].error, WriteConflictError)


def test_reads_report_the_commit_ts_of_the_version_read() -> None:
    e = MvccEngine()
    put(e, b"a", b"1", 10, 20)
    put(e, b"a", b"2", 30, 40)
    put(e, b"b", b"3", 10, 25)
    delete(e, b"c", 12, 13)
    assert e.get_with_commit_ts(b"a", 35) == (b"1", 20)
    assert e.get_with_commit_ts(b"a", MAX_TS) == (b"2", 40)
    assert e.get_with_commit_ts(b"c", 50) is None
    pairs = e.batch_get([b"a", b"b", b"c"], 50)
    assert [(p.key, p.value, p.commit_ts) for p in pairs] == [(b"a", b"2", 40), (b"b", b"3", 25)]
    # Read through a committed transaction's lock: no commit record yet, commit ts 0.
    e.prewrite([Mutation.put(b"b", b"4")], b"b", 60, 3000)
    assert e.get_with_commit_ts(b"b", 70, access_locks={60}) == (b"4", 0)
    assert [p.commit_ts for p in e.batch_get([b"b"], 70, access_locks={60})] == [0]
