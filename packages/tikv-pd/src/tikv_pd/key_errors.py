"""``kvrpcpb.KeyError`` → the typed exceptions of :mod:`tikv_pd.errors`.

A response of TiKV reports a per-key failure as a ``kvrpcpb.KeyError``: a lock in the way,
a write conflict, a key that already exists, a deadlock, ... :func:`key_error_to_exception`
turns one into the :class:`~tikv_pd.errors.TxnError` subclass that carries the server's
facts, in the order of client-go ``error/error.go`` ``ExtractKeyErr``;
:func:`locks_of` splits a batch of key errors into the locks to resolve and the first
real failure (client-go ``txnlock.ExtractLockFromKeyErr``); :func:`lock_from_pb` converts
``kvrpcpb.LockInfo``. The transactional client and any other caller of the request
pipeline (the raw client's atomic mode, admin tools) share this one mapping.
"""

from __future__ import annotations

from collections.abc import Iterable

from tikv_proto import kvrpcpb_pb2

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
    TxnError,
    TxnLockNotFoundError,
    TxnNotFoundError,
    TxnRetryableError,
    WaitForEntry,
    WriteConflictError,
)

__all__ = [
    "key_error_to_exception",
    "lock_from_pb",
    "locks_of",
]


def lock_from_pb(info: kvrpcpb_pb2.LockInfo) -> LockInfo:
    """Convert a ``kvrpcpb.LockInfo`` (as TiKV reports a lock) to :class:`LockInfo`."""
    return LockInfo(
        primary_lock=info.primary_lock,
        lock_version=info.lock_version,
        key=info.key,
        lock_ttl=info.lock_ttl,
        txn_size=info.txn_size,
        lock_type=int(info.lock_type),
        use_async_commit=info.use_async_commit,
        min_commit_ts=info.min_commit_ts,
        secondaries=tuple(info.secondaries),
        lock_for_update_ts=info.lock_for_update_ts,
        duration_to_last_update_ms=info.duration_to_last_update_ms,
        is_txn_file=info.is_txn_file,
    )


def key_error_to_exception(err: kvrpcpb_pb2.KeyError, *, start_ts: int = 0) -> TxnError:
    """Map a ``kvrpcpb.KeyError`` to the typed exception carrying the server's facts.

    A ``locked`` error becomes :class:`KeyIsLockedError`; callers that resolve locks
    check for it (or use :func:`locks_of`) before calling this. The order of the checks
    follows client-go ``ExtractKeyErr``.

    Args:
        err: The key error from a response.
        start_ts: The caller's start ts (the server omits it in some errors).

    """
    if err.HasField("locked"):
        return KeyIsLockedError(lock_from_pb(err.locked))
    if err.HasField("conflict"):
        c = err.conflict
        return WriteConflictError(
            start_ts=c.start_ts or start_ts,
            conflict_start_ts=c.conflict_ts,
            conflict_commit_ts=c.conflict_commit_ts,
            key=c.key,
            primary=c.primary,
            reason=int(c.reason),
        )
    if err.HasField("already_exist"):
        return KeyExistsError(err.already_exist.key)
    if err.HasField("deadlock"):
        d = err.deadlock
        return DeadlockError(
            lock_ts=d.lock_ts,
            lock_key=d.lock_key,
            deadlock_key_hash=d.deadlock_key_hash,
            wait_chain=[
                WaitForEntry(
                    txn=e.txn,
                    wait_for_txn=e.wait_for_txn,
                    key_hash=e.key_hash,
                    key=e.key,
                    resource_group_tag=e.resource_group_tag,
                    wait_time=e.wait_time,
                )
                for e in d.wait_chain
            ],
        )
    if err.HasField("commit_ts_expired"):
        e = err.commit_ts_expired
        return CommitTsExpiredError(
            start_ts=e.start_ts or start_ts,
            attempted_commit_ts=e.attempted_commit_ts,
            key=e.key,
            min_commit_ts=e.min_commit_ts,
        )
    if err.HasField("txn_not_found"):
        return TxnNotFoundError(err.txn_not_found.start_ts, err.txn_not_found.primary_key)
    if err.HasField("commit_ts_too_large"):
        return CommitTsTooLargeError(err.commit_ts_too_large.commit_ts)
    if err.HasField("assertion_failed"):
        a = err.assertion_failed
        return AssertionFailedError(
            start_ts=a.start_ts or start_ts,
            key=a.key,
            assertion=int(a.assertion),
            existing_start_ts=a.existing_start_ts,
            existing_commit_ts=a.existing_commit_ts,
        )
    if err.HasField("primary_mismatch"):
        pm = err.primary_mismatch
        return PrimaryMismatchError(
            lock_from_pb(pm.lock_info) if pm.HasField("lock_info") else None
        )
    if err.HasField("txn_lock_not_found"):
        return TxnLockNotFoundError(err.txn_lock_not_found.key)
    if err.retryable:
        return TxnRetryableError(err.retryable)
    if err.abort:
        return TxnAbortedError(err.abort)
    return TxnAbortedError(f"unknown key error from TiKV: {err}")


def locks_of(errors: Iterable[kvrpcpb_pb2.KeyError], *, start_ts: int = 0) -> list[LockInfo]:
    """Return the locks of ``errors``; raise the first error that is not a lock.

    client-go's prewrite and reads treat a batch of key errors this way: any non-lock
    error fails the request (``ExtractKeyErr``), locks are collected for resolution.
    """
    locks: list[LockInfo] = []
    for err in errors:
        if err.HasField("locked"):
            locks.append(lock_from_pb(err.locked))
        else:
            raise key_error_to_exception(err, start_ts=start_ts)
    return locks
