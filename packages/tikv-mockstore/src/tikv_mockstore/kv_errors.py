"""Translate between kvrpcpb messages and the MVCC engine's types, errors and results.

The mapping follows TiKV's service layer: ``extract_key_error`` in ``src/storage/errors.rs``
chooses one ``kvrpcpb.KeyError`` field per error kind, and ``src/server/service/kv.rs`` decides
per command whether the key error goes into ``error`` (one) or ``errors`` (a list). Only the
fields TiKV fills are filled here: for example ``Deadlock.deadlock_key`` stays empty because
TiKV's waiter manager never sets it, and a write conflict also carries the legacy ``retryable``
text that old clients read.
"""

from __future__ import annotations

from collections.abc import Iterable

from tikv_proto import deadlock_pb2, kvrpcpb_pb2

from tikv_mockstore.mvcc import errors as mvcc_errors
from tikv_mockstore.mvcc.types import (
    Assertion,
    KvPair,
    LockInfo,
    Mutation,
    Op,
    WaitForEntry,
    enum_of,
)

__all__ = [
    "KEY_ERROR_TYPES",
    "key_error",
    "key_errors",
    "kv_pair_to_pb",
    "lock_info_to_pb",
    "mutation_from_pb",
    "wait_for_entry_to_pb",
]

#: What a command can fail with that becomes a ``kvrpcpb.KeyError``: the engine's MVCC
#: errors, and its argument checks (TiKV answers an invalid request with an ``abort``).
KEY_ERROR_TYPES: tuple[type[Exception], ...] = (mvcc_errors.MvccError, ValueError, TypeError)


def mutation_from_pb(m: kvrpcpb_pb2.Mutation) -> Mutation:
    """Return the engine's :class:`Mutation` of a ``kvrpcpb.Mutation``.

    Raises ``ValueError`` for an op or assertion the engine does not know (the shared-lock
    ops), which the handlers answer with an ``abort`` key error.
    """
    return Mutation(enum_of(Op, m.op), m.key, m.value, enum_of(Assertion, m.assertion))


def lock_info_to_pb(info: LockInfo) -> kvrpcpb_pb2.LockInfo:
    """Return the ``kvrpcpb.LockInfo`` of ``info`` with every field TiKV reports."""
    pb = kvrpcpb_pb2.LockInfo(
        primary_lock=info.primary_lock,
        lock_version=info.lock_version,
        key=info.key,
        lock_ttl=info.lock_ttl,
        txn_size=info.txn_size,
        lock_type=kvrpcpb_pb2.Op.ValueType(info.lock_type),
        lock_for_update_ts=info.lock_for_update_ts,
        use_async_commit=info.use_async_commit,
        min_commit_ts=info.min_commit_ts,
        duration_to_last_update_ms=info.duration_to_last_update_ms,
    )
    pb.secondaries.extend(info.secondaries)
    return pb


def wait_for_entry_to_pb(entry: WaitForEntry) -> deadlock_pb2.WaitForEntry:
    """Return the ``deadlock.WaitForEntry`` of one edge of a wait-for chain."""
    return deadlock_pb2.WaitForEntry(
        txn=entry.txn,
        wait_for_txn=entry.wait_for_txn,
        key_hash=entry.key_hash,
        key=entry.key,
        resource_group_tag=entry.resource_group_tag,
        wait_time=entry.wait_time,
    )


def _retryable_text(err: BaseException) -> str:
    # TiKV puts the Debug rendering of the error into `retryable` for write conflicts and
    # missing commit locks, so that clients older than the typed fields still retry.
    return f"{type(err).__name__}: {err!r}"


def key_error(err: BaseException) -> kvrpcpb_pb2.KeyError:
    """Return the ``kvrpcpb.KeyError`` TiKV builds for ``err`` (``extract_key_error``).

    Errors that TiKV has no typed field for (a committed transaction met by a rollback, a
    missing pessimistic lock, invalid arguments, ...) become ``abort`` with the error's text,
    as TiKV's catch-all arm does.
    """
    ke = kvrpcpb_pb2.KeyError()
    if isinstance(err, mvcc_errors.KeyIsLockedError):
        ke.locked.CopyFrom(lock_info_to_pb(err.lock_info))
    elif isinstance(err, mvcc_errors.WriteConflictError):
        ke.conflict.CopyFrom(
            kvrpcpb_pb2.WriteConflict(
                start_ts=err.start_ts,
                conflict_ts=err.conflict_start_ts,
                conflict_commit_ts=err.conflict_commit_ts,
                key=err.key,
                primary=err.primary,
                reason=kvrpcpb_pb2.WriteConflict.Reason.ValueType(err.reason),
            )
        )
        ke.retryable = _retryable_text(err)
    elif isinstance(err, mvcc_errors.AlreadyExistError):
        ke.already_exist.CopyFrom(kvrpcpb_pb2.AlreadyExist(key=err.key))
    elif isinstance(err, mvcc_errors.TxnLockNotFoundError):
        ke.retryable = _retryable_text(err)
        ke.txn_lock_not_found.CopyFrom(kvrpcpb_pb2.TxnLockNotFound(key=err.key))
    elif isinstance(err, mvcc_errors.TxnNotFoundError):
        ke.txn_not_found.CopyFrom(
            kvrpcpb_pb2.TxnNotFound(start_ts=err.start_ts, primary_key=err.primary_key)
        )
    elif isinstance(err, mvcc_errors.DeadlockError):
        dl = kvrpcpb_pb2.Deadlock(
            lock_ts=err.lock_ts, lock_key=err.lock_key, deadlock_key_hash=err.deadlock_key_hash
        )
        dl.wait_chain.extend(wait_for_entry_to_pb(e) for e in err.wait_chain)
        ke.deadlock.CopyFrom(dl)
    elif isinstance(err, mvcc_errors.CommitTsExpiredError):
        ke.commit_ts_expired.CopyFrom(
            kvrpcpb_pb2.CommitTsExpired(
                start_ts=err.start_ts,
                attempted_commit_ts=err.attempted_commit_ts,
                key=err.key,
                min_commit_ts=err.min_commit_ts,
            )
        )
    elif isinstance(err, mvcc_errors.CommitTsTooLargeError):
        ke.commit_ts_too_large.CopyFrom(kvrpcpb_pb2.CommitTsTooLarge(commit_ts=err.commit_ts))
    elif isinstance(err, mvcc_errors.AssertionFailedError):
        ke.assertion_failed.CopyFrom(
            kvrpcpb_pb2.AssertionFailed(
                start_ts=err.start_ts,
                key=err.key,
                assertion=kvrpcpb_pb2.Assertion.ValueType(err.assertion),
                existing_start_ts=err.existing_start_ts,
                existing_commit_ts=err.existing_commit_ts,
            )
        )
    elif isinstance(err, mvcc_errors.PrimaryMismatchError):
        ke.primary_mismatch.CopyFrom(
            kvrpcpb_pb2.PrimaryMismatch(lock_info=lock_info_to_pb(err.lock_info))
        )
    else:
        ke.abort = f"{type(err).__name__}: {err!r}"
    return ke


def key_errors(errs: Iterable[BaseException]) -> list[kvrpcpb_pb2.KeyError]:
    """Return one ``kvrpcpb.KeyError`` per error, in order (``extract_key_errors``)."""
    return [key_error(e) for e in errs]


def kv_pair_to_pb(pair: KvPair) -> kvrpcpb_pb2.KvPair:
    """Return the ``kvrpcpb.KvPair`` of a read result: a value, or the error hiding it.

    TiKV's ``map_kv_pairs`` leaves ``key`` empty in a pair that carries an error: the key
    of a lock error is in ``error.locked.key``.
    """
    if pair.error is not None:
        return kvrpcpb_pb2.KvPair(error=key_error(pair.error))
    return kvrpcpb_pb2.KvPair(key=pair.key, value=pair.value)
