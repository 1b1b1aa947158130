"""kvrpcpb.KeyError -> typed exceptions (client-go ExtractKeyErr), and lock extraction."""

from __future__ import annotations

import pickle

import pytest
from tikv_pd.errors import (
    AssertionFailedError,
    CommitTsExpiredError,
    CommitTsTooLargeError,
    DeadlockError,
    KeyExistsError,
    KeyIsLockedError,
    LockInfo,
    PrimaryMismatchError,
    TxnAbortedError,
    TxnLockNotFoundError,
    TxnNotFoundError,
    TxnRetryableError,
    WaitForEntry,
    WriteConflictError,
)
from tikv_pd.key_errors import key_error_to_exception, lock_from_pb, locks_of
from tikv_proto import deadlock_pb2, kvrpcpb_pb2

KE = kvrpcpb_pb2.KeyError


def _lock_pb(key: bytes = b"k", ts: int = 7) -> kvrpcpb_pb2.LockInfo:
    return kvrpcpb_pb2.LockInfo(
        primary_lock=b"p",
        lock_version=ts,
        key=key,
        lock_ttl=3000,
        txn_size=2,
        lock_type=kvrpcpb_pb2.Op.PessimisticLock,
        use_async_commit=True,
        min_commit_ts=9,
        secondaries=[b"s1", b"s2"],
        lock_for_update_ts=8,
        duration_to_last_update_ms=5,
        is_txn_file=True,
    )


def test_lock_from_pb_keeps_every_fact() -> None:
    assert lock_from_pb(_lock_pb()) == LockInfo(
        primary_lock=b"p",
        lock_version=7,
        key=b"k",
        lock_ttl=3000,
        txn_size=2,
        lock_type=int(kvrpcpb_pb2.Op.PessimisticLock),
        use_async_commit=True,
        min_commit_ts=9,
        secondaries=(b"s1", b"s2"),
        lock_for_update_ts=8,
        duration_to_last_update_ms=5,
        is_txn_file=True,
    )


def test_locked_becomes_key_is_locked() -> None:
    exc = key_error_to_exception(KE(locked=_lock_pb()))
    assert isinstance(exc, KeyIsLockedError)
    assert exc.lock == lock_from_pb(_lock_pb())


def test_write_conflict_falls_back_to_the_callers_start_ts() -> None:
    conflict = kvrpcpb_pb2.WriteConflict(
        conflict_ts=11,
        conflict_commit_ts=12,
        key=b"k",
        primary=b"p",
        reason=kvrpcpb_pb2.WriteConflict.Reason.PessimisticRetry,
    )
    exc = key_error_to_exception(KE(conflict=conflict), start_ts=10)
    assert isinstance(exc, WriteConflictError)
    assert (exc.start_ts, exc.conflict_start_ts, exc.conflict_commit_ts) == (10, 11, 12)
    assert (exc.key, exc.primary, exc.reason) == (b"k", b"p", 2)
    conflict.start_ts = 5  # the server's value wins when it sends one
    assert key_error_to_exception(KE(conflict=conflict), start_ts=10).start_ts == 5  # type: ignore[attr-defined]


def test_deadlock_keeps_its_wait_chain() -> None:
    entry = deadlock_pb2.WaitForEntry(
        txn=1, wait_for_txn=2, key_hash=3, key=b"w", resource_group_tag=b"t", wait_time=4
    )
    err = KE(
        deadlock=kvrpcpb_pb2.Deadlock(
            lock_ts=2, lock_key=b"k", deadlock_key_hash=99, wait_chain=[entry]
        )
    )
    exc = key_error_to_exception(err)
    assert isinstance(exc, DeadlockError)
    assert (exc.lock_ts, exc.lock_key, exc.deadlock_key_hash) == (2, b"k", 99)
    assert exc.wait_chain == (
        WaitForEntry(
            txn=1, wait_for_txn=2, key_hash=3, key=b"w", resource_group_tag=b"t", wait_time=4
        ),
    )


@pytest.mark.parametrize(
    ("err", "kind", "facts"),
    [
        (
            KE(already_exist=kvrpcpb_pb2.AlreadyExist(key=b"k")),
            KeyExistsError,
            {"key": b"k"},
        ),
        (
            KE(
                commit_ts_expired=kvrpcpb_pb2.CommitTsExpired(
                    attempted_commit_ts=20, key=b"k", min_commit_ts=25
                )
            ),
            CommitTsExpiredError,
            {"start_ts": 10, "attempted_commit_ts": 20, "key": b"k", "min_commit_ts": 25},
        ),
        (
            KE(txn_not_found=kvrpcpb_pb2.TxnNotFound(start_ts=3, primary_key=b"p")),
            TxnNotFoundError,
            {"start_ts": 3, "primary_key": b"p"},
        ),
        (
            KE(commit_ts_too_large=kvrpcpb_pb2.CommitTsTooLarge(commit_ts=77)),
            CommitTsTooLargeError,
            {"commit_ts": 77},
        ),
        (
            KE(
                assertion_failed=kvrpcpb_pb2.AssertionFailed(
                    key=b"k",
                    assertion=kvrpcpb_pb2.Assertion.NotExist,
                    existing_start_ts=4,
                    existing_commit_ts=5,
                )
            ),
            AssertionFailedError,
            {
                "start_ts": 10,
                "key": b"k",
                "assertion": int(kvrpcpb_pb2.Assertion.NotExist),
                "existing_start_ts": 4,
                "existing_commit_ts": 5,
            },
        ),
        (
            KE(primary_mismatch=kvrpcpb_pb2.PrimaryMismatch(lock_info=_lock_pb())),
            PrimaryMismatchError,
            {"lock": lock_from_pb(_lock_pb())},
        ),
        (KE(primary_mismatch=kvrpcpb_pb2.PrimaryMismatch()), PrimaryMismatchError, {"lock": None}),
        (
            KE(txn_lock_not_found=kvrpcpb_pb2.TxnLockNotFound(key=b"k")),
            TxnLockNotFoundError,
            {"key": b"k"},
        ),
        (KE(retryable="try again"), TxnRetryableError, {"reason": "try again"}),
        (KE(abort="gone"), TxnAbortedError, {"reason": "gone"}),
    ],
)
def test_each_key_error_maps_to_its_exception(
    err: kvrpcpb_pb2.KeyError, kind: type[Exception], facts: dict[str, object]
) -> None:
    exc = key_error_to_exception(err, start_ts=10)
    assert type(exc) is kind
    assert {name: getattr(exc, name) for name in facts} == facts
    # Errors travel between processes (DESIGN: every error pickles).
    assert {name: getattr(pickle.loads(pickle.dumps(exc)), name) for name in facts} == facts


def test_an_unknown_key_error_aborts_with_what_the_server_said() -> None:
    exc = key_error_to_exception(KE())
    assert isinstance(exc, TxnAbortedError)
    assert "unknown key error" in exc.reason


def test_client_go_check_order_locked_before_the_rest() -> None:
    # A server that sets several fields is read in ExtractKeyErr's order.
    exc = key_error_to_exception(KE(locked=_lock_pb(), retryable="r", abort="a"))
    assert isinstance(exc, KeyIsLockedError)
    assert isinstance(key_error_to_exception(KE(retryable="r", abort="a")), TxnRetryableError)


def test_locks_of_collects_locks_and_raises_the_first_other_error() -> None:
    a, b = _lock_pb(b"a", 1), _lock_pb(b"b", 2)
    assert locks_of([KE(locked=a), KE(locked=b)]) == [lock_from_pb(a), lock_from_pb(b)]
    assert locks_of([]) == []
    with pytest.raises(KeyExistsError) as info:
        locks_of(
            [
                KE(locked=a),
                KE(already_exist=kvrpcpb_pb2.AlreadyExist(key=b"x")),
                KE(abort="later"),
            ]
        )
    assert info.value.key == b"x"
