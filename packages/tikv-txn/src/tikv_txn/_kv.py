"""Translation between kvproto messages and the transaction layer's types.

The ``kvrpcpb.KeyError`` mapping lives in :mod:`tikv_pd.key_errors` (shared with the raw
client and other callers of the request pipeline) and is re-exported here for the
transaction modules; this module adds what only transactions need: building prewrite
mutations from the protocol-neutral :class:`tikv_txn.policy.Mutation`, and
:func:`decode_error_keys`, which gives an error the user's keys back.

Under API v2 every key TiKV reports is keyspace-prefixed. client-go's v2 codec decodes
every key inside a ``KeyError`` before it reaches the user (``internal/apicodec/
codec_v2.go`` ``decodeKeyError``: the locked key and primary, the conflict key and
primary, the already-exist key, the deadlock key and wait chain, the commit-ts-expired key,
the txn-not-found primary, the assertion-failed key, ...). Here the lock resolver and the
committer keep working with the stored keys (they send them back), and an *error* gets
user keys where it is built: every error of the transactional package that carries keys
is made by :meth:`tikv_txn._runtime.TxnRuntime.key_error` / ``locks_of`` /
``locked_error`` / ``user_error``, which decode through this module (a test checks that
no other place builds one).
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from tikv_pd.codec import KeyCodec
from tikv_pd.errors import (
    AssertionFailedError,
    CommitTsExpiredError,
    DeadlockError,
    KeyExistsError,
    KeyIsLockedError,
    KeyOutOfKeyspaceError,
    LockInfo,
    LockWaitTimeoutError,
    PessimisticLockNotFoundError,
    PrimaryMismatchError,
    TxnLockNotFoundError,
    TxnNotFoundError,
    WriteConflictError,
)
from tikv_pd.key_errors import key_error_to_exception, lock_from_pb, locks_of
from tikv_proto import kvrpcpb_pb2

from tikv_txn.policy import Mutation

__all__ = [
    "KEYED_ERRORS",
    "decode_error_keys",
    "decode_lock",
    "key_error_to_exception",
    "lock_from_pb",
    "locks_of",
    "mutation_to_pb",
]

E = TypeVar("E", bound=BaseException)

#: The key attributes of each error type that carries stored keys (decoded for users).
_KEY_FIELDS: dict[type[BaseException], tuple[str, ...]] = {
    WriteConflictError: ("key", "primary"),
    KeyExistsError: ("key",),
    DeadlockError: ("lock_key",),
    AssertionFailedError: ("key",),
    TxnNotFoundError: ("primary_key",),
    TxnLockNotFoundError: ("key",),
    CommitTsExpiredError: ("key",),
    LockWaitTimeoutError: ("key",),
    PessimisticLockNotFoundError: ("key",),
}
#: Errors that carry keys: built only through :func:`decode_error_keys` in this package.
KEYED_ERRORS: frozenset[type[BaseException]] = frozenset(
    {*_KEY_FIELDS, KeyIsLockedError, PrimaryMismatchError}
)
#: Set on an error whose keys are the user's (decoding is done once).
_DECODED = "_tikv_user_keys"


def _decode_key(codec: KeyCodec, key: bytes) -> bytes:
    # A key outside the keyspace (b"" for "none", or another keyspace's) stays as it is.
    if not key:
        return key
    try:
        return codec.decode_key(key)
    except KeyOutOfKeyspaceError:
        return key


def decode_lock(lock: LockInfo, codec: KeyCodec) -> LockInfo:
    """``lock`` with user keys (its key, primary and secondaries) under API v2."""
    if codec.api_version != 2:
        return lock
    return dataclasses.replace(
        lock,
        key=_decode_key(codec, lock.key),
        primary_lock=_decode_key(codec, lock.primary_lock),
        secondaries=tuple(_decode_key(codec, k) for k in lock.secondaries),
    )


def decode_error_keys(exc: E, codec: KeyCodec) -> E:
    """Give ``exc`` the user's keys: strip the keyspace prefix from every key it carries.

    API v1 keys are the user's already (nothing changes). Decoding happens once per error
    (a second call is a no-op), in place, and returns ``exc`` for ``raise``.
    """
    if codec.api_version != 2 or getattr(exc, _DECODED, False):
        return exc
    for kind, names in _KEY_FIELDS.items():
        if isinstance(exc, kind):
            for name in names:
                setattr(exc, name, _decode_key(codec, getattr(exc, name)))
    if isinstance(exc, KeyIsLockedError | PrimaryMismatchError):
        lock = exc.lock
        if lock is not None:
            exc.lock = decode_lock(lock, codec)
    if isinstance(exc, DeadlockError):
        exc.wait_chain = tuple(
            dataclasses.replace(e, key=_decode_key(codec, e.key)) for e in exc.wait_chain
        )
    setattr(exc, _DECODED, True)
    return exc


_ASSERT_NONE = 0
_ASSERT_EXIST = 1
_ASSERT_NOT_EXIST = 2


def mutation_to_pb(m: Mutation, key: bytes) -> kvrpcpb_pb2.Mutation:
    """Build the ``kvrpcpb.Mutation`` of ``m`` for the (encoded) ``key``."""
    assertion = _ASSERT_NONE
    if m.assert_exist:
        assertion = _ASSERT_EXIST
    elif m.assert_not_exist:
        assertion = _ASSERT_NOT_EXIST
    return kvrpcpb_pb2.Mutation(
        op=int(m.op),  # type: ignore[arg-type]
        key=key,
        value=m.value,
        assertion=assertion,  # type: ignore[arg-type]
    )
