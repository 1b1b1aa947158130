from __future__ import annotations

import builtins
import pickle
from collections.abc import Iterator

import pytest
from tikv_pd import errors
from tikv_pd.errors import (
    AssertionFailedError,
    ClientClosedError,
    CommitTsExpiredError,
    CommitTsLagError,
    CommitTsTooLargeError,
    DataIsNotReadyError,
    DeadlockError,
    GCTooEarlyError,
    KeyExistsError,
    KeyIsLockedError,
    LockInfo,
    LockWaitTimeoutError,
    PDError,
    PessimisticLockNotFoundError,
    PrimaryMismatchError,
    RegionError,
    ServerBusyError,
    StoreUnavailableError,
    TiKVError,
    TimeoutError,
    TransactionClosedError,
    TxnAbortedError,
    TxnError,
    TxnLockNotFoundError,
    TxnNotFoundError,
    TxnRetryableError,
    TxnTooLargeError,
    UndeterminedError,
    WaitForEntry,
    WriteConflictError,
    format_key,
    set_redact_keys,
)


@pytest.fixture(autouse=True)
def _no_redaction() -> Iterator[None]:
    set_redact_keys(False)
    yield
    set_redact_keys(False)


def _lock() -> LockInfo:
    return LockInfo(primary_lock=b"pk", lock_version=10, key=b"k1", lock_ttl=3000)


def _all_errors() -> list[TiKVError]:
    return [
        PDError("no leader", error_type="NOT_BOOTSTRAPPED"),
        RegionError("epoch_not_match", 7, "stale epoch", detail={"x": 1}),
        ServerBusyError(7, "scheduler busy", backoff_ms=100),
        DataIsNotReadyError(7, peer_id=3, safe_ts=99),
        TimeoutError("raw_get", causes=["regionMiss: x"], total_sleep_ms=10, budget_ms=20),
        UndeterminedError("commit", ConnectionError("reset")),
        StoreUnavailableError(1, "127.0.0.1:20160", OSError("refused")),
        ClientClosedError("oracle"),
        WriteConflictError(
            start_ts=1,
            conflict_start_ts=2,
            conflict_commit_ts=3,
            key=b"k",
            primary=b"p",
            reason=1,
        ),
        KeyExistsError(b"k"),
        DeadlockError(
            lock_ts=5,
            lock_key=b"k",
            deadlock_key_hash=42,
            wait_chain=[WaitForEntry(txn=1, wait_for_txn=2, key_hash=42)],
        ),
        AssertionFailedError(
            start_ts=1, key=b"k", assertion=2, existing_start_ts=3, existing_commit_ts=4
        ),
        TxnNotFoundError(9, b"pk"),
        TxnLockNotFoundError(b"k"),
        CommitTsExpiredError(start_ts=1, attempted_commit_ts=5, key=b"k", min_commit_ts=6),
        CommitTsTooLargeError(100),
        CommitTsLagError(
            wait_until_ts=50, first_ts=40, last_ts=45, attempts=3, timeout_s=1.0, reason="x"
        ),
        LockWaitTimeoutError(b"k", 1),
        PrimaryMismatchError(_lock()),
        PessimisticLockNotFoundError(1, b"k"),
        TxnTooLargeError("total", 200, 100),
        TransactionClosedError(1, "committed"),
        GCTooEarlyError(5, 10),
        KeyIsLockedError(_lock()),
        TxnRetryableError("retry me"),
        TxnAbortedError("abort"),
    ]


def test_hierarchy() -> None:
    for err in _all_errors():
        assert isinstance(err, TiKVError)
        assert isinstance(err, Exception)
        assert str(err)  # every error has a message
    assert issubclass(ServerBusyError, RegionError)
    assert issubclass(DataIsNotReadyError, RegionError)
    for cls in (
        WriteConflictError,
        KeyExistsError,
        DeadlockError,
        KeyIsLockedError,
        TxnTooLargeError,
        TransactionClosedError,
        GCTooEarlyError,
    ):
        assert issubclass(cls, TxnError)
    assert not issubclass(RegionError, TxnError)


def test_timeout_error_is_builtin_timeout() -> None:
    err = TimeoutError(
        "prewrite",
        causes=["regionMiss: epoch not match", "tikvRPC: unavailable"],
        total_sleep_ms=40123,
        budget_ms=40000,
        last_error=OSError("boom"),
    )
    assert isinstance(err, builtins.TimeoutError)
    with pytest.raises(builtins.TimeoutError):
        raise err
    text = str(err)
    assert "prewrite" in text
    assert "40123 ms" in text
    assert "40000 ms" in text
    assert "regionMiss: epoch not match" in text
    assert "tikvRPC: unavailable" in text
    assert "boom" in text
    assert err.causes == ["regionMiss: epoch not match", "tikvRPC: unavailable"]


def test_timeout_error_long_cause_list_is_bounded() -> None:
    causes = [f"c{i}" for i in range(50)]
    err = TimeoutError("scan", causes=causes, total_sleep_ms=1, budget_ms=1)
    text = str(err)
    assert "c0" in text
    assert "c49" in text
    assert "40 more" in text
    assert "c25" not in text
    assert len(err.causes) == 50


def test_write_conflict_attributes_and_message() -> None:
    err = WriteConflictError(
        start_ts=100,
        conflict_start_ts=90,
        conflict_commit_ts=110,
        key=b"user:1",
        primary=b"user:0",
        reason=2,
    )
    assert (err.start_ts, err.conflict_start_ts, err.conflict_commit_ts) == (100, 90, 110)
    assert err.key == b"user:1"
    assert err.reason_name == "PessimisticRetry"
    text = str(err)
    assert "b'user:1'" in text
    assert "b'user:0'" in text
    assert "100" in text
    assert "90" in text
    assert "110" in text
    assert (
        WriteConflictError(
            start_ts=1, conflict_start_ts=1, conflict_commit_ts=1, key=b"", reason=77
        ).reason_name
        == "Reason(77)"
    )


def test_redaction_applies_to_messages_not_attributes() -> None:
    err = KeyExistsError(b"secret-key")
    assert "secret-key" in str(err)
    set_redact_keys(True)
    assert errors.redact_keys_enabled()
    assert "secret" not in str(err)
    assert "?" in str(err)
    assert err.key == b"secret-key"
    lock_err = KeyIsLockedError(_lock())
    assert "pk" not in str(lock_err)
    set_redact_keys(False)
    assert "secret-key" in str(err)


def test_set_redact_keys_rejects_non_bool() -> None:
    with pytest.raises(TypeError, match="bool"):
        set_redact_keys(1)  # type: ignore[arg-type]


def test_format_key_truncates_long_keys() -> None:
    key = b"a" * 200
    text = format_key(key)
    assert "200 bytes" in text
    assert text.count("a") < 100
    assert format_key(b"ab") == "b'ab'"
    assert format_key(None) == "None"


def test_txn_too_large_kinds() -> None:
    entry = TxnTooLargeError("entry", 7_000_000, 6 * 1024 * 1024, key=b"big")
    assert entry.size == 7_000_000
    assert entry.limit == 6291456
    assert "entry too large" in str(entry)
    assert "b'big'" in str(entry)
    total = TxnTooLargeError("total", 101, 100)
    assert "101" in str(total)
    assert "100" in str(total)
    with pytest.raises(ValueError, match="kind"):
        TxnTooLargeError("bogus", 1, 1)


def test_lock_info_validation() -> None:
    lock = LockInfo(primary_lock=b"p", lock_version=1, key=b"k", secondaries=[b"s1", b"s2"])  # type: ignore[arg-type]
    assert lock.secondaries == (b"s1", b"s2")
    with pytest.raises(TypeError, match="key"):
        LockInfo(primary_lock=b"p", lock_version=1, key="k")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-negative"):
        LockInfo(primary_lock=b"p", lock_version=-1, key=b"k")


def test_pickle_round_trip_keeps_attributes() -> None:
    for err in _all_errors():
        clone = pickle.loads(pickle.dumps(err))
        assert type(clone) is type(err)
        assert str(clone) == str(err)
    err = DeadlockError(lock_ts=5, lock_key=b"k", deadlock_key_hash=42)
    clone = pickle.loads(pickle.dumps(err))
    assert clone.lock_ts == 5
    assert clone.lock_key == b"k"
    assert clone.deadlock_key_hash == 42


def test_undetermined_and_store_unavailable_carry_cause() -> None:
    cause = ConnectionResetError("reset by peer")
    err = UndeterminedError("commit primary", cause)
    assert err.cause is cause
    assert err.operation == "commit primary"
    assert "reset by peer" in str(err)
    assert "undetermined" in str(err)
    store = StoreUnavailableError(3, "10.0.0.1:20160", cause)
    assert store.store_id == 3
    assert "10.0.0.1:20160" in str(store)


def test_region_error_facts() -> None:
    detail = object()
    err = RegionError("not_leader", 42, "peer is not leader", detail)
    assert err.kind == "not_leader"
    assert err.region_id == 42
    assert err.detail is detail
    assert "not_leader" in str(err)
    assert "42" in str(err)
    assert "peer is not leader" in str(err)
    busy = ServerBusyError(1, "too many requests", backoff_ms=250, estimated_wait_ms=30)
    assert busy.kind == "server_is_busy"
    assert "250" in str(busy)
    assert "too many requests" in str(busy)
