"""Lock resolution: CheckTxnStatus, CheckSecondaryLocks, ResolveLock, ScanLock, TxnHeartBeat."""

from __future__ import annotations

import pytest
from tikv_mockstore.mvcc import (
    MAX_TS,
    Action,
    CommittedError,
    InvalidTxnTsoError,
    KeyIsLockedError,
    Mutation,
    MvccEngine,
    Op,
    PrimaryMismatchError,
    TxnLockNotFoundError,
    TxnNotFoundError,
    WriteConflictError,
    WriteType,
)


def ts(ms: int, logical: int = 0) -> int:
    return (ms << 18) | logical


def prewrite(e: MvccEngine, keys: list[bytes], start: int, ttl: int = 100, **kw: object) -> None:
    muts = [Mutation.put(k, b"v" + k) for k in keys]
    res = e.prewrite(muts, keys[0], start, ttl, **kw)  # type: ignore[arg-type]
    assert res.locks == ()


START = ts(1000)


# --------------------------------------------------------------------------- check_txn_status


def test_check_txn_status_alive_lock_no_action() -> None:
    e = MvccEngine()
    prewrite(e, [b"p", b"s"], START, ttl=100)
    st = e.check_txn_status(b"p", START, 0, ts(1050))
    assert st.action is Action.NO_ACTION
    assert st.lock_ttl == 100
    assert st.commit_version == 0
    assert st.lock_info is not None
    assert st.lock_info.lock_version == START


def test_check_txn_status_ttl_expired_rolls_back() -> None:
    e = MvccEngine()
    prewrite(e, [b"p", b"s"], START, ttl=100)
    st = e.check_txn_status(b"p", START, 0, ts(1101))
    assert st.action is Action.TTL_EXPIRE_ROLLBACK
    assert st.is_rolled_back
    info = e.mvcc_by_key(b"p")
    assert info.lock is None
    assert [(c, w.write_type, w.is_protected) for c, w in info.writes] == [
        (START, WriteType.ROLLBACK, True)
    ]
    # The secondary lock is still there; resolving it by rollback leaves a rollback record.
    e.resolve_lock(START, 0)
    assert e.lock_count() == 0
    # A second check sees the rollback record.
    assert e.check_txn_status(b"p", START, 0, ts(1200)).action is Action.NO_ACTION
    assert e.check_txn_status(b"p", START, 0, ts(1200)).is_rolled_back


def test_check_txn_status_ttl_boundary_uses_physical_time() -> None:
    e = MvccEngine()
    prewrite(e, [b"p"], START, ttl=100)
    # physical(start) + ttl == physical(current): not yet expired (strictly less is needed),
    # whatever the logical part.
    st = e.check_txn_status(b"p", START, 0, ts(1100, 5000))
    assert st.action is Action.NO_ACTION
    assert e.check_txn_status(b"p", START, 0, ts(1101)).action is Action.TTL_EXPIRE_ROLLBACK


def test_check_txn_status_committed() -> None:
    e = MvccEngine()
    prewrite(e, [b"p"], START)
    e.commit([b"p"], START, START + 5)
    st = e.check_txn_status(b"p", START, 0, ts(5000))
    assert st.commit_version == START + 5
    assert st.is_committed
    assert st.action is Action.NO_ACTION


def test_check_txn_status_missing_lock() -> None:
    e = MvccEngine()
    with pytest.raises(TxnNotFoundError) as ei:
        e.check_txn_status(b"p", START, 0, ts(1001))
    assert (ei.value.start_ts, ei.value.primary_key) == (START, b"p")
    st = e.check_txn_status(b"p", START, 0, ts(1001), rollback_if_not_exist=True)
    assert st.action is Action.LOCK_NOT_EXIST_ROLLBACK
    # The protected rollback stops the prewrite that arrives late.
    with pytest.raises(WriteConflictError):
        e.prewrite([Mutation.put(b"p", b"x")], b"p", START, 100)
    writes = e.mvcc_by_key(b"p").writes
    assert [(c, w.write_type, w.is_protected) for c, w in writes] == [
        (START, WriteType.ROLLBACK, True)
    ]


def test_check_txn_status_pushes_min_commit_ts() -> None:
    e = MvccEngine()
    prewrite(e, [b"p"], START, ttl=10_000, min_commit_ts=START + 1)
    caller = START + 100
    st = e.check_txn_status(b"p", START, caller, ts(1001))
    assert st.action is Action.MIN_COMMIT_TS_PUSHED
    assert st.lock_info is not None
    assert st.lock_info.min_commit_ts == max(caller + 1, ts(1001))
    # The pushed lock no longer blocks the caller's read ...
    assert e.get(b"p", caller) is None
    # ... and the owner can no longer commit below it.
    with pytest.raises(Exception, match="CommitTsExpired"):
        e.commit([b"p"], START, caller)
    e.commit([b"p"], START, st.lock_info.min_commit_ts)


def test_check_txn_status_does_not_push_lock_without_min_commit_ts() -> None:
    e = MvccEngine()
    prewrite(e, [b"p"], START, ttl=10_000)
    st = e.check_txn_status(b"p", START, START + 100, ts(1001))
    assert st.action is Action.NO_ACTION
    assert e.mvcc_by_key(b"p").lock is not None
    assert e.mvcc_by_key(b"p").lock.min_commit_ts == 0  # type: ignore[union-attr]


def test_check_txn_status_max_caller_reports_pushed() -> None:
    e = MvccEngine()
    prewrite(e, [b"p"], START, ttl=10_000, min_commit_ts=START + 1)
    st = e.check_txn_status(b"p", START, MAX_TS, ts(1001))
    assert st.action is Action.MIN_COMMIT_TS_PUSHED
    assert st.lock_info is not None
    assert st.lock_info.min_commit_ts == START + 1  # not actually pushed


def test_check_txn_status_async_commit_lock_is_left_alone() -> None:
    e = MvccEngine()
    e.prewrite(
        [Mutation.put(b"p", b"1"), Mutation.put(b"s", b"2")],
        b"p",
        START,
        100,
        use_async_commit=True,
        secondaries=[b"s"],
    )
    st = e.check_txn_status(b"p", START, START + 100, ts(9999))
    assert st.action is Action.NO_ACTION
    assert st.lock_ttl == 100
    assert st.lock_info is not None
    assert st.lock_info.use_async_commit
    assert st.lock_info.secondaries == (b"s",)
    # force_sync_commit treats it as a normal lock: expired -> rolled back.
    st = e.check_txn_status(b"p", START, START + 100, ts(9999), force_sync_commit=True)
    assert st.action is Action.TTL_EXPIRE_ROLLBACK


def test_check_txn_status_pessimistic_primary() -> None:
    e = MvccEngine()
    e.pessimistic_lock([Mutation(Op.PESSIMISTIC_LOCK, b"p")], b"p", START, 100, START)
    st = e.check_txn_status(b"p", START, 0, ts(2000), resolving_pessimistic_lock=True)
    assert st.action is Action.TTL_EXPIRE_PESSIMISTIC_ROLLBACK
    assert e.mvcc_by_key(b"p").lock is None
    assert e.mvcc_by_key(b"p").writes == ()  # no rollback record
    st = e.check_txn_status(
        b"p", START, 0, ts(2000), resolving_pessimistic_lock=True, rollback_if_not_exist=True
    )
    assert st.action is Action.LOCK_NOT_EXIST_DO_NOTHING
    # Without resolving_pessimistic_lock an expired pessimistic primary is rolled back.
    e.pessimistic_lock([Mutation(Op.PESSIMISTIC_LOCK, b"q")], b"q", START + 1, 100, START + 1)
    st = e.check_txn_status(b"q", START + 1, 0, ts(2000))
    assert st.action is Action.TTL_EXPIRE_ROLLBACK
    assert e.mvcc_by_key(b"q").writes[0][1].write_type is WriteType.ROLLBACK


def test_check_txn_status_verify_is_primary() -> None:
    e = MvccEngine()
    prewrite(e, [b"p", b"s"], START, ttl=10_000)
    with pytest.raises(PrimaryMismatchError) as ei:
        e.check_txn_status(b"s", START, 0, ts(1001), verify_is_primary=True)
    assert ei.value.lock_info.primary_lock == b"p"
    assert ei.value.lock_info.key == b"s"
    # A stale pessimistic lock on a non-primary key is removed.
    e.pessimistic_lock([Mutation(Op.PESSIMISTIC_LOCK, b"x")], b"p2", START + 1, 100, START + 1)
    st = e.check_txn_status(
        b"x", START + 1, 0, ts(1001), verify_is_primary=True, rollback_if_not_exist=True
    )
    assert st.action is Action.LOCK_NOT_EXIST_ROLLBACK
    assert e.mvcc_by_key(b"x").lock is None


def test_check_txn_status_raises_max_ts() -> None:
    e = MvccEngine()
    prewrite(e, [b"p"], START, ttl=10_000)
    e.check_txn_status(b"p", START, START + 7, START + 3)
    assert e.max_ts == START + 7


# --------------------------------------------------------------------------- secondaries


def async_txn(e: MvccEngine, start: int = START) -> None:
    res = e.prewrite(
        [Mutation.put(b"p", b"1"), Mutation.put(b"s1", b"2"), Mutation.put(b"s2", b"3")],
        b"p",
        start,
        100,
        use_async_commit=True,
        secondaries=[b"s1", b"s2"],
    )
    assert res.locks == ()
    assert res.min_commit_ts > start


def test_check_secondary_locks_all_locked() -> None:
    e = MvccEngine()
    async_txn(e)
    st = e.check_secondary_locks([b"s1", b"s2"], START)
    assert [li.key for li in st.locks] == [b"s1", b"s2"]
    assert all(li.use_async_commit for li in st.locks)
    assert st.commit_ts == 0


def test_check_secondary_locks_committed() -> None:
    e = MvccEngine()
    async_txn(e)
    commit_ts = e.mvcc_by_key(b"p").lock.min_commit_ts  # type: ignore[union-attr]
    e.commit([b"s2"], START, commit_ts)
    st = e.check_secondary_locks([b"s1", b"s2"], START)
    assert st.commit_ts == commit_ts
    assert st.locks == ()


def test_check_secondary_locks_missing_key_is_rolled_back() -> None:
    e = MvccEngine()
    e.prewrite(
        [Mutation.put(b"p", b"1")], b"p", START, 100, use_async_commit=True, secondaries=[b"s1"]
    )
    # s1 was never prewritten: checking it writes a protected rollback -> txn rolled back.
    st = e.check_secondary_locks([b"s1"], START)
    assert st.locks == ()
    assert st.commit_ts == 0
    writes = e.mvcc_by_key(b"s1").writes
    assert [(w.write_type, w.is_protected) for _, w in writes] == [(WriteType.ROLLBACK, True)]
    # The late prewrite of s1 is refused.
    with pytest.raises(WriteConflictError):
        e.prewrite(
            [Mutation.put(b"s1", b"2")], b"p", START, 100, use_async_commit=True, secondaries=()
        )


def test_check_secondary_locks_rolls_back_a_pessimistic_lock() -> None:
    e = MvccEngine()
    e.pessimistic_lock([Mutation(Op.PESSIMISTIC_LOCK, b"s")], b"p", START, 100, START)
    st = e.check_secondary_locks([b"s"], START)
    assert st == type(st)()  # rolled back
    assert e.mvcc_by_key(b"s").lock is None
    assert e.mvcc_by_key(b"s").writes[0][1].write_type is WriteType.ROLLBACK


# --------------------------------------------------------------------------- resolve


def test_resolve_lock_by_commit_over_a_range() -> None:
    e = MvccEngine()
    prewrite(e, [b"a", b"b", b"c"], START)
    prewrite(e, [b"d"], START + 1)  # another transaction: untouched
    e.resolve_lock(START, START + 10)
    assert e.get(b"a", START + 10) == b"va"
    assert e.get(b"c", START + 10) == b"vc"
    assert [li.key for li in e.scan_lock(MAX_TS)] == [b"d"]


def test_resolve_lock_by_rollback_and_lite_keys() -> None:
    e = MvccEngine()
    prewrite(e, [b"a", b"b", b"c"], START)
    e.resolve_lock(START, 0, [b"b"])
    assert [li.key for li in e.scan_lock(MAX_TS)] == [b"a", b"c"]
    assert e.mvcc_by_key(b"b").writes[0][1].write_type is WriteType.ROLLBACK
    e.resolve_lock(START, START + 3, [b"a"])
    assert e.get(b"a", START + 3) == b"va"
    with pytest.raises(CommittedError):
        e.resolve_lock(START, 0, [b"a"])
    with pytest.raises(TxnLockNotFoundError):
        e.resolve_lock(START, START + 3, [b"b"])


def test_resolve_lock_batched_txn_infos_and_range_bounds() -> None:
    e = MvccEngine()
    prewrite(e, [b"a"], START)
    prewrite(e, [b"b"], START + 1)
    prewrite(e, [b"c"], START + 2)
    prewrite(e, [b"z"], START + 2)
    e.resolve_lock(txn_infos={START: START + 5, START + 2: 0}, start_key=b"a", end_key=b"y")
    assert e.get(b"a", START + 5) == b"va"
    assert [li.key for li in e.scan_lock(MAX_TS)] == [b"b", b"z"]
    assert e.get(b"c", MAX_TS) is None
    with pytest.raises(InvalidTxnTsoError):
        e.resolve_lock(START + 1, START + 1)


def test_scan_lock_filters_and_limits() -> None:
    e = MvccEngine()
    prewrite(e, [b"a"], 10)
    prewrite(e, [b"b"], 20)
    prewrite(e, [b"c"], 30)
    assert [li.key for li in e.scan_lock(25)] == [b"a", b"b"]
    assert [li.key for li in e.scan_lock(100, b"b")] == [b"b", b"c"]
    assert [li.key for li in e.scan_lock(100, b"", b"c")] == [b"a", b"b"]
    assert [li.key for li in e.scan_lock(100, limit=1)] == [b"a"]


def test_txn_heart_beat_only_extends() -> None:
    e = MvccEngine()
    prewrite(e, [b"p"], START, ttl=100)
    assert e.txn_heart_beat(b"p", START, 5000) == 5000
    assert e.txn_heart_beat(b"p", START, 10) == 5000
    # The extended TTL keeps the lock alive past its original expiry.
    with pytest.raises(KeyIsLockedError):
        e.cleanup(b"p", START, ts(2000))
    with pytest.raises(TxnNotFoundError):
        e.txn_heart_beat(b"p", START + 1, 5000)
    with pytest.raises(TxnNotFoundError):
        e.txn_heart_beat(b"nope", START, 5000)


def test_rollback_recorded_in_async_lock_survives_its_commit_at_the_same_ts() -> None:
    e = MvccEngine()
    # Txn A (async commit) holds k with min_commit_ts 20.
    e.prewrite([Mutation.put(b"k", b"a")], b"k", 10, 100, use_async_commit=True, min_commit_ts=20)
    # Txn B (start 25) is rolled back on k while A's lock is there: the rollback is
    # remembered in A's lock, because A may commit at exactly 25.
    st = e.check_txn_status(b"k", 25, 0, 0, rollback_if_not_exist=True)
    assert st.action is Action.LOCK_NOT_EXIST_ROLLBACK
    lock = e.mvcc_by_key(b"k").lock
    assert lock is not None
    assert lock.rollback_ts == (25,)
    e.commit([b"k"], 10, 25)
    (commit_ts, w), *_ = e.mvcc_by_key(b"k").writes
    assert (commit_ts, w.start_ts, w.write_type, w.has_overlapped_rollback) == (
        25,
        10,
        WriteType.PUT,
        True,
    )
    # B's late prewrite is refused, and B is reported rolled back.
    with pytest.raises(WriteConflictError):
        e.prewrite([Mutation.put(b"k", b"b")], b"k", 25, 100)
    assert e.check_txn_status(b"k", 25, 0, 0).is_rolled_back


def test_rollback_below_min_commit_ts_is_not_recorded_in_the_lock() -> None:
    e = MvccEngine()
    e.prewrite([Mutation.put(b"k", b"a")], b"k", 10, 100, use_async_commit=True, min_commit_ts=30)
    e.check_txn_status(b"k", 25, 0, 0, rollback_if_not_exist=True)
    assert e.mvcc_by_key(b"k").lock.rollback_ts == ()  # type: ignore[union-attr]


def test_resolve_lock_needs_a_transaction() -> None:
    e = MvccEngine()
    with pytest.raises(ValueError, match="start_version or txn_infos"):
        e.resolve_lock()
    with pytest.raises(ValueError, match="exactly one"):
        e.resolve_lock(txn_infos={5: 0, 6: 0}, keys=[b"k"])
